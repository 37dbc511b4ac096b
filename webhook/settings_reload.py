"""Hot reload of the webhook settings file (a ConfigMap volume in the cluster).

kubelet updates a ConfigMap volume in place: it writes a new `..<timestamp>` dir and renames a
`..data` symlink over the old one; `settings.yaml` itself is a fixed `..data/settings.yaml` link.
So, like webhook/tls.py, we watch the file's *directory* with watchfiles (inotify) and keep a
slow poll as a safety net, then compare a sha256 of the file's bytes to what is served.

A change that loads (webhook.settings.load_settings) is handed to `on_change`, which swaps it in
for new admissions (WebhookState.swap_settings also clears the answer cache). A change that does
not load keeps the old settings: one error line naming the field, counted in the metrics, and
not retried until the bytes change again. Logs carry a short digest, never the file's contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from injector.log import Logger, get_logger
from webhook.filewatch import watch_dirs
from webhook.metrics import Metrics

UNREADABLE = "unreadable"  # the digest of a file we cannot read (missing, permissions)


def file_digest(path: str | os.PathLike[str]) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return UNREADABLE


class SettingsReloader:
    """Serves the newest loadable settings from `path`; `generation` counts successful loads."""

    def __init__(self, path: str | os.PathLike[str], *, metrics: Metrics, log: Logger | None = None,
                 poll_interval: float = 10.0, on_change: Callable[[Any], None] | None = None) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.log = log or get_logger("webhook.settings")
        self.poll_interval = poll_interval
        self.on_change = on_change  # called with the new Settings, on the event loop
        self.digest: str | None = None  # of the bytes now served
        self.generation = 0
        self._failed_digest: str | None = None  # bytes that did not load: not retried, not re-logged

    # -- loading --------------------------------------------------------------------------------
    def load_now(self) -> Any:
        """The first load, before serving. Raises SettingsError (a ValueError naming the field)."""
        digest, result = self._load()
        if isinstance(result, BaseException):
            raise result
        self._accept(result, digest)
        self.log.info("settings_loaded", path=str(self.path), digest=digest[:12], generation=self.generation)
        return result

    async def reload(self) -> bool:
        """Load the file if its bytes changed. True when new settings were swapped in."""
        digest = await asyncio.to_thread(file_digest, self.path)
        if digest == self.digest:
            if self._failed_digest is not None:  # reverted to what we serve: no longer failing
                self._failed_digest = None
                self.metrics.settings_reload_error = None
                self.log.info("settings_reload_recovered", path=str(self.path), digest=digest[:12])
            return False
        if digest == self._failed_digest:
            return False
        digest, result = await asyncio.to_thread(self._load)
        if isinstance(result, BaseException):
            # An editor writing the file in two steps: give it a moment and read again.
            await asyncio.sleep(0.2)
            if await asyncio.to_thread(file_digest, self.path) != digest:
                digest, result = await asyncio.to_thread(self._load)
        if isinstance(result, BaseException):
            self._reject(result, digest)
            return False
        if digest == self.digest:  # changed and changed back while we read
            return False
        self._accept(result, digest)
        self.log.info("settings_reloaded", path=str(self.path), digest=digest[:12], generation=self.generation)
        if self.on_change is not None:
            self.on_change(result)
        return True

    def _load(self) -> tuple[str, Any]:
        """(digest, Settings or the exception). Blocking: call off the loop after the first load.

        The digest is taken before and after the parse, so the bytes it names are the bytes parsed
        even when kubelet swaps `..data` in between (then we just read again)."""
        from webhook.settings import load_settings  # noqa: PLC0415 (lazy: keeps `--help` fast)

        before = file_digest(self.path)
        for _ in range(5):
            try:
                result: Any = load_settings(str(self.path))
            except Exception as exc:  # noqa: BLE001 (a loader bug must not kill the watcher either)
                result = exc
            after = file_digest(self.path)
            if after == before:
                break
            before = after
        return before, result

    def _accept(self, settings: Any, digest: str) -> None:
        self.digest = digest
        self.generation += 1
        self._failed_digest = None
        m = self.metrics
        m.settings_generation = self.generation
        m.settings_loaded_at = time.time()
        m.settings_reload_error = None
        if self.generation > 1:
            m.settings_reloads["ok"] += 1

    def _reject(self, exc: BaseException, digest: str) -> None:
        self._failed_digest = digest
        field = getattr(exc, "field", None)
        if isinstance(exc, ValueError):
            # SettingsError: the message names the field and what is accepted (settings are a
            # ConfigMap, not secrets). Anything else is a loader bug: its type only.
            error = str(exc)
        else:
            error = type(exc).__name__
        self.metrics.settings_reloads["error"] += 1
        self.metrics.settings_reload_error = field or "unknown"
        self.log.error("settings_reload_failed", path=str(self.path), field=field or "unknown", error=error,
                       digest=digest[:12], kept_generation=self.generation,
                       kept_digest=(self.digest or "")[:12])

    # -- watching -------------------------------------------------------------------------------
    async def watch(self, stop: asyncio.Event | None = None) -> None:
        """Reload on changes in the file's directory until `stop` is set (or cancelled)."""
        await watch_dirs([str(self.path.parent)], self.reload, stop=stop or asyncio.Event(),
                         poll_interval=self.poll_interval, log=self.log, name="settings")
