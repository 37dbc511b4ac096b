"""AgentConfig: the contract between the webhook (which writes it) and the agent (which reads it).

The webhook serialises an AgentConfig to JSON into the agent containers' env `KMS_AGENT_CONFIG`;
the agent also builds one from a YAML file or from flags. It never holds a secret value: only
where to read (host, project, env, paths), how to authenticate (files, not credentials) and how to
write and notify. Everything here is pure and importable without third-party packages, because it
sits on the agent's start-up path.
The JSON encoding (the webhook's side) is config_json.py.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any

CONFIG_VERSION = 1

MODES = ("init", "sidecar")
FORMATS = ("files", "dotenv", "json", "yaml")
AUTH_METHODS = ("universal", "kubernetes")
APIS = ("auto", "infisical", "canonical")

# Aggregate formats write one file with this name instead of one file per key.
FORMAT_FILES = {"dotenv": ".env", "json": "secrets.json", "yaml": "secrets.yaml"}

MIN_REFRESH_SECONDS = 5.0
MAX_REFRESH_SECONDS = 24 * 3600.0

DEFAULT_MOUNT_PATH = "/kms/secrets"
DEFAULT_CREDENTIALS_DIR = "/kms/auth"
DEFAULT_TOKEN_PATH = "/kms/sa/token"
DEFAULT_HEALTH_PORT = 8099

# Allowed signal names: the ones an app could sensibly reload on. SIGKILL/SIGSTOP make no sense.
SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGQUIT", "SIGWINCH")

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """A config value is wrong. `field` names it; the message says what is accepted."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.detail = message


