"""Runs the agent's long-lived tasks (health server, credential watch, change trigger) and
restarts one that dies, with a log line, so no watcher is lost for the pod's life (issue 12 item 11).

A task that returns has finished its job (e.g. events are off): it is not restarted. One that
raises is restarted after a backoff (the agent's one retry policy), reset once a run lasted
HEALTHY_AFTER seconds, so a task that keeps dying costs a log line per restart, not a spin.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from injector.backoff import Backoff
from injector.log import Logger

RESTART_BASE = 1.0
RESTART_CAP = 60.0
HEALTHY_AFTER = 60.0
STOP_GRACE = 0.5


class Supervisor:
    def __init__(self, log: Logger, *, base: float = RESTART_BASE, cap: float = RESTART_CAP,
                 healthy_after: float = HEALTHY_AFTER) -> None:
        self.log = log
        self.base, self.cap, self.healthy_after = base, cap, healthy_after
        self._tasks: dict[str, asyncio.Task] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as task `name` (a name runs once; starting it again is a no-op)."""
        if name in self._tasks:
            return
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=f"kms-agent-{name}")

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base=self.base, cap=self.cap)
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started >= self.healthy_after:
                    backoff.reset()
                delay = backoff.next_delay(floor=self.base / 2)
                self.restarts[name] += 1
                self.log.warning("task_failed", task=name, error=f"{type(exc).__name__}: {str(exc)[:200]}",
                                 restart_in=round(delay, 2), restarts=self.restarts[name])
            await asyncio.sleep(delay)
            self.log.info("task_restarted", task=name, restarts=self.restarts[name])

    async def stop(self) -> None:
        """Cancel every task; each gets STOP_GRACE to unwind."""
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(task)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
