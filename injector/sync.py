"""One sync: fetch every source -> render -> write -> notify, returning what happened.

Each source keeps its ETag, so an unchanged folder costs one 304 and no render, no write, no
notification. On failure the step raises (the KMS client's typed errors, or SyncError) and the
files on disk are untouched. The step knows nothing of retries, modes or health: the loop
(injector.agent_loop) decides what an outcome or an error means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from injector.config import AgentConfig
from injector.log import Logger
from injector.seams import FileWriter, Notifier, SecretSource


class SyncError(Exception):
    """A sync step outside the KMS client failed (render, write). str() is safe to log."""


@dataclass(frozen=True)
class NotifyResult:
    signals: int = 0
    commands: int = 0


@dataclass(frozen=True)
class SyncOutcome:
    changed: bool  # files on disk changed (and the notifier ran)
    not_modified: int = 0  # sources KMS answered with 304
    signals: int = 0
    commands: int = 0


class NoNotifier:
    """Init mode: the init container never notifies (issue 12 item 3), whatever its config says:
    no app runs yet, and a command would hold every pod start for its timeout."""

    async def notify(self) -> NotifyResult:
        return NotifyResult()


class AppNotifier:
    """Signal the app's processes or run the command (notify logs what it did, and warns when the
    process is missing: that never fails the sync, the files are right)."""

    def __init__(self, config: AgentConfig, log: Logger) -> None:
        self.config, self.log = config, log

    async def notify(self) -> NotifyResult:
        cfg = self.config
        try:
            if cfg.signal:
                from injector.notify import send_signal

                return NotifyResult(signals=len(send_signal(cfg.signal_process, cfg.signal, self.log)))
            if cfg.command:
                from injector.notify import run_command

                await run_command(cfg.command, cfg.command_timeout, self.log)
                return NotifyResult(commands=1)
        except Exception as exc:
            self.log.warning("notify_failed", error=f"{type(exc).__name__}: {exc}")
        return NotifyResult()


def notifier_for(config: AgentConfig, log: Logger) -> Notifier:
    return AppNotifier(config, log) if config.mode == "sidecar" and (config.signal or config.command) else NoNotifier()


@dataclass
class _SourceState:
    etag: str | None = None
    secrets: dict[str, str] | None = None


class SyncStep:
    """fetch -> render -> write -> notify for every source of `config`.

    `on_written` is called as soon as a complete version is on disk, before the notifier runs:
    an init whose notify is cut by SIGTERM has still done its job."""

    def __init__(self, config: AgentConfig, writer: FileWriter, notifier: Notifier, log: Logger,
                 on_written: Callable[[], None] = lambda: None) -> None:
        self.config, self.writer, self.notifier, self.log = config, writer, notifier, log
        self.on_written = on_written
        self._states: dict[str, _SourceState] = {}
        self._dirty = False  # fetched content not yet written

    async def run(self, source: SecretSource) -> SyncOutcome:
        cfg = self.config
        not_modified = 0
        for src in cfg.sources:
            st = self._states.setdefault(src.subdir, _SourceState())
            extra: dict[str, Any] = {"keys": src.keys} if src.keys else {}  # only canonical by-key reads use it
            res = await source.fetch(cfg.project, cfg.env, src.path,
                                     etag=st.etag if st.secrets is not None else None,
                                     include_imports=cfg.include_imports, **extra)
            if res.not_modified and st.secrets is not None:
                not_modified += 1
                continue
            if st.secrets != res.secrets:
                self._dirty = True
            st.secrets, st.etag = dict(res.secrets), res.etag
        if not self._dirty:
            return SyncOutcome(False, not_modified)
        changed = self._render_and_write()
        self._dirty = False
        self.on_written()
        if not changed:
            return SyncOutcome(False, not_modified)
        result = await self.notifier.notify()
        return SyncOutcome(True, not_modified, result.signals, result.commands)

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


def describe_error(exc: BaseException) -> str:
    """One line for logs and the init failure: the KMS client's errors already name host,
    project, env, path, status and KMS's message, and never a value."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    module = type(exc).__module__ or ""
    if module.startswith("injector.") or isinstance(exc, SyncError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
