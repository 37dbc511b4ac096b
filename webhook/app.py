"""The webhook's aiohttp application: its state, the handlers and the per-request hot path.

The process around it (arguments, TLS, signals) is webhook/server.py.

Endpoints:
  POST /mutate   AdmissionReview in, AdmissionReview out (webhook.mutate.review does the work)
  GET  /healthz  the process answers (liveness)
  GET  /readyz   200 once settings are parsed AND a real certificate is served, else 503 + reasons
                 (a settings file that changes into something invalid keeps the old settings: ready)
  GET  /metrics  Prometheus text (webhook.metrics)

Bad input never gets a 500: too big -> 413, not application/json -> 415, not JSON or not an
AdmissionReview -> 400, each with a Kubernetes Status body naming what was wrong and what is
accepted. A bug inside review() fails closed (allowed: false, generic message) and logs the
exception type and where it happened, never its message (it could quote annotation values).
One JSON log line per admission: uid, namespace, pod, decision, latency; never values.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from aiohttp import web

from injector.log import Logger, get_logger
from webhook import serving
from webhook.metrics import Metrics
from webhook.review_cache import ReviewCache
from webhook.tls import CertReloader

DEFAULT_MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's own request limit; pods are far smaller
ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
_JSON_HEADERS = {"Content-Type": "application/json"}


def orjson_line(record: dict[str, Any]) -> bytes:
    """injector.log's line, encoded by orjson: the per-admission line is on the hot path, and
    json.dumps costs ~3x this (the logger falls back to it for what orjson refuses)."""
    return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)


def fast_logger(component: str) -> Logger:
    return get_logger(component, encode=orjson_line)


@dataclass
class WebhookState:
    settings: Any  # webhook.settings.Settings, or None until parsed
    reloader: CertReloader
    log: Logger
    metrics: Metrics = field(default_factory=Metrics)
    max_body: int = DEFAULT_MAX_BODY
    review: Callable[[dict, Any], Any] | None = None
    shutting_down: bool = False
    extra_not_ready: Callable[[], list[str]] | None = None  # e.g. auto-TLS reasons
    cache: "ReviewCache | None" = field(default_factory=lambda: ReviewCache())  # None disables it

    def swap_settings(self, settings: Any) -> None:
        """Serve `settings` to every admission from now on (webhook.settings_reload calls this).

        One attribute assignment, so the hot path stays a single `state.settings` read. The
        answer cache is only right for the settings that made its answers, so it is emptied in
        the same step: mutate() reads the settings, reviews and fills the cache with no await in
        between, and this runs on the same event loop, so no stale answer can be stored or served.
        """
        self.settings = settings
        if self.cache is not None:
            self.cache.clear()

    def not_ready_reasons(self) -> list[str]:
        return serving.not_ready_reasons(self)


def _status(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes-style Status object: what kubectl and humans both read."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return web.Response(status=code, body=orjson.dumps(body), headers=_JSON_HEADERS)


def _envelope_error(doc: Any) -> str | None:
    """What is wrong with the AdmissionReview envelope, or None. The pod itself is review()'s job."""
    if not isinstance(doc, dict):
        return f"body is a JSON {type(doc).__name__}; expected an AdmissionReview object"
    if doc.get("kind") != "AdmissionReview":
        return f"kind is {_short(doc.get('kind'))}; expected \"AdmissionReview\""
    if doc.get("apiVersion") not in ADMISSION_VERSIONS:
        return f"apiVersion is {_short(doc.get('apiVersion'))}; expected one of {', '.join(ADMISSION_VERSIONS)}"
    req = doc.get("request")
    if not isinstance(req, dict):
        return "request is missing or not an object; an AdmissionReview to review carries a request"
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        return "request.uid is missing or not a non-empty string; it must be echoed in the response"
    return None


def _short(value: Any) -> str:
    """A type-and-shape hint for messages. Envelope fields only; never annotation values."""
    if value is None:
        return "missing"
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    return f"a {type(value).__name__}"


def _fail_closed(doc: dict, uid: str) -> dict:
    return {
        "apiVersion": doc.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {"code": 500, "reason": "InternalError",
                       "message": f"kms-injector: internal error while reviewing this pod (uid {uid}); see the webhook logs"},
        },
    }


def _request_field(doc: dict, key: str) -> str | None:
    value = doc["request"].get(key)
    return value if isinstance(value, str) else None


def _pod_name(doc: dict) -> str | None:
    """name, else generateName (controller-made pods): for the log line only."""
    name = _request_field(doc, "name")
    if name:
        return name
    obj = doc["request"].get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        for key in ("name", "generateName"):
            if isinstance(meta.get(key), str) and meta[key]:
                return meta[key]
    return None


