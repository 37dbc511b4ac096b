"""`kms-injector relay`: the change relay over HTTPS (relay/https_server.py).

Endpoints:
  POST /v1/watch   an agent's one long-lived SSE stream (contract: relay/protocol.py). The pod proves
                   who it is with a projected service-account token (TokenReview, relay/tokenreview.py);
                   the webhook's path policies (the same settings file) decide what it may watch.
  GET  /healthz    the process answers
  GET  /readyz     200 once settings are loaded and a real certificate is served, else 503 + reasons
  GET  /metrics    Prometheus text (relay/metrics.py)

Replicas are independent (no leader): each watches what its own subscribers ask for. A refused
subscription gets 400 / 401 / 403 JSON naming what was wrong (the folder and the policy) and what is
accepted; the KMS being down refuses nothing (the stream opens, notices resume when KMS is back).
No secret value ever reaches this process's answers, logs or metrics: see relay/watch.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from injector.log import Logger, get_logger
from relay.https_server import Conn, HttpsServer, Request, Response
from relay.metrics import RelayCounters, render
from relay.protocol import HEARTBEAT, MAX_BODY, PING, SubscribeError, parse_subscription, sse
from relay.tokenreview import ReviewUnavailable, TokenReviewer, Unauthenticated
from relay.watch import Subscriber, Watcher
from webhook import serving
from webhook.metrics import Metrics
from webhook.tls import CertReloader

DEFAULT_AUDIENCE = "kms-relay.hanzo.ai"


@dataclass
class RelayState:
    settings: Any  # webhook.settings.Settings
    reloader: CertReloader
    watcher: Watcher
    reviewer: TokenReviewer
    log: Logger
    counters: RelayCounters = field(default_factory=RelayCounters)
    heartbeat: float = HEARTBEAT
    max_subscribers: int = 20_000
    ready_wait: float = 10.0  # how long "subscribed" waits for a new folder's first check
    shutting_down: bool = False
    subscribers: set[Subscriber] = field(default_factory=set)
    extra_not_ready: Callable[[], list[str]] | None = None

    def not_ready_reasons(self) -> list[str]:
        return serving.not_ready_reasons(self)

    def swap_settings(self, settings: Any) -> None:
        """New settings for new subscriptions; open streams that the new policy refuses are closed
        (their agents reconnect and are told why)."""
        self.settings = settings
        for sub in list(self.subscribers):
            if any(_refusal(settings, sub.namespace, sub.service_account, f) for f in sub.folders):
                self.log.info("subscriber_closed", namespace=sub.namespace, service_account=sub.service_account,
                              reason="the new settings no longer allow one of its folders")
                sub.push(None)


def _error(status: int, error: str, message: str, **extra: Any) -> Response:
    headers = (("Retry-After", "5"),) if status == 503 else ()
    return Response(status, json.dumps({"error": error, "message": message, **extra}).encode(), headers=headers)


def _refusal(settings: Any, namespace: str, service_account: str, folder: Any) -> str | None:
    if not settings.host_allowed(folder.host):
        return (f"host {folder.host!r} is not the settings' host nor on allowed_hosts; the relay watches only "
                "KMS hosts the webhook would let a pod name")
    return settings.check_path(namespace, service_account, folder.project, folder.path)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n")  # the body ends when the connection does


def make_handler(state: RelayState) -> Callable[[Request, Conn], Awaitable[Response | None]]:
    log, counters, watcher = state.log, state.counters, state.watcher

    async def watch(request: Request, conn: Conn) -> Response | None:
        if state.shutting_down:
            counters.refuse("shutting_down")
            return _error(503, "ServiceUnavailable", "this relay replica is shutting down; reconnect (another replica answers)")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            counters.refuse("unauthenticated")
            return _error(401, "Unauthorized", "send Authorization: Bearer <projected service-account token with "
                          f"audience {state.reviewer.audience!r}>")
        try:
            folders = parse_subscription(request.body)
        except SubscribeError as exc:
            counters.refuse("bad_request")
            return _error(400, "BadRequest", str(exc))
        try:
            who = await state.reviewer.review(token.strip())
        except Unauthenticated as exc:
            counters.refuse("unauthenticated")
            log.info("subscribe_refused", status=401, reason=str(exc))
            return _error(401, "Unauthorized", str(exc))
        except ReviewUnavailable as exc:
            counters.refuse("review_unavailable")
            log.warning("token_review_unavailable", reason=str(exc))
            return _error(503, "ServiceUnavailable", f"cannot check the token now ({exc}); retry")
        settings = state.settings
        for f in folders:
            why = _refusal(settings, who.namespace, who.service_account, f)
            if why is not None:
                counters.refuse("forbidden")
                log.info("subscribe_refused", status=403, namespace=who.namespace, service_account=who.service_account,
                         folder=f.label(), host=f.host)
                return _error(403, "Forbidden", f"service account {who.namespace}/{who.service_account} may not watch "
                              f"{f.label()} on {f.host}", folder=f.to_json(), policy=why)
        if watcher.subscribers >= state.max_subscribers:
            counters.refuse("full")
            return _error(503, "ServiceUnavailable", f"this replica holds {state.max_subscribers} subscribers; retry (another replica may answer)")
        if conn.closed:  # the agent went away during the review
            return None

        conn.start_stream(SSE_HEAD)
        sub = Subscriber(who.namespace, who.service_account, folders, conn)

        def gone() -> None:
            state.subscribers.discard(sub)
            watcher.remove(sub)

        conn.on_close = gone
        fws = watcher.add(sub)
        state.subscribers.add(sub)
        counters.subscribes += 1
        # Wait for new folders' first check, so a change made after the agent's (re)fetch and
        # before our baseline is not folded into the baseline unseen. Notices found meanwhile are
        # held by the subscriber and follow "subscribed".
        try:
            async with asyncio.timeout(state.ready_wait):
                for fw in fws:
                    await fw.ready.wait()
        except TimeoutError:
            pass
        sub.release(sse("subscribed", {"folders": [fw.status() for fw in fws], "heartbeat": state.heartbeat}))
        return None

    async def handle(request: Request, conn: Conn) -> Response | None:
        path, method = request.path, request.method
        if path == "/v1/watch":
            if method != "POST":
                return _error(405, "MethodNotAllowed", f"{method} {path} is not supported; use POST /v1/watch")
            return await watch(request, conn)
        if method != "GET" or path not in ("/healthz", "/readyz", "/metrics"):
            return _error(404, "NotFound", f"{method} {path} is not a relay route; accepted: POST /v1/watch, "
                          "GET /healthz, GET /readyz, GET /metrics")
        if path == "/healthz":
            return Response(200, b'{"status":"ok"}')
        if path == "/readyz":
            reasons = state.not_ready_reasons()
            if reasons:
                return Response(503, json.dumps({"status": "not ready", "reasons": reasons}).encode())
            return Response(200, b'{"status":"ready"}')
        text = render(counters, watcher, state.reviewer, ready=not state.not_ready_reasons())
        return Response(200, text.encode(), content_type="text/plain; charset=utf-8")

    return handle


async def heartbeats(state: RelayState, stop: asyncio.Event) -> None:
    """One timer for every stream: a `: ping` to each subscriber every heartbeat, in one loop."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(state.heartbeat):
                await stop.wait()
        except TimeoutError:
            pass
        if stop.is_set():
            return
        for sub in list(state.subscribers):
            sub.push(PING)