def parse_duration(value: str | int | float, field_name: str = "duration") -> float:
    """'30s', '5m', '1h', '250ms' or plain seconds -> seconds as float."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"{value!r} is not a duration; use e.g. 30s, 5m, 1h or seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(field_name, f"{value!r} is negative; use e.g. 30s, 5m, 1h or seconds")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(field_name, f"{_short(value)!r} is not a duration; use e.g. 30s, 5m, 1h or plain seconds")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_file_mode(value: str | int, field_name: str = "file_mode") -> int:
    """'0444', '0o440', '440' (octal) or an int -> mode bits; only read/write bits are accepted."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"{value!r} is not an octal mode such as 0444 or 0440")
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{3,4}", text):
            raise ConfigError(field_name, f"{_short(value)!r} is not an octal mode such as 0444 or 0440")
        mode = int(text, 8)
    if mode & ~0o666 or not mode & 0o400:
        raise ConfigError(field_name, f"{oct(mode)} is not accepted; use read/write bits only (e.g. 0444, 0440, 0400, 0640) with owner read")
    return mode


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalize_path(value: str, field_name: str = "path") -> str:
    """A KMS folder path: absolute, no '..', no empty or odd segments; trailing slash dropped."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(field_name, f"{_short(value)!r} is not a KMS folder path; use an absolute path such as /chat")
    if len(value) > 512 or "\x00" in value or "\\" in value:
        raise ConfigError(field_name, f"{_short(value)!r} is not accepted; paths are at most 512 characters of [A-Za-z0-9_.-/]")
    parts = [p for p in value.split("/") if p]
    for part in parts:
        if part in (".", "..") or not _SEGMENT.fullmatch(part):
            raise ConfigError(field_name, f"{_short(value)!r} has segment {_short(part)!r}; segments are [A-Za-z0-9_.-] and never . or ..")
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Source:
    """One KMS folder and the sub-folder of the mount path it lands in ('' = the mount path)."""

    path: str
    subdir: str = ""
    # Key names to read one by one, for a canonical server with no list route (annotation
    # kms.hanzo.ai/keys[-NAME]); empty = list the folder.
    keys: tuple[str, ...] = ()


@dataclass
class AgentConfig:
    host: str
    project: str
    env: str
    sources: list[Source]
    mode: str = "sidecar"
    api: str = "auto"
    auth: str = "universal"
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR
    identity_id: str = ""
    token_path: str = DEFAULT_TOKEN_PATH
    mount_path: str = DEFAULT_MOUNT_PATH
    format: str = "files"
    templates: dict[str, str] = field(default_factory=dict)
    file_mode: int = 0o444
    refresh_interval: float = 60.0
    init_timeout: float = 120.0
    request_timeout: float = 10.0
    include_imports: bool = True
    events: bool = True
    signal: str = ""
    signal_process: str = ""
    command: list[str] = field(default_factory=list)
    command_timeout: float = 30.0
    health_port: int = 0  # 0 = no health server
    # Infisical API: expand ${KEY} references server-side (the operator always asked for it).
    expand_references: bool = True
    # A folder that yields no secrets fails init (a typo in path/env answers 200 with nothing).
    allow_empty: bool = False
    organization_slug: str = ""  # optional organizationSlug sent at login (Infisical API)
    ca_file: str = ""  # PEM bundle trusted for https hosts, as mounted in the agent containers
    # The change relay (kms-injector relay): where to subscribe, the CA its certificate chains to
    # (PEM text: not a secret) and the projected token (audience: the relay) proving the pod.
    relay_url: str = ""
    relay_ca: str = ""
    relay_token_path: str = ""
    relay_poll_factor: float = 10.0  # the safety-net poll is stretched this much while the relay is up
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # -- validation: every refusal names the field and says what is accepted -----------------
    def validate(self) -> None:
        _check_host(self.host)
        if not _SLUG.match(self.project or ""):
            raise ConfigError("project", f"{_short(self.project)!r} is not a project slug ([A-Za-z0-9_.-], up to 64)")
        if not _SLUG.match(self.env or ""):
            raise ConfigError("env", f"{_short(self.env)!r} is not an environment slug such as prod, staging, dev")
        if not self.sources:
            raise ConfigError("sources", "at least one KMS path is required (e.g. /chat)")
        seen: set[str] = set()
        for i, src in enumerate(self.sources):
            normalize_path(src.path, f"sources[{i}].path")
            if src.subdir and not _NAME.match(src.subdir):
                raise ConfigError(f"sources[{i}].subdir", f"{_short(src.subdir)!r} is not a folder name ([A-Za-z0-9_.-], starts and ends alphanumeric, up to 63)")
            if src.subdir in seen:
                raise ConfigError(f"sources[{i}].subdir", f"{src.subdir or '(main)'!r} is used twice")
            seen.add(src.subdir)
        _choice("mode", self.mode, MODES)
        _choice("api", self.api, APIS)
        _choice("auth", self.auth, AUTH_METHODS)
        _choice("format", self.format, FORMATS)
        if self.auth == "kubernetes" and not self.identity_id:
            raise ConfigError("identity_id", "is required when auth is kubernetes")
        for name, value in (("credentials_dir", self.credentials_dir), ("token_path", self.token_path), ("mount_path", self.mount_path)):
            if not isinstance(value, str) or not value or "\x00" in value:
                raise ConfigError(name, f"{_short(value)!r} is not a file system path")
        for fname in self.templates:
            if not _NAME.match(fname) or fname.startswith(".."):
                raise ConfigError("templates", f"file name {_short(fname)!r} is not accepted; use a plain file name ([A-Za-z0-9_.-])")
            if not isinstance(self.templates[fname], str):
                raise ConfigError(f"templates.{fname}", "must be a string")
        if isinstance(self.file_mode, str):
            self.file_mode = parse_file_mode(self.file_mode)
        parse_file_mode(self.file_mode)
        for name in ("refresh_interval", "init_timeout", "request_timeout", "command_timeout"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = parse_duration(value, name)
                setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, f"{_short(value)!r} must be a positive duration")
        if not MIN_REFRESH_SECONDS <= self.refresh_interval <= MAX_REFRESH_SECONDS:
            raise ConfigError("refresh_interval", f"{self.refresh_interval:g}s is out of range; use 5s to 24h")
        if self.signal and self.signal not in SIGNALS:
            raise ConfigError("signal", f"{_short(self.signal)!r} is not accepted; use one of {', '.join(SIGNALS)}")
        if self.signal and self.command:
            raise ConfigError("command", "set either signal or command, not both")
        if not isinstance(self.command, list) or not all(isinstance(a, str) for a in self.command):
            raise ConfigError("command", "must be a list of strings (argv)")
        if isinstance(self.health_port, bool) or not isinstance(self.health_port, int) or not 0 <= self.health_port <= 65535:
            raise ConfigError("health_port", f"{_short(self.health_port)!r} is not a port (0 disables)")
        for name in ("organization_slug", "ca_file", "relay_url", "relay_ca", "relay_token_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\x00" in value:
                raise ConfigError(name, f"{_short(value)!r} must be a string")
        if self.organization_slug and not _SLUG.match(self.organization_slug):
            raise ConfigError("organization_slug", f"{_short(self.organization_slug)!r} is not an organization slug ([A-Za-z0-9_.-], up to 64)")
        if self.relay_url:
            _check_relay_url(self.relay_url)
            if not self.relay_token_path:
                raise ConfigError("relay_token_path", "is required when relay_url is set")
        if isinstance(self.relay_poll_factor, bool) or not isinstance(self.relay_poll_factor, (int, float)) or not 1 <= self.relay_poll_factor <= 100:
            raise ConfigError("relay_poll_factor", f"{_short(self.relay_poll_factor)!r} is out of range; use 1 to 100")
        for i, src in enumerate(self.sources):
            for key in src.keys:
                if not isinstance(key, str) or not key or "\x00" in key or "," in key:
                    raise ConfigError(f"sources[{i}].keys", f"{_short(key)!r} is not a key name")
        if self.version != CONFIG_VERSION:
            raise ConfigError("version", f"{self.version!r} is not supported; this agent reads version {CONFIG_VERSION}")

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gave, built directly: asdict's recursive deep copy was most of
        # the webhook's per-pod cost. Containers are copied, so the dict never aliases self.
        data = dict(self.__dict__)  # the fields, unless someone hung other attributes on self
        if data.keys() != _FIELD_SET:
            data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["sources"] = [{"path": s.path, "subdir": s.subdir, **({"keys": list(s.keys)} if s.keys else {})}
                           for s in self.sources]
        data["templates"] = dict(self.templates)
        data["command"] = list(self.command)
        data["file_mode"] = f"{self.file_mode:04o}"
        return data

    def to_json(self) -> str:
        from injector.config_json import config_to_json  # lazily: the agent never encodes a config

        return config_to_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> "AgentConfig":
        if not isinstance(data, dict):
            raise ConfigError("config", "must be a JSON/YAML object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown field; accepted fields are {', '.join(sorted(known))}")
        kwargs = dict(data)
        for required in ("host", "project", "env", "sources"):
            if required not in kwargs:
                raise ConfigError(required, "is required")
        kwargs["sources"] = _sources(kwargs["sources"])
        if "templates" in kwargs and not isinstance(kwargs["templates"], dict):
            raise ConfigError("templates", "must be a mapping of file name to template")
        if "command" in kwargs and isinstance(kwargs["command"], str):
            import shlex

            kwargs["command"] = shlex.split(kwargs["command"])
        if "file_mode" in kwargs:
            kwargs["file_mode"] = parse_file_mode(kwargs["file_mode"])
        for name in ("include_imports", "events", "expand_references", "allow_empty"):
            if name in kwargs and not isinstance(kwargs[name], bool):
                raise ConfigError(name, f"{_short(kwargs[name])!r} must be true or false")
        for name in ("project", "env", "host", "mode", "api", "auth", "format", "signal", "signal_process", "identity_id"):
            if name in kwargs and not isinstance(kwargs[name], str):
                raise ConfigError(name, f"{_short(kwargs[name])!r} must be a string")
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a wrong type that slipped past the checks above
            raise ConfigError("config", str(exc)) from None

    @classmethod
    def from_json(cls, text: str) -> "AgentConfig":
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError("KMS_AGENT_CONFIG", f"is not valid JSON ({exc.msg} at position {exc.pos})") from None
        return cls.from_dict(data)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(AgentConfig))
_FIELD_SET = frozenset(_FIELD_NAMES)


def _sources(value: Any) -> list[Source]:
    if isinstance(value, str):
        return [Source(path=value)]
    if not isinstance(value, list):
        raise ConfigError("sources", "must be a list of {path, subdir}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(Source(path=item))
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("subdir", ""), str):
            extra = set(item) - {"path", "subdir", "keys"}
            if extra:
                raise ConfigError(f"sources[{i}]", f"unknown field {sorted(extra)[0]!r}; accepted: path, subdir, keys")
            keys = item.get("keys", ())
            if isinstance(keys, str):
                keys = [k.strip() for k in keys.split(",") if k.strip()]
            if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
                raise ConfigError(f"sources[{i}].keys", "must be a list of key names")
            out.append(Source(path=item["path"], subdir=item.get("subdir", ""), keys=tuple(keys)))
        else:
            raise ConfigError(f"sources[{i}]", "must be {path: /folder, subdir: NAME, keys: [NAME, ...]}")
    return out


def _check_relay_url(url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        raise ConfigError("relay_url", f"{_short(url)!r} is not a URL; use https://HOST[:PORT]") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ConfigError("relay_url", f"{_short(url)!r} is not accepted; use https://HOST[:PORT] (the relay is always TLS)")


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(name, f"{_short(value)!r} is not accepted; use one of {', '.join(accepted)}")


def _check_host(host: Any) -> None:
    if not isinstance(host, str) or not host:
        raise ConfigError("host", "is required, e.g. http://kms.hanzo.svc.cluster.local/api")
    _check_host_str(host)


@functools.lru_cache(maxsize=64)
def _check_host_str(host: str) -> None:
    # Cached: the webhook checks the same few hosts for every pod. Only accepted hosts are
    # remembered (a raised ConfigError is not cached), so the cache holds no junk for long.
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(host)
        port = parts.port
    except ValueError:
        raise ConfigError("host", f"{_short(host)!r} is not a URL; use http(s)://HOST[:PORT]/api") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("host", f"{_short(host)!r} is not accepted; use an http:// or https:// URL such as http://kms.hanzo.svc.cluster.local/api")
    if parts.username or parts.password:
        raise ConfigError("host", "credentials in the URL are not accepted; credentials come from files")
    if parts.query or parts.fragment:
        raise ConfigError("host", f"{_short(host)!r} has a query or fragment; use http(s)://HOST[:PORT]/api")
    if port == 0:
        raise ConfigError("host", f"{_short(host)!r} has port 0")


def __getattr__(name: str) -> Any:
    # The encoder moved to config_json.py (off the agent's start-up path); old imports keep working.
    if name in ("dict_to_json", "config_to_json", "dict_to_json_stdlib"):
        from injector import config_json

        return getattr(config_json, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