def _where(exc: BaseException) -> str:
    """file:line:function of the innermost frame: enough to find a bug, no values."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "?"
    f = tb[-1]
    return f"{Path(f.filename).name}:{f.lineno}:{f.name}"



def make_app(state: WebhookState) -> web.Application:
    # The review input is extracted once per request and handed to both the cache key and
    # review() (mutate.review takes it as a third argument). A plugged-in `state.review` keeps
    # the two-argument signature (doc, settings) and extracts what it wants itself.
    from webhook.review_input import review_input  # noqa: PLC0415 (lazy: keeps `--help` fast)

    if state.review is None:
        from webhook.mutate import review as review_  # noqa: PLC0415

        review: Callable[[dict, Any, Any], Any] = review_
    else:
        plugged = state.review

        def review(doc: dict, settings: Any, _inp: Any) -> Any:
            return plugged(doc, settings)
    metrics, log, max_body, cache = state.metrics, state.log, state.max_body, state.cache
    perf = time.perf_counter
    loads, dumps = orjson.loads, orjson.dumps
    log_admission = log.info_soon  # batched: one write(2) per event-loop iteration

    async def mutate(request: web.Request) -> web.Response:
        t0 = perf()
        length = request.content_length
        if length is not None and length > max_body:
            metrics.bad_request(413)
            return _status(413, "RequestEntityTooLarge", f"body is {length} bytes; the limit is {max_body} bytes")
        if request.content_type != "application/json":
            metrics.bad_request(415)
            return _status(415, "UnsupportedMediaType",
                           f"Content-Type is {request.content_type!r}; only application/json is accepted")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.bad_request(413)
            return _status(413, "RequestEntityTooLarge", f"body exceeds the limit of {max_body} bytes")
        try:
            doc = loads(body)
        except orjson.JSONDecodeError as exc:
            metrics.bad_request(400)
            return _status(400, "BadRequest", f"body is not valid JSON ({exc.msg} at byte {exc.pos}); expected an AdmissionReview object")
        problem = _envelope_error(doc)
        if problem is not None:
            metrics.bad_request(400)
            return _status(400, "BadRequest", problem)
        uid = doc["request"]["uid"]
        try:
            inp = review_input(doc)  # never raises by contract; if it did, review() re-extracts inside its own guard
        except Exception:
            inp = None
        key = cache.key(inp, len(body)) if cache is not None and inp is not None else None
        cached = cache.get(key) if key is not None else None
        cacheable = False
        if cached is not None:
            template, decision, namespace, warnings = cached
            response = {**template, "response": {**template["response"], "uid": uid}}
            pod = _pod_name(doc)  # not in the key: each replica logs its own
        else:
            try:
                result = review(doc, state.settings, inp)  # the one settings read (hot reload swaps it)
                response, decision = result.response, result.decision
                namespace, pod, warnings = result.namespace, result.pod, len(result.warnings or ())
                if getattr(result, "internal_error", ""):  # review() caught its own bug and refused
                    decision = "error"
                    log.error("review_failed", uid=uid, error_type=result.internal_error)
                else:
                    cacheable = key is not None and isinstance(response.get("response"), dict)
            except Exception as exc:  # a bug, not bad input: deny (fail closed) and say where
                response, decision, warnings, namespace, pod = _fail_closed(doc, uid), "error", 0, None, None
                log.error("review_failed", uid=uid, error_type=type(exc).__name__, where=_where(exc))
        if not namespace or not pod:
            namespace, pod = namespace or _request_field(doc, "namespace"), pod or _pod_name(doc)
        try:
            out = dumps(response)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an echoed integer beyond 64 bits
            try:
                out = json.dumps(response, separators=(",", ":")).encode()
            except (TypeError, ValueError):
                decision, out, cacheable = "error", dumps(_fail_closed(doc, uid)), False
                log.error("response_unencodable", uid=uid)
        if cacheable:
            cache.put(key, (response, decision, namespace, warnings), len(out))  # type: ignore[union-attr]
        elapsed = perf() - t0
        metrics.observe(decision, elapsed)
        log_admission("admission", uid=uid, namespace=namespace, pod=pod, decision=decision,
                      latency_ms=round(elapsed * 1000, 3), warnings=warnings)
        return web.Response(body=out, headers=_JSON_HEADERS)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', headers=_JSON_HEADERS)

    async def readyz(_: web.Request) -> web.Response:
        reasons = state.not_ready_reasons()
        if reasons:
            return web.Response(status=503, body=orjson.dumps({"status": "not ready", "reasons": reasons}), headers=_JSON_HEADERS)
        return web.Response(body=b'{"status":"ready"}', headers=_JSON_HEADERS)

    async def metrics_handler(_: web.Request) -> web.Response:
        cur = state.reloader.current
        text = metrics.render(ready=not state.not_ready_reasons(), cert_not_after=cur.not_after if cur else None,
                              cache=(cache.hits, cache.misses) if cache is not None else None)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def wrong_method(request: web.Request) -> web.Response:
        return _status(405, "MethodNotAllowed", f"{request.method} {request.path} is not supported; use POST /mutate")

    # client_max_size makes aiohttp stop reading a chunked body past the limit, too.
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_route("*", "/mutate", wrong_method)
    return app
