"""The agent's supervisor (injector.supervisor) with real tasks on a real event loop: a task that
dies is restarted with a log line; one that returns is done; stop() cancels everything."""

from __future__ import annotations

import asyncio
import io
import json

from injector.log import Logger
from injector.supervisor import Supervisor
from tests.agent_support import wait_for


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_task_that_dies_is_restarted_with_a_log_line_and_one_that_returns_is_done() -> None:
    stream = io.StringIO()
    sup = Supervisor(Logger("agent", stream), base=0.01, cap=0.05)
    runs = {"watch": 0, "once": 0}
    alive = asyncio.Event()

    async def watch() -> None:
        runs["watch"] += 1
        if runs["watch"] <= 3:
            raise ValueError(f"malformed Content-Length in run {runs['watch']}")
        alive.set()
        await asyncio.Event().wait()  # then runs for good

    async def once() -> None:
        runs["once"] += 1

    sup.start("watch", watch)
    sup.start("once", once)
    sup.start("watch", watch)  # a name runs once
    try:
        await wait_for(alive.is_set, 10, "the watch task to survive its failures")
        assert runs == {"watch": 4, "once": 1}
        assert sup.restarts == {"watch": 3, "once": 0}
        assert sup.running("watch") and not sup.running("once")
        failed = [r for r in records(stream) if r["event"] == "task_failed"]
        restarted = [r for r in records(stream) if r["event"] == "task_restarted"]
        assert [r["restarts"] for r in failed] == [1, 2, 3] and [r["restarts"] for r in restarted] == [1, 2, 3]
        assert all(r["task"] == "watch" and r["level"] == "warning" for r in failed)
        assert failed[0]["error"] == "ValueError: malformed Content-Length in run 1"
    finally:
        await sup.stop()
    assert not sup.running("watch")


async def test_stop_cancels_a_task_waiting_in_its_restart_backoff() -> None:
    stream = io.StringIO()
    sup = Supervisor(Logger("agent", stream), base=30.0, cap=60.0)

    async def dies() -> None:
        raise OSError("inotify went away")

    sup.start("credentials-watch", dies)
    await wait_for(lambda: any(r["event"] == "task_failed" for r in records(stream)), 10, "the failure logged")
    assert sup.running("credentials-watch")  # waiting out its backoff
    await sup.stop()
    assert not sup.running("credentials-watch")
    assert not any(r["event"] == "task_restarted" for r in records(stream))
