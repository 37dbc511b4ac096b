"""PURE admission logic: AdmissionReview -> answer, and pod -> JSON patch. No I/O, no logging.

`review()` never raises: every request gets a well-formed AdmissionReview back (the server maps
only unparsable bodies to HTTP 400). `mutate_pod()` is shared with the offline `inject` command,
so what `inject` prints is exactly what the webhook would do.

Patches are RFC 6902 and are built against the pod as received: arrays and objects that are
missing (or null) are added whole, existing ones are appended to; our init container is inserted
at index 0 *after* the app's init containers got their mounts, so every index refers to the
original pod.
"""

from __future__ import annotations

import binascii
import json
import posixpath
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from typing import Any

import orjson

from injector.config import dict_to_json

from .annotations import (
    INJECTED,
    PREFIX,
    STATUS,
    AnnotationError,
    ContainerFacts,
    Parsed,
    PodFacts,
    injection_requested,
    kms_keys,
    parse,
    show,
)
from .settings import Settings

AGENT = "kms-agent"
AGENT_INIT = "kms-agent-init"
VOLUME_SECRETS = "kms-secrets"
VOLUME_AUTH = "kms-auth"
VOLUME_TOKEN = "kms-sa-token"
OUR_CONTAINERS = (AGENT, AGENT_INIT)
OUR_VOLUMES = (VOLUME_SECRETS, VOLUME_AUTH, VOLUME_TOKEN)
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
DECISIONS = ("skip", "injected", "already", "rejected", "invalid")


class PodShapeError(ValueError):
    """The pod object is not shaped like a Pod (never from a real apiserver, but answered cleanly)."""

    def __init__(self, where: str, expected: str) -> None:
        super().__init__(f"malformed pod: {where} must be {expected}")
        self.where = where


@dataclass
class Mutation:
    decision: str  # skip | injected | already
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ReviewResult:
    response: dict[str, Any]  # the whole AdmissionReview to send back
    decision: str
    uid: str = ""
    namespace: str = ""
    pod: str = ""  # name, or generateName for controller-made pods
    warnings: list[str] = field(default_factory=list)
    message: str = ""  # the refusal message, when not allowed
    internal_error: str = ""  # set only when a bug was caught (type name, for the server's log)


# -- helpers ----------------------------------------------------------------------------------------
def escape(token: str) -> str:
    """RFC 6901: `~` -> `~0`, `/` -> `~1` (annotation keys contain a slash)."""
    return token.replace("~", "~0").replace("/", "~1")


