"""Hot reload of the webhook settings file (a ConfigMap volume in the cluster).

kubelet updates a ConfigMap volume in place: it writes a new `..<timestamp>` dir and renames a
`..data` symlink over the old one; `settings.yaml` itself is a fixed `..data/settings.yaml` link.
webhook.reload does the watching and the digest bookkeeping, as it does for the certificate.

A change that loads (webhook.settings.load_settings) is handed to `on_change`, which swaps it in
for new admissions (WebhookState.swap_settings also clears the answer cache). A change that does
not load keeps the old settings: one error line naming the field, counted in the metrics, and
not retried until the bytes change again. Logs carry a short digest, never the file's contents.
The relay CA file the settings name (`relay.ca_file`) is watched with them: it appearing or
changing is a settings change (new pods get the new CA; the answer cache is cleared).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from injector.log import Logger, get_logger
from webhook.metrics import Metrics
from webhook.reload import UNREADABLE, Reloader, bytes_digest, files_digest


class SettingsReloader(Reloader[Any]):
    """Serves the newest loadable settings from `path`; `generation` counts successful loads."""

    def __init__(self, path: str | os.PathLike[str], *, metrics: Metrics, log: Logger | None = None,
                 poll_interval: float = 10.0, on_change: Callable[[Any], None] | None = None) -> None:
        super().__init__([path], name="settings", log=log or get_logger("webhook.settings"), poll_interval=poll_interval)
        self.path = self.paths[0]
        self.metrics = metrics
        self.on_change = on_change  # called with the new Settings, on the event loop
        self.generation = 0

    def load_now(self) -> Any:
        """The first load, before serving. Raises SettingsError (a ValueError naming the field)."""
        result = super().load_now()
        if isinstance(result, Exception):
            raise result
        return result

    def parse(self) -> Any:
        from webhook.settings import load_settings  # noqa: PLC0415 (lazy: keeps `--help` fast)

        settings = load_settings(str(self.path))
        ca_file = settings.relay.ca_file
        # The digest covers the CA file too (load() re-reads once when this changed the paths).
        self.paths = (self.path, Path(ca_file)) if ca_file else (self.path,)
        return settings

    def current_digest(self) -> str:
        # The settings file alone decides "unreadable": a missing CA file is a state of its own
        # (no relay for new pods), and must not hide changes of the settings file meanwhile.
        main = files_digest([self.path])
        if main == UNREADABLE or len(self.paths) == 1:
            return main
        return bytes_digest([main.encode(), files_digest(self.paths[1:]).encode()])

    def accepted(self, settings: Any, digest: str, first: bool) -> None:
        self.generation += 1
        m = self.metrics
        m.settings_generation = self.generation
        m.settings_loaded_at = time.time()
        m.settings_reload_error = None
        relay = getattr(settings, "relay", None)
        if relay is not None and relay.url and relay.problem:  # configured, but no pod gets it until this clears
            self.log.warning("relay_not_injected", reason=relay.problem)
        if first:
            self.log.info("settings_loaded", path=str(self.path), digest=digest[:12], generation=self.generation)
            return
        m.settings_reloads["ok"] += 1
        self.log.info("settings_reloaded", path=str(self.path), digest=digest[:12], generation=self.generation)
        if self.on_change is not None:
            self.on_change(settings)

    def rejected(self, exc: Exception, digest: str, first: bool) -> None:
        if first:  # the caller (load_now) raises it: the process says why and exits
            return
        field = getattr(exc, "field", None)
        # SettingsError: the message names the field and what is accepted (settings are a
        # ConfigMap, not secrets). Anything else is a loader bug: its type only.
        error = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        self.metrics.settings_reloads["error"] += 1
        self.metrics.settings_reload_error = field or "unknown"
        self.log.error("settings_reload_failed", path=str(self.path), field=field or "unknown", error=error,
                       digest=digest[:12], kept_generation=self.generation,
                       kept_digest=(self.digest or "")[:12])

    def recovered(self, digest: str) -> None:
        self.metrics.settings_reload_error = None
        super().recovered(digest)
