"""PURE: (pod, namespace, settings) -> the decision and the JSON patch. No I/O, no logging.

Shared by the webhook (through webhook/mutate.py's review()) and the offline `inject` command, so
what `inject` prints is exactly what the webhook would do.

Patches are RFC 6902 and are built against the pod as received: arrays and objects that are
missing (or null) are added whole, existing ones are appended to; our init container is inserted
at index 0 *after* the app's init containers got their mounts, so every index refers to the
original pod. Containers and volumes are addressed by index or `/-`, never by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import agent_containers as agents
from .agent_containers import OUR_CONTAINERS, OUR_VOLUMES
from .annotations import INJECTED, PREFIX, STATUS, AnnotationError, Parsed, PodFacts, injection_requested, kms_keys, parse, show
from .pod_facts import PodShapeError, as_dict, as_list, pod_facts
from .settings import Settings


@dataclass
class Mutation:
    decision: str  # skip | injected | already
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def escape(token: str) -> str:
    """RFC 6901: `~` -> `~0`, `/` -> `~1` (annotation keys contain a slash)."""
    return token.replace("~", "~0").replace("/", "~1")


def plan(pod: Any, namespace: str, settings: Settings) -> Mutation:
    """Decide and build the patch for one pod (or pod template). Raises AnnotationError for refused
    annotations and PodShapeError for a malformed object."""
    pod = as_dict(pod, "pod", required=True)
    meta = as_dict(pod.get("metadata"), "metadata")
    annotations = as_dict(meta.get("annotations"), "metadata.annotations")
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
    patch = _build_patch(pod, spec, meta, parsed, facts, settings, warnings)
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
    vols = [v.get("name") for v in as_list(spec.get("volumes"), "spec.volumes")]  # a list: a name may be any JSON
    for ours in OUR_VOLUMES:
        if ours in vols:
            raise AnnotationError(STATUS, None, "", message=f"the pod already has a volume named {ours!r}; kms-injector "
                                  "reserves that name, rename the volume")
    mount = parsed.options.app_mount_path
    selected = set(parsed.options.containers) | set(parsed.options.init_containers)
    for key in ("containers", "initContainers"):
        for c in as_list(spec.get(key), f"spec.{key}"):
            if c.get("name") not in selected:
                continue
            for m in as_list(c.get("volumeMounts"), "volumeMounts"):
                if isinstance(m.get("mountPath"), str) and m["mountPath"].rstrip("/") == mount:
                    raise AnnotationError(PREFIX + "mount-path", mount, f"container {c.get('name')!r} already mounts something at "
                                          f"{mount}; choose another directory")


def _check_os(spec: dict) -> None:
    """The agent image and its security context (seccomp, runAsUser, capabilities) are Linux-only;
    kube-apiserver would refuse them in a Windows pod with a message about fields the user never wrote."""
    os_name = as_dict(spec.get("os"), "spec.os").get("name")
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
        host = _cluster_host(cfg.host)
        if host:
            warnings.append(f"hostNetwork: with dnsPolicy {spec.get('dnsPolicy') or 'ClusterFirst'} the pod uses the node's DNS, "
                            f"so the agent cannot resolve the in-cluster KMS host {host}; set dnsPolicy: ClusterFirstWithHostNet")


def _cluster_host(url: str) -> str:
    """The URL's host name when it is an in-cluster service name (.svc, .cluster.local), else ""."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    return host if host.endswith((".svc", ".cluster.local")) or ".svc." in host else ""


def _build_patch(pod: dict, spec: dict, meta: dict, parsed: Parsed, facts: PodFacts,
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

    # 2. Read-only secrets mount at the app's mount path in the selected app containers and app
    #    init containers (original indexes: our init container is inserted at 0 only after this).
    app_mount = {"name": agents.VOLUME_SECRETS, "mountPath": o.app_mount_path, "readOnly": True}
    for key, selected in (("initContainers", o.init_containers), ("containers", o.containers)):
        for i, c in enumerate(as_list(spec.get(key), f"spec.{key}")):
            if c.get("name") in selected:
                ops.append(_append(f"/spec/{key}/{i}/volumeMounts", c.get("volumeMounts"), app_mount))

    # 3. Volumes.
    relay = agents.relayed(parsed, facts, settings)
    if relay and spec.get("hostNetwork") is True and spec.get("dnsPolicy") in (None, "ClusterFirst") and _cluster_host(settings.relay.url):
        warnings.append(f"hostNetwork: with dnsPolicy {spec.get('dnsPolicy') or 'ClusterFirst'} the agent cannot resolve the change "
                        f"relay {_cluster_host(settings.relay.url)} and polls KMS at its own interval; set dnsPolicy: ClusterFirstWithHostNet")
    volumes, mounts = agents.volumes(parsed, settings, relay)
    if spec.get("volumes") is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    else:
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)

    # 4. Agent containers: the config is serialised once per kind from one to_dict().
    p = agents.parts(parsed, facts, settings, mounts, warnings, relay)
    first = agents.native_container(p, parsed, settings) if o.mode == "native" else agents.init_container(p, settings)
    if spec.get("initContainers") is None:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [first]})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": first})
    if o.mode == "sidecar":
        ops.append({"op": "add", "path": "/spec/containers/-", "value": agents.sidecar_container(p, parsed, settings)})

    # 5. Signalling needs to see the app's processes.
    if cfg.signal and spec.get("shareProcessNamespace") is not True:
        ops.append({"op": "add", "path": "/spec/shareProcessNamespace", "value": True})
    return ops


def _append(path: str, current: Any, value: Any) -> dict[str, Any]:
    if current is None:
        return {"op": "add", "path": path, "value": [value]}
    return {"op": "add", "path": path + "/-", "value": value}


__all__ = ["Mutation", "PodShapeError", "plan", "mutate_pod", "escape", "OUR_CONTAINERS", "OUR_VOLUMES"]
