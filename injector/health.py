"""The agent's optional health server: /healthz, /readyz, /metrics on a tiny asyncio HTTP server.

Stdlib only (the agent must not import aiohttp). It answers GETs with a fixed set of small
bodies and closes the connection; anything else gets a short 404/405. Metrics carry counts and
timestamps only: never a key name, a value or a token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any, Callable

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0


@dataclass
class Metrics:
    """One reading of the agent's state, rendered as Prometheus text by `render_metrics`.

    Built afresh for every /metrics request from the state its owners keep (the sync loop's
    AgentState, the token manager, the event subscriber, the relay client): read-only, and never an input to a
    decision."""

    syncs_total: int = 0  # successful syncs (including 304s)
    sync_failures_total: int = 0
    changes_total: int = 0  # syncs that changed the files on disk
    signals_total: int = 0  # signals delivered to processes
    commands_total: int = 0  # notify commands run
    not_modified_total: int = 0  # sources answered with 304
    last_success_timestamp_seconds: float = 0.0
    ready: bool = False  # first successful sync done
    healthy: bool = True  # False while syncs are failing
    events_connected: bool = False  # a KMS change-event stream is open
    events_received_total: int = 0  # change events matching our folders
    event_wakeups_total: int = 0  # early fetches the event stream caused (after debouncing)
    events_reconnects_total: int = 0  # streams re-opened after the first one
    auth_logins_total: int = 0
    auth_renewals_total: int = 0
    fetch_pending: bool = False  # a fetch is running or due now (woken, or a change event held back)
    credentials_parked: bool = False  # refused credentials are not retried until they change
    relay_connected: bool = False  # the change relay's stream is open (its "subscribed" came)
    relay_notices_total: int = 0  # change notices the relay sent for our folders
    relay_reconnects_total: int = 0  # relay streams opened after the first one
    relay_failures_total: int = 0  # relay streams that failed, dropped or went silent
    relay_refusals_total: int = 0  # subscriptions the relay refused (400/401/403)
    relay_wakeups_total: int = 0  # early fetches the relay caused (after debouncing; one per (re)connect)
    poll_factor: float = 1.0  # the safety-net poll is stretched this much now (relay healthy)


_HELP = {
    "syncs_total": ("counter", "Successful syncs (fetch of every source, render, write)."),
    "sync_failures_total": ("counter", "Failed sync attempts."),
    "changes_total": ("counter", "Syncs that changed the files on disk."),
    "signals_total": ("counter", "Signals delivered to the app's processes after a change."),
    "commands_total": ("counter", "Notify commands run after a change."),
    "not_modified_total": ("counter", "Sources KMS answered with 304 Not Modified."),
    "last_success_timestamp_seconds": ("gauge", "Unix time of the last successful sync."),
    "ready": ("gauge", "1 after the first successful sync."),
    "healthy": ("gauge", "0 while syncs are failing (the last good files are kept)."),
    "events_connected": ("gauge", "1 while the KMS change-event stream is open."),
    "events_received_total": ("counter", "KMS change events that matched the agent's folders."),
    "event_wakeups_total": ("counter", "Early fetches caused by the event stream (debounced changes, one per (re)connect)."),
    "events_reconnects_total": ("counter", "Event streams re-opened after the first one."),
    "auth_logins_total": ("counter", "Logins to KMS."),
    "auth_renewals_total": ("counter", "Access token renewals."),
    "fetch_pending": ("gauge", "1 while a fetch is running or due now (woken, or a debounced change event held back)."),
    "credentials_parked": ("gauge", "1 while refused credentials are not retried until the credential files change."),
    "relay_connected": ("gauge", "1 while the change relay's stream is open."),
    "relay_notices_total": ("counter", "Change notices the relay sent for the agent's folders."),
    "relay_reconnects_total": ("counter", "Relay streams opened after the first one."),
    "relay_failures_total": ("counter", "Relay streams that could not be opened, dropped or went silent."),
    "relay_refusals_total": ("counter", "Subscriptions the relay refused (bad request, token or path policy)."),
    "relay_wakeups_total": ("counter", "Early fetches caused by the relay (debounced notices, one per (re)connect)."),
    "poll_factor": ("gauge", "How much the safety-net poll is stretched now (the relay's factor while it is healthy, else 1)."),
}


def token_counters(client: Any) -> Callable[[Metrics], None]:  # client: injector.kms.KmsClient
    """A collector copying the KMS client's login/renewal counts into the metrics. The client may
    swap its token manager (api: auto detection): the old manager's counts are kept, so the
    counters never go down."""
    prev: list[Any] = [None, 0, 0]  # manager, logins and renewals of the managers before it

    def collect(m: Metrics) -> None:
        tm = getattr(client, "tokens", None)
        if tm is None:
            return
        if tm is not prev[0]:
            if prev[0] is not None:
                prev[1] += prev[0].logins
                prev[2] += prev[0].renewals
            prev[0] = tm
        m.auth_logins_total = prev[1] + int(getattr(tm, "logins", 0))
        m.auth_renewals_total = prev[2] + int(getattr(tm, "renewals", 0))

    return collect


def render_metrics(metrics: Metrics) -> str:
    from injector.promtext import Exposition  # noqa: PLC0415 (only when scraped)

    out = Exposition()
    for f in fields(metrics):
        kind, help_ = _HELP[f.name]
        name = f"kms_agent_{f.name}"
        value = getattr(metrics, f.name)
        out.family(name, kind, help_)
        out.sample(name, value if isinstance(value, (bool, float)) else int(value), fmt=".3f")
    return out.text()


class HealthServer:
    """Serves readings of the agent's state; `snapshot` and `ready` are the owner's read-only views."""

    def __init__(self, snapshot: Callable[[], Metrics], ready: Callable[[], bool], port: int, host: str = "0.0.0.0") -> None:
        self.snapshot = snapshot
        self.ready = ready
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def serve(self) -> None:
        """Listen and serve until cancelled (a supervised task); the port is bound on entry."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _respond(self, method: str, path: str) -> tuple[int, str, str]:
        path = path.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, "text/plain", "not found: use /healthz, /readyz or /metrics\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", "method not allowed: use GET\n"
        if path == "/healthz":
            return 200, "text/plain", "ok\n"
        if path == "/readyz":
            if self.ready():
                return 200, "text/plain", "ready\n"
            return 503, "text/plain", "not ready: no successful sync yet\n"
        try:
            text = render_metrics(self.snapshot())
        except Exception:  # a reading must never take the health server down
            return 503, "text/plain", "metrics unavailable\n"
        return 200, "text/plain; version=0.0.4; charset=utf-8", text

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return
            if len(head) > _MAX_REQUEST:
                status, ctype, body = 431, "text/plain", "request header too large\n"
                method = "GET"
            else:
                parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    status, ctype, body = 400, "text/plain", "bad request line\n"
                    method = "GET"
                else:
                    method = parts[0]
                    status, ctype, body = self._respond(method, parts[1])
            payload = body.encode()
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
            headers = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(headers + (b"" if method == "HEAD" else payload))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
