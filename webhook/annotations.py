"""`kms.hanzo.ai/*` pod annotations -> AgentConfig + webhook-only options. Pure: no I/O.

Annotations are untrusted input. Every refusal is an AnnotationError whose message names the
annotation, shows the value (escaped and truncated, never huge) and says what is accepted.
Unknown `kms.hanzo.ai/*` annotations are not errors, only warnings, so a newer manifest still
deploys on an older webhook; image overrides are refused, because the agent image is chosen by
the cluster operator alone.
"""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlsplit
from dataclasses import dataclass, field

from injector.config import (
    APIS,
    FORMATS,
    MAX_REFRESH_SECONDS,
    MIN_REFRESH_SECONDS,
    SIGNALS,
    AgentConfig,
    ConfigError,
    Source,
    _check_host,
    normalize_path,
    parse_duration,
    parse_file_mode,
)

from .settings import Settings, parse_quantity

PREFIX = "kms.hanzo.ai/"
STATUS = PREFIX + "status"
INJECTED = "injected"
MODES = ("sidecar", "init", "native")

MAX_VALUE = 1024  # any annotation value except templates
MAX_TEMPLATE = 32 * 1024
MAX_SOURCES = 32
MAX_TEMPLATES = 32
MAX_WARNINGS = 10

# Simple annotations (the part after the prefix). `path-NAME` and `template-FILE` are families.
KNOWN = (
    "inject", "status", "path", "project", "env", "host", "api", "auth", "auth-secret", "identity-id",
    "mode", "refresh-interval", "init-timeout", "mount-path", "containers", "format", "file-mode",
    "signal", "signal-process", "command", "events", "agent-cpu", "agent-memory", "agent-health-port",
)
_KNOWN = frozenset(KNOWN)
# Paths the secrets volume may not cover: they would hide system files or our own credentials.
FORBIDDEN_MOUNTS = ("/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/usr", "/var/run/secrets", "/kms/auth", "/kms/sa")

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_PROCESS = re.compile(r"^[A-Za-z0-9_.+@:-]{1,255}$")
_MOUNT = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class AnnotationError(ValueError):
    """A refused annotation. `code` is the HTTP-like status for the admission answer:
    400 for a malformed value, 403 for a value the cluster policy forbids."""

    def __init__(self, annotation: str, value: object, accepted: str, code: int = 400, message: str = "") -> None:
        self.annotation = annotation
        self.value = value
        self.accepted = accepted
        self.code = code
        shown = "" if value is None else show(value) + " "
        super().__init__(message or f"{show_key(annotation)}: {shown}is not accepted; {accepted}")


def show(value: object, limit: int = 64) -> str:
    """A value for a message: JSON-escaped (NUL, newlines visible), truncated with its length."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if "://" in value:  # any annotation may be handed a URL with a password or token in it
        value = _redact_url(value)
    if len(value) <= limit:
        return json.dumps(value)
    return json.dumps(value[:limit])[:-1] + f'..." ({len(value)} characters)'


_URL_USERINFO = re.compile(r"://\S*@")
_URL_QUERY = re.compile(r"([?#])\S*")


def _redact_url(value: str) -> str:
    """`x https://u:pw@h/p?t=1` -> `x https://***@h/p?***`: user info up to the last @ of the word
    (a careless password may hold a /), then query and fragment."""
    return _URL_QUERY.sub(r"\1***", _URL_USERINFO.sub("://***@", value))


def show_key(key: str) -> str:
    return key if len(key) <= 100 and key.isprintable() else show(key, 80)


@dataclass(frozen=True)
class ContainerFacts:
    name: str
    command0: str = ""  # basename of command[0], "" when the image's entrypoint is used
    image: str = ""
    run_as_user: int | None = None  # container's own, else the pod's, else None (image decides)
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class PodFacts:
    """What the parser needs to know about the pod (extracted by mutate from the pod object)."""

    namespace: str = "default"
    service_account: str = "default"
    containers: tuple[ContainerFacts, ...] = ()
    init_containers: tuple[ContainerFacts, ...] = ()
    fs_group: bool = False


@dataclass(frozen=True)
class Options:
    """Webhook-only choices that do not belong in the agent's config."""

    mode: str = "sidecar"  # sidecar | init | native
    containers: tuple[str, ...] = ()  # selected app containers (get the read-only mount)
    init_containers: tuple[str, ...] = ()  # selected app init containers
    auth_secret: str = ""  # "" with kubernetes auth
    cpu_request: str = ""
    memory_request: str = ""
    health_port: int = 0


