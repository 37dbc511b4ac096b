"""Shared checks for mutated pods: Kubernetes schema (kubernetes-validate, strict) plus the
cross-field rules the schema cannot express and kube-apiserver enforces (unique names, mounts
that reference existing volumes, unique mount paths), plus our contract (agent-only credentials)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import kubernetes_validate

K8S_VERSION = kubernetes_validate.latest_version()


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def apply_patch(pod: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    return jsonpatch.apply_patch(pod, ops)


def check_pod_spec(spec: dict[str, Any]) -> None:
    containers = spec.get("containers") or []
    inits = spec.get("initContainers") or []
    names = [c["name"] for c in containers + inits]
    assert len(names) == len(set(names)), f"duplicate container names {names}"
    volumes = [v["name"] for v in spec.get("volumes") or []]
    assert len(volumes) == len(set(volumes)), f"duplicate volumes {volumes}"
    for c in containers + inits:
        paths = [m["mountPath"] for m in c.get("volumeMounts") or []]
        assert len(paths) == len(set(paths)), f"{c['name']}: duplicate mount paths {paths}"
        for m in c.get("volumeMounts") or []:
            assert m["name"] in volumes, f"{c['name']} mounts unknown volume {m['name']}"
            if m["name"] in ("kms-auth", "kms-sa-token", "kms-ca", "kms-relay-token"):  # credentials and trust: agents only
                assert c["name"] in ("kms-agent", "kms-agent-init"), f"credentials mounted into app container {c['name']}"
            if m["name"] == "kms-secrets" and c["name"] not in ("kms-agent", "kms-agent-init"):
                assert m.get("readOnly") is True


def validate_pod(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    check_pod_spec(pod["spec"])


def validate_object(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
