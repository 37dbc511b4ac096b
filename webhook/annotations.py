"""`kms.hanzo.ai/*` pod annotations -> AgentConfig + webhook-only options. Pure: no I/O.

Two steps: every annotation is parsed by its row of the contract (webhook/annotation_table.py),
then `resolve` runs once over the parsed values with the settings and the pod: defaults, the
cluster policy (allowed hosts, path and Secret policies, request limits) and the checks that
span annotations. Annotations are untrusted input: every refusal is an AnnotationError naming
the annotation, the value (escaped, cut) and what is accepted. Unknown annotations only warn, so
a newer manifest still deploys on an older webhook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

from injector.config import AgentConfig, ConfigError, Source

from .annotation_error import PREFIX, AnnotationError, show, show_key
from .annotation_table import KNOWN, MODES, PROCESS, Given, read
from .settings import Settings, parse_quantity

__all__ = ["PREFIX", "STATUS", "INJECTED", "MODES", "KNOWN", "AnnotationError", "ContainerFacts", "PodFacts",
           "Options", "Parsed", "parse", "injection_requested", "kms_keys", "show", "show_key", "AGENT_MOUNT_PATH",
           "AGENT_CA_DIR", "CA_FILE_NAME"]

STATUS = PREFIX + "status"
INJECTED = "injected"
MAX_SOURCES = 32
MAX_TEMPLATES = 32
MAX_WARNINGS = 10
# Where the agent containers mount the secrets volume, whatever the app's mount-path: a directory
# no agent image uses (`mount-path: /opt` would hide the agent's own /opt/venv).
AGENT_MOUNT_PATH = "/kms-agent/secrets"
AGENT_CA_DIR = "/kms-agent/ca"
CA_FILE_NAME = "ca.crt"


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
class CAVolume:
    """Where the agents' CA bundle comes from: a ConfigMap or a Secret of the pod's namespace."""

    kind: str  # "configMap" | "secret"
    name: str
    key: str


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
    app_mount_path: str = "/kms/secrets"  # where the app containers see the files
    ca: CAVolume | None = None


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
        if not isinstance(raw, str) or raw.strip().lower() not in ("true", "false"):
            raise AnnotationError(PREFIX + "inject", raw, 'use "true" or "false"')
        return raw.strip().lower() == "true"
    return PREFIX + "path" in annotations


def parse(annotations: dict, settings: Settings, pod: PodFacts) -> Parsed:
    """Validate every `kms.hanzo.ai/*` annotation and build the AgentConfig. Raises AnnotationError."""
    return resolve(read(annotations), settings, pod)


def resolve(g: Given, settings: Settings, pod: PodFacts) -> Parsed:
    """The parsed annotations + settings + pod -> config and options: defaults and policy, once."""
    v = g.values
    warnings = [f"{show_key(k)}: unknown annotation, ignored (see docs/annotations.md)" for k in g.unknown[:MAX_WARNINGS]]
    mode = v.get("mode", "sidecar")
    project, env = v.get("project", settings.project), v.get("env", settings.env)
    host = _host(g, settings, warnings)
    sources = _sources(g, settings, pod, project)

    auth = v.get("auth", "universal")
    identity_id, auth_secret = "", ""
    if auth == "kubernetes":
        identity_id = v.get("identity-id", "")
        if not identity_id:
            raise AnnotationError(PREFIX + "identity-id", None, f"it is required with {PREFIX}auth: kubernetes (the KMS machine identity id)")
        if "auth-secret" in v:
            warnings.append(f"{PREFIX}auth-secret: ignored with {PREFIX}auth: kubernetes")
    else:
        auth_secret = v.get("auth-secret", settings.auth_secret)
        # The Secret is a machine identity: policies decide which pods may mount which one (IAM's).
        reason = settings.check_auth_secret(pod.namespace, pod.service_account, auth_secret)
        if reason:
            raise AnnotationError(PREFIX + "auth-secret", auth_secret, reason, 403)
        if "identity-id" in v:
            warnings.append(f"{PREFIX}identity-id: ignored with {PREFIX}auth: universal")
    ca = _ca(g, settings, pod, host)

    selected, selected_init = _containers(g, pod)
    signal, command, signal_process = _notify(g, mode, pod, selected, warnings)
    res = settings.agent.resources
    cpu = _request(g, "agent-cpu", res.cpu_limit)
    memory = _request(g, "agent-memory", res.memory_limit)
    health_port = 0 if mode == "init" else v.get("agent-health-port", settings.agent.health_port)
    if health_port:
        for c in (*pod.containers, *pod.init_containers):
            if health_port in c.ports:
                raise AnnotationError(PREFIX + "agent-health-port", str(health_port),
                                      f"container {c.name!r} already uses port {health_port}; choose another with {PREFIX}agent-health-port")
    try:
        config = AgentConfig(
            host=host, project=project, env=env, sources=sources, mode="init" if mode == "init" else "sidecar",
            api=v.get("api", settings.api), auth=auth, identity_id=identity_id, mount_path=AGENT_MOUNT_PATH,
            format=v.get("format", "files"), templates=g.templates,
            file_mode=v.get("file-mode", 0o440 if pod.fs_group else 0o444),
            refresh_interval=v.get("refresh-interval", settings.refresh_interval), init_timeout=v.get("init-timeout", 120.0),
            events=v.get("events", True), signal=signal, signal_process=signal_process, command=command,
            health_port=health_port, expand_references=v.get("expand-references", True),
            allow_empty=v.get("allow-empty", False), organization_slug=v.get("organization-slug", settings.organization_slug),
            ca_file=f"{AGENT_CA_DIR}/{CA_FILE_NAME}" if ca else "",
        )
    except ConfigError as exc:  # a check above should have caught it; still answer cleanly
        annotation = PREFIX + _FIELD_TO_ANNOTATION.get(exc.field.split("[")[0], exc.field.replace("_", "-"))
        raise AnnotationError(annotation, None, exc.detail) from None
    options = Options(mode=mode, containers=selected, init_containers=selected_init, auth_secret=auth_secret,
                      cpu_request=cpu, memory_request=memory, health_port=health_port,
                      app_mount_path=v.get("mount-path", settings.mount_path), ca=ca)
    return Parsed(config, options, warnings)


_FIELD_TO_ANNOTATION = {
    "sources": "path", "identity_id": "identity-id", "templates": "template-FILE", "file_mode": "file-mode",
    "refresh_interval": "refresh-interval", "init_timeout": "init-timeout", "signal_process": "signal-process",
    "health_port": "agent-health-port", "organization_slug": "organization-slug",
}


def _host(g: Given, settings: Settings, warnings: list[str]) -> str:
    host = g.values.get("host", settings.host)
    if "host" in g.values and not settings.host_allowed(host):
        allowed = ", ".join([settings.host, *settings.allowed_hosts])
        raise AnnotationError(PREFIX + "host", host, f"the host must be on the webhook's allowed hosts list: {allowed}", 403)
    scheme, name = _scheme_and_name(host)
    if scheme == "http" and not ("." not in name or name.endswith((".svc", ".svc.cluster.local"))):
        warnings.append(f"{PREFIX}host: {host} is plain http to {name}, which is not a cluster-local service name: "
                        "credentials and secrets would cross the network unencrypted; use https")
    return host


def _sources(g: Given, settings: Settings, pod: PodFacts, project: str) -> list[Source]:
    if "" not in g.paths:
        raise AnnotationError(PREFIX + "path", None, "it is required: the KMS folder to sync, e.g. /chat")
    if len(g.paths) > MAX_SOURCES:
        raise AnnotationError(PREFIX + "path-NAME", None, f"at most {MAX_SOURCES} paths per pod")
    if len(g.templates) > MAX_TEMPLATES:
        raise AnnotationError(PREFIX + "template-FILE", None, f"at most {MAX_TEMPLATES} templates per pod")
    clash = sorted(set(g.templates) & set(g.paths))
    if clash:
        raise AnnotationError(PREFIX + "template-" + clash[0], None, f"{clash[0]!r} is already the folder of {PREFIX}path-{clash[0]}; use another file name")
    for subdir, (key, _) in g.keys.items():
        if subdir not in g.paths:
            raise AnnotationError(key, None, f"there is no {PREFIX}path-{subdir}; keys-NAME lists the keys of the folder of path-NAME")
    out = []
    for subdir in sorted(g.paths):
        key, path = g.paths[subdir]
        reason = settings.check_path(pod.namespace, pod.service_account, project, path)
        if reason:
            raise AnnotationError(key, path, reason, 403)
        out.append(Source(path=path, subdir=subdir, keys=g.keys.get(subdir, ("", ()))[1]))
    return out


def _ca(g: Given, settings: Settings, pod: PodFacts, host: str) -> CAVolume | None:
    """The CA bundle the agents trust: the pod's `ca-secret` where a policy lists it, else the settings'."""
    bundle = settings.ca_bundle
    if "ca-secret" in g.values:
        name = g.values.get("ca-secret")
        reason = settings.check_ca_secret(pod.namespace, pod.service_account, name)
        if reason:
            raise AnnotationError(PREFIX + "ca-secret", name, reason, 403)
        ca: CAVolume | None = CAVolume("secret", name, bundle.key)
    elif bundle.config_map or bundle.secret:
        ca = CAVolume("configMap", bundle.config_map, bundle.key) if bundle.config_map else CAVolume("secret", bundle.secret, bundle.key)
    else:
        ca = None
    # Only https uses it; a plain-http pod must not wait for a volume it does not need.
    return ca if _scheme_and_name(host)[0] == "https" else None


@lru_cache(maxsize=64)
def _scheme_and_name(host: str) -> tuple[str, str]:
    # Cached: the webhook sees the same few hosts for every pod.
    parts = urlsplit(host)
    return parts.scheme, (parts.hostname or "").rstrip(".")


def _containers(g: Given, pod: PodFacts) -> tuple[tuple[str, ...], tuple[str, ...]]:
    app_names = [c.name for c in pod.containers]
    init_names = [c.name for c in pod.init_containers]
    if not "containers" in g.values:
        return tuple(app_names), tuple(init_names)
    wanted, raw = g.values.get("containers"), g.raw["containers"]
    for n in wanted:
        if n not in app_names and n not in init_names:
            known = ", ".join(app_names + init_names) or "(none)"
            raise AnnotationError(PREFIX + "containers", raw, f"{show(n)} is not a container of this pod; its containers are {known}")
    return tuple(n for n in app_names if n in wanted), tuple(n for n in init_names if n in wanted)


def _notify(g: Given, mode: str, pod: PodFacts, selected: tuple[str, ...], warnings: list[str]) -> tuple[str, list[str], str]:
    signal, command = g.values.get("signal", ""), list(g.values.get("command", []))
    if signal and command:
        raise AnnotationError(PREFIX + "command", g.raw["command"], f"set either {PREFIX}signal or {PREFIX}command, not both")
    if mode == "init" and (signal or command):
        warnings.append(f"{PREFIX}{'signal' if signal else 'command'}: ignored in init mode (nothing refreshes after start)")
        signal, command = "", []
    process = ""
    if signal:
        process = g.values.get("signal-process") or _default_process(pod, selected, warnings)
    elif "signal-process" in g.values:
        warnings.append(f"{PREFIX}signal-process: ignored without {PREFIX}signal")
    return signal, command, process


def _request(g: Given, name: str, limit: str) -> str:
    value = g.values.get(name, "")
    if value and limit and parse_quantity(value) > (parse_quantity(limit) or 0):  # type: ignore[operator]
        raise AnnotationError(PREFIX + name, g.raw[name], f"the request cannot exceed the limit {limit} set in the webhook settings")
    return value


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
    if not PROCESS.match(name):
        raise AnnotationError(PREFIX + "signal-process", None,
                              f"set it: no usable process name could be derived from container {target.name!r}")
    return name
