"""`kms-injector webhook`: the mutating admission webhook process over HTTPS (aiohttp).

The application (endpoints, the hot path, the answer cache) is webhook/app.py; this module is the
process: arguments, settings and certificate (files or auto-TLS), listen, SIGTERM -> unready ->
grace delay -> stop. The scaffolding it shares with the relay is webhook/serving.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path

from aiohttp import web

from webhook import serving
from webhook.app import DEFAULT_MAX_BODY, WebhookState, fast_logger, make_app
from webhook.metrics import Metrics
from webhook.review_cache import ReviewCache

# What callers have always imported from here (tests, bench): one home each, named above.
__all__ = ["DEFAULT_MAX_BODY", "ReviewCache", "WebhookState", "fast_logger", "make_app", "main", "parse_args", "serve"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kms-injector webhook", description="Run the kms-injector mutating admission webhook over HTTPS.")
    serving.add_serving_args(
        p, settings_help="webhook settings YAML (a mounted ConfigMap); built-in defaults when omitted",
        auto_help="make and rotate our own CA and cert, stored in --tls-secret",
        secret_help="auto mode: Secret holding the CA and serving cert")
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
    serving.add_shutdown_arg(p)
    args = p.parse_args(argv)
    serving.check_serving_args(p, args)
    return args


def main(argv: list[str]) -> int:
    return serving.run(serve, parse_args(argv))


async def serve(args: argparse.Namespace) -> int:
    log = fast_logger("webhook")
    metrics = Metrics()
    settings_reloader, settings = serving.load_settings(args.settings, log, log.named("webhook.settings"), metrics, "webhook")
    if settings is None:
        return 2

    def on_reload(ok: bool) -> None:
        metrics.tls_reloads["ok" if ok else "failed"] += 1

    reloader = serving.cert_reloader(args, log, log.named("webhook.tls"), on_reload)
    if reloader is None:
        return 2
    state = WebhookState(settings=settings, reloader=reloader, log=log, metrics=metrics, max_body=args.max_body_bytes,
                         cache=ReviewCache(args.review_cache) if args.review_cache > 0 else None)
    app = make_app(state)

    stop = asyncio.Event()
    tasks = serving.watch_tasks(stop, reloader, settings_reloader, state.swap_settings)
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
    serving.freeze_heap()
    port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port  # type: ignore[union-attr]
    log.info("listening", host=args.host, port=port, tls_mode=args.tls_mode, ready=not state.not_ready_reasons(), pid=os.getpid())

    await serving.until_signal()
    await serving.drain(state, log, args.shutdown_delay)
    await serving.stop_tasks(stop, tasks, auto)
    await runner.cleanup()
    log.info("stopped")
    return 0
