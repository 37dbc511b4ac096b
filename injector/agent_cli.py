"""`kms-injector agent` arguments -> AgentConfig.

Layers, later wins: env `KMS_AGENT_CONFIG` (JSON, written by the webhook), then `--config FILE`
(JSON, or YAML when PyYAML is installed: the agent image has no PyYAML, so it reads JSON files
only), then flags. The merged mapping goes through
`AgentConfig.from_dict`, so every refusal is a ConfigError naming the field.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Mapping

from injector.config import AgentConfig, ConfigError, Source

ENV_VAR = "KMS_AGENT_CONFIG"

# The flags, for the fast path below (build_parser is the reference: same names, same meaning).
_VALUE_FLAGS = ("config", "mode", "host", "project", "env", "path", "mount-path", "api", "credentials-dir", "format",
                "template", "file-mode", "refresh-interval", "init-timeout", "request-timeout", "signal",
                "signal-process", "command", "health-port")
_REPEATABLE = ("path", "template")
_SWITCHES = ("no-imports", "no-events")


def parse_args(argv: list[str]) -> Any:
    """The parsed flags. Plain `--flag value` / `--flag=value` command lines (what the webhook
    and every test write) are read directly: argparse's help formatter imports shutil, bz2 and
    lzma when the parser is built, ~3 ms of every agent start (bench/README.md). Anything else
    (--help, an abbreviation, an unknown flag, a missing value, a bad number) goes to argparse,
    for its exact behaviour and messages."""
    return _fast_parse(argv) or build_parser().parse_args(argv)


def _fast_parse(argv: list[str]) -> SimpleNamespace | None:
    ns: dict[str, Any] = {f.replace("-", "_"): None for f in _VALUE_FLAGS + _SWITCHES}
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if not name.startswith("--"):
            return None
        name = name[2:]
        if name in _SWITCHES and not eq:
            ns[name.replace("-", "_")] = True
            i += 1
            continue
        if name not in _VALUE_FLAGS:
            return None
        if eq:
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 2
        else:
            return None
        converted: Any = value
        if name == "health-port":
            try:
                converted = int(value)
            except ValueError:
                return None
        key = name.replace("-", "_")
        ns[key] = [*(ns[key] or []), converted] if name in _REPEATABLE else converted
    return SimpleNamespace(**ns)


def build_parser() -> Any:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            # argparse's own errors are config errors too: exit 2 with one line naming the flag.
            raise ConfigError("arguments", message)

    p = _Parser(
        prog="kms-injector agent",
        description="Fetch KMS folders into a directory of files (init: once; sidecar: keep them fresh).",
    )
    p.add_argument("--config", metavar="FILE", help="JSON (or YAML) file with AgentConfig fields (flags override it)")
    p.add_argument("--mode", help="init (sync once, exit) or sidecar (keep refreshing)")
    p.add_argument("--host", help="KMS API URL, e.g. http://kms.hanzo.svc.cluster.local/api")
    p.add_argument("--project", help="project slug, e.g. secrets-639-c")
    p.add_argument("--env", help="environment slug, e.g. prod")
    p.add_argument("--path", action="append", metavar="[NAME=]/FOLDER",
                   help="KMS folder; repeatable; NAME=/folder lands in <mount-path>/NAME/")
    p.add_argument("--mount-path", help="directory the files are written to")
    p.add_argument("--api", help="KMS API: auto (default: Infisical, else canonical on 404), infisical or canonical")
    p.add_argument("--credentials-dir", help="directory with clientId and clientSecret files")
    p.add_argument("--format", help="files, dotenv, json or yaml")
    p.add_argument("--template", action="append", metavar="FILE=TEMPLATE", help="render ${KEY} template to FILE; repeatable")
    p.add_argument("--file-mode", help="octal mode of written files, e.g. 0444")
    p.add_argument("--refresh-interval", help="sidecar refresh interval: 30s, 5m, 1h or seconds (min 5s)")
    p.add_argument("--init-timeout", help="init mode gives up after this long (default 120s)")
    p.add_argument("--request-timeout", help="timeout of one KMS request (default 10s)")
    p.add_argument("--signal", help="signal sent after a change, e.g. SIGHUP")
    p.add_argument("--signal-process", help="name of the process to signal")
    p.add_argument("--command", help="command run after a change (shell-style string, not via a shell)")
    p.add_argument("--health-port", type=_int("health_port"), help="serve /healthz /readyz /metrics on this port (0 = off)")
    p.add_argument("--no-imports", action="store_true", default=None, help="do not include imported folders")
    p.add_argument("--no-events", action="store_true", default=None, help="poll only (no KMS change events)")
    return p


def _int(field_name: str):
    def conv(text: str) -> int:
        import argparse

        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field_name}: {text!r} is not an integer") from None

    return conv


def parse_sources(values: list[str]) -> list[dict[str, str]]:
    """`/chat` -> main folder; `NAME=/path` -> sub-folder NAME."""
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        out.append({"path": path, "subdir": name} if sep else {"path": value, "subdir": ""})
    return out


def _flag_overrides(ns: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("mode", "api", "host", "project", "env", "mount_path", "credentials_dir", "format", "file_mode",
                 "refresh_interval", "init_timeout", "request_timeout", "signal", "signal_process", "health_port"):
        value = getattr(ns, name)
        if value is not None:
            out[name] = value
    if ns.path:
        out["sources"] = parse_sources(ns.path)
    if ns.command is not None:
        out["command"] = ns.command  # from_dict shlex-splits strings
    if ns.template:
        templates = {}
        for item in ns.template:
            fname, sep, text = item.partition("=")
            if not sep:
                raise ConfigError("templates", f"{item!r} is not FILE=TEMPLATE")
            templates[fname] = text
        out["templates"] = templates
    if ns.no_imports:
        out["include_imports"] = False
    if ns.no_events:
        out["events"] = False
    return out


def _load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    import json

    try:
        data = json.loads(text) if text.strip() else None  # YAML's JSON subset needs no PyYAML
    except ValueError:
        data = _parse_yaml(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of AgentConfig fields")
    return data


def _parse_yaml(path: str, text: str) -> Any:
    try:
        import yaml  # only here: the env/flags/JSON paths never pay for PyYAML
    except ImportError:
        raise ConfigError("config", f"{path} is not JSON, and reading YAML needs PyYAML, which this installation "
                                    "does not have (the agent image reads JSON only); write the file as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path} is not valid YAML{where}") from None


def load_config(argv: list[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Merge env JSON, YAML file and flags into a validated AgentConfig (raises ConfigError)."""
    environ = os.environ if environ is None else environ
    ns = parse_args(argv)
    merged: dict[str, Any] = {}
    text = environ.get(ENV_VAR, "").strip()
    if text:
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(ENV_VAR, f"is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(ENV_VAR, "must be a JSON object of AgentConfig fields")
        merged.update(data)
    if ns.config:
        merged.update(_load_file(ns.config))
    merged.update(_flag_overrides(ns))
    return AgentConfig.from_dict(merged)


__all__ = ["load_config", "build_parser", "parse_args", "parse_sources", "ENV_VAR", "Source"]
