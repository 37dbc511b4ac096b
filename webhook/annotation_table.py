"""THE annotation contract: every `kms.hanzo.ai/*` annotation, defined once. Pure: no I/O.

Each row gives the name (after the prefix; `path-NAME`, `keys-NAME`, `template-FILE` are
families), the default as the docs show it, the accepted values, one line of meaning and the
parser that turns the value into what the policy step (webhook/annotations.py) works with. A
parser sees only the value: defaults, settings and the pod come later, in one place.
docs/annotations.md and the README's table are generated from these rows
(`python -m webhook.annotation_docs`); a test fails when they drift.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from injector.config import (
    APIS,
    FORMATS,
    MAX_REFRESH_SECONDS,
    MIN_REFRESH_SECONDS,
    SIGNALS,
    ConfigError,
    _check_host,
    normalize_path,
    parse_duration,
    parse_file_mode,
)

from .annotation_error import PREFIX, AnnotationError, redact_userinfo
from .settings import parse_quantity

MODES = ("sidecar", "init", "native")
MAX_VALUE = 1024  # any annotation value except templates
MAX_TEMPLATE = 32 * 1024
# Paths the app's secrets mount may not cover: they would hide system files or our credentials.
FORBIDDEN_MOUNTS = ("/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/usr", "/var/run/secrets", "/kms/auth", "/kms/sa")
# The exact names that would choose the agent's image (compared lower-case): refused with 403.
# Only these: `path-images` or `template-imagemagick.conf` are ordinary annotations.
IMAGE_OVERRIDES = frozenset({
    "image", "agent-image", "init-image", "sidecar-image", "image-override", "agent-image-override",
    "image-pull-policy", "agent-image-pull-policy", "image-pull-secrets",
})

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
PROCESS = re.compile(r"^[A-Za-z0-9_.+@:-]{1,255}$")
_MOUNT = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
_KEY = re.compile(r"^[^\x00-\x1f,/]{1,255}$")

Parser = Callable[[str, str, str], Any]  # (annotation key, value, accepted) -> parsed value


@dataclass(frozen=True)
class Annotation:
    name: str  # after the prefix; a family's name ends in -NAME or -FILE
    default: str  # as the docs show it; "" = none
    accepted: str  # what a value may be (docs column, and the tail of a refusal)
    meaning: str  # one line
    parse: Parser
    readme: str = ""  # the README's line for it; "" = only in docs/annotations.md

    @property
    def family(self) -> str:
        """`path-` for `path-NAME`; "" for a single annotation."""
        return self.name.rsplit("-", 1)[0] + "-" if self.name.endswith(("-NAME", "-FILE")) else ""


# -- parsers: (key, value, accepted) -> value; every refusal names key, value and accepted ---------
def _text(key: str, value: str, accepted: str) -> str:
    return value


def _bool(key: str, value: str, accepted: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise AnnotationError(key, value, accepted)
    return v == "true"


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(key: str, value: str, accepted: str) -> str:
        v = value.strip().lower()
        if v not in options:
            raise AnnotationError(key, value, accepted)
        return v
    return parse


def _matching(pattern: re.Pattern[str]) -> Parser:
    def parse(key: str, value: str, accepted: str) -> str:
        v = value.strip()  # a value set to "" is a value (refused here), not "use the default"
        if not pattern.match(v):
            raise AnnotationError(key, value, accepted)
        return v
    return parse


def _duration(low: float, high: float) -> Parser:
    def parse(key: str, value: str, accepted: str) -> float:
        try:
            seconds = parse_duration(value, key)
        except ConfigError:
            raise AnnotationError(key, value, accepted) from None
        if not low <= seconds <= high:
            raise AnnotationError(key, value, accepted)
        return seconds
    return parse


def _path(key: str, value: str, accepted: str) -> str:
    try:
        return normalize_path(value.strip(), key)
    except ConfigError:
        raise AnnotationError(key, value, accepted) from None


def _keys(key: str, value: str, accepted: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(k.strip() for k in value.split(",") if k.strip()))
    if not names or not all(_KEY.match(k) for k in names):
        raise AnnotationError(key, value, accepted)
    return names


def _host(key: str, value: str, accepted: str) -> str:
    try:
        _check_host(value)
    except ConfigError:
        raise AnnotationError(key, redact_userinfo(value), f"{_host_problem(value)}; {accepted}") from None
    return value  # as written: the allowed-hosts comparison is exact


def _host_problem(host: str) -> str:
    try:
        parts = urlsplit(host)
        parts.port
    except ValueError:
        return "it is not a URL"
    if parts.scheme not in ("http", "https"):
        return "only http:// and https:// are accepted"
    if "@" in parts.netloc:
        return "credentials in the URL are not accepted (they come from the auth Secret)"
    if parts.query or parts.fragment:
        return "a query or fragment is not accepted"
    return "it is not a usable URL"


def _mount_path(key: str, value: str, accepted: str) -> str:
    path = value.strip().rstrip("/")
    if not _MOUNT.match(path) or len(path) > 256 or any(p in (".", "..") for p in path.split("/")[1:]):
        raise AnnotationError(key, value, accepted)
    for bad in FORBIDDEN_MOUNTS:
        # Covering or sitting inside a forbidden directory are both refused.
        if path == bad or path.startswith(bad + "/") or bad.startswith(path + "/"):
            raise AnnotationError(key, value, accepted)
    return path


def _names(key: str, value: str, accepted: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise AnnotationError(key, value, accepted)
    return names


def _file_mode(key: str, value: str, accepted: str) -> int:
    try:
        return parse_file_mode(value, "file-mode")
    except ConfigError:
        raise AnnotationError(key, value, accepted) from None


def _signal(key: str, value: str, accepted: str) -> str:
    raw = value.strip().upper()
    signal = raw if raw.startswith("SIG") else "SIG" + raw
    if signal not in SIGNALS:
        raise AnnotationError(key, value, accepted)
    return signal


def _command(key: str, value: str, accepted: str) -> list[str]:
    try:
        argv = shlex.split(value)
    except ValueError:
        raise AnnotationError(key, value, "use a command line with balanced quotes, e.g. /bin/reload --graceful") from None
    if not argv:
        raise AnnotationError(key, value, accepted)
    return argv


def _quantity(key: str, value: str, accepted: str) -> str:
    q = parse_quantity(value.strip())
    if q is None or q <= 0:
        raise AnnotationError(key, value, accepted)
    return value.strip()


def _port(key: str, value: str, accepted: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or not 1024 <= int(text) <= 65535:
        raise AnnotationError(key, value, accepted)
    return int(text)


def _template(key: str, value: str, accepted: str) -> str:
    if len(value) > MAX_TEMPLATE or "\x00" in value:
        raise AnnotationError(key, value, accepted)
    return value


# -- the table --------------------------------------------------------------------------------------
A = Annotation
TABLE: tuple[Annotation, ...] = (
    A("inject", "", 'use "true" or "false"', "force injection on (`true`) or off (`false`); without it, `path` decides", _bool),
    A("path", "required", "use an absolute KMS folder path such as /chat: segments of [A-Za-z0-9_.-], never . or ..",
      "KMS folder synced into the mount path, one file per key", _path,
      readme="KMS folder synced to the mount path, one file per key"),
    A("path-NAME", "", "use an absolute KMS folder path such as /shared: segments of [A-Za-z0-9_.-], never . or ..",
      "another folder, synced into `<mount-path>/NAME/`; NAME is a folder name", _path,
      readme="another folder, synced into `<mount-path>/NAME/`"),
    A("keys", "list the folder", "use a comma list of key names (no /, no control characters), e.g. DATABASE_URL,REDIS_URL",
      "read only these keys of `path`, one by one (a canonical KMS server without a list route needs it)", _keys),
    A("keys-NAME", "list the folder", "use a comma list of key names (no /, no control characters), e.g. DATABASE_URL,REDIS_URL",
      "the same for `path-NAME`", _keys),
    A("project", "settings `project` (`secrets-639-c`)", "use a project slug ([A-Za-z0-9_.-], up to 64), e.g. secrets-639-c",
      "KMS project slug", _matching(_SLUG), readme="KMS project slug"),
    A("env", "settings `env` (`prod`)", "use an environment slug such as prod, staging, dev",
      "KMS environment slug", _matching(_SLUG), readme="KMS environment slug"),
    A("host", "settings `host`", "use an http(s)://HOST[:PORT]/PATH URL from the allowed hosts list",
      "KMS API URL: the settings host or one of `allowed_hosts`, matched exactly (a trailing / is ignored); "
      "plain http outside the cluster is warned", _host),
    A("api", "settings `api` (`auto`)", f"use one of {', '.join(APIS)}", "which KMS API the agent speaks", _choice(APIS)),
    A("organization-slug", "settings `organization_slug` (none)", "use an organization slug ([A-Za-z0-9_.-], up to 64)",
      "organizationSlug sent at login (Infisical API)", _matching(_SLUG)),
    A("auth", "`universal`", "use one of universal, kubernetes",
      "`universal` (the auth Secret) or `kubernetes` (a projected service-account token)", _choice(("universal", "kubernetes")),
      readme="`kubernetes`: log in with a projected service-account token instead"),
    A("auth-secret", "settings `auth_secret` (`universal-auth-credentials`)",
      "use the name of a Secret in the pod's namespace (lowercase DNS name)",
      "Secret with `clientId`, `clientSecret`, mounted read-only into the agent containers only; the path policies "
      "(`authSecrets`, `protected_auth_secrets`) decide which a pod may use", _matching(DNS_SUBDOMAIN),
      readme="Secret with `clientId`/`clientSecret`, mounted into the agents only"),
    A("identity-id", "", "use a machine identity id ([A-Za-z0-9_.:-], up to 128)",
      "machine identity for `auth: kubernetes` (required there)", _matching(_IDENTITY)),
    A("ca-secret", "settings `ca_bundle`", "use the name of a Secret in the pod's namespace (lowercase DNS name)",
      "Secret whose `ca_bundle.key` (`ca.crt`) the agents trust for an https host; a path policy must list it "
      "in `caSecrets`", _matching(DNS_SUBDOMAIN)),
    A("mode", "`sidecar`", f"use one of {', '.join(MODES)}",
      "`sidecar`: init container + refreshing sidecar; `init`: init container only (Jobs); `native`: one restartable "
      "init container with a startup probe", _choice(MODES),
      readme="`sidecar`, `init` (Jobs), `native` (restartable init container: app starts after secrets exist, Jobs complete)"),
    A("refresh-interval", "settings (`60s`)", "use a duration such as 30s, 5m, 1h or plain seconds, from 5s to 24h",
      "safety-net poll of the sidecar", _duration(MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS),
      readme="safety-net poll; change events make rotation near-instant"),
    A("init-timeout", "`120s`", "use a duration such as 30s, 2m or plain seconds, from 1s to 1h",
      "how long the first fetch may retry", _duration(1.0, 3600.0)),
    A("events", "`true`", 'use "true" or "false"', "subscribe to KMS change events (polling continues as a safety net)", _bool),
    A("expand-references", "`true`", 'use "true" or "false"', "expand `${OTHER}` references server-side (Infisical API)", _bool),
    A("allow-empty", "`false`", 'use "true" or "false"',
      "accept a folder that yields no secrets (otherwise init fails: a typo in path or env answers 200 with nothing)", _bool),
    A("mount-path", "settings `mount_path` (`/kms/secrets`)",
      "use an absolute directory such as /kms/secrets: segments of [A-Za-z0-9_.-], never . or .., "
      f"not / and not under {', '.join(FORBIDDEN_MOUNTS)}",
      "where the app containers see the files (read-only); not a path a selected container already mounts", _mount_path),
    A("containers", "all app containers and app init containers", "list container names separated by commas",
      "containers that get the mount", _names),
    A("format", "`files`", f"use one of {', '.join(FORMATS)}",
      "`files` (one per key), or one file: `dotenv` (`.env`), `json` (`secrets.json`), `yaml` (`secrets.yaml`)",
      _choice(FORMATS), readme="or one file: `dotenv` (`.env`), `json`, `yaml`"),
    A("template-FILE", "", f"a template is text without NUL, at most {MAX_TEMPLATE} characters",
      "template rendered to `<mount-path>/FILE`, `${KEY}` placeholders (an unknown key is an error); FILE is a plain "
      "file name; at most 32", _template,
      readme="`${KEY}` template rendered to `<mount-path>/FILE`; an unknown key is an error"),
    A("file-mode", "`0444`, or `0440` when the pod sets `fsGroup`",
      "use an octal mode with owner read and no execute bits, e.g. 0444, 0440, 0400", "mode of the written files", _file_mode),
    A("signal", "", f"use one of {', '.join(SIGNALS)}",
      "signal sent to the app process after a change (`HUP` and `hup` work too); not with `command`", _signal,
      readme="e.g. `SIGHUP` to the app after a change (`signal-process` names it)"),
    A("signal-process", "basename of the first selected app container's `command[0]`",
      "use a process name ([A-Za-z0-9_.+@:-], no slashes), e.g. nginx", "the process to signal", _matching(PROCESS)),
    A("command", "", "use a non-empty command line, e.g. /bin/reload --graceful",
      "command run by the agent after a change (split like a shell, never run by one); not with `signal`", _command,
      readme="a command the agent runs after a change instead"),
    A("agent-cpu", "settings (`10m`)", "use a CPU quantity such as 10m or 0.1",
      "the agents' CPU request (never above the settings' limit)", _quantity),
    A("agent-memory", "settings (`24Mi`)", "use a memory quantity such as 24Mi or 64Mi",
      "the agents' memory request (never above the settings' limit)", _quantity),
    A("agent-health-port", "settings (`8099`)", "use a port from 1024 to 65535",
      "the sidecar/native agent's /healthz /readyz /metrics port; not a port a container of the pod declares", _port),
    A("status", "", "set by the webhook only", "`injected` marks a mutated pod, which is never mutated again", _text),
)
del A

BY_NAME: dict[str, Annotation] = {a.name: a for a in TABLE if not a.family}
FAMILIES: dict[str, Annotation] = {a.family: a for a in TABLE if a.family}
KNOWN = tuple(BY_NAME)


@dataclass
class Given:
    """The pod's `kms.hanzo.ai/*` annotations, each parsed by its row; nothing resolved yet."""

    values: dict[str, Any]  # row name -> parsed value, for annotations that are set
    paths: dict[str, tuple[str, str]]  # subdir ("" = main) -> (annotation, normalised path)
    keys: dict[str, tuple[str, tuple[str, ...]]]  # subdir -> (annotation, key names)
    templates: dict[str, str]  # file -> template
    unknown: list[str]  # annotation keys no row knows
    raw: dict[str, str]  # row name -> the value as written (for messages)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.values


