"""The agent's optional health server: /healthz, /readyz, /metrics on a tiny asyncio HTTP server.

Stdlib only (the agent must not import aiohttp). It answers GETs with a fixed set of small
bodies and closes the connection; anything else gets a short 404/405. Metrics carry counts and
timestamps only: never a key name, a value or a token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0


@dataclass
class Metrics:
    """Counters the agent updates; rendered as Prometheus text by `render_metrics`."""

    syncs_total: int = 0  # successful syncs (including 304s)
    sync_failures_total: int = 0
    changes_total: int = 0  # syncs that changed the files on disk
    signals_total: int = 0  # signals delivered to processes
    commands_total: int = 0  # notify commands run
    not_modified_total: int = 0  # sources answered with 304
    last_success_timestamp_seconds: float = 0.0
    ready: bool = False  # first successful sync done
    healthy: bool = True  # False while syncs are failing


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
}


def render_metrics(metrics: Metrics) -> str:
    out: list[str] = []
    for f in fields(metrics):
        kind, help_ = _HELP[f.name]
        name = f"kms_agent_{f.name}"
        value = getattr(metrics, f.name)
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {float(value):.3f}" if isinstance(value, float) else f"{name} {int(value)}")
    return "\n".join(out) + "\n"


class HealthServer:
    def __init__(self, metrics: Metrics, port: int, host: str = "0.0.0.0") -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

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
            if self.metrics.ready:
                return 200, "text/plain", "ready\n"
            return 503, "text/plain", "not ready: no successful sync yet\n"
        return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(self.metrics)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
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
