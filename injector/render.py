"""Secrets -> the files the agent writes. PURE: plain data in, plain data out, no I/O.

`render(config, secrets)` takes `secrets` as {source subdir: {key: value}} ('' is the main folder,
`kms.hanzo.ai/path`; 'NAME' is `kms.hanzo.ai/path-NAME`) and returns `Rendered(files, skipped)`:
`files` maps paths relative to the mount path to bytes; the writer puts them on disk atomically.

How the pieces combine (the contract apps rely on):

- Every key of every source goes through `keys.unsafe_key_reason` first, in every format: a key
  that is not a safe file name (empty, `.`/`..`, `/`, `\\`, NUL, `..` prefix, > 255 bytes, a lone
  surrogate) is skipped and listed in `skipped` as (key, reason), never with its value. A value that is not a
  string is skipped the same way.
- `format` applies to each source in its own folder:
  files  -> `KEY` for the main folder, `NAME/KEY` for source NAME;
  dotenv -> `.env` and `NAME/.env`; json -> `secrets.json` and `NAME/secrets.json`;
  yaml   -> `secrets.yaml` and `NAME/secrets.yaml`.
  So a source's keys never mix with another's, exactly as with one file per key.
- Templates (`config.templates[FILE]`) are written in addition to the format's files, always at
  the top of the mount path (`<mount>/FILE`). `${KEY}` is a key of the main folder, `${NAME/KEY}`
  a key of source NAME (unambiguous, because a safe key never contains `/`). `$${` writes a
  literal `${`; a `$` not followed by `{` is literal. An unknown key, or a `${` without `}`, is a
  `TemplateError` naming the template and the key (never a value): no empty-string surprises.
- Name clashes: a template file name that is also a source folder or an aggregate file is a
  `RenderError` (a configuration mistake). In `files` format a main-folder key equal to a
  template file name or to a source folder name is skipped with a reason (the template or the
  folder wins), because a key cannot be both.
- dotenv: a key must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*) and a value must
  not contain NUL, else the key is skipped with a reason. Every value is written for POSIX `sh`
  (`. ./.env`): inside single quotes, where nothing is expanded (`$`, backticks, `\\`, newlines
  are literal), and each `'` as `'\\''` (close, escaped quote, reopen). So sourcing the file runs
  nothing a secret holds and yields the exact value. A value with a newline spans lines, as sh
  reads it; loaders that are not sh may read `'\\''` or multi-line values differently: use
  json/yaml for those.
- json: one object, sorted keys, 2-space indent, trailing newline.
- yaml: hand-written emitter (importing PyYAML costs ~20 ms of agent start-up): one
  `"KEY": "value"` line per key, sorted, as YAML double-quoted scalars with every non-printable
  character escaped, so any YAML 1.1/1.2 loader returns the exact strings. `{}` when empty.
- Output is deterministic (sorted keys), so equal secrets give equal bytes and the writer can
  skip a rewrite. Text is UTF-8; a lone surrogate (possible from JSON `\\ud800`) is kept with
  `surrogatepass` rather than dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from injector.config import FORMAT_FILES, AgentConfig
from injector.keys import display_key, unsafe_key_reason

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
# Characters a YAML double-quoted scalar may hold raw: printable, minus `"` and `\`, minus the
# Unicode line/paragraph separators (loaders treat them as line breaks), minus BOM. Compiled on
# first use: it costs ~4 ms, and most pods never ask for yaml.
_YAML_RAW = r"[^\x20\x21\x23-\x5b\x5d-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
_yaml_escape: re.Pattern[str] | None = None
_YAML_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\", "\x00": "\\0"}


class RenderError(ValueError):
    """The configuration cannot be rendered (a name clash); says which names clash."""


class TemplateError(RenderError):
    """A template refers to a key that does not exist (or is malformed). Never holds a value."""

    def __init__(self, template: str, key: str, detail: str = "") -> None:
        self.template = template
        self.key = key
        msg = f"template {template!r}: unknown key {display_key(key)!r}"
        super().__init__(f"{msg}; {detail}" if detail else msg)


@dataclass
class Rendered:
    files: dict[str, bytes] = field(default_factory=dict)
    # (key as 'KEY' or 'NAME/KEY', shortened for logs; why it was skipped). Never a value.
    skipped: list[tuple[str, str]] = field(default_factory=list)


def render(config: AgentConfig, secrets: Mapping[str, Mapping[str, Any]]) -> Rendered:
    out = Rendered()
    subdirs = {s.subdir for s in config.sources if s.subdir}
    aggregate = FORMAT_FILES.get(config.format)
    for fname in config.templates:
        if fname in subdirs:
            raise RenderError(f"template {fname!r} has the same name as the folder of source path-{fname}; rename one")
        if aggregate and fname == aggregate:
            raise RenderError(f"template {fname!r} has the same name as the {config.format} file; rename the template")

    usable: dict[str, dict[str, str]] = {}  # subdir -> safe key -> value (what templates see)
    skipped_names: dict[str, str] = {}  # qualified key -> reason, for clearer template errors
    for src in config.sources:
        if src.subdir not in secrets:
            raise RenderError(f"no secrets given for source {src.subdir or '(main folder)'!r} ({src.path})")
        prefix = f"{src.subdir}/" if src.subdir else ""
        safe: dict[str, str] = {}
        for key, value in secrets[src.subdir].items():
            reason = unsafe_key_reason(key)
            if reason is None and not isinstance(value, str):
                reason = "value is not a string"
            if reason is None and not prefix and config.format == "files":
                if key in config.templates:
                    reason = f"replaced by template {key!r}"
                elif key in subdirs:
                    reason = f"same name as the folder of source path-{key}"
            if reason is not None:
                name = prefix + (display_key(key) if isinstance(key, str) else repr(key))
                out.skipped.append((name, reason))
                skipped_names[prefix + str(key)] = reason
                continue
            safe[key] = value
        usable[src.subdir] = safe

        if config.format == "files":
            for key, value in safe.items():
                out.files[prefix + key] = _encode(value)
        elif config.format == "dotenv":
            out.files[prefix + FORMAT_FILES["dotenv"]] = _dotenv(safe, prefix, out.skipped)
        elif config.format == "json":
            out.files[prefix + FORMAT_FILES["json"]] = _json(safe)
        elif config.format == "yaml":
            out.files[prefix + FORMAT_FILES["yaml"]] = _yaml(safe)
        else:  # AgentConfig.validate() refuses other formats; keep the pure core total anyway
            raise RenderError(f"format {config.format!r} is not accepted; use files, dotenv, json or yaml")

    for fname in sorted(config.templates):
        out.files[fname] = _encode(render_template(fname, config.templates[fname], usable, skipped_names))
    return out


def render_template(
    name: str, text: str, secrets: Mapping[str, Mapping[str, str]], skipped: Mapping[str, str] | None = None
) -> str:
    """Substitute `${KEY}` / `${NAME/KEY}`; `$${` -> `${`. Unknown key -> TemplateError."""

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$${":
            return "${"
        ref = m.group(1)
        if ref is None:
            raise TemplateError(name, text[m.start() : m.start() + 40], "a ${ has no closing }; write $${ for a literal ${")
        subdir, key = ref.split("/", 1) if "/" in ref else ("", ref)
        if "/" in ref:
            if not subdir:
                raise TemplateError(name, ref, "use ${KEY} for the main folder or ${NAME/KEY} for source path-NAME")
        source = secrets.get(subdir)
        if source is None:
            raise TemplateError(name, ref, f"there is no source path-{display_key(subdir)}")
        if key not in source:
            why = skipped.get(ref) if skipped else None
            raise TemplateError(name, ref, f"that key was skipped ({why})" if why else "")
        return source[key]

    return _PLACEHOLDER.sub(sub, text)


# -- formats ---------------------------------------------------------------------------------


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _dotenv(values: Mapping[str, str], prefix: str, skipped: list[tuple[str, str]]) -> bytes:
    lines = []
    for key in sorted(values):
        value = values[key]
        if not _ENV_NAME.match(key):
            skipped.append((prefix + key, "not an environment variable name ([A-Za-z_][A-Za-z0-9_]*), left out of .env"))
            continue
        if "\x00" in value:
            skipped.append((prefix + key, "value contains NUL, which an environment variable cannot hold"))
            continue
        lines.append(f"{key}={dotenv_quote(value)}\n")
    return _encode("".join(lines))


def dotenv_quote(value: str) -> str:
    """`value` single-quoted for sh: literal as is; each `'` becomes `'\\''`."""
    return "'" + value.replace("'", "'\\''") + "'"


def _json(values: Mapping[str, str]) -> bytes:
    text = json.dumps(dict(values), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: \u-escape them so the file stays valid UTF-8 JSON
        return (json.dumps(dict(values), indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def yaml_quote(text: str) -> str:
    def esc(m: re.Match[str]) -> str:
        ch = m.group(0)
        short = _YAML_SHORT.get(ch)
        if short:
            return short
        code = ord(ch)
        if code <= 0xFF:
            return f"\\x{code:02x}"
        if code <= 0xFFFF:
            return f"\\u{code:04x}"
        return f"\\U{code:08x}"

    global _yaml_escape
    if _yaml_escape is None:
        _yaml_escape = re.compile(_YAML_RAW)
    return '"' + _yaml_escape.sub(esc, text) + '"'


def _yaml(values: Mapping[str, str]) -> bytes:
    if not values:
        return b"{}\n"
    return _encode("".join(f"{yaml_quote(k)}: {yaml_quote(values[k])}\n" for k in sorted(values)))
