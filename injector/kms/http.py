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

Transport failures raise the `HttpError` family below; mapping them to KMS meaning is the
caller's job (injector.kms.errors).
"""

from __future__ import annotations

import asyncio
import json as _json
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Mapping
from urllib.parse import urlencode, urlsplit

import h11

DEFAULT_MAX_BODY = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
_MAX_IDLE = 2  # idle kept-alive connections kept per client (one origin)
SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 safe methods: re-sending changes nothing


class HttpError(Exception):
    """A transport-level failure: no usable HTTP response was received."""


class ConnectError(HttpError):
    """Could not connect, or the connection broke: DNS, refused, reset, TLS verification."""


class RequestTimeout(HttpError):
    """The request did not complete within its timeout."""


class ProtocolError(HttpError):
    """The server answered something that is not valid HTTP/1.1, or the body was truncated."""


class BodyTooLarge(ProtocolError):
    """The response body is larger than the configured maximum."""


class Headers(Mapping[str, str]):
    """Response headers with case-insensitive lookup. Repeated headers are joined with ', '."""

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._map: dict[str, str] = {}
        for name, value in items or []:
            key = name.lower()
            self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:  # names only: header values may carry tokens
        return f"Headers({sorted(self._map)})"


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not."""
        return _json.loads(self.body)


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # path prefix without trailing slash, e.g. "/api"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_base_url(base_url: str) -> _Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("base URL must not carry a query, fragment or credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _Origin(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