# --- command line --------------------------------------------------------------------------------

def _duration(text: str) -> float:
    from injector.config import ConfigError, parse_duration

    try:
        value = parse_duration(text, "duration")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not accepted; use true or false")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kms-injector relay",
                                description="Run the change relay: watch each KMS folder once, notify the agents that subscribed.")
    serving.add_serving_args(
        p, settings_help="the webhook's settings YAML (path policies, allowed hosts); built-in defaults when omitted",
        auto_help="issue our own serving certificate from the webhook's self-managed CA (the Secret --tls-secret)",
        secret_help="auto mode: the webhook's TLS Secret holding ca.crt/ca.key")
    p.add_argument("--service", default="kms-injector-relay", help="auto mode: Service name the certificate is issued for")
    p.add_argument("--namespace", default=None, help="auto mode: our namespace (default: POD_NAMESPACE, then the service account's)")
    p.add_argument("--cert-dir", default="/var/run/kms-relay/tls", help="auto mode: writable dir for the served tls.crt/tls.key")
    p.add_argument("--credentials-dir", default="/kms/auth",
                   help="the relay's own machine identity: a dir with clientId and clientSecret files (default /kms/auth)")
    p.add_argument("--api", choices=("auto", "infisical", "canonical"), default="auto", help="KMS API (default auto: detected)")
    p.add_argument("--kms-ca-file", default=None, help="PEM bundle trusted for https KMS hosts")
    p.add_argument("--poll-interval", type=_duration, default=2.0, help="folder check interval without events (default 2s)")
    p.add_argument("--safety-interval", type=_duration, default=30.0,
                   help="folder check interval while a KMS event stream is up (default 30s)")
    p.add_argument("--read-values", type=_bool, default=True,
                   help="true (default): where a change shows only in values, read them, keep a digest, drop them; "
                        "false: leave such folders to the agents' own polling")
    p.add_argument("--events", type=_bool, default=True, help="use KMS change-event streams where they work (default true)")
    p.add_argument("--audience", default=DEFAULT_AUDIENCE, help=f"audience agents' projected tokens must carry (default {DEFAULT_AUDIENCE})")
    p.add_argument("--heartbeat", type=_duration, default=HEARTBEAT, help=f"seconds between heartbeats (default {HEARTBEAT:g})")
    p.add_argument("--max-subscribers", type=int, default=20_000, help="open streams per replica before 503 (default 20000)")
    p.add_argument("--request-timeout", type=_duration, default=10.0, help="KMS request timeout (default 10s)")
    serving.add_shutdown_arg(p)
    args = p.parse_args(argv)
    serving.check_serving_args(p, args)
    if not args.audience or any(c.isspace() for c in args.audience):
        p.error(f"--audience {args.audience!r} is not an audience (non-empty, no spaces)")
    return args


