"""A minimal asyncio HTTP/1.1 client: just what the agent needs to talk to KMS.

Why not aiohttp: importing it costs ~35 MB and ~0.5 s, more than the agent's whole start-up
budget. This speaks HTTP/1.1 over `asyncio.open_connection`: kept-alive connections to the one
origin of a base URL (`http://host:port/api`), http and https, JSON request bodies, a hard
per-request timeout, a body size guard, and a streaming mode that yields lines (for a
`text/event-stream` consumer).

The framing is h11's (pure Python, no I/O of its own: bench/README.md "HTTP framing" measured it
at ~5 ms and under 0.5 MiB of agent start-up): strict RFC 9112 parsing of status lines, headers,
Content-Length (ASCII digits only, one value), chunk sizes (hex digits only), trailers,
close-delimited bodies, HTTP/1.0 and interim responses. Anything malformed is a ProtocolError.

A kept-alive connection the server closed unseen is retried once on a fresh connection, and only
for requests safe to repeat (GET, HEAD, OPTIONS): a POST (login, renew) may have been acted on.

Here: the client (connection pool, TLS, timeouts, the stale retry). One connection's framing,
the errors and the response types are http_wire.py; streamed responses http_stream.py.

Transport failures raise the `HttpError` family (http_wire.py); mapping them to KMS meaning is the
caller's job (injector.kms.errors).
"""

from __future__ import annotations

import asyncio
import json as _json
import re
import ssl
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlencode

from injector.kms.http_wire import (
    DEFAULT_MAX_BODY, MAX_HEADER_BYTES, BodyTooLarge, ConnectError, Connection, Headers, HttpError, ProtocolError,
    RequestTimeout, Response, StaleConnection, WireRequest, os_reason, parse_base_url,
)

if TYPE_CHECKING:
    from injector.kms.http_stream import StreamContext

# The public names callers import from here (they live in http_wire.py).
__all__ = ["DEFAULT_MAX_BODY", "MAX_HEADER_BYTES", "SAFE_TO_RETRY", "BodyTooLarge", "ConnectError", "Headers", "HttpClient",
           "HttpError", "ProtocolError", "RequestTimeout", "Response"]

_MAX_IDLE = 2  # idle kept-alive connections kept per client (one origin)
SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 safe methods: re-sending changes nothing
# Control characters a header may not carry (tab is allowed): one regex scan per header instead of a
# per-character generator (bench/agent_idle_cycle.py: ~112 generator steps per request with the token).
_HEADER_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HttpClient:
    """HTTP/1.1 client bound to one base URL. Safe for concurrent use; reuses idle connections."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        ca_file: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        user_agent: str = "kms-injector-agent",
    ) -> None:
        self.base_url = base_url
        self.origin = parse_base_url(base_url)
        self.timeout = timeout
        self.max_body = max_body
        self.user_agent = user_agent
        self._ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[Connection] = []
        self.connections_opened = 0  # for tests and metrics: proves keep-alive works
        self.stale_retries = 0  # safe requests re-sent after a kept-alive connection died unseen

    # -- public API ---------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole response within `timeout` (default: the client's)."""
        req, limit = self._prepare(method, path, params, json, headers, timeout)
        try:
            async with asyncio.timeout(limit):
                return await self._roundtrip(req)
        except asyncio.TimeoutError:
            raise self._timed_out(method, path, limit) from None

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_line: int = 1024 * 1024,
    ) -> StreamContext:
        """`async with client.stream(...) as resp:` then `async for line in resp.lines()`.

        Uses its own connection (a long-lived stream must not hold the kept-alive one); it is
        closed when the block exits. `timeout` bounds connecting and reading the headers.
        """
        from injector.kms.http_stream import StreamContext  # lazily: only a sidecar streams

        return StreamContext(self, method, path, params, json, headers, timeout, max_line)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            try:
                async with asyncio.timeout(1.0):
                    await conn.writer.wait_closed()
            except Exception:  # best effort: the peer may already be gone
                pass

    # -- internals ----------------------------------------------------------------------------
    def _path(self, path: str) -> str:
        return self.origin.prefix + (path if path.startswith("/") else "/" + path)

    def _prepare(
        self, method: str, path: str, params: Mapping[str, str] | None, json: Any, headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> tuple[WireRequest, float]:
        """The request and its time limit (the client's default unless one is given)."""
        return self._encode(method, path, params, json, headers), self.timeout if timeout is None else timeout

    def _timed_out(self, method: str, path: str, limit: float) -> RequestTimeout:
        return RequestTimeout(f"{method} {self._path(path)} timed out after {limit:g}s")

    def _encode(
        self, method: str, path: str, params: Mapping[str, str] | None, json: Any, headers: Mapping[str, str] | None
    ) -> WireRequest:
        target = self._path(path)
        if params:
            target += "?" + urlencode(params)
        body = b"" if json is None else _json.dumps(json, separators=(",", ":")).encode()
        items = [("Host", self.origin.host_header), ("User-Agent", self.user_agent), ("Accept", "application/json")]
        if json is not None:
            items.append(("Content-Type", "application/json"))
        if json is not None or method in ("POST", "PUT", "PATCH"):
            items.append(("Content-Length", str(len(body))))
        for name, value in (headers or {}).items():
            if not name or _HEADER_CTL.search(name) or _HEADER_CTL.search(value):
                raise ValueError(f"header {name!r} contains a line break, NUL or another control character")
            items.append((name, value))
        for name, value in items:  # h11 frames latin-1 bytes; say which header cannot be sent
            try:
                name.encode("latin-1"), value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} is not latin-1 text") from None
        return WireRequest(method, target, items, body)

    async def _connect(self, timeout: float | None = None) -> Connection:
        o = self.origin
        ctx = None
        if o.scheme == "https":
            if self._ssl is None:
                try:  # a ca_file replaces the system CAs: a KMS behind a private CA
                    self._ssl = ssl.create_default_context(cafile=self._ca_file)
                except (OSError, ssl.SSLError) as exc:  # missing, unreadable or not PEM: say which file
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                    raise ConnectError(f"cannot load the CA bundle {self._ca_file}: {reason}") from None
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    o.host, o.port, ssl=ctx, server_hostname=o.host if ctx else None, limit=MAX_HEADER_BYTES)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"connecting to {o.host}:{o.port} timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"TLS verification of {o.host}:{o.port} failed: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {o.host}:{o.port} failed: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {o.host}:{o.port}: {os_reason(exc)}") from None
        self.connections_opened += 1
        return Connection(reader, writer)

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _roundtrip(self, req: WireRequest) -> Response:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, req)
            except StaleConnection:
                if req.method not in SAFE_TO_RETRY:  # the server may have acted on it: never twice
                    raise ConnectError(f"server closed the kept-alive connection after {req.method} "
                                       f"{req.target.split('?', 1)[0]} without an answer; not re-sent") from None
                self.stale_retries += 1  # closed before answering: once more on a fresh connection
        conn = await self._connect()
        try:
            return await self._exchange(conn, req)
        except StaleConnection:
            raise ConnectError("server closed the connection without a response") from None

    async def _exchange(self, conn: Connection, req: WireRequest) -> Response:
        keep = False
        try:
            status, reason, headers, body = await conn.send_and_head(req)
            payload = await body.read_all(self.max_body)
            keep = conn.keep()
            return Response(status, reason, headers, payload)
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"connection to {self.origin.host}:{self.origin.port} lost: {os_reason(exc)}") from None
        finally:
            if keep and len(self._idle) < _MAX_IDLE:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()
