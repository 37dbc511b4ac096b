"""injector.filewatch (the one watcher: the agent's credentials, the webhook's certificate and settings):
a kubelet-style ..data swap in a watched directory is noticed, by inotify and by the watchfiles
fallback, and a directory created late is picked up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from injector import filewatch
from tests.agent_support import write_credentials


async def _count(gen, counter: list[int]) -> None:
    async for _ in gen:
        counter[0] += 1


@pytest.mark.parametrize("impl", ["inotify", "watchfiles"])
async def test_swap_is_seen_quickly(tmp_path: Path, impl: str) -> None:
    write_credentials(tmp_path, "id", "one")
    gen = filewatch.changes([str(tmp_path)], recheck=60) if impl == "inotify" else filewatch._watchfiles([str(tmp_path)], 0.1, 60)
    seen = [0]
    task = asyncio.create_task(_count(gen, seen))
    try:
        if impl == "inotify":  # its first yield comes once the watch is registered
            for _ in range(100):
                if seen[0]:
                    break
                await asyncio.sleep(0.05)
        else:  # awatch registers synchronously when first advanced, before handing off to its thread
            for _ in range(20):
                await asyncio.sleep(0)
        before = seen[0]
        write_credentials(tmp_path, "id", "two")
        for _ in range(100):
            if seen[0] > before:
                break
            await asyncio.sleep(0.05)
        assert seen[0] > before, "the ..data swap was not noticed within 5 s (recheck is 60 s)"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_missing_directory_is_retried(tmp_path: Path) -> None:
    target = tmp_path / "auth"
    seen = [0]
    task = asyncio.create_task(_count(filewatch.changes([str(target)], recheck=0.3), seen))
    try:
        for _ in range(100):
            if seen[0] >= 2:
                break
            await asyncio.sleep(0.05)
        assert seen[0] >= 2  # keeps yielding (re-checking) while the directory does not exist
        write_credentials(target, "id", "one")
        n = seen[0]
        for _ in range(100):
            if seen[0] > n:
                break
            await asyncio.sleep(0.05)
        assert seen[0] > n
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancel_while_a_change_lands_stops_the_watch(tmp_path: Path) -> None:
    """Python 3.11's asyncio.wait_for swallows a cancel that arrives in the same loop iteration as
    the awaited event (the hang CI hit once in this very file). Cancel at every point of that
    window, a few loop iterations after a change, and the watch must stop every time."""
    write_credentials(tmp_path, "id", "zero")
    for n in range(60):
        seen = [0]
        task = asyncio.create_task(_count(filewatch.changes([str(tmp_path)], debounce=0.0, recheck=60), seen))
        for _ in range(100):
            if seen[0]:
                break
            await asyncio.sleep(0.01)
        write_credentials(tmp_path, "id", f"v{n}")
        for _ in range(n % 6):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"the watch ignored a cancel {n % 6} loop iterations after a change"


async def test_waiting_out_the_debounce_does_not_spin(tmp_path: Path) -> None:
    """The inotify fd is level-triggered: while events sit unread during the debounce, the loop
    must not wake again and again (it did: a core spun for each debounce; the webhook watches a
    directory that may change often). Counted in CPU seconds of this process, not wall time."""
    seen = [0]
    task = asyncio.create_task(_count(filewatch.changes([str(tmp_path)], debounce=1.0, recheck=60), seen))
    try:
        for _ in range(200):
            if seen[0]:
                break
            await asyncio.sleep(0.05)
        assert seen[0] == 1
        cpu0 = time.process_time()
        for i in range(5):  # events before and during the debounce
            (tmp_path / "f").write_text(str(i))
            await asyncio.sleep(0.1)
        for _ in range(200):
            if seen[0] > 1:
                break
            await asyncio.sleep(0.05)
        cpu = time.process_time() - cpu0
        assert seen[0] == 2, "the writes were not reported as one change"
        assert cpu < 0.3, f"{cpu:.2f} s of CPU to wait out a 1 s debounce: the loop spun on the readable fd"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
