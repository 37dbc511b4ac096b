"""The sync loop's state, kept once: readiness, the failing/healthy transitions and the counters.

Only the loop writes it; the health server reads `metrics()` snapshots of it. The transitions
return what happened so the loop logs state changes, not every attempt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from injector.health import Metrics
from injector.sync import SyncOutcome


@dataclass(frozen=True)
class Recovery:
    failed_attempts: int
    outage_seconds: float


@dataclass
class AgentState:
    ready: bool = False  # a complete version is on disk (set before any notify runs)
    synced: bool = False  # a whole sync (fetch, write, notify) succeeded at least once
    failing: bool = False
    failures: int = 0  # attempts failed since the last success
    failing_since: float = 0.0  # monotonic
    last_error: str = ""
    syncing: bool = False  # an attempt is running
    parked: bool = False  # refused credentials are held back (injector.refusals)
    syncs_total: int = 0
    sync_failures_total: int = 0
    changes_total: int = 0
    signals_total: int = 0
    commands_total: int = 0
    not_modified_total: int = 0
    last_success_timestamp_seconds: float = 0.0

    def mark_written(self) -> None:
        self.ready = True

    def succeeded(self, outcome: SyncOutcome) -> tuple[bool, Recovery | None]:
        """Record a success: (first success ever, the outage it ends if syncs were failing)."""
        self.syncs_total += 1
        self.not_modified_total += outcome.not_modified
        self.changes_total += int(outcome.changed)
        self.signals_total += outcome.signals
        self.commands_total += outcome.commands
        self.last_success_timestamp_seconds = time.time()
        first = not self.synced
        self.synced = self.ready = True
        recovery = None
        if self.failing:
            recovery = Recovery(self.failures, round(time.monotonic() - self.failing_since, 1))
        self.failing, self.failures, self.last_error = False, 0, ""
        return first, recovery

    def failed(self, text: str) -> str:
        """Record a failed attempt described by `text`: 'first' (healthy -> failing), 'changed'
        (a different error than the last one), or '' (the same error again)."""
        self.sync_failures_total += 1
        self.failures += 1
        kind = "" if text == self.last_error else "changed"
        if not self.failing:
            self.failing, self.failing_since, kind = True, time.monotonic(), "first"
        self.last_error = text
        return kind

    def metrics(self, sources: list[Callable[[Metrics], None]] | None = None) -> Metrics:
        """A fresh reading; `sources` add what other owners keep (tokens, the event stream)."""
        m = Metrics(
            syncs_total=self.syncs_total, sync_failures_total=self.sync_failures_total,
            changes_total=self.changes_total, signals_total=self.signals_total,
            commands_total=self.commands_total, not_modified_total=self.not_modified_total,
            last_success_timestamp_seconds=self.last_success_timestamp_seconds,
            ready=self.ready, healthy=not self.failing, fetch_pending=self.syncing,
            credentials_parked=self.parked,
        )
        for fill in sources or ():
            try:
                fill(m)  # may only add to a reading (e.g. fetch_pending = fetch_pending or ...)
            except Exception:  # a reading must never take the health server down
                pass
        return m
