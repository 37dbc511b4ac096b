"""The in-pod agent: fetch -> render -> write -> notify, once (init) or forever (sidecar).

`kms-injector agent` ends up in `main(argv)`. The loop is small on purpose:

- init: sync until the first success, retrying with capped backoff and full jitter until
  `init_timeout`; then exit 0, or exit 1 with ONE line saying what failed (never a value).
- sidecar: sync every `refresh_interval` (+-10% jitter). Each source keeps its ETag, so an
  unchanged folder costs one 304 and no render, no write, no notification. On errors the last
  good files stay, retries back off (capped, honouring Retry-After), and only state changes are
  logged (healthy -> failing -> healthy, with counts).
- wake-ups: anything may call `Agent.wake(reason)` to fetch early. The credentials watcher does
  so after a fresh login is forced; a KMS change-event source plugs in the same way (see
  `Agent.add_trigger`).

Start-up cost matters (exec to first files <= 300 ms): only the stdlib and the agent's own
modules are imported up front; the credentials watch starts after the first sync attempt, the
health server only when a port is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from injector.backoff import Backoff
from injector.config import AgentConfig, ConfigError
from injector.health import Metrics, token_counters
from injector.kms.errors import CredentialsUnavailable, InvalidCredentials
from injector.log import Logger, get_logger

# Init mode retries fast at first: a pod waits on it.
INIT_BACKOFF_BASE = 0.25
INIT_BACKOFF_CAP = 10.0
SIDECAR_BACKOFF_BASE = 0.5
SIDECAR_BACKOFF_CAP = 300.0
# Wrong credentials are not retried sooner than this unless the credential files change: KMS may
# lock an identity after a few bad logins in a row, which would hurt every pod sharing it.
AUTH_RETRY_FLOOR = 5.0
# KMS locks an identity after 3 wrong logins in a row, for every pod that shares it. So the same
# credentials are tried at most AUTH_MAX_TRIES times; then the agent waits for the credential
# files to change (the watch wakes it at once) and only re-tries every AUTH_PARK seconds.
AUTH_MAX_TRIES = 2
AUTH_PARK = 600.0
JITTER = 0.10
SHUTDOWN_GRACE = 0.5
WATCH_RECHECK = 10.0  # seconds between credential digest re-checks when no file event arrives

Trigger = Callable[["Agent"], Awaitable[None]]


class SyncError(Exception):
    """A sync step outside the KMS client failed (render, write). str() is safe to log."""


@dataclass
class _SourceState:
    etag: str | None = None
    secrets: dict[str, str] | None = None


@dataclass
class _Health:
    """healthy/failing bookkeeping so that only transitions are logged."""

    failing: bool = False
    failures: int = 0
    since: float = 0.0
    last_error: str = ""


@dataclass
class Agent:
    config: AgentConfig
    client: Any  # injector.kms.KmsClient (fetch, close, credential invalidation)
    writer: Any  # injector.writer.AtomicWriter
    log: Logger
    metrics: Metrics = field(default_factory=Metrics)
    rng: random.Random = field(default_factory=random.Random)
    _states: dict[str, _SourceState] = field(default_factory=dict, init=False)
    _dirty: bool = field(default=False, init=False)  # fetched content not yet written
    _wake: asyncio.Event | None = field(default=None, init=False)
    _wake_reason: str = field(default="", init=False)
    written: bool = field(default=False, init=False)  # a complete version is on disk (before notify runs)
    _triggers: list[Trigger] = field(default_factory=list, init=False)
    _health: _Health = field(default_factory=_Health, init=False)
    _rejected: tuple[bytes, int] = field(default=(b"", 0), init=False)  # (credentials digest, refusals)
    # Digest of the credential files as they were before the first login: the watch starts later
    # (after the first sync), and must still see a change made in between.
    _login_fingerprint: bytes | None = field(default=None, init=False)

    # -- wake-ups (credentials changed; later: KMS change events) -------------------------------
    def wake(self, reason: str) -> None:
        """Fetch now instead of at the next tick. Safe to call from any task on the loop; a wake
        during a fetch is not lost (the event is cleared when a sync starts, not when it ends)."""
        self._wake_reason = reason
        if self._wake is not None:
            self._wake.set()

    def add_trigger(self, trigger: Trigger) -> None:
        """Run `trigger(agent)` as a background task in sidecar mode; it calls `agent.wake()`.

        This is the seam for a KMS change-event subscriber: it runs for the agent's lifetime,
        reconnects on its own, and wakes the agent when an event matches (debouncing bursts
        itself). Its failures are logged and never stop the polling loop.
        """
        self._triggers.append(trigger)

    async def _sleep(self, delay: float) -> str:
        """Sleep `delay` seconds or until woken; returns the wake reason ('' on timeout)."""
        assert self._wake is not None
        try:
            async with asyncio.timeout(max(0.0, delay)):
                await self._wake.wait()
        except asyncio.TimeoutError:
            return ""
        return self._wake_reason or "wake"

    # -- one sync ------------------------------------------------------------------------------
    async def sync_once(self) -> bool:
        """Fetch every source; render and write if anything changed; notify on a change.

        Returns True when files on disk changed. Raises the KMS client's typed errors, or
        SyncError, on failure; the files on disk are then untouched.
        """
        cfg = self.config
        if self._wake is not None:
            self._wake.clear()
            self._wake_reason = ""
        for src in cfg.sources:
            st = self._states.setdefault(src.subdir, _SourceState())
            res = await self.client.fetch(
                cfg.project, cfg.env, src.path,
                etag=st.etag if st.secrets is not None else None,
                include_imports=cfg.include_imports, keys=src.keys,
            )
            if res.not_modified and st.secrets is not None:
                self.metrics.not_modified_total += 1
                continue
            if st.secrets != res.secrets:
                self._dirty = True
            st.secrets, st.etag = dict(res.secrets), res.etag
        if not self._dirty:
            return False
        changed = self._render_and_write()
        self._dirty = False
        self.written = True
        if changed:
            self.metrics.changes_total += 1
            await self._notify()
        return changed

    def _render_and_write(self) -> bool:
        from injector.render import render

        secrets = {sub: st.secrets or {} for sub, st in self._states.items()}
        try:
            rendered = render(self.config, secrets)
        except Exception as exc:  # template naming an unknown key, bad format: say which
            raise SyncError(f"render failed: {exc}") from None
        for key, reason in rendered.skipped:  # names only (render shortens them), never values
            self.log.warning("key_skipped", key=key, reason=reason)
        try:
            # Small files on a tmpfs: microseconds, so done on the loop rather than in a thread
            # (a thread pool would cost memory for every agent, forever). The writer logs writes.
            return bool(self.writer.write(rendered.files))
        except OSError as exc:
            raise SyncError(f"writing {self.config.mount_path} failed: {exc.strerror or exc}") from None
        except ValueError as exc:  # a path the writer refuses (render already skips unsafe keys)
            raise SyncError(f"writing {self.config.mount_path} refused: {exc}") from None

    async def _notify(self) -> None:
        """Signal the app or run the command (notify logs what it did, and warns when the
        process is missing: that never fails the sync, the files are right)."""
        cfg = self.config
        try:
            if cfg.signal:
                from injector.notify import send_signal

                self.metrics.signals_total += len(send_signal(cfg.signal_process, cfg.signal, self.log))
            elif cfg.command:
                from injector.notify import run_command

                self.metrics.commands_total += 1
                await run_command(cfg.command, cfg.command_timeout, self.log)
        except Exception as exc:
            self.log.warning("notify_failed", error=f"{type(exc).__name__}: {exc}")

    # -- bookkeeping ---------------------------------------------------------------------------
    def _record_success(self, changed: bool) -> None:
        m = self.metrics
        m.syncs_total += 1
        m.last_success_timestamp_seconds = time.time()
        if not m.ready:
            m.ready = True
            self.log.info("first_sync", changed=changed, sources=len(self.config.sources))
        if self._health.failing:
            self.log.info("sync_recovered", failed_attempts=self._health.failures,
                          outage_seconds=round(time.monotonic() - self._health.since, 1))
        self._health = _Health()
        self._rejected = (b"", 0)
        m.healthy = True

    def _record_failure(self, exc: BaseException) -> str:
        self.metrics.sync_failures_total += 1
        self.metrics.healthy = False
        text = describe_error(exc)
        h = self._health
        if not h.failing:
            h.failing, h.since = True, time.monotonic()
            self.log.warning("sync_failing", error=text, keeping="last good files" if self.metrics.ready else "nothing written yet")
        elif text != h.last_error:
            self.log.info("sync_still_failing", error=text, failed_attempts=h.failures + 1)
        h.failures += 1
        h.last_error = text
        return text

    def _retry_delay(self, backoff: Backoff, exc: BaseException) -> float:
        floor = float(getattr(exc, "retry_after", 0.0) or 0.0)
        if isinstance(exc, InvalidCredentials):
            digest = _fingerprint(credential_files(self.config))
            refusals = self._rejected[1] + 1 if self._rejected[0] == digest else 1
            self._rejected = (digest, refusals)
            if refusals >= AUTH_MAX_TRIES:
                if refusals == AUTH_MAX_TRIES:
                    self.log.warning("credentials_rejected", refusals=refusals, retry_in=AUTH_PARK,
                                     action="waiting for the credential files to change, to keep the identity from being locked")
                return max(floor, AUTH_PARK)
            floor = max(floor, AUTH_RETRY_FLOOR)
        elif isinstance(exc, CredentialsUnavailable):
            floor = max(floor, AUTH_RETRY_FLOOR)
        return backoff.next_delay(floor=floor)

    # -- modes ---------------------------------------------------------------------------------
    async def run_init(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._login_fingerprint = _fingerprint(credential_files(self.config))
        deadline = loop.time() + self.config.init_timeout
        backoff = Backoff(base=INIT_BACKOFF_BASE, cap=INIT_BACKOFF_CAP, rng=self.rng)
        watcher: asyncio.Task | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.01, deadline - loop.time())):
                        changed = await self.sync_once()
                except asyncio.TimeoutError:  # the deadline fell inside an attempt
                    self._health.failures += 1
                    last = f" (before that: {self._health.last_error})" if self._health.last_error else ""
                    return self._init_failed(f"no answer from KMS before the deadline{last}")
                except Exception as exc:
                    text = self._record_failure(exc)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return self._init_failed(text)
                    if watcher is None:  # only watch credentials once something went wrong
                        watcher = asyncio.create_task(watch_credentials(self))
                    await self._sleep(min(self._retry_delay(backoff, exc), remaining))
                    if loop.time() >= deadline:
                        return self._init_failed(text)
                    continue
                self._record_success(changed)
                return 0
        finally:
            if watcher is not None:
                await _cancel(watcher)

    def _init_failed(self, text: str) -> int:
        cfg = self.config
        if "host=" not in text:  # KMS errors name host/project/env/path already; others do not
            paths = ",".join(s.path for s in cfg.sources)
            text += f" (host={cfg.host} project={cfg.project} env={cfg.env} path={paths})"
        attempts = self._health.failures
        print(f"kms-agent: init failed after {cfg.init_timeout:g}s ({attempts} attempt{'s' * (attempts != 1)}): {text}",
              file=sys.stderr, flush=True)
        return 1

    async def run_sidecar(self) -> None:
        cfg = self.config
        self._wake = asyncio.Event()
        self._login_fingerprint = _fingerprint(credential_files(cfg))
        backoff = Backoff(base=SIDECAR_BACKOFF_BASE, cap=min(cfg.refresh_interval, SIDECAR_BACKOFF_CAP), rng=self.rng)
        tasks: list[asyncio.Task] = []
        try:
            while True:
                try:
                    changed = await self.sync_once()
                except Exception as exc:
                    self._record_failure(exc)
                    delay = self._retry_delay(backoff, exc)
                else:
                    self._record_success(changed)
                    backoff.reset()
                    delay = cfg.refresh_interval * self.rng.uniform(1 - JITTER, 1 + JITTER)
                if not tasks:  # after the first attempt: the first files come before any extras
                    tasks = [asyncio.create_task(self._guard(t)) for t in [watch_credentials, *self._triggers]]
                reason = await self._sleep(delay)
                if reason:
                    self.log.debug("woken", reason=reason)
        finally:
            for t in tasks:
                await _cancel(t)

    async def _guard(self, trigger: Trigger) -> None:
        try:
            await trigger(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("trigger_failed", trigger=getattr(trigger, "__name__", "trigger"), error=f"{type(exc).__name__}: {exc}")


# -- credentials watch ---------------------------------------------------------------------------

def credential_files(config: AgentConfig) -> list[str]:
    if config.auth == "kubernetes":
        return [config.token_path]
    return [os.path.join(config.credentials_dir, "clientId"), os.path.join(config.credentials_dir, "clientSecret")]


def _fingerprint(paths: list[str]) -> bytes:
    """A digest of the credential files (never logged, never kept in clear)."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        try:
            with open(p, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError:
            h.update(b"\x00missing")
    return h.digest()


async def watch_credentials(agent: Agent) -> None:
    """Force a fresh login when the credential files change, then fetch at once.

    Watches the files' directories (injector.filewatch): kubelet updates a Secret volume by
    renaming a `..data` symlink, so the files' own inodes never change but the directory sees
    the rename. Content is compared by digest, so a swap with the same content is ignored; the
    digest is also re-checked every WATCH_RECHECK seconds, which covers a change made while the
    watch was being registered.
    """
    from injector.filewatch import changes

    files = credential_files(agent.config)
    dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in files})
    last = agent._login_fingerprint or _fingerprint(files)
    events = aiter(changes(dirs, recheck=WATCH_RECHECK))
    while True:
        # The first pass compares with the files the first login read: the watch starts only
        # after the first sync, and a change made in between must not be missed.
        current = _fingerprint(files)
        if current != last:
            last = current
            invalidate_credentials(agent.client)
            agent.log.info("credentials_changed", action="fresh login with the new credentials")
            agent.wake("credentials changed")
        await anext(events)


