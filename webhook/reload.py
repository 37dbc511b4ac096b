"""Reload-on-change for files kubelet manages (Secret and ConfigMap volumes): the one piece behind
the serving certificate (webhook/tls.py) and the settings file (webhook/settings_reload.py).

kubelet updates such a volume by writing a new `..<timestamp>` dir and renaming a `..data`
symlink over the old one, so the watch is on the files' directories (injector.filewatch: inotify,
no thread), with a re-check every `poll_interval` seconds as the safety net.

What is served is named by a sha256 of the files' bytes. A change is parsed off the event loop;
bytes that parse are handed to `accepted`, bytes that do not keep what is served (`rejected`
says why, once: the same bad bytes are neither retried nor logged again until they change). A
writer that replaces files one after the other gets a short grace to finish before a failure
counts. Stdlib only; what a change means is the subclass's business.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Generic, Sequence, TypeVar

from injector.filewatch import changes
from injector.log import Logger

T = TypeVar("T")

UNREADABLE = "unreadable"  # the digest of files we cannot read (missing, permissions)


def bytes_digest(parts: Sequence[bytes]) -> str:
    """sha256 over `parts` with a NUL between them: what names a served cert/key pair or file."""
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def files_digest(paths: Sequence[str | os.PathLike[str]]) -> str:
    """bytes_digest of the files' contents; UNREADABLE when one cannot be read."""
    try:
        return bytes_digest([Path(p).read_bytes() for p in paths])
    except OSError:
        return UNREADABLE


class Reloader(Generic[T]):
    """Serves the newest content of `paths` that `parse` accepts.

    Subclasses implement `parse` (blocking, raises on bad content), `accepted` and `rejected`;
    `recovered` is called when the files are back to the served bytes after a rejected change."""

    settle = 0.2  # seconds a multi-step writer gets before a failed parse is final

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, name: str, log: Logger,
                 poll_interval: float = 10.0) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.name = name  # log event prefix: <name>_reload_error, <name>_reload_recovered
        self.log = log
        self.poll_interval = poll_interval
        self.digest: str | None = None  # of the bytes now served
        self.failed_digest: str | None = None  # bytes that did not parse: not retried, not re-logged

    # -- what a subclass says -------------------------------------------------------------------
    def parse(self) -> T:
        raise NotImplementedError

    def accepted(self, value: T, digest: str, first: bool) -> None:
        raise NotImplementedError

    def rejected(self, exc: Exception, digest: str, first: bool) -> None:
        raise NotImplementedError

    def recovered(self, digest: str) -> None:
        self.log.info(f"{self.name}_reload_recovered", path=str(self.paths[0]), digest=digest[:12])

    # -- loading --------------------------------------------------------------------------------
    def current_digest(self) -> str:
        return files_digest(self.paths)

    def load(self) -> tuple[str, T | Exception]:
        """(digest, parsed value or the exception). Blocking: call it off the loop once serving.

        The digest is taken before and after the parse, so the bytes it names are the bytes parsed
        even when kubelet swaps `..data` in between (then we just read again)."""
        before = self.current_digest()
        result: T | Exception = ValueError("not parsed")
        for _ in range(5):
            try:
                result = self.parse()
            except Exception as exc:  # noqa: BLE001 (a parser bug must not kill the watcher either)
                result = exc
            after = self.current_digest()
            if after == before:
                break
            before = after
        return before, result

    def load_now(self) -> T | Exception:
        """The first load, synchronous (before the loop serves): the value, or why it failed."""
        first = self.digest is None
        digest, result = self.load()
        self._settle(digest, result, first)
        return result

    async def reload(self) -> bool:
        """Parse the files if their bytes changed. True when new content was accepted."""
        digest = await asyncio.to_thread(self.current_digest)
        if digest == self.digest:
            if self.failed_digest is not None:  # reverted to what we serve: no longer failing
                self.failed_digest = None
                self.recovered(digest)
            return False
        if digest == self.failed_digest:
            return False
        first = self.digest is None
        digest, result = await asyncio.to_thread(self.load)
        if isinstance(result, Exception):
            # A writer replacing the files in two steps (key, then cert): a moment, then read again.
            await asyncio.sleep(self.settle)
            if await asyncio.to_thread(self.current_digest) != digest:
                digest, result = await asyncio.to_thread(self.load)
        if digest == self.digest:  # changed and changed back while we read
            return False
        return self._settle(digest, result, first)

    def _settle(self, digest: str, result: T | Exception, first: bool) -> bool:
        if isinstance(result, Exception):
            self.failed_digest = digest
            self.rejected(result, digest, first)
            return False
        self.digest, self.failed_digest = digest, None
        self.accepted(result, digest, first)
        return True

    # -- watching -------------------------------------------------------------------------------
    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Reload on changes in the files' directories, and every `poll_interval` seconds, until
        `stop` is set (or the task is cancelled). Never dies of a reload error: the old state stays."""
        stop = stop or asyncio.Event()
        dirs = sorted({str(p.parent) for p in self.paths})

        async def follow() -> None:
            while True:
                try:
                    async for _ in changes(dirs, debounce=0.05, recheck=self.poll_interval):
                        try:
                            await self.reload()
                        except Exception as exc:  # noqa: BLE001 (a subclass bug: log it, keep watching)
                            self.log.error(f"{self.name}_reload_error", error=type(exc).__name__)
                except Exception as exc:  # noqa: BLE001 (e.g. inotify limits: the next round re-arms)
                    self.log.warning(f"{self.name}_watch_error", error=type(exc).__name__)
                await asyncio.sleep(1.0)

        follower = asyncio.create_task(follow(), name=f"{self.name}-watch")
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({follower, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (follower, stopped):
                t.cancel()
            await asyncio.gather(follower, stopped, return_exceptions=True)
