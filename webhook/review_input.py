"""THE input of a review: everything review()'s answer depends on, taken from the AdmissionReview
once. Pure.

webhook/mutate.py's review() decides from this input only (never from the request), and the
answer cache's key (webhook/review_key.py) is this input's exact encoding, so equal keys give
equal answers by construction: there is no second list of "what review() reads" to keep in step.

Most of a pod is noise to the decision, and that noise differs between the replicas of one
rollout, so it is left out here (and the pods of a rollout share one key):
- annotations other than `kms.hanzo.ai/*` (our ones keep their order: it decides which refusal
  and which warnings come first);
- the names of volumes and volume mounts, except our reserved volume names: the ServiceAccount
  admission plugin adds a `kube-api-access-<random>` volume to every pod, and the patch
  addresses containers and volumes by index or `/-`, never by name;
- metadata (managedFields times, labels, name), userInfo, options, dryRun and the uid: the
  answer names the request only through the uid, which review() copies in afterwards.
A pod of an odd shape is kept whole (`exact` False: no key); review() answers it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .agent_containers import OUR_VOLUMES
from .annotation_error import PREFIX

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a µs per admission; nobody mutates it
class ReviewInput:
    api_version: str  # echoed in the answer
    problem: str = ""  # the envelope is refused with this message ("" = it is fine)
    uid_ok: bool = True  # whether the refusal can echo a uid (the uid itself is not decision input)
    skip: str = ""  # why the request is admitted untouched: "kind" (not a Pod) or "operation"
    kind: str = ""  # "group/kind" of a non-Pod, for the skip message
    namespace: str = "default"
    pod: dict[str, Any] | None = None  # what the decision reads of the pod (see the module doc)
    ours: bool = False  # the pod carries `kms.hanzo.ai/*` annotations
    exact: bool = False  # `pod` is the reduced form (plain JSON values): it may be a cache key


def review_input(body: Any) -> ReviewInput:
    """The AdmissionReview request -> the input of its review. Never raises."""
    api_version = body.get("apiVersion") if isinstance(body, dict) else None
    api_version = api_version if api_version in API_VERSIONS else API_VERSIONS[0]
    if not isinstance(body, dict) or body.get("kind") not in (None, "AdmissionReview"):
        return ReviewInput(api_version, "malformed AdmissionReview: expected an object with kind AdmissionReview", uid_ok=False)
    request = body.get("request")
    if not isinstance(request, dict):
        return ReviewInput(api_version, "malformed AdmissionReview: request is missing", uid_ok=False)
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        return ReviewInput(api_version, "malformed AdmissionReview: request.uid is missing", uid_ok=False)
    kind = request.get("kind")
    if not isinstance(kind, dict) or (kind.get("group") or "", kind.get("kind")) != ("", "Pod"):
        shown = f"{kind.get('group') or 'core'}/{kind.get('kind')}" if isinstance(kind, dict) else "(missing)"
        return ReviewInput(api_version, skip="kind", kind=shown)
    if request.get("operation", "CREATE") != "CREATE":
        return ReviewInput(api_version, skip="operation")
    obj = request.get("object")
    if not isinstance(obj, dict):
        return ReviewInput(api_version, "malformed AdmissionReview: request.object is not a Pod")
    raw_meta = obj.get("metadata")
    meta = raw_meta if isinstance(raw_meta, dict) else {}
    ns = request.get("namespace") or meta.get("namespace") or "default"
    ns = ns if isinstance(ns, str) else "default"
    if raw_meta is not None and not isinstance(raw_meta, dict):
        return ReviewInput(api_version, namespace=ns, pod=obj)  # review() refuses the shape
    ann = meta.get("annotations")
    if ann is not None and not isinstance(ann, dict):
        return ReviewInput(api_version, namespace=ns, pod=obj)
    ours = {k: v for k, v in ann.items() if isinstance(k, str) and k.startswith(PREFIX)} if ann else {}
    if not ours:  # not ours: the decision reads nothing else
        return ReviewInput(api_version, namespace=ns, pod={}, exact=True)
    reduced: dict[str, Any] = {"metadata": {"annotations": ours}}
    if "spec" in obj:
        spec = obj["spec"]
        unnamed = _unnamed(spec) if isinstance(spec, dict) else None
        if unnamed is None:
            return ReviewInput(api_version, namespace=ns, pod=obj, ours=True)
        reduced["spec"] = unnamed
    return ReviewInput(api_version, namespace=ns, pod=reduced, ours=True, exact=True)


def _unnamed(spec: dict) -> dict | None:
    """spec with volume and mount names blanked, unless reserved by us; None on an odd shape
    (exact types: JSON gives plain dicts and lists; anything else is answered unkeyed)."""
    out = dict(spec)
    volumes = spec.get("volumes")
    if volumes is not None:
        if type(volumes) is not list:
            return None
        vs = []
        for v in volumes:
            if type(v) is not dict:
                return None
            vs.append(v if v.get("name") in OUR_VOLUMES else {**v, "name": ""})
        out["volumes"] = vs
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if type(containers) is not list:
            return None
        cs = []
        for c in containers:
            if type(c) is not dict:
                return None
            mounts = c.get("volumeMounts")
            if mounts is not None:
                if type(mounts) is not list:
                    return None
                ms = []
                for m in mounts:
                    if type(m) is not dict:
                        return None
                    ms.append({**m, "name": ""})
                c = {**c, "volumeMounts": ms}
            cs.append(c)
        out[key] = cs
    return out
