"""The agent's two modes around one sync step (injector.sync):

- init: sync until the first success, retrying with capped backoff and full jitter until
  `init_timeout` (which bounds fetching only: init never notifies); then exit 0, or exit 1 with
  ONE line saying what failed (never a value).
- sidecar: sync every `refresh_interval` (+-10% jitter). On errors the last good files stay,
  retries back off (capped, honouring Retry-After), and only state changes are logged
  (healthy -> failing -> healthy, with counts). A trigger that hears of changes another way
  (the relay) may stretch that safety-net poll (`set_pace`); when the factor drops (the relay is
  lost), the sleep is re-planned at once: the normal interval again, spread over one interval
  when the normal time has passed, so that pods losing the relay together do not poll together.

Refused credentials are tried at most twice, counted across restarts (injector.refusals); then
the loop waits for the credential files to change (the watch wakes it at once).

Wake-ups: `wake(reason)` fetches now (the credential watch uses it). `nudge(reason)` is for
change triggers: it wakes a healthy loop and is ignored while syncs fail, where the loop retries
on its own schedule (backoff, Retry-After, the floor after wrong credentials) and its next success
fetches the latest state anyway. The long-lived extras run under the supervisor.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Awaitable, Callable

from injector.agent_state import AgentState
from injector.backoff import AUTH_MAX_TRIES, AUTH_PARK, Backoff, parked
from injector.config import AgentConfig
from injector.credentials import credential_files, fingerprint, watch_credentials
from injector.health import Metrics
from injector.log import Logger
from injector.refusals import RefusalMemory
from injector.seams import FileWriter, Notifier, SecretSource
from injector.supervisor import Supervisor
from injector.sync import SyncStep, describe_error, notifier_for

# Init mode retries fast at first: a pod waits on it.
INIT_BACKOFF_BASE = 0.25
INIT_BACKOFF_CAP = 10.0
SIDECAR_BACKOFF_BASE = 0.5
SIDECAR_BACKOFF_CAP = 300.0
JITTER = 0.10

Trigger = Callable[["AgentLoop"], Awaitable[None]]


class AgentLoop:
    def __init__(self, config: AgentConfig, client: SecretSource, writer: FileWriter, log: Logger, *,
                 supervisor: Supervisor | None = None, notifier: Notifier | None = None,
                 rng: random.Random | None = None) -> None:
        self.config, self.client, self.writer, self.log = config, client, writer, log
        self.rng = rng or random.Random()
        self.state = AgentState()
        self.supervisor = supervisor or Supervisor(log)
        self.step = SyncStep(config, writer, notifier or notifier_for(config, log), log, on_written=self.state.mark_written)
        self.refusals = RefusalMemory(config.mount_path)
        self.credential_files = credential_files(config)
        # Digest of the credential files before the first login (then: as last reported by the
        # watch): the watch starts later and must still see a change made in between.
        self._login_fingerprint = fingerprint(self.credential_files)
        self._wake = asyncio.Event()
        self._wake_reason = ""
        self._pace: Callable[[], float] = _unstretched
        self._pace_changed = asyncio.Event()
        self._triggers: list[tuple[str, Trigger]] = []
        self._metric_sources: dict[str, Callable[[Metrics], None]] = {}
        self._parked_logged: bytes = b""  # credentials whose parking was logged
        self.refusals_fp: bytes = b""

    # -- wiring --------------------------------------------------------------------------------
    def add_trigger(self, trigger: Trigger, name: str = "") -> None:
        """Run `trigger(loop)` under the supervisor in sidecar mode, after the first attempt; it
        calls `loop.nudge()` when KMS says something changed."""
        self._triggers.append((name or getattr(trigger, "__name__", "trigger"), trigger))

    def add_metrics_source(self, fill: Callable[[Metrics], None], key: str = "") -> None:
        """`fill(metrics)` copies state its owner keeps (tokens, the event stream) into a reading;
        a restarted trigger replaces its earlier source by using the same `key`."""
        self._metric_sources[key or f"source-{len(self._metric_sources)}"] = fill

    def set_pace(self, factor: Callable[[], float]) -> None:
        """`factor()` (>= 1) stretches the safety-net poll after a successful sync; read at every
        sleep, and again whenever the trigger calls `pace_changed()`."""
        self._pace = factor
        self.pace_changed()

    def pace_changed(self) -> None:
        self._pace_changed.set()

    def poll_factor(self) -> float:
        try:
            return max(1.0, float(self._pace()))
        except Exception:  # a trigger's bad reading must never stop the safety net
            return 1.0

    def metrics(self) -> Metrics:
        m = self.state.metrics(list(self._metric_sources.values()))
        m.fetch_pending = m.fetch_pending or self._wake.is_set()
        m.poll_factor = self.poll_factor()
        return m

    def ready(self) -> bool:
        return self.state.ready

    # -- wake-ups ------------------------------------------------------------------------------
    def wake(self, reason: str) -> None:
        """Fetch now instead of at the next tick. A wake during a fetch is not lost (the event is
        cleared when a sync starts, not when it ends)."""
        self._wake_reason = reason
        self._wake.set()

    def nudge(self, reason: str) -> bool:
        """A change trigger's wake: True when it woke the loop, False while syncs are failing."""
        if self.state.failing:
            return False
        self.wake(reason)
        return True

    async def _sleep(self, delay: float) -> str:
        """Sleep `delay` seconds or until woken; returns the wake reason ('' on timeout)."""
        try:
            async with asyncio.timeout(max(0.0, delay)):
                await self._wake.wait()
        except asyncio.TimeoutError:
            return ""
        return self._wake_reason or "wake"

    async def _pause(self, base: float) -> str:
        """After a successful sync: sleep `base` x the pace factor, or until woken. A change of
        factor re-plans the rest of the sleep (see the module doc); returns the wake reason."""
        if self._pace is _unstretched:  # no relay: the plain sleep
            return await self._sleep(base)
        clock = asyncio.get_running_loop().time
        start = clock()
        factor = self.poll_factor()
        deadline = start + base * factor
        while True:
            self._pace_changed.clear()
            wake = asyncio.ensure_future(self._wake.wait())
            pace = asyncio.ensure_future(self._pace_changed.wait())
            try:
                done, _ = await asyncio.wait({wake, pace}, timeout=max(0.0, deadline - clock()),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
                pace.cancel()
            if self._wake.is_set():
                return self._wake_reason or "wake"
            if not done:
                return ""
            now, new = clock(), self.poll_factor()
            if new < factor:  # the stretch ended (relay lost): back to the normal interval
                deadline = min(deadline, max(start + base * new, now + self.rng.uniform(0.0, base)))
            elif new > factor:
                deadline = start + base * new
            factor = new

    # -- one attempt ---------------------------------------------------------------------------
    async def _attempt(self) -> None:
        """One sync, with its bookkeeping. Raises what the step raised, after recording it."""
        self._wake.clear()
        self._wake_reason = ""
        self.state.syncing = True
        try:
            outcome = await self.step.run(self.client)
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self.state.syncing = False
        first, recovery = self.state.succeeded(outcome)
        self.state.parked = False
        self.refusals.clear()
        if first:
            self.log.info("first_sync", changed=outcome.changed, sources=len(self.config.sources))
        if recovery is not None:
            self.log.info("sync_recovered", failed_attempts=recovery.failed_attempts, outage_seconds=recovery.outage_seconds)

    def _failed(self, exc: BaseException) -> None:
        text = describe_error(exc)
        kind = self.state.failed(text)
        if kind == "first":
            self.log.warning("sync_failing", error=text, keeping="last good files" if self.state.ready else "nothing written yet")
        elif kind == "changed":
            self.log.info("sync_still_failing", error=text, failed_attempts=self.state.failures)

    def _retry_delay(self, backoff: Backoff, exc: BaseException) -> float:
        from injector.kms.errors import InvalidCredentials

        refusals = 0
        if isinstance(exc, InvalidCredentials):
            self.refusals_fp = fingerprint(self.credential_files)
            refusals = self.refusals.record(self.refusals_fp)
            self.state.parked = parked(refusals)
            if refusals == AUTH_MAX_TRIES:
                self._log_parked(refusals, AUTH_PARK, remembered=False)
                self._parked_logged = self.refusals_fp
        return backoff.delay_after(exc, refusals)

    def _hold(self) -> float:
        """Seconds to wait before trying the current credentials again (0: go ahead). Non-zero
        when they were refused AUTH_MAX_TRIES times in a row, by this process or an earlier one."""
        if not self.refusals.recorded():  # the common case: no file reads, no digest
            self.state.parked = False
            return 0.0
        fp = fingerprint(self.credential_files)
        refusals, at = self.refusals.refusals(fp)
        hold = max(0.0, at + AUTH_PARK - time.time()) if parked(refusals) else 0.0
        self.state.parked = hold > 0
        if not hold:
            return 0.0
        if self._parked_logged != fp:
            self._log_parked(refusals, hold, remembered=True)
        self._parked_logged = fp
        return hold

    def _log_parked(self, refusals: int, retry_in: float, remembered: bool) -> None:
        self.log.warning("credentials_rejected", refusals=refusals, retry_in=round(retry_in, 1), remembered=remembered,
                         action="waiting for the credential files to change, to keep the identity from being locked")

    # -- long-lived extras ---------------------------------------------------------------------
    def _credentials_changed(self, fp: bytes) -> None:
        self._login_fingerprint = fp  # a restarted watch compares with this, not the first login's
        if self.client.credentials_changed():  # universal auth: the next request logs in with the new files
            self.log.info("credentials_changed", action="fresh login with the new credentials")
            self.wake("credentials changed")
        else:  # kubernetes auth: kubelet rotated the projected token; the KMS token stays good
            self.log.info("credentials_changed", action="none: the next login reads the new file")

    def _watch_credentials(self) -> None:
        # The digest is read when the (re)started watch begins: a restart after the supervisor
        # caught a failure reports only changes it has not reported yet.
        self.supervisor.start("credentials-watch", lambda: watch_credentials(
            self.credential_files, self._login_fingerprint, self._credentials_changed))

    # -- modes ---------------------------------------------------------------------------------
    async def run_init(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.init_timeout
        backoff = Backoff(base=INIT_BACKOFF_BASE, cap=INIT_BACKOFF_CAP, rng=self.rng)
        while True:
            hold = self._hold()
            if hold > 0:  # refused before: try no more logins with these credentials
                self._watch_credentials()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return self._init_failed(self.state.last_error or
                                             "the credentials were refused before; not trying them again until they change")
                await self._sleep(min(hold, remaining))
                continue
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    await self._attempt()
            except asyncio.TimeoutError:  # the deadline fell inside an attempt
                self.state.failures += 1
                last = f" (before that: {self.state.last_error})" if self.state.last_error else ""
                return self._init_failed(f"no answer from KMS before the deadline{last}")
            except Exception as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return self._init_failed(self.state.last_error)
                self._watch_credentials()  # only watch credentials once something went wrong
                await self._sleep(min(self._retry_delay(backoff, exc), remaining))
                if loop.time() >= deadline:
                    return self._init_failed(self.state.last_error)
                continue
            return 0

    def _init_failed(self, text: str) -> int:
        cfg = self.config
        if "host=" not in text:  # KMS errors name host/project/env/path already; others do not
            paths = ",".join(s.path for s in cfg.sources)
            text += f" (host={cfg.host} project={cfg.project} env={cfg.env} path={paths})"
        pod = self.log.context.get("pod")
        if pod:
            text += f" pod={self.log.context.get('namespace', '')}/{pod}"
        attempts = self.state.failures
        print(f"kms-agent: init failed after {cfg.init_timeout:g}s ({attempts} attempt{'s' * (attempts != 1)}): {text}",
              file=sys.stderr, flush=True)
        return 1

    async def run_sidecar(self) -> None:
        cfg = self.config
        backoff = Backoff(base=SIDECAR_BACKOFF_BASE, cap=min(cfg.refresh_interval, SIDECAR_BACKOFF_CAP), rng=self.rng)
        started_extras = False
        while True:
            hold = self._hold()
            stretch = False  # only the safety-net poll after a success; never a retry or a hold
            if hold > 0:
                delay = hold
            else:
                try:
                    await self._attempt()
                except Exception as exc:
                    delay = self._retry_delay(backoff, exc)
                else:
                    backoff.reset()
                    delay = cfg.refresh_interval * self.rng.uniform(1 - JITTER, 1 + JITTER)
                    stretch = True
            if not started_extras:  # after the first attempt: the first files come before any extras
                started_extras = True
                self._watch_credentials()
                for name, trigger in self._triggers:
                    self.supervisor.start(name, _bind(trigger, self))
            reason = await (self._pause(delay) if stretch else self._sleep(delay))
            if reason:
                self.log.debug("woken", reason=reason)


def _unstretched() -> float:
    return 1.0


def _bind(trigger: Trigger, loop: AgentLoop) -> Callable[[], Awaitable[None]]:
    return lambda: trigger(loop)

