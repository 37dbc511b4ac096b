"""The agent process: build the parts, run one mode on asyncio, stop cleanly on SIGTERM/SIGINT.

`run_process(config, log)` -> exit code. The health server, the credential watch and the change
trigger run under one supervisor (restarted with a log line if they die); the loop's default
executor is `_DaemonThreads` (see its docstring for why).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import signal
import threading
from typing import Any, Callable

from injector.agent_loop import AgentLoop
from injector.config import AgentConfig, ConfigError
from injector.health import token_counters
from injector.log import Logger
from injector.supervisor import Supervisor

SHUTDOWN_GRACE = 0.5


def build_loop(config: AgentConfig, log: Logger, supervisor: Supervisor) -> AgentLoop:
    from injector.kms.client import build_client
    from injector.writer import AtomicWriter

    client = build_client(config, log)  # auth (universal | kubernetes) and backend (api: auto/infisical/canonical)
    writer = AtomicWriter(config.mount_path, config.file_mode, log)
    loop = AgentLoop(config, client, writer, log, supervisor=supervisor)
    loop.add_metrics_source(token_counters(client), key="tokens")  # kms_agent_auth_logins_total / _renewals_total
    if config.mode == "sidecar" and config.relay_url:
        import functools

        from injector.event_trigger import relay_change_trigger
        from injector.relay_client import RelayClientState

        # The relay's notices instead of KMS events (why not both: injector.event_trigger's doc).
        loop.add_trigger(functools.partial(relay_change_trigger, state=RelayClientState()), "change-relay")
    elif config.mode == "sidecar":
        from injector.event_trigger import event_trigger

        loop.add_trigger(event_trigger, "change-events")  # KMS change events -> debounced early fetch
    if config.mode == "sidecar":
        loop.add_trigger(_keep_token_fresh, "token-keeper")  # periodic tokens shorter than the poll
    return loop


async def _keep_token_fresh(loop: AgentLoop) -> None:
    """Renew a periodic token whose period is shorter than the poll interval on time (it would
    lapse between polls, and each poll would cost a login); idle for every other token."""
    await loop.client.keep_token_fresh(loop.config.refresh_interval)


class _DaemonThreads(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: one daemon thread per call, never joined.

    asyncio resolves host names with getaddrinfo() in its default executor, and asyncio.run()
    joins that executor at exit: with a dead cluster DNS, a lookup that cannot be cancelled held
    a SIGTERM'd agent for as long as the resolver retries (minutes), until kubelet's SIGKILL.
    Lookups are rare (one per new connection), so a thread each costs nothing that matters."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def work() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)

        threading.Thread(target=work, name="kms-agent-lookup", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing to join: a stuck lookup dies with the process


async def _serve_health(loop: AgentLoop, port: int, log: Logger) -> None:
    from injector.health import HealthServer

    server = HealthServer(loop.metrics, loop.ready, port)
    try:
        await server.start()
    except OSError as exc:  # a port in use stays in use: report once, do not restart
        log.error("health_failed", port=port, error=exc.strerror or str(exc))
        return
    log.info("health_listening", port=server.port)
    await server.serve()


async def _close(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if close is None:
        return
    try:
        result = close()
        if inspect.isawaitable(result):
            async with asyncio.timeout(SHUTDOWN_GRACE):
                await result
    except Exception:
        pass


async def run(config: AgentConfig, log: Logger) -> int:
    supervisor = Supervisor(log)
    agent = build_loop(config, log, supervisor)
    aloop = asyncio.get_running_loop()
    aloop.set_default_executor(_DaemonThreads())
    main_task = asyncio.current_task()
    assert main_task is not None
    stopping: list[str] = []
    closing: list[bool] = []  # set once the work is done and only the (bounded) close remains

    def on_signal(signame: str) -> None:
        if not stopping:
            stopping.append(signame)
            log.info("stopping", signal=signame)
            # While closing, the outcome is already decided (an init that synced has written its
            # files) and the close is bounded by SHUTDOWN_GRACE: cancelling it would only turn a
            # finished run into an uncaught CancelledError and exit 1.
            if not closing:
                main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        aloop.add_signal_handler(sig, on_signal, sig.name)

    if config.health_port:
        supervisor.start("health", lambda: _serve_health(agent, config.health_port, log))
    try:
        try:
            agent.writer.repair()
        except OSError as exc:
            log.warning("repair_failed", mount_path=config.mount_path, error=exc.strerror or str(exc))
        log.info("starting", mode=config.mode, host=config.host, project=config.project, env=config.env,
                 paths=[s.path for s in config.sources], mount_path=config.mount_path,
                 refresh_interval=config.refresh_interval)
        if config.mode == "init" and (config.signal or config.command):
            log.info("notify_skipped", reason="the init container never notifies; the sidecar does after a change")
        elif config.signal and not config.signal_process:
            log.warning("signal_without_process", signal=config.signal, hint="set signal_process; nothing will be signalled")
        if config.mode == "init":
            return await agent.run_init()
        await agent.run_sidecar()
        return 0
    except asyncio.CancelledError:
        if not stopping:
            raise
        # SIGTERM/SIGINT: the sidecar's job is done; an init succeeded once its files are written.
        return 0 if (config.mode == "sidecar" or agent.state.ready) else 1
    finally:
        closing.append(True)
        try:
            await supervisor.stop()
            await _close(agent.client)
        except asyncio.CancelledError:
            if not stopping:  # not our signal: someone else cancels this task
                raise


def run_process(config: AgentConfig, log: Logger) -> int:
    try:
        return asyncio.run(run(config, log))
    except ConfigError as exc:
        import sys

        print(f"kms-agent: bad config: {exc.field}: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