@dataclass
class _Request:
    """One request, validated, ready to be framed on any connection."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reused = False
        self.received = 0  # bytes of the current response seen so far

    def usable(self) -> bool:
        # An idle kept-alive socket the server closed shows EOF (or buffered junk) here.
        return (self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE and not self.writer.is_closing()
                and not self.reader.at_eof() and not self.reader._buffer)  # type: ignore[attr-defined]

    async def send(self, req: _Request) -> None:
        self.received = 0
        try:
            data = self.h11.send(h11.Request(method=req.method, target=req.target, headers=req.headers))
            if req.body:
                data += self.h11.send(h11.Data(data=req.body))
            data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"request cannot be framed: {_h11_reason(exc)}") from None
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> Any:
        """The next h11 event of the response, reading from the socket as needed."""
        while True:
            in_body = self.h11.their_state is h11.SEND_BODY  # read before h11 turns it into ERROR
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(self._what_broke(exc, in_body)) from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(_READ_SIZE)
            self.received += len(data)
            self.h11.receive_data(data)  # b"" = the server closed its side

    def _what_broke(self, exc: h11.RemoteProtocolError, in_body: bool) -> str:
        eof = self.reader.at_eof()
        if in_body:
            return "response body truncated" if eof else f"malformed response body: {_h11_reason(exc)}"
        if not self.received:
            return "server closed the connection without a response"
        return "response headers truncated" if eof else f"malformed HTTP response: {_h11_reason(exc)}"

    def keep(self) -> bool:
        """After a whole response: ready for the next request on this connection?"""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already gone: nothing to release
            pass


class _Body:
    """Reads a response body piece by piece (h11 does the framing)."""

    def __init__(self, conn: _Conn, length: int | None) -> None:
        self.conn = conn
        self.length = length  # Content-Length when the server sent one
        self.done = False

    async def read_some(self) -> bytes:
        """Next piece of the body; b"" at its end."""
        while not self.done:
            event = await self.conn.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
            else:  # nothing else may come inside a response body
                raise ProtocolError(f"unexpected {type(event).__name__} inside a response body")
        return b""

    async def read_all(self, max_body: int) -> bytes:
        if self.length is not None and self.length > max_body:
            raise BodyTooLarge(f"response body of {self.length} bytes exceeds the {max_body}-byte limit")
        parts: list[bytes] = []
        total = 0
        while True:
            data = await self.read_some()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > max_body:
                raise BodyTooLarge(f"response body exceeds the {max_body}-byte limit")
            parts.append(data)


class StreamResponse:
    """A response whose body is read incrementally (see HttpClient.stream)."""

    def __init__(self, status: int, reason: str, headers: Headers, body: _Body, conn: _Conn, max_line: int) -> None:
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
        self._idle: list[_Conn] = []
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
    ) -> "_StreamContext":
        """`async with client.stream(...) as resp:` then `async for line in resp.lines()`.

        Uses its own connection (a long-lived stream must not hold the kept-alive one); it is
        closed when the block exits. `timeout` bounds connecting and reading the headers.
        """
        return _StreamContext(self, method, path, params, json, headers, timeout, max_line)

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
    ) -> tuple[_Request, float]:
        """The request and its time limit (the client's default unless one is given)."""
        return self._encode(method, path, params, json, headers), self.timeout if timeout is None else timeout

    def _timed_out(self, method: str, path: str, limit: float) -> RequestTimeout:
        return RequestTimeout(f"{method} {self._path(path)} timed out after {limit:g}s")

    def _encode(
        self, method: str, path: str, params: Mapping[str, str] | None, json: Any, headers: Mapping[str, str] | None
    ) -> _Request:
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
            if not name or any(c < " " and c != "\t" or c == "\x7f" for c in name + value):
                raise ValueError(f"header {name!r} contains a line break, NUL or another control character")
            items.append((name, value))
        for name, value in items:  # h11 frames latin-1 bytes; say which header cannot be sent
            try:
                name.encode("latin-1"), value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} is not latin-1 text") from None
        return _Request(method, target, items, body)

    async def _connect(self, timeout: float | None = None) -> _Conn:
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
            raise ConnectError(f"cannot connect to {o.host}:{o.port}: {_os_reason(exc)}") from None
        self.connections_opened += 1
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _roundtrip(self, req: _Request) -> Response:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, req)
            except _StaleConnection:
                if req.method not in SAFE_TO_RETRY:  # the server may have acted on it: never twice
                    raise ConnectError(f"server closed the kept-alive connection after {req.method} "
                                       f"{req.target.split('?', 1)[0]} without an answer; not re-sent") from None
                self.stale_retries += 1  # closed before answering: once more on a fresh connection
        conn = await self._connect()
        try:
            return await self._exchange(conn, req)
        except _StaleConnection:
            raise ConnectError("server closed the connection without a response") from None

    async def _exchange(self, conn: _Conn, req: _Request) -> Response:
        keep = False
        try:
            status, reason, headers, body = await self._send_and_head(conn, req)
            payload = await body.read_all(self.max_body)
            keep = conn.keep()
            return Response(status, reason, headers, payload)
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"connection to {self.origin.host}:{self.origin.port} lost: {_os_reason(exc)}") from None
        finally:
            if keep and len(self._idle) < _MAX_IDLE:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()

    async def _send_and_head(self, conn: _Conn, req: _Request) -> tuple[int, str, Headers, _Body]:
        try:
            await conn.send(req)
            event = await conn.next_event()
            while isinstance(event, h11.InformationalResponse):  # 100 Continue and the like: skip
                event = await conn.next_event()
        except (ConnectionResetError, BrokenPipeError):
            if conn.reused and conn.received == 0:
                raise _StaleConnection() from None
            raise
        except ProtocolError:
            if conn.reused and conn.received == 0:  # EOF before a single byte of an answer
                raise _StaleConnection() from None
            if conn.received == 0:
                raise ConnectError("server closed the connection without a response") from None
            raise
        if not isinstance(event, h11.Response):
            raise ProtocolError(f"expected a response, got {type(event).__name__}")
        headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers])
        length = headers.get("content-length")  # h11 checked it: one value, ASCII digits only
        has_body = req.method != "HEAD" and event.status_code not in (204, 304) and "transfer-encoding" not in headers
        body = _Body(conn, int(length) if length is not None and has_body else None)
        return event.status_code, event.reason.decode("latin-1"), headers, body


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer: the server dropped it idle."""


class _StreamContext:
    def __init__(self, client: HttpClient, method: str, path: str, params: Any, json: Any, headers: Any, timeout: float | None, max_line: int) -> None:
        self._args = (client, method, path, params, json, headers, timeout, max_line)
        self._resp: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        client, method, path, params, json, headers, timeout, max_line = self._args
        req, limit = client._prepare(method, path, params, json, headers, timeout)

        async def open_() -> StreamResponse:
            conn = await client._connect()
            try:
                status, reason, hdrs, body = await client._send_and_head(conn, req)
            except _StaleConnection:  # cannot happen on a fresh connection; keep the type honest
                conn.close()
                raise ConnectError("server closed the connection without a response") from None
            except (ConnectionError, OSError) as exc:
                conn.close()
                raise ConnectError(f"connection lost: {_os_reason(exc)}") from None
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


def _h11_reason(exc: Exception) -> str:
    """h11's message without the bytes it quotes ("illegal chunk header: b'...'"): those may be
    body bytes (secret values) or our own headers (the token). Its leading words say enough."""
    words = re.match(r"[A-Za-z][A-Za-z -]*", str(exc))
    text = re.sub(r"\s+(b|bytearray)$", "", words.group(0).strip()) if words else ""
    return text or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if exc.__class__.__name__ == "gaierror":
        return f"DNS lookup failed ({exc.strerror or exc})"
    return exc.strerror or type(exc).__name__