def _dict(value: Any, where: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PodShapeError(where, "an object")
    return value


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodShapeError(where, "a list")
    return value


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _container_facts(c: Any, where: str, pod_uid: int | None) -> ContainerFacts:
    # Hot path: messages (f-strings) are built only when something is wrong.
    if not isinstance(c, dict):
        raise PodShapeError(where, "an object")
    name = c.get("name")
    if not isinstance(name, str) or not name:
        raise PodShapeError(f"{where}.name", "a non-empty string")
    command = c.get("command")
    if command is not None and not isinstance(command, list):
        raise PodShapeError(f"{where}.command", "a list")
    command0 = command[0] if command and isinstance(command[0], str) else ""
    sc = c.get("securityContext")
    if sc is None:
        uid = None
    elif isinstance(sc, dict):
        uid = _int_or_none(sc.get("runAsUser"))
    else:
        raise PodShapeError(f"{where}.securityContext", "an object")
    ports = []
    raw_ports = c.get("ports")
    if raw_ports is not None:
        if not isinstance(raw_ports, list):
            raise PodShapeError(f"{where}.ports", "a list")
        for j, p in enumerate(raw_ports):
            if not isinstance(p, dict):
                raise PodShapeError(f"{where}.ports[{j}]", "an object")
            port = _int_or_none(p.get("containerPort"))
            if port is not None:
                ports.append(port)
    mounts = c.get("volumeMounts")
    if mounts is not None:
        if not isinstance(mounts, list):
            raise PodShapeError(f"{where}.volumeMounts", "a list")
        for j, m in enumerate(mounts):
            if not isinstance(m, dict):
                raise PodShapeError(f"{where}.volumeMounts[{j}]", "an object")
    image = c.get("image")
    if command0:
        command0 = posixpath.basename(command0.rstrip("/"))
    return ContainerFacts(name=name, command0=command0, image=image if isinstance(image, str) else "",
                          run_as_user=uid if uid is not None else pod_uid, ports=tuple(ports))


def pod_facts(pod: dict, namespace: str) -> PodFacts:
    spec = _dict(pod.get("spec"), "spec", required=True)
    psc = _dict(spec.get("securityContext"), "spec.securityContext")
    pod_uid = _int_or_none(psc.get("runAsUser"))
    containers = _list(spec.get("containers"), "spec.containers")
    if not containers:
        raise PodShapeError("spec.containers", "a non-empty list")
    app = tuple([_container_facts(c, f"spec.containers[{i}]", pod_uid) for i, c in enumerate(containers)])
    inits = tuple([_container_facts(c, f"spec.initContainers[{i}]", pod_uid)
                   for i, c in enumerate(_list(spec.get("initContainers"), "spec.initContainers"))])
    for i, v in enumerate(_list(spec.get("volumes"), "spec.volumes")):
        if not isinstance(v, dict):
            raise PodShapeError(f"spec.volumes[{i}]", "an object")
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return PodFacts(namespace=namespace, service_account=sa if isinstance(sa, str) else "default",
                    containers=app, init_containers=inits, fs_group=_int_or_none(psc.get("fsGroup")) is not None)


# -- the pod mutation ----------------------------------------------------------------------------
def plan(pod: Any, namespace: str, settings: Settings) -> Mutation:
    """Decide and build the patch for one pod (or pod template). Raises AnnotationError for refused
    annotations and PodShapeError for a malformed object."""
    pod = _dict(pod, "pod", required=True)
    meta = _dict(pod.get("metadata"), "metadata")
    annotations = _dict(meta.get("annotations"), "metadata.annotations")
    keys = kms_keys(annotations)
    if not keys:  # fast path: not ours
        return Mutation("skip")
    if annotations.get(STATUS) == INJECTED:
        return Mutation("already")
    if namespace in settings.excluded_namespaces:
        return Mutation("skip", warnings=[f"namespace {namespace!r} is excluded from secret injection; {PREFIX}* annotations ignored"])
    if not injection_requested(annotations):
        return Mutation("skip", warnings=[f"{PREFIX}* annotations present but injection not requested "
                                          f"(set {PREFIX}path, or {PREFIX}inject: \"true\")"]
                        if PREFIX + "inject" not in annotations else [])
    facts = pod_facts(pod, namespace)
    spec = pod["spec"]
    _check_os(spec)
    parsed = parse(annotations, settings, facts)
    warnings = list(parsed.warnings)
    if STATUS in annotations:
        warnings.append(f"{STATUS}: {show(annotations[STATUS])} is set by the webhook only; replaced")
    _check_collisions(spec, parsed, facts)
    _check_pod_level(spec, parsed, warnings)
    patch = _build_patch(pod, spec, meta, annotations, parsed, facts, settings, warnings)
    return Mutation("injected", patch, warnings)


def mutate_pod(pod: dict, namespace: str, settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON patch ops, warnings) for a pod or pod template; [] when nothing is to be done.
    Raises AnnotationError / PodShapeError when the pod must be refused."""
    m = plan(pod, namespace, settings)
    return m.patch, m.warnings


def _check_collisions(spec: dict, parsed: Parsed, facts: PodFacts) -> None:
    names = {c.name for c in (*facts.containers, *facts.init_containers)}
    for ours in OUR_CONTAINERS:
        if ours in names:
            raise AnnotationError(STATUS, None, "", message=f"the pod already has a container named {ours!r} but no "
                                  f"{STATUS}: injected annotation; kms-injector reserves that name, rename the container")
    vols = [v.get("name") for v in _list(spec.get("volumes"), "spec.volumes")]  # a list: a name may be any JSON
    for ours in OUR_VOLUMES:
        if ours in vols:
            raise AnnotationError(STATUS, None, "", message=f"the pod already has a volume named {ours!r}; kms-injector "
                                  "reserves that name, rename the volume")
    mount = parsed.config.mount_path
    selected = set(parsed.options.containers) | set(parsed.options.init_containers)
    for key in ("containers", "initContainers"):
        for c in _list(spec.get(key), f"spec.{key}"):
            if c.get("name") not in selected:
                continue
            for m in _list(c.get("volumeMounts"), "volumeMounts"):
                if isinstance(m.get("mountPath"), str) and m["mountPath"].rstrip("/") == mount:
                    raise AnnotationError(PREFIX + "mount-path", mount, f"container {c.get('name')!r} already mounts something at "
                                          f"{mount}; choose another directory")


def _check_os(spec: dict) -> None:
    """The agent image and its security context (seccomp, runAsUser, capabilities) are Linux-only;
    kube-apiserver would refuse them in a Windows pod with a message about fields the user never wrote."""
    os_name = _dict(spec.get("os"), "spec.os").get("name")
    if isinstance(os_name, str) and os_name.lower() == "windows":
        raise AnnotationError(PREFIX + "path", None, "", message=f"kms-injector supports Linux pods only: spec.os.name is "
                              f"\"windows\" (the agent image is Linux-only); remove the {PREFIX}* annotations or run the pod on Linux")


def _check_pod_level(spec: dict, parsed: Parsed, warnings: list[str]) -> None:
    """Pod-wide settings that clash with what we add (refused) or make it misbehave (warned)."""
    cfg, o = parsed.config, parsed.options
    if cfg.signal and spec.get("hostPID") is True:
        # kube-apiserver refuses shareProcessNamespace with hostPID, and in the node's PID namespace a
        # signal by process name could reach other pods' processes.
        raise AnnotationError(PREFIX + "signal", cfg.signal, f"a pod with hostPID: true cannot be signalled by the agent "
                              f"(Kubernetes forbids shareProcessNamespace with hostPID); use {PREFIX}command, or drop hostPID")
    policy = spec.get("restartPolicy")
    if o.mode == "sidecar" and policy in ("Never", "OnFailure"):
        warnings.append(f"{PREFIX}mode: sidecar in a pod with restartPolicy {policy}: the kms-agent sidecar never exits, "
                        f"so the pod (and its Job) never completes; use {PREFIX}mode: native (Kubernetes 1.29+) or init")
    if o.health_port and spec.get("hostNetwork") is True:
        warnings.append(f"hostNetwork: the agent's health port {o.health_port} is opened on the node (hostPort); it must be "
                        f"free there and distinct per workload on a node: choose one with {PREFIX}agent-health-port")
    if spec.get("hostNetwork") is True and spec.get("dnsPolicy") in (None, "ClusterFirst"):
        # Kubernetes falls back to the node's resolv.conf for hostNetwork pods with ClusterFirst.
        host = (urlsplit(cfg.host).hostname or "").rstrip(".")
        if host.endswith((".svc", ".cluster.local")) or ".svc." in host:
            warnings.append(f"hostNetwork: with dnsPolicy {spec.get('dnsPolicy') or 'ClusterFirst'} the pod uses the node's DNS, "
                            f"so the agent cannot resolve the in-cluster KMS host {host}; set dnsPolicy: ClusterFirstWithHostNet")


def _agent_security(parsed: Parsed, facts: PodFacts, settings: Settings, warnings: list[str]) -> dict[str, Any]:
    """Non-root, read-only root, no escalation, no capabilities, RuntimeDefault seccomp.

    Signalling: a process may signal another with the same uid without any capability, so when
    the target app container (or the pod) sets a non-root runAsUser the agent runs as that uid.
    Otherwise the app's uid is unknown (the image decides) or root, and the agent gets CAP_KILL;
    a warning says so, since container runtimes grant added capabilities to non-root processes
    unevenly, and setting runAsUser is the dependable way."""
    uid = settings.agent.run_as_user
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if parsed.config.signal:
        selected = set(parsed.options.containers)
        target = next((c for c in facts.containers if c.name in selected), facts.containers[0])
        if target.run_as_user:
            uid = target.run_as_user
        else:
            caps["add"] = ["KILL"]
            why = "runs as root" if target.run_as_user == 0 else "sets no runAsUser"
            warnings.append(f"{PREFIX}signal: container {target.name!r} {why}; the agent gets CAP_KILL to signal it. "
                            "Set a non-root runAsUser so the agent can run as the same uid instead")
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": settings.agent.run_as_group,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": caps,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _agent_container(name: str, mode_arg: str, cfg_json: str, mounts: list[dict], parsed: Parsed,
                     security: dict, settings: Settings, resources: dict[str, dict[str, str]]) -> dict[str, Any]:
    o = parsed.options
    c: dict[str, Any] = {
        "name": name,
        "image": settings.agent.image,
        "imagePullPolicy": settings.agent.image_pull_policy,
        "command": ["kms-injector"],
        "args": ["agent", "--mode", mode_arg],
        "env": [
            {"name": "KMS_AGENT_CONFIG", "value": cfg_json},
            {"name": "KMS_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "KMS_POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
        ],
        "resources": resources,
        "securityContext": security,
        "volumeMounts": mounts,
        # Init failures print one line naming what failed; show it in `kubectl describe`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if mode_arg == "sidecar" and o.health_port:
        c["ports"] = [{"containerPort": o.health_port, "protocol": "TCP"}]
        c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": o.health_port},
                              "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3}
    return c


def _build_patch(pod: dict, spec: dict, meta: dict, annotations: dict, parsed: Parsed, facts: PodFacts,
                 settings: Settings, warnings: list[str]) -> list[dict[str, Any]]:
    cfg, o = parsed.config, parsed.options
    ops: list[dict[str, Any]] = []

    # 1. Mark the pod first, so a reinvocation (or `inject` output) is never mutated twice.
    if "metadata" not in pod or pod.get("metadata") is None:
        ops.append({"op": "add", "path": "/metadata", "value": {"annotations": {STATUS: INJECTED}}})
    elif meta.get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS: INJECTED}})
    else:
        ops.append({"op": "add", "path": f"/metadata/annotations/{escape(STATUS)}", "value": INJECTED})

    # 2. Read-only secrets mount in the selected app containers and app init containers
    #    (original indexes: our init container is inserted at 0 only after this).
    app_mount = {"name": VOLUME_SECRETS, "mountPath": cfg.mount_path, "readOnly": True}
    for key, selected in (("initContainers", o.init_containers), ("containers", o.containers)):
        for i, c in enumerate(_list(spec.get(key), f"spec.{key}")):
            if c.get("name") in selected:
                ops.append(_append(f"/spec/{key}/{i}/volumeMounts", c.get("volumeMounts"), app_mount))

    # 3. Volumes.
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_SECRETS, "emptyDir": {"medium": "Memory", "sizeLimit": settings.secrets_size_limit}}]
    agent_mounts = [{"name": VOLUME_SECRETS, "mountPath": cfg.mount_path}]
    if cfg.auth == "kubernetes":
        k = settings.kubernetes_auth
        volumes.append({"name": VOLUME_TOKEN, "projected": {"defaultMode": 0o444, "sources": [{"serviceAccountToken": {
            "audience": k.audience, "expirationSeconds": k.expiration_seconds, "path": posixpath.basename(cfg.token_path)}}]}})
        agent_mounts.append({"name": VOLUME_TOKEN, "mountPath": posixpath.dirname(cfg.token_path), "readOnly": True})
    else:
        volumes.append({"name": VOLUME_AUTH, "secret": {"secretName": o.auth_secret, "defaultMode": 0o444}})
        agent_mounts.append({"name": VOLUME_AUTH, "mountPath": cfg.credentials_dir, "readOnly": True})
    if spec.get("volumes") is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    else:
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)

    # 4. Agent containers. The config is serialised once per container kind from one to_dict()
    #    (the init container's differs only in mode and health port): byte-identical to
    #    cfg.to_json() and dataclasses.replace(cfg, mode="init", health_port=0).to_json().
    security = _agent_security(parsed, facts, settings, warnings)
    cfg_dict = cfg.to_dict()
    cfg_json = config_json(cfg_dict)
    resources = settings.agent.resources.to_k8s(o.cpu_request, o.memory_request)
    if o.mode == "native":
        native = _agent_container(AGENT, "sidecar", cfg_json, agent_mounts, parsed, security, settings, resources)
        native["restartPolicy"] = "Always"
        # The app starts only once the first files exist (/readyz), within the init timeout.
        native["startupProbe"] = {"httpGet": {"path": "/readyz", "port": o.health_port}, "periodSeconds": 1,
                                  "timeoutSeconds": 2, "failureThreshold": int(cfg.init_timeout) + 30}
        first = native
    else:
        cfg_dict["mode"], cfg_dict["health_port"] = "init", 0
        first = _agent_container(AGENT_INIT, "init", config_json(cfg_dict), agent_mounts, parsed, security, settings, resources)
    if spec.get("initContainers") is None:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [first]})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": first})
    if o.mode == "sidecar":
        # Its own mounts and resources dicts (the init container has the first ones).
        sidecar = _agent_container(AGENT, "sidecar", cfg_json, [dict(m) for m in agent_mounts], parsed, security, settings,
                                   {k: dict(v) for k, v in resources.items()})
        ops.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})

    # 5. Signalling needs to see the app's processes.
    if cfg.signal and spec.get("shareProcessNamespace") is not True:
        ops.append({"op": "add", "path": "/spec/shareProcessNamespace", "value": True})
    return ops


_DURATIONS = ("refresh_interval", "init_timeout", "request_timeout", "command_timeout")


def config_json(cfg_dict: dict[str, Any]) -> str:
    """injector.config.dict_to_json(cfg_dict), byte for byte, several times faster.

    orjson (sorted keys) writes exactly what the stdlib writes when the output is ASCII without
    DEL (the stdlib escapes non-ASCII and DEL as \\uXXXX, orjson does not) and every float is in
    [1e-4, 1e16) (outside it the two spell exponents differently). Anything else goes to the stdlib."""
    try:
        if all(1e-4 <= cfg_dict[k] < 1e16 for k in _DURATIONS):
            out = orjson.dumps(cfg_dict, option=orjson.OPT_SORT_KEYS)
            if out.isascii() and b"\x7f" not in out:
                return out.decode("ascii")
    except (TypeError, KeyError, orjson.JSONEncodeError):
        pass
    return dict_to_json(cfg_dict)


def _append(path: str, current: Any, value: Any) -> dict[str, Any]:
    if current is None:
        return {"op": "add", "path": path, "value": [value]}
    return {"op": "add", "path": path + "/-", "value": value}


# -- AdmissionReview ----------------------------------------------------------------------------
def encode_patch(patch: list[dict[str, Any]]) -> bytes:
    """Compact JSON. orjson is ~10x the stdlib here; it refuses what JSON cannot carry exactly
    (integers beyond 64 bits, lone surrogates from a hand-made dict), which the stdlib encodes."""
    try:
        return orjson.dumps(patch)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(patch, separators=(",", ":")).encode()


def review(body: Any, settings: Settings) -> ReviewResult:
    """One AdmissionReview request -> the full AdmissionReview response. Never raises."""
    api_version = API_VERSIONS[0]
    uid = ""
    try:
        if isinstance(body, dict) and body.get("apiVersion") in API_VERSIONS:
            api_version = body["apiVersion"]
        return _review(body, settings, api_version)
    except Exception as exc:  # a bug: still answer (refuse) cleanly; the server logs internal_error
        if isinstance(body, dict) and isinstance(body.get("request"), dict) and isinstance(body["request"].get("uid"), str):
            uid = body["request"]["uid"]
        msg = f"kms-injector could not process this pod (internal error {type(exc).__name__}); see the webhook logs"
        return ReviewResult(_answer(api_version, uid, False, message=msg, code=500), "invalid", uid=uid,
                            message=msg, internal_error=type(exc).__name__)


def _answer(api_version: str, uid: str, allowed: bool, patch: list | None = None, warnings: list[str] | None = None,
            message: str = "", code: int = 400) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = binascii.b2a_base64(encode_patch(patch), newline=False).decode("ascii")
    if warnings:
        response["warnings"] = warnings
    if not allowed:
        reason = {400: "BadRequest", 403: "Forbidden"}.get(code, "InternalError")
        response["status"] = {"code": code, "reason": reason, "message": message}
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def _review(body: Any, settings: Settings, api_version: str) -> ReviewResult:
    def invalid(msg: str, uid: str = "", ns: str = "", pod: str = "") -> ReviewResult:
        return ReviewResult(_answer(api_version, uid, False, message=msg, code=400), "invalid", uid, ns, pod, message=msg)

    if not isinstance(body, dict) or body.get("kind") not in (None, "AdmissionReview"):
        return invalid("malformed AdmissionReview: expected an object with kind AdmissionReview")
    request = body.get("request")
    if not isinstance(request, dict):
        return invalid("malformed AdmissionReview: request is missing")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        return invalid("malformed AdmissionReview: request.uid is missing")
    kind = request.get("kind")
    if not isinstance(kind, dict) or (kind.get("group") or "", kind.get("kind")) != ("", "Pod"):
        shown = f"{kind.get('group') or 'core'}/{kind.get('kind')}" if isinstance(kind, dict) else "(missing)"
        return ReviewResult(_answer(api_version, uid, True), "skip", uid, message=f"not a Pod: {shown}")
    operation = request.get("operation", "CREATE")
    if operation != "CREATE":
        return ReviewResult(_answer(api_version, uid, True), "skip", uid)
    obj = request.get("object")
    if not isinstance(obj, dict):
        return invalid("malformed AdmissionReview: request.object is not a Pod", uid)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or ""
    name = name if isinstance(name, str) else ""
    ns = request.get("namespace") or meta.get("namespace") or "default"
    ns = ns if isinstance(ns, str) else "default"
    try:
        m = plan(obj, ns, settings)
    except AnnotationError as exc:
        msg = str(exc)
        return ReviewResult(_answer(api_version, uid, False, message=msg, code=exc.code), "rejected", uid, ns, name, message=msg)
    except PodShapeError as exc:
        return invalid(str(exc), uid, ns, name)
    return ReviewResult(_answer(api_version, uid, True, m.patch, m.warnings), m.decision, uid, ns, name, m.warnings)
