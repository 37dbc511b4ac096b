"""The agent's seams, as Protocols: what the sync loop needs from the KMS client, the writer and
the notifier. injector.kms.KmsClient, injector.writer.AtomicWriter and injector.sync's notifiers
are the implementations; tests may plug in others of the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    from injector.config import AgentConfig
    from injector.log import Logger


class Fetched(Protocol):
    """One folder's answer: its secrets, the ETag to send next time, and whether it was a 304."""

    secrets: Mapping[str, str]
    etag: str | None
    not_modified: bool


class SecretSource(Protocol):
    """Where secrets come from (the KMS client)."""

    async def fetch(self, project: str, env: str, path: str, *, etag: str | None = None,
                    include_imports: bool = True, keys: tuple[str, ...] = ()) -> Fetched:
        """One folder (imports merged); `keys` names the keys to read one by one where a server
        cannot list (the sync step passes it only when the Source has keys)."""

    def invalidate(self, token: str | None = None) -> bool:
        """Forget the token (with `token`: only if it is still the current one): the next request
        logs in with the credential files as they are now."""

    def credentials_changed(self) -> bool:
        """The credential files changed; True when a fresh login (and a fetch now) is due."""

    async def keep_token_fresh(self, horizon: float) -> None:
        """Renew a token whose renewal window is shorter than `horizon` (the poll interval) on
        time, for the sidecar's life; never logs in."""

    async def close(self) -> None: ...


class FileWriter(Protocol):
    """Where rendered files go (the atomic directory writer)."""

    def write(self, files: Mapping[str, bytes]) -> bool:
        """Make the directory hold exactly `files`; False when it already did."""

    def repair(self) -> list[str]:
        """Remove what a crash left behind; returns what was removed."""


class Notifier(Protocol):
    """Who is told after the files changed (a signal, a command, or nobody)."""

    async def notify(self) -> "NotifyCounts": ...


class NotifyCounts(Protocol):
    signals: int  # processes signalled
    commands: int  # commands run


class TriggerHost(Protocol):
    """What a change trigger (injector.event_trigger) may use of the sync loop: read its config,
    share its client, log, nudge it, and add to its metrics readings. Nothing else."""

    config: "AgentConfig"
    client: Any  # the SecretSource; the event stream also uses its transport and tokens
    log: "Logger"

    def nudge(self, reason: str) -> bool:
        """Fetch early if syncs are healthy; True when it woke the loop."""

    def add_metrics_source(self, fill: Callable[[Any], None], key: str = "") -> None: ...

    def set_pace(self, factor: Callable[[], float]) -> None:
        """Stretch the safety-net poll by factor() (the relay, while healthy)."""

    def pace_changed(self) -> None: ...
