"""`kms-injector webhook`: the mutating admission webhook over HTTPS (aiohttp).

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

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from aiohttp import web

from injector.log import Logger, get_logger
from webhook.metrics import Metrics
from webhook.tls import CertReloader

DEFAULT_MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's own request limit; pods are far smaller
ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
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
        reasons = []
        if self.settings is None:
            reasons.append("settings not loaded")
        if not self.reloader.loaded:
            reasons.append("no serving certificate loaded yet")
        if self.shutting_down:
            reasons.append("shutting down")
        if self.extra_not_ready:
            reasons += self.extra_not_ready()
        return reasons


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


class ReviewCache:
    """Answers already given, keyed by what decides them (webhook.review_key): the pods of one
    rollout or Job differ in their generated names, service-account volume, timestamps and labels,
    none of which review() reads, so a scale-up to N pods costs one review() and N-1 lookups.

    Settings are fixed until a reload, which clears this cache (WebhookState.swap_settings).
    The key is compared exactly (no digest to trust). Internal errors are never cached. Bounded
    LRU: at most `size` entries and `max_bytes` of keys and answers together; a request, key or
    answer over `max_entry` bytes is not cached at all.
    """

    def __init__(self, size: int = 512, max_bytes: int = 16 << 20, max_entry: int = 256 << 10) -> None:
        from collections import OrderedDict

        from webhook.review_key import input_key  # noqa: PLC0415 (lazy, like review(): keeps `--help` fast)

        self._input_key = input_key

        self.size = size
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self.entries: "OrderedDict[bytes, tuple[tuple, int]]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, inp: Any, body_size: int = 0) -> bytes | None:
        """The key of a review input (webhook.review_input), or None: do not cache."""
        return self._input_key(inp, self.max_entry) if body_size <= self.max_entry else None

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def get(self, key: bytes) -> tuple | None:
        hit = self.entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return hit[0]

    def put(self, key: bytes, value: tuple, answer_size: int) -> None:
        size = len(key) + answer_size
        if size > self.max_entry or key in self.entries:
            return
        self.entries[key] = (value, size)
        self.bytes += size
        while len(self.entries) > self.size or self.bytes > self.max_bytes:
            _, (_, old) = self.entries.popitem(last=False)
            self.bytes -= old


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


# --- command line --------------------------------------------------------------------------------

def default_namespace() -> str:
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip() or "default"
    except OSError:
        return "default"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kms-injector webhook", description="Run the kms-injector mutating admission webhook over HTTPS.")
    p.add_argument("--settings", help="webhook settings YAML (a mounted ConfigMap); built-in defaults when omitted")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443; 0 = any free port)")
    p.add_argument("--tls-mode", choices=("files", "auto"), default="files",
                   help="files: serve --tls-cert/--tls-key (cert-manager or Helm made them); "
                        "auto: make and rotate our own CA and cert, stored in --tls-secret")
    p.add_argument("--tls-cert", help="PEM certificate file (files mode); reloaded when it changes")
    p.add_argument("--tls-key", help="PEM private key file (files mode); reloaded when it changes")
    p.add_argument("--tls-secret", default="kms-injector-tls", help="auto mode: Secret holding the CA and serving cert")
    p.add_argument("--webhook-config", default="kms-injector", help="auto mode: MutatingWebhookConfiguration whose caBundle we patch")
    p.add_argument("--service", default="kms-injector", help="auto mode: Service name the cert is issued for")
    p.add_argument("--namespace", default=None, help="auto mode: our namespace (default: POD_NAMESPACE, then the service account's)")
    p.add_argument("--lease", default="kms-injector-tls", help="auto mode: coordination.k8s.io Lease electing the one replica that writes")
    p.add_argument("--cert-dir", default="/var/run/kms-injector/tls",
                   help="auto mode: writable dir (emptyDir) where the served tls.crt/tls.key are written")
    p.add_argument("--pod-name", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="auto mode: this replica's Lease holder identity (default: POD_NAME, then hostname)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY, help=f"largest accepted AdmissionReview (default {DEFAULT_MAX_BODY})")
    p.add_argument("--review-cache", type=int, default=512,
                   help="remember this many answers, keyed by what decides them, so the pods of one rollout are reviewed "
                        "once (webhook/review_key.py); 0 disables")
    p.add_argument("--shutdown-delay", type=float, default=0.0,
                   help="seconds to keep serving (unready) after SIGTERM, so endpoints drop us first")
    args = p.parse_args(argv)
    if args.tls_mode == "files" and not (args.tls_cert and args.tls_key):
        p.error("--tls-mode files needs --tls-cert FILE and --tls-key FILE (or use --tls-mode auto)")
    if args.namespace is None:
        args.namespace = default_namespace()
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


async def serve(args: argparse.Namespace) -> int:
    log = fast_logger("webhook")
    metrics = Metrics()
    settings_reloader = _settings_reloader(args.settings, metrics, log)
    settings = _load_settings(args.settings, log, settings_reloader)
    if settings is None:
        return 2

    def on_reload(ok: bool) -> None:
        metrics.tls_reloads["ok" if ok else "failed"] += 1

    if args.tls_mode == "auto":
        cert_dir = Path(args.cert_dir)
        try:
            cert_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cert_dir_unwritable", cert_dir=str(cert_dir), error=exc.strerror)
            return 2
        cert_path, key_path = cert_dir / "tls.crt", cert_dir / "tls.key"
    else:
        cert_path, key_path = Path(args.tls_cert), Path(args.tls_key)

    reloader = CertReloader(cert_path, key_path, log=log.named("webhook.tls"), on_reload=on_reload)
    reloader.load_now()  # files mode: normally ready at once; otherwise the watcher picks it up
    state = WebhookState(settings=settings, reloader=reloader, log=log, metrics=metrics, max_body=args.max_body_bytes,
                         cache=ReviewCache(args.review_cache) if args.review_cache > 0 else None)
    app = make_app(state)

    stop = asyncio.Event()
    tasks = [asyncio.create_task(reloader.watch(stop), name="tls-watch")]
    if settings_reloader is not None:
        settings_reloader.on_change = state.swap_settings
        tasks.append(asyncio.create_task(settings_reloader.watch(stop), name="settings-watch"))
    auto = None
    if args.tls_mode == "auto":
        from webhook import autotls  # noqa: PLC0415 (kubernetes-asyncio only in auto mode)

        auto = autotls.AutoTLS(autotls.AutoTLSConfig(
            namespace=args.namespace, secret=args.tls_secret, webhook_config=args.webhook_config,
            service=args.service, lease=args.lease, cert_dir=Path(args.cert_dir), identity=args.pod_name,
        ), log=log.named("webhook.autotls"))
        state.extra_not_ready = auto.not_ready_reasons
        tasks.append(asyncio.create_task(auto.run(stop), name="auto-tls"))

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=reloader.server_context, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        log.error("listen_failed", host=args.host, port=args.port, error=exc.strerror)
        await runner.cleanup()
        return 2
    # Everything imported and built so far lives for the whole process: move it out of the
    # collector's reach so full collections (which add to p99) only walk per-request garbage.
    gc.collect()
    gc.freeze()
    port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port  # type: ignore[union-attr]
    log.info("listening", host=args.host, port=port, tls_mode=args.tls_mode, ready=not state.not_ready_reasons(), pid=os.getpid())

    loop = asyncio.get_running_loop()
    got_signal = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, got_signal.set)
    await got_signal.wait()
    state.shutting_down = True
    log.info("shutting_down", delay=args.shutdown_delay)
    if args.shutdown_delay > 0:
        await asyncio.sleep(args.shutdown_delay)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if auto is not None:
        await auto.close()
    await runner.cleanup()
    log.info("stopped")
    return 0


def _settings_reloader(path: str | None, metrics: Metrics, log: Logger) -> Any:
    if not path:
        return None
    from webhook.settings_reload import SettingsReloader  # noqa: PLC0415

    return SettingsReloader(path, metrics=metrics, log=log.named("webhook.settings"))


def _load_settings(path: str | None, log: Logger, reloader: Any = None) -> Any:
    from webhook.settings import Settings, load_settings  # noqa: PLC0415

    if not path:
        return Settings()
    try:
        return reloader.load_now() if reloader is not None else load_settings(path)
    except (OSError, ValueError) as exc:
        # SettingsError is a ValueError whose message names the field and what is accepted.
        log.error("settings_invalid", path=path, error=str(exc) if isinstance(exc, ValueError) else exc.strerror)
        print(f"kms-injector webhook: {exc}", file=sys.stderr)
        return None
