"""The process scaffolding the webhook (webhook/server.py) and the relay (relay/server.py) share.

Both are HTTPS servers with the same life: arguments for TLS files or auto-TLS, a settings file
hot-reloaded (webhook/settings_reload.py), a served certificate reloaded (webhook/tls.py), a heap
frozen once built, SIGTERM -> unready -> a grace delay -> the tasks stopped. Standard library only
at import time: the relay must not load aiohttp (each import here is what both already pay).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from injector.log import Logger
from webhook.metrics import Metrics
from webhook.tls import CertReloader

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace() -> str:
    """POD_NAMESPACE, else the service account's namespace file, else "default"."""
    env = os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip() or "default"
    except OSError:
        return "default"


def not_ready_reasons(state: Any) -> list[str]:
    """Why a server state (`settings`, `reloader`, `shutting_down`, `extra_not_ready`) is not ready:
    /readyz's reasons, [] when ready."""
    reasons = []
    if state.settings is None:
        reasons.append("settings not loaded")
    if not state.reloader.loaded:
        reasons.append("no serving certificate loaded yet")
    if state.shutting_down:
        reasons.append("shutting down")
    if state.extra_not_ready:
        reasons += state.extra_not_ready()
    return reasons


def add_serving_args(p: argparse.ArgumentParser, *, settings_help: str, auto_help: str, secret_help: str) -> None:
    """--settings, --host, --port and the TLS source (--tls-mode, --tls-cert, --tls-key, --tls-secret)."""
    p.add_argument("--settings", help=settings_help)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443; 0 = any free port)")
    p.add_argument("--tls-mode", choices=("files", "auto"), default="files",
                   help="files: serve --tls-cert/--tls-key (cert-manager or Helm made them); auto: " + auto_help)
    p.add_argument("--tls-cert", help="PEM certificate file (files mode); reloaded when it changes")
    p.add_argument("--tls-key", help="PEM private key file (files mode); reloaded when it changes")
    p.add_argument("--tls-secret", default="kms-injector-tls", help=secret_help)


def add_shutdown_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shutdown-delay", type=float, default=0.0,
                   help="seconds to keep serving (unready) after SIGTERM, so endpoints drop us first")


def check_serving_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse files mode without its files (exits 2 with the usage line); default --namespace."""
    if args.tls_mode == "files" and not (args.tls_cert and args.tls_key):
        p.error("--tls-mode files needs --tls-cert FILE and --tls-key FILE (or use --tls-mode auto)")
    if args.namespace is None:
        args.namespace = default_namespace()


def run(serve: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 0


def load_settings(path: str | None, log: Logger, settings_log: Logger, metrics: Metrics, program: str) -> tuple[Any, Any]:
    """(reloader or None, Settings or None when invalid: logged and printed, the caller exits 2)."""
    from webhook.settings import Settings  # noqa: PLC0415 (lazy: keeps `--help` fast)

    if not path:
        return None, Settings()
    from webhook.settings_reload import SettingsReloader  # noqa: PLC0415

    reloader = SettingsReloader(path, metrics=metrics, log=settings_log)
    try:
        return reloader, reloader.load_now()
    except (OSError, ValueError) as exc:
        # SettingsError is a ValueError whose message names the field and what is accepted.
        log.error("settings_invalid", path=path, error=str(exc) if isinstance(exc, ValueError) else exc.strerror)
        print(f"kms-injector {program}: {exc}", file=sys.stderr)
        return None, None


def cert_reloader(args: argparse.Namespace, log: Logger, tls_log: Logger,
                  on_reload: Callable[[bool], None]) -> CertReloader | None:
    """The served certificate: --tls-cert/--tls-key, or auto mode's files in --cert-dir (made here;
    None when it cannot be: logged). Loaded at once when present; the watch picks up the rest."""
    if args.tls_mode == "auto":
        cert_dir = Path(args.cert_dir)
        try:
            cert_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cert_dir_unwritable", cert_dir=str(cert_dir), error=exc.strerror)
            return None
        cert_path, key_path = cert_dir / "tls.crt", cert_dir / "tls.key"
    else:
        cert_path, key_path = Path(args.tls_cert), Path(args.tls_key)
    reloader = CertReloader(cert_path, key_path, log=tls_log, on_reload=on_reload)
    reloader.load_now()
    return reloader


def watch_tasks(stop: asyncio.Event, reloader: CertReloader, settings_reloader: Any,
                on_settings: Callable[[Any], None]) -> list[asyncio.Task]:
    """The certificate watch and, with a settings file, its watch handing new settings over."""
    tasks = [asyncio.create_task(reloader.watch(stop), name="tls-watch")]
    if settings_reloader is not None:
        settings_reloader.on_change = on_settings
        tasks.append(asyncio.create_task(settings_reloader.watch(stop), name="settings-watch"))
    return tasks


def freeze_heap() -> None:
    """Everything built so far lives for the whole process: move it out of the collector's reach
    so full collections (which add to p99) only walk per-request garbage."""
    gc.collect()
    gc.freeze()


async def until_signal() -> None:
    loop = asyncio.get_running_loop()
    got_signal = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, got_signal.set)
    await got_signal.wait()


async def drain(state: Any, log: Logger, delay: float, **fields: Any) -> None:
    """Unready at once (readyz says "shutting down"), still serving for `delay` seconds."""
    state.shutting_down = True
    log.info("shutting_down", delay=delay, **fields)
    if delay > 0:
        await asyncio.sleep(delay)


async def stop_tasks(stop: asyncio.Event, tasks: list[asyncio.Task], auto: Any) -> None:
    """Stop the long-lived tasks, then auto-TLS's Kubernetes client (when auto mode ran)."""
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if auto is not None:
        await auto.close()
