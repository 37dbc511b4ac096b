"""The AdmissionReview envelope: request -> review input -> decision -> AdmissionReview answer.

`review()` never raises: every request gets a well-formed AdmissionReview back (the server maps
only unparsable bodies to HTTP 400). It decides from `review_input(body)` alone (the same input
the answer cache keys on) and copies the request's uid into the answer afterwards. The pod patch
itself is webhook/pod_patch.py's, shared with the offline `inject` command.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from .agent_containers import AGENT, AGENT_INIT, OUR_CONTAINERS, OUR_VOLUMES, VOLUME_AUTH, VOLUME_CA, VOLUME_SECRETS, VOLUME_TOKEN
from .annotations import AnnotationError
from .pod_patch import Mutation, PodShapeError, escape, mutate_pod, plan
from .review_input import API_VERSIONS, ReviewInput, review_input
from .settings import Settings

DECISIONS = ("skip", "injected", "already", "rejected", "invalid")

__all__ = ["review", "decide", "ReviewResult", "encode_patch", "API_VERSIONS", "DECISIONS", "Mutation", "PodShapeError",
           "plan", "mutate_pod", "escape", "AGENT", "AGENT_INIT", "OUR_CONTAINERS", "OUR_VOLUMES", "VOLUME_AUTH",
           "VOLUME_CA", "VOLUME_SECRETS", "VOLUME_TOKEN"]


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


def encode_patch(patch: list[dict[str, Any]]) -> bytes:
    """Compact JSON. orjson is ~10x the stdlib here; it refuses what JSON cannot carry exactly
    (integers beyond 64 bits, lone surrogates from a hand-made dict), which the stdlib encodes."""
    try:
        return orjson.dumps(patch)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(patch, separators=(",", ":")).encode()


def review(body: Any, settings: Settings, inp: ReviewInput | None = None) -> ReviewResult:
    """One AdmissionReview request -> the full AdmissionReview response. Never raises.
    `inp`: review_input(body) when the caller has it already (the server keys its cache on it)."""
    uid = _uid(body)
    api_version = body.get("apiVersion") if isinstance(body, dict) else None
    api_version = api_version if api_version in API_VERSIONS else API_VERSIONS[0]
    try:
        if inp is None:
            inp = review_input(body)
        result = decide(inp, settings)
        if inp.uid_ok:  # the answer names the request only through its uid
            result.uid = result.response["response"]["uid"] = uid
            if inp.pod is not None:
                result.pod = _pod_name(body)
        return result
    except Exception as exc:  # a bug: still answer (refuse) cleanly; the server logs internal_error
        msg = f"kms-injector could not process this pod (internal error {type(exc).__name__}); see the webhook logs"
        return ReviewResult(_answer(api_version, uid, False, message=msg, code=500), "invalid", uid=uid,
                            message=msg, internal_error=type(exc).__name__)


def decide(inp: ReviewInput, settings: Settings) -> ReviewResult:
    """The answer for one review input, with an empty uid (review() copies the request's in)."""
    v = inp.api_version
    if inp.problem:
        return ReviewResult(_answer(v, "", False, message=inp.problem, code=400), "invalid", message=inp.problem)
    if inp.skip == "kind":
        return ReviewResult(_answer(v, "", True), "skip", message=f"not a Pod: {inp.kind}")
    if inp.skip:
        return ReviewResult(_answer(v, "", True), "skip")
    ns = inp.namespace
    try:
        m = plan(inp.pod, ns, settings)
    except AnnotationError as exc:
        msg = str(exc)
        return ReviewResult(_answer(v, "", False, message=msg, code=exc.code), "rejected", "", ns, message=msg)
    except PodShapeError as exc:
        msg = str(exc)
        return ReviewResult(_answer(v, "", False, message=msg, code=400), "invalid", "", ns, message=msg)
    return ReviewResult(_answer(v, "", True, m.patch, m.warnings), m.decision, "", ns, warnings=m.warnings)


def _uid(body: Any) -> str:
    request = body.get("request") if isinstance(body, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) else ""


def _pod_name(body: dict) -> str:
    """name, else generateName (controller-made pods): for the log line only, never the decision."""
    obj = body["request"].get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = (meta.get("name") or meta.get("generateName") or "") if isinstance(meta, dict) else ""
    return name if isinstance(name, str) else ""


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
