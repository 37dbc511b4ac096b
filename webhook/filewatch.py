"""Reload-on-change for files kubelet manages (Secret and ConfigMap volumes).

kubelet updates those volumes by swapping a `..data` symlink, so the watch is on the files'
directories, not their inodes. watchfiles reports changes quickly; a poll every `poll_interval`
seconds is the safety net (inotify limits, a directory that vanished and came back).
"""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable, Callable

from injector.log import Logger


async def watch_dirs(dirs: list[str], reload: Callable[[], Awaitable[object]], *, stop: asyncio.Event,
                     poll_interval: float, log: Logger, name: str) -> None:
    """Call `reload()` on changes in `dirs`, and every `poll_interval` seconds, until `stop`.

    `reload` must not raise for bad content (it keeps the old state and logs); an exception it
    raises anyway is logged as `<name>_reload_error` and the watch goes on."""

    async def safe_reload() -> None:
        try:
            await reload()
        except Exception as exc:  # noqa: BLE001 (never let the watcher die; the old state stays)
            log.error(f"{name}_reload_error", error=type(exc).__name__)

    async def poll() -> None:
        while not stop.is_set():
            await wait(stop, poll_interval)
            await safe_reload()

    poller = asyncio.create_task(poll())
    try:
        while not stop.is_set():
            existing = [d for d in dirs if os.path.isdir(d)]
            if not existing:
                await wait(stop, 1.0)
                continue
            await safe_reload()  # a change made before the watcher started is not lost
            try:
                import watchfiles  # noqa: PLC0415 (only the webhook process needs it)

                async for _changes in watchfiles.awatch(*existing, stop_event=stop, debounce=50, step=20,
                                                        recursive=False, rust_timeout=1000):
                    await safe_reload()
            except (OSError, RuntimeError) as exc:  # dir vanished, inotify limits: the poll covers us
                log.warning(f"{name}_watch_error", error=type(exc).__name__)
                await wait(stop, 1.0)
    finally:
        poller.cancel()


async def wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except asyncio.TimeoutError:
        pass