_FAMILY_NAME_RULES = {
    "path-": "the name after path- must be a folder name ([A-Za-z0-9_.-], starting and ending alphanumeric)",
    "keys-": "the name after keys- must be the NAME of a kms.hanzo.ai/path-NAME ([A-Za-z0-9_.-], starting and ending alphanumeric)",
    "template-": "the file name after template- must be a plain file name ([A-Za-z0-9_.-], starting and ending alphanumeric) "
                 "inside the mount path",
}


def read(annotations: dict) -> Given:
    """Parse every `kms.hanzo.ai/*` annotation with its row, in the pod's order. Raises AnnotationError."""
    given = Given({}, {}, {}, {}, [], {})
    for key, value in annotations.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        if not isinstance(value, str):
            raise AnnotationError(key, value, "annotation values are strings")
        if name.lower() in IMAGE_OVERRIDES:
            raise AnnotationError(key, value, "the agent image is set by the cluster operator in the webhook settings; "
                                  "pods cannot override it", 403)
        row = BY_NAME.get(name)
        family = "" if row is not None or name == "path" else next((f for f in FAMILIES if name.startswith(f)), "")
        if family:
            row = FAMILIES[family]
            member = name[len(family):]
            if not NAME.match(member) or member.startswith(".."):
                raise AnnotationError(key, None, _FAMILY_NAME_RULES[family])
        elif row is None:
            given.unknown.append(key)
            continue
        if family != "template-" and (len(value) > MAX_VALUE or "\x00" in value):
            raise AnnotationError(key, value, f"values are at most {MAX_VALUE} characters and never contain NUL")
        parsed = row.parse(key, value, row.accepted)
        if family == "template-":
            given.templates[member] = parsed
        elif family == "path-" or name == "path":
            given.paths["" if name == "path" else member] = (key, parsed)
        elif family == "keys-" or name == "keys":
            given.keys["" if name == "keys" else member] = (key, parsed)
        else:
            given.values[name] = parsed
            given.raw[name] = value
    return given
