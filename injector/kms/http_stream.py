"""Streaming responses of injector.kms.http (HttpClient.stream): a connection of its own whose body
is read as lines as they arrive (the change-event stream). Imported on the first stream only, so
an init run, which never streams, does not load it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator

from injector.kms.http_wire import (
    DEFAULT_MAX_BODY, Body, ConnectError, Connection, Headers, ProtocolError, RequestTimeout, StaleConnection, os_reason,
)

if TYPE_CHECKING:
    from injector.kms.http import HttpClient

class StreamResponse:
    """A response whose body is read incrementally (see HttpClient.stream)."""

    def __init__(self, status: int, reason: str, headers: Headers, body: Body, conn: Connection, max_line: int) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._body = body
        self._conn = conn
        self._max_line = max_line

    async def lines(self, idle_timeout: float | None = None) -> AsyncIterator[str]:
        """Yield body lines (decoded UTF-8, line ending removed) as they arrive.

        `idle_timeout`: raise RequestTimeout when no data arrives for this long (None = wait).
        The last line is yielded even without a trailing newline.
        """
        buf = b""
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    data = await self._body.read_some()
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no data on the stream for {idle_timeout:g}s") from None
            except (ConnectionError, OSError) as exc:
                raise ConnectError(f"stream connection lost ({type(exc).__name__})") from None
            if not data:
                if buf:
                    yield _decode_line(buf)
                return
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl], buf[nl + 1 :]
                yield _decode_line(line)
            if len(buf) > self._max_line:
                raise ProtocolError(f"stream line longer than {self._max_line} bytes")

    async def read(self, max_body: int = DEFAULT_MAX_BODY, timeout: float | None = 10.0) -> bytes:
        """Read the rest of the body (e.g. an error body), bounded in size and time."""
        try:
            async with asyncio.timeout(timeout):
                return await self._body.read_all(max_body)
        except asyncio.TimeoutError:
            raise RequestTimeout("timed out reading the response body") from None

    def close(self) -> None:
        self._conn.close()


def _decode_line(line: bytes) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode("utf-8", errors="replace")


class StreamContext:
    def __init__(self, client: HttpClient, method: str, path: str, params: Any, json: Any, headers: Any, timeout: float | None, max_line: int) -> None:
        self._args = (client, method, path, params, json, headers, timeout, max_line)
        self._resp: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        client, method, path, params, json, headers, timeout, max_line = self._args
        req, limit = client._prepare(method, path, params, json, headers, timeout)

        async def open_() -> StreamResponse:
            conn = await client._connect()
            try:
                status, reason, hdrs, body = await conn.send_and_head(req)
            except StaleConnection:  # cannot happen on a fresh connection; keep the type honest
                conn.close()
                raise ConnectError("server closed the connection without a response") from None
            except (ConnectionError, OSError) as exc:
                conn.close()
                raise ConnectError(f"connection lost: {os_reason(exc)}") from None
            except BaseException:
                conn.close()
                raise
            return StreamResponse(status, reason, hdrs, body, conn, max_line)

        try:
            async with asyncio.timeout(limit):
                self._resp = await open_()
        except asyncio.TimeoutError:
            raise client._timed_out(method, path, limit) from None
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.close()