@dataclass
class Parsed:
    config: AgentConfig
    options: Options
    warnings: list[str] = field(default_factory=list)


def kms_keys(annotations: dict) -> list[str]:
    return [k for k in annotations if isinstance(k, str) and k.startswith(PREFIX)]


def injection_requested(annotations: dict) -> bool:
    """`inject: "true"`, or `path` present and `inject` not "false"."""
    raw = annotations.get(PREFIX + "inject")
    if raw is not None:
        flag = _bool(PREFIX + "inject", raw)
        if not flag:
            return False
        return True
    return PREFIX + "path" in annotations


def parse(annotations: dict, settings: Settings, pod: PodFacts) -> Parsed:
    """Validate every `kms.hanzo.ai/*` annotation and build the AgentConfig. Raises AnnotationError."""
    warnings: list[str] = []
    simple: dict[str, str] = {}
    sources: dict[str, tuple[str, str]] = {}  # subdir -> (annotation, value)
    templates: dict[str, str] = {}
    for key in kms_keys(annotations):
        value = annotations[key]
        name = key[len(PREFIX):]
        if not isinstance(value, str):
            raise AnnotationError(key, value, "annotation values are strings")
        if "image" in name.lower():
            raise AnnotationError(key, value, "the agent image is set by the cluster operator in the webhook settings; pods cannot override it", 403)
        if name.startswith("template-"):
            fname = name[len("template-"):]
            if not _NAME.match(fname) or fname.startswith(".."):
                raise AnnotationError(key, None, "the file name after template- must be a plain file name "
                                      "([A-Za-z0-9_.-], starting and ending alphanumeric) inside the mount path")
            if len(value) > MAX_TEMPLATE or "\x00" in value:
                raise AnnotationError(key, value, f"a template is text without NUL, at most {MAX_TEMPLATE} characters")
            templates[fname] = value
            continue
        if len(value) > MAX_VALUE or "\x00" in value:
            raise AnnotationError(key, value, f"values are at most {MAX_VALUE} characters and never contain NUL")
        if name == "path" or name.startswith("path-"):
            subdir = name[len("path-"):] if name != "path" else ""
            if name != "path" and (not _NAME.match(subdir) or subdir.startswith("..")):
                raise AnnotationError(key, None, "the name after path- must be a folder name ([A-Za-z0-9_.-], starting and ending alphanumeric)")
            sources[subdir] = (key, value)
        elif name in _KNOWN:
            simple[name] = value
        elif len(warnings) < MAX_WARNINGS:
            warnings.append(f"{show_key(key)}: unknown annotation, ignored (see docs/annotations.md)")

    if "" not in sources:
        raise AnnotationError(PREFIX + "path", None, "it is required: the KMS folder to sync, e.g. /chat")
    if len(sources) > MAX_SOURCES:
        raise AnnotationError(PREFIX + "path-NAME", None, f"at most {MAX_SOURCES} paths per pod")
    if len(templates) > MAX_TEMPLATES:
        raise AnnotationError(PREFIX + "template-FILE", None, f"at most {MAX_TEMPLATES} templates per pod")
    clash = sorted(set(templates) & set(sources)) if templates else []
    if clash:
        raise AnnotationError(PREFIX + "template-" + clash[0], None, f"{clash[0]!r} is already the folder of {PREFIX}path-{clash[0]}; use another file name")

    get = simple.get

    if get("inject") is not None:
        _bool(PREFIX + "inject", get("inject"))

    # -- where to read -------------------------------------------------------------------------
    project = _or(get("project"), settings.project)
    if get("project") is not None and not _SLUG.match(project):
        raise AnnotationError(PREFIX + "project", project, "use a project slug ([A-Za-z0-9_.-], up to 64), e.g. secrets-639-c")
    env = _or(get("env"), settings.env)
    if get("env") is not None and not _SLUG.match(env):
        raise AnnotationError(PREFIX + "env", env, "use an environment slug such as prod, staging, dev")
    host = settings.host
    if get("host") is not None:
        host = get("host")  # type: ignore[assignment]
        try:
            _check_host(host)
        except ConfigError:
            raise AnnotationError(PREFIX + "host", _redact_userinfo(host), f"{_host_problem(host)}; use an http(s)://HOST[:PORT]/PATH "
                                  "URL from the allowed hosts list") from None
        if not settings.host_allowed(host):
            allowed = ", ".join([settings.host, *settings.allowed_hosts])
            raise AnnotationError(PREFIX + "host", host, f"the host must be on the webhook's allowed hosts list: {allowed}", 403)
    api = _choice("api", get("api"), APIS, settings.api)

    srcs: list[Source] = []
    for subdir in sorted(sources):
        key, value = sources[subdir]
        try:
            path = normalize_path(value.strip(), key)
        except ConfigError:
            raise AnnotationError(key, value, "use an absolute KMS folder path such as /chat: segments of [A-Za-z0-9_.-], never . or ..") from None
        reason = settings.check_path(pod.namespace, pod.service_account, project, path)
        if reason:
            raise AnnotationError(key, value, reason, 403)
        srcs.append(Source(path=path, subdir=subdir))

    # -- how to authenticate -------------------------------------------------------------------
    auth = _choice("auth", get("auth"), ("universal", "kubernetes"), "universal")
    identity_id = ""
    auth_secret = ""
    if auth == "kubernetes":
        identity_id = _or(get("identity-id"), "")
        if not identity_id:
            raise AnnotationError(PREFIX + "identity-id", None, f"it is required with {PREFIX}auth: kubernetes (the KMS machine identity id)")
        if get("auth-secret") is not None:
            warnings.append(f"{PREFIX}auth-secret: ignored with {PREFIX}auth: kubernetes")
    else:
        auth_secret = _or(get("auth-secret"), settings.auth_secret)
        if not _DNS_SUBDOMAIN.match(auth_secret):
            raise AnnotationError(PREFIX + "auth-secret", auth_secret, "use the name of a Secret in the pod's namespace (lowercase DNS name)")
        # The Secret is a machine identity: policies decide which pods may mount which one (IAM's).
        reason = settings.check_auth_secret(pod.namespace, pod.service_account, auth_secret)
        if reason:
            raise AnnotationError(PREFIX + "auth-secret", auth_secret, reason, 403)
        if get("identity-id") is not None:
            warnings.append(f"{PREFIX}identity-id: ignored with {PREFIX}auth: universal")
    if identity_id and not _IDENTITY.match(identity_id):
        raise AnnotationError(PREFIX + "identity-id", identity_id, "use a machine identity id ([A-Za-z0-9_.:-], up to 128)")

    # -- how to run ----------------------------------------------------------------------------
    mode = _choice("mode", get("mode"), MODES, "sidecar")
    refresh = settings.refresh_interval
    if get("refresh-interval") is not None:
        refresh = _duration("refresh-interval", get("refresh-interval"), MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS,
                            "a duration such as 30s, 5m, 1h or plain seconds, from 5s to 24h")
    init_timeout = 120.0
    if get("init-timeout") is not None:
        init_timeout = _duration("init-timeout", get("init-timeout"), 1.0, 3600.0, "a duration such as 30s, 2m or plain seconds, from 1s to 1h")
    events = _bool(PREFIX + "events", get("events")) if get("events") is not None else True

    mount_path = settings.mount_path
    if get("mount-path") is not None:
        mount_path = _mount_path(get("mount-path"))  # type: ignore[arg-type]

    app_names = [c.name for c in pod.containers]
    init_names = [c.name for c in pod.init_containers]
    selected, selected_init = tuple(app_names), tuple(init_names)
    if get("containers") is not None:
        wanted = [n.strip() for n in get("containers").split(",") if n.strip()]  # type: ignore[union-attr]
        if not wanted:
            raise AnnotationError(PREFIX + "containers", get("containers"), "list container names separated by commas")
        for n in wanted:
            if n not in app_names and n not in init_names:
                known = ", ".join(app_names + init_names) or "(none)"
                raise AnnotationError(PREFIX + "containers", get("containers"), f"{show(n)} is not a container of this pod; its containers are {known}")
        selected = tuple(n for n in app_names if n in wanted)
        selected_init = tuple(n for n in init_names if n in wanted)

    fmt = _choice("format", get("format"), FORMATS, "files")
    file_mode = 0o440 if pod.fs_group else 0o444
    if get("file-mode") is not None:
        try:
            file_mode = parse_file_mode(get("file-mode"), "file-mode")  # type: ignore[arg-type]
        except ConfigError:
            raise AnnotationError(PREFIX + "file-mode", get("file-mode"), "use an octal mode with owner read and no execute bits, e.g. 0444, 0440, 0400") from None

    signal = ""
    if get("signal") is not None:
        raw = get("signal").strip().upper()  # type: ignore[union-attr]
        signal = raw if raw.startswith("SIG") else "SIG" + raw
        if signal not in SIGNALS:
            raise AnnotationError(PREFIX + "signal", get("signal"), f"use one of {', '.join(SIGNALS)}")
    command: list[str] = []
    if get("command") is not None:
        try:
            command = shlex.split(get("command"))  # type: ignore[arg-type]
        except ValueError:
            raise AnnotationError(PREFIX + "command", get("command"), "use a command line with balanced quotes, e.g. /bin/reload --graceful") from None
        if not command:
            raise AnnotationError(PREFIX + "command", get("command"), "use a non-empty command line, e.g. /bin/reload --graceful")
    if signal and command:
        raise AnnotationError(PREFIX + "command", get("command"), f"set either {PREFIX}signal or {PREFIX}command, not both")
    if mode == "init" and (signal or command):
        warnings.append(f"{PREFIX}{'signal' if signal else 'command'}: ignored in init mode (nothing refreshes after start)")
        signal, command = "", []

    signal_process = ""
    if signal:
        if get("signal-process") is not None:
            signal_process = get("signal-process").strip()  # type: ignore[union-attr]
            if not _PROCESS.match(signal_process):
                raise AnnotationError(PREFIX + "signal-process", get("signal-process"), "use a process name ([A-Za-z0-9_.+@:-], no slashes), e.g. nginx")
        else:
            signal_process = _default_process(pod, selected, warnings)
    elif get("signal-process") is not None:
        warnings.append(f"{PREFIX}signal-process: ignored without {PREFIX}signal")

    # -- agent resources and health ------------------------------------------------------------
    res = settings.agent.resources
    cpu = _request("agent-cpu", get("agent-cpu"), res.cpu_limit, "a CPU quantity such as 10m or 0.1")
    memory = _request("agent-memory", get("agent-memory"), res.memory_limit, "a memory quantity such as 24Mi or 64Mi")
    health_port = 0
    if mode != "init":
        health_port = settings.agent.health_port
        if get("agent-health-port") is not None:
            text = get("agent-health-port").strip()  # type: ignore[union-attr]
            if not text.isdigit() or not 1024 <= int(text) <= 65535:
                raise AnnotationError(PREFIX + "agent-health-port", get("agent-health-port"), "use a port from 1024 to 65535")
            health_port = int(text)
        for c in (*pod.containers, *pod.init_containers):
            if health_port in c.ports:
                raise AnnotationError(PREFIX + "agent-health-port", str(health_port),
                                      f"container {c.name!r} already uses port {health_port}; choose another with {PREFIX}agent-health-port", 400)

    try:
        config = AgentConfig(
            host=host, project=project, env=env, sources=srcs, mode="init" if mode == "init" else "sidecar",
            api=api, auth=auth, identity_id=identity_id, mount_path=mount_path, format=fmt, templates=templates,
            file_mode=file_mode, refresh_interval=refresh, init_timeout=init_timeout, events=events,
            signal=signal, signal_process=signal_process, command=command, health_port=health_port,
        )
    except ConfigError as exc:  # a check above should have caught it; still answer cleanly
        annotation = PREFIX + _FIELD_TO_ANNOTATION.get(exc.field.split("[")[0], exc.field.replace("_", "-"))
        raise AnnotationError(annotation, None, exc.detail) from None
    options = Options(mode=mode, containers=selected, init_containers=selected_init, auth_secret=auth_secret,
                      cpu_request=cpu, memory_request=memory, health_port=health_port)
    return Parsed(config, options, warnings)


