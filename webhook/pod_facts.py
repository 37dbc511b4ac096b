"""What the annotations' policy step needs to know about a pod, read from the pod object. Pure.

A malformed object (never from a real apiserver, but answered cleanly) raises PodShapeError
naming the field and what it must be. Hot path: messages are built only when something is wrong.
"""

from __future__ import annotations

import posixpath
from typing import Any

from .annotations import ContainerFacts, PodFacts


class PodShapeError(ValueError):
    """The pod object is not shaped like a Pod."""

    def __init__(self, where: str, expected: str) -> None:
        super().__init__(f"malformed pod: {where} must be {expected}")
        self.where = where


def as_dict(value: Any, where: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PodShapeError(where, "an object")
    return value


def as_list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodShapeError(where, "a list")
    return value


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _container_facts(c: Any, where: str, pod_uid: int | None) -> ContainerFacts:
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
    spec = as_dict(pod.get("spec"), "spec", required=True)
    psc = as_dict(spec.get("securityContext"), "spec.securityContext")
    pod_uid = _int_or_none(psc.get("runAsUser"))
    containers = as_list(spec.get("containers"), "spec.containers")
    if not containers:
        raise PodShapeError("spec.containers", "a non-empty list")
    app = tuple([_container_facts(c, f"spec.containers[{i}]", pod_uid) for i, c in enumerate(containers)])
    inits = tuple([_container_facts(c, f"spec.initContainers[{i}]", pod_uid)
                   for i, c in enumerate(as_list(spec.get("initContainers"), "spec.initContainers"))])
    for i, v in enumerate(as_list(spec.get("volumes"), "spec.volumes")):
        if not isinstance(v, dict):
            raise PodShapeError(f"spec.volumes[{i}]", "an object")
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return PodFacts(namespace=namespace, service_account=sa if isinstance(sa, str) else "default",
                    containers=app, init_containers=inits, fs_group=_int_or_none(psc.get("fsGroup")) is not None)
