"""The part of an AdmissionReview that decides review()'s answer, as bytes: the answer cache's key.

review() is pure in (apiVersion, request, settings), and the answer names the request only through
its uid. Most of a pod, though, is noise to review(), and that noise differs between replicas, so a
key over the whole request would never hit in a cluster:
- the ServiceAccount admission plugin adds a `kube-api-access-<random>` volume and mounts to every
  pod before webhooks see it;
- managedFields carry a timestamp, StatefulSet pods have their own hostname and claim names, Job
  pods their own labels and completion index, each request its own userInfo and options.

What review() reads, and so what the key keeps (mutate.py, annotations.py):
- apiVersion, request.kind, request.operation, request.namespace;
- object.metadata: the `kms.hanzo.ai/*` annotations in their order, metadata.namespace (the
  namespace fallback). A pod without metadata or annotations has none of ours: no key;
- object.spec, whole, except the names of volumes and volume mounts: those are read only to
  compare with our own reserved volume names (a reserved name is kept as it is), and patches
  address containers and volumes by index or `/-`, never by name.
metadata.name/generateName are read only for the log line, which the server takes per request.
A StatefulSet's pods still get a key each (spec.hostname, claim names): they start one at a time.

Anything of an unexpected shape gets no key (None): review() refuses or handles it on its own.
"""

from __future__ import annotations

import orjson

from webhook.annotations import PREFIX
from webhook.mutate import OUR_VOLUMES


def review_key(doc: dict, max_size: int) -> bytes | None:
    """Bytes equal for two requests exactly when review() gives them the same answer but for the
    uid (equal bytes imply equal answers; the converse is not needed). None: do not cache."""
    request = doc["request"]
    obj = request.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(ann, dict):
        return None
    ours = [[k, v] for k, v in ann.items() if isinstance(k, str) and k.startswith(PREFIX)]
    if not ours:  # not ours: review()'s fast path answers in a few µs, cheaper than a key
        return None
    spec = obj.get("spec")
    spec_key = _unnamed(spec) if isinstance(spec, dict) else None
    if spec_key is None:
        return None
    try:
        raw = orjson.dumps([doc.get("apiVersion"), request.get("kind"), request.get("operation"),
                            request.get("namespace"), ours, meta.get("namespace"), spec_key])
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits: just don't cache
        return None
    return raw if len(raw) <= max_size else None


def _unnamed(spec: dict) -> dict | None:
    """spec with volume and mount names blanked, unless reserved by us; None on an odd shape."""
    out = dict(spec)
    volumes = spec.get("volumes")
    if volumes is not None:
        if not isinstance(volumes, list):
            return None
        vs = []
        for v in volumes:
            if not isinstance(v, dict):
                return None
            name = v.get("name")
            vs.append(v if name in OUR_VOLUMES else {**v, "name": ""})
        out["volumes"] = vs
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list):
            return None
        cs = []
        for c in containers:
            if not isinstance(c, dict):
                return None
            mounts = c.get("volumeMounts")
            if mounts is not None:
                if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
                    return None
                c = {**c, "volumeMounts": [{**m, "name": ""} for m in mounts]}
            cs.append(c)
        out[key] = cs
    return out