def invalidate_credentials(client: Any) -> None:
    """Drop the cached token so the next request logs in with the files' current content."""
    client.invalidate()


# -- helpers -------------------------------------------------------------------------------------

def describe_error(exc: BaseException) -> str:
    """One line for logs and the init failure: the KMS client's errors already name host,
    project, env, path, status and KMS's message, and never a value."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    module = type(exc).__module__ or ""
    if module.startswith("injector.") or isinstance(exc, SyncError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        async with asyncio.timeout(SHUTDOWN_GRACE):
            await asyncio.shield(task)
    except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
        pass


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


# -- process entry -------------------------------------------------------------------------------

def build_agent(config: AgentConfig, log: Logger) -> Agent:
    from injector.kms.client import build_client
    from injector.writer import AtomicWriter

    client = build_client(config, log)  # auth (universal | kubernetes) and backend (api: auto/infisical/canonical)
    writer = AtomicWriter(config.mount_path, config.file_mode, log)
    agent = Agent(config=config, client=client, writer=writer, log=log)
    agent.metrics.add_collector(token_counters(client))  # kms_agent_auth_logins_total / _renewals_total
    if config.mode == "sidecar":
        from injector.event_trigger import event_trigger

        agent.add_trigger(event_trigger)  # KMS change events -> debounced early fetch (events: false -> polling only)
    return agent


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


async def run(config: AgentConfig, log: Logger) -> int:
    agent = build_agent(config, log)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(_DaemonThreads())
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
        loop.add_signal_handler(sig, on_signal, sig.name)

    health = None
    if config.health_port:
        from injector.health import HealthServer

        health = HealthServer(agent.metrics, config.health_port)
        try:
            await health.start()
            log.info("health_listening", port=health.port)
        except OSError as exc:
            log.error("health_failed", port=config.health_port, error=exc.strerror or str(exc))
            health = None
    try:
        repair = getattr(agent.writer, "repair", None)
        if callable(repair):
            try:
                repair()
            except OSError as exc:
                log.warning("repair_failed", mount_path=config.mount_path, error=exc.strerror or str(exc))
        log.info("starting", mode=config.mode, host=config.host, project=config.project, env=config.env,
                 paths=[s.path for s in config.sources], mount_path=config.mount_path,
                 refresh_interval=config.refresh_interval)
        if config.signal and not config.signal_process:
            log.warning("signal_without_process", signal=config.signal, hint="set signal_process; nothing will be signalled")
        if config.mode == "init":
            return await agent.run_init()
        await agent.run_sidecar()
        return 0
    except asyncio.CancelledError:
        if not stopping:
            raise
        # SIGTERM/SIGINT: the sidecar's job is done; an init succeeded once its files are written,
        # even if the signal cut the notify command that followed.
        return 0 if (config.mode == "sidecar" or agent.written) else 1
    finally:
        closing.append(True)
        try:
            await _close(agent.client)
            if health is not None:
                await health.stop()
        except asyncio.CancelledError:
            if not stopping:  # not our signal: someone else cancels this task
                raise


def main(argv: list[str] | None = None) -> int:
    from injector.agent_cli import load_config

    try:
        config = load_config(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        print(f"kms-agent: bad config: {exc.field}: {exc.detail}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    log = get_logger("agent")
    try:
        return asyncio.run(run(config, log))
    except ConfigError as exc:
        print(f"kms-agent: bad config: {exc.field}: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