def main(argv: list[str]) -> int:
    return serving.run(serve, parse_args(argv))


async def serve(args: argparse.Namespace) -> int:
    from injector.kms.auth import UniversalAuthFiles

    log = get_logger("relay")
    settings_reloader, settings = serving.load_settings(args.settings, log, get_logger("relay.settings"), Metrics(), "relay")
    if settings is None:
        return 2
    counters = RelayCounters()

    def on_reload(ok: bool) -> None:
        counters.tls_reloads["ok" if ok else "failed"] += 1

    reloader = serving.cert_reloader(args, log, get_logger("relay.tls"), on_reload)
    if reloader is None:
        return 2

    watcher = Watcher(credentials=UniversalAuthFiles(args.credentials_dir), api=args.api, poll_interval=args.poll_interval,
                      safety_interval=args.safety_interval, read_values=args.read_values, events=args.events,
                      log=get_logger("relay.watch"), request_timeout=args.request_timeout, ca_file=args.kms_ca_file)
    reviewer = TokenReviewer(args.audience)
    state = RelayState(settings=settings, reloader=reloader, watcher=watcher, reviewer=reviewer, log=log,
                       counters=counters, heartbeat=args.heartbeat, max_subscribers=args.max_subscribers)
    stop = asyncio.Event()
    tasks = serving.watch_tasks(stop, reloader, settings_reloader, state.swap_settings)
    auto = None
    if args.tls_mode == "auto":
        from relay.autotls import RelayAutoTLS

        auto = RelayAutoTLS(namespace=args.namespace, secret=args.tls_secret, service=args.service,
                            cert_dir=Path(args.cert_dir), log=get_logger("relay.autotls"))
        state.extra_not_ready = auto.not_ready_reasons
        tasks.append(asyncio.create_task(auto.run(stop), name="auto-tls"))

    server = HttpsServer(make_handler(state), reloader.server_context, max_body=MAX_BODY, log=log)
    try:
        server.listen(args.host, args.port)
    except OSError as exc:
        log.error("listen_failed", host=args.host, port=args.port, error=exc.strerror)
        return 2
    tasks.append(asyncio.create_task(heartbeats(state, stop), name="heartbeats"))
    # Everything built so far lives as long as the process: keep it out of the collector's walks,
    # and collect young objects less often (10,000 subscribers are ~10^6 live objects: a full
    # collection in the middle of a fan-out delays every notice behind it).
    serving.freeze_heap()
    gc.set_threshold(50_000, 20, 100)
    port = server.port
    log.info("listening", host=args.host, port=port, tls_mode=args.tls_mode, poll_interval=args.poll_interval,
             read_values=args.read_values, events=args.events, audience=args.audience, pid=os.getpid(),
             ready=not state.not_ready_reasons())

    await serving.until_signal()
    await serving.drain(state, log, args.shutdown_delay, subscribers=watcher.subscribers)
    for sub in list(state.subscribers):  # end the streams: agents reconnect to another replica
        sub.push(None)
    await serving.stop_tasks(stop, tasks, auto)
    await server.close()
    await watcher.close()
    await reviewer.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