_FIELD_TO_ANNOTATION = {
    "sources": "path", "identity_id": "identity-id", "mount_path": "mount-path", "templates": "template-FILE",
    "file_mode": "file-mode", "refresh_interval": "refresh-interval", "init_timeout": "init-timeout",
    "signal_process": "signal-process", "health_port": "agent-health-port",
}


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


def _redact_userinfo(host: str) -> str:
    """Never echo a password or token put in a URL: `https://user:pw@h/?t=x` -> `https://***@h/?***`."""
    host = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", host)
    return re.sub(r"([?#]).*$", r"\1***", host)  # a query may carry a token too


def _or(value: str | None, default: str) -> str:
    # An annotation set to "" is a value (and refused by its check), not "use the default".
    return default if value is None else value.strip()


def _choice(name: str, value: str | None, accepted: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    v = value.strip().lower()
    if v not in accepted:
        raise AnnotationError(PREFIX + name, value, f"use one of {', '.join(accepted)}")
    return v


def _bool(key: str, value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise AnnotationError(key, value, 'use "true" or "false"')


def _duration(name: str, value: str | None, low: float, high: float, accepted: str) -> float:
    try:
        seconds = parse_duration(value or "", name)
    except ConfigError:
        raise AnnotationError(PREFIX + name, value, f"use {accepted}") from None
    if not low <= seconds <= high:
        raise AnnotationError(PREFIX + name, value, f"use {accepted}")
    return seconds


def _mount_path(value: str) -> str:
    accepted = ("use an absolute directory such as /kms/secrets: segments of [A-Za-z0-9_.-], never . or .., "
                f"not / and not under {', '.join(FORBIDDEN_MOUNTS)}")
    path = value.strip().rstrip("/")
    if not _MOUNT.match(path) or len(path) > 256:
        raise AnnotationError(PREFIX + "mount-path", value, accepted)
    parts = path.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise AnnotationError(PREFIX + "mount-path", value, accepted)
    for bad in FORBIDDEN_MOUNTS:
        # Covering or sitting inside a forbidden directory are both refused.
        if path == bad or path.startswith(bad + "/") or bad.startswith(path + "/"):
            raise AnnotationError(PREFIX + "mount-path", value, accepted)
    return path


def _request(name: str, value: str | None, limit: str, accepted: str) -> str:
    if value is None:
        return ""
    q = parse_quantity(value.strip())
    if q is None or q <= 0:
        raise AnnotationError(PREFIX + name, value, f"use {accepted}")
    if limit and q > (parse_quantity(limit) or 0):
        raise AnnotationError(PREFIX + name, value, f"the request cannot exceed the limit {limit} set in the webhook settings")
    return value.strip()


def _default_process(pod: PodFacts, selected: tuple[str, ...], warnings: list[str]) -> str:
    """Basename of the first selected app container's command[0]; else the image's name (warned)."""
    target = next((c for c in pod.containers if c.name in selected), pod.containers[0] if pod.containers else None)
    if target is None:
        raise AnnotationError(PREFIX + "signal-process", None, "set it: the pod has no app container to take a process name from")
    if target.command0:
        name = target.command0
    else:
        image = target.image.split("@")[0]
        last = image.rsplit("/", 1)[-1]
        name = last.split(":")[0] if last else ""
        warnings.append(f"{PREFIX}signal-process: container {target.name!r} has no command; "
                        f"guessing the process name {name!r} from its image, set {PREFIX}signal-process to be sure")
    if not _PROCESS.match(name):
        raise AnnotationError(PREFIX + "signal-process", None,
                              f"set it: no usable process name could be derived from container {target.name!r}")
    return name
