"""A minimal asyncio HTTP/1.1 client: just what the agent needs to talk to KMS.

Why not aiohttp: importing it costs ~35 MB and ~0.5 s, more than the agent's whole start-up
budget. This speaks HTTP/1.1 over `asyncio.open_connection`: kept-alive connections to the one
origin of a base URL (`http://host:port/api`), http and https, JSON request bodies,
Content-Length / chunked / read-until-close response bodies, a hard per-request timeout, a body
size guard, and a streaming mode that yields lines (for a `text/event-stream` consumer).

Transport failures raise the `HttpError` family below; mapping them to KMS meaning is the
caller's job (injector.kms.errors).
"""

from __future__ import annotations

import asyncio
import json as _json
import ssl
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Mapping
from urllib.parse import urlencode, urlsplit

DEFAULT_MAX_BODY = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
_MAX_IDLE = 2  # idle kept-alive connections kept per client (one origin)
_NO_BODY_METHODS = ("HEAD",)


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
        self._items = list(items or [])
        self._map: dict[str, str] = {}
        for name, value in self._items:
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

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._items if n.lower() == key]

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


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def usable(self) -> bool:
        # An idle kept-alive socket the server closed shows EOF (or buffered junk) here.
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.reader._buffer  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already gone: nothing to release
            pass


class _Body:
    """Reads a response body piece by piece according to its framing."""

    def __init__(self, reader: asyncio.StreamReader, framing: str, length: int = 0) -> None:
        self.reader = reader
        self.framing = framing  # "none" | "length" | "chunked" | "close"
        self.remaining = length
        self.done = framing == "none" or (framing == "length" and length == 0)
        self._chunk_left = 0

    async def read_some(self) -> bytes:
        """Next piece of the body; b"" at its end."""
        if self.done:
            return b""
        r = self.reader
        if self.framing == "length":
            data = await r.read(min(self.remaining, _READ_SIZE))
            if not data:
                raise ProtocolError(f"response body truncated: {self.remaining} bytes missing")
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.framing == "chunked":
            if self._chunk_left == 0:
                size = await self._chunk_size()
                if size == 0:
                    await self._trailers()
                    self.done = True
                    return b""
                self._chunk_left = size
            data = await r.read(min(self._chunk_left, _READ_SIZE))
            if not data:
                raise ProtocolError("chunked response body truncated")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                crlf = await _readexactly(r, 2, "chunked response body truncated")
                if crlf != b"\r\n":
                    raise ProtocolError("malformed chunked encoding: chunk not followed by CRLF")
            return data
        data = await r.read(_READ_SIZE)  # read until the server closes
        if not data:
            self.done = True
        return data

    async def _chunk_size(self) -> int:
        line = await _readline(self.reader, "chunked response body truncated")
        text = line.split(b";", 1)[0].strip()
        try:
            size = int(text, 16)
        except ValueError:
            raise ProtocolError("malformed chunked encoding: bad chunk size") from None
        if size < 0:
            raise ProtocolError("malformed chunked encoding: negative chunk size")
        return size

    async def _trailers(self) -> None:
        total = 0
        while True:
            line = await _readline(self.reader, "chunked response trailers truncated")
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise ProtocolError("chunked response trailers too large")
            if line in (b"\r\n", b"\n"):
                return

    async def read_all(self, max_body: int) -> bytes:
        if self.framing == "length" and self.remaining > max_body:
            raise BodyTooLarge(f"response body of {self.remaining} bytes exceeds the {max_body}-byte limit")
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


async def _readline(reader: asyncio.StreamReader, what: str) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise ProtocolError(what) from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("line too long in response") from None


async def _readexactly(reader: asyncio.StreamReader, n: int, what: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProtocolError(what) from None


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
        data, limit = self._prepare(method, path, params, json, headers, timeout)
        try:
            async with asyncio.timeout(limit):
                return await self._roundtrip(method, data)
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
    ) -> tuple[bytes, float]:
        """The encoded request and its time limit (the client's default unless one is given)."""
        return self._encode(method, path, params, json, headers), self.timeout if timeout is None else timeout

    def _timed_out(self, method: str, path: str, limit: float) -> RequestTimeout:
        return RequestTimeout(f"{method} {self._path(path)} timed out after {limit:g}s")

    def _encode(
        self, method: str, path: str, params: Mapping[str, str] | None, json: Any, headers: Mapping[str, str] | None
    ) -> bytes:
        target = self._path(path)
        if params:
            target += "?" + urlencode(params)
        body = b"" if json is None else _json.dumps(json, separators=(",", ":")).encode()
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.origin.host_header}",
            f"User-Agent: {self.user_agent}",
            "Accept: application/json",
        ]
        if json is not None:
            lines.append("Content-Type: application/json")
        if json is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        for name, value in (headers or {}).items():
            if any(c in name + value for c in "\r\n\x00") or not name:
                raise ValueError(f"header {name!r} contains a line break or NUL")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _connect(self, timeout: float | None = None) -> _Conn:
        o = self.origin
        ctx = None
        if o.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=self._ca_file)
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

    async def _roundtrip(self, method: str, data: bytes) -> Response:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, method, data)
            except _StaleConnection:
                pass  # the server closed the kept-alive connection before answering: once more, fresh
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, data)
        except _StaleConnection:
            raise ConnectError("server closed the connection without a response") from None

    async def _exchange(self, conn: _Conn, method: str, data: bytes) -> Response:
        keep = False
        try:
            status, reason, headers, body = await self._send_and_head(conn, method, data)
            payload = await body.read_all(self.max_body)
            keep = body.framing != "close" and _keep_alive(headers)
            return Response(status, reason, headers, payload)
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"connection to {self.origin.host}:{self.origin.port} lost: {_os_reason(exc)}") from None
        finally:
            if keep and len(self._idle) < _MAX_IDLE:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()

    async def _send_and_head(self, conn: _Conn, method: str, data: bytes) -> tuple[int, str, Headers, _Body]:
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            head = await _read_head(conn.reader, first=True)
        except _NothingReceived:
            if conn.reused:
                raise _StaleConnection() from None
            raise ConnectError("server closed the connection without a response") from None
        except (ConnectionResetError, BrokenPipeError):
            if conn.reused:
                raise _StaleConnection() from None
            raise
        status, reason, headers = _parse_head(head)
        while 100 <= status < 200:  # interim responses (100 Continue): skip to the real one
            status, reason, headers = _parse_head(await _read_head(conn.reader, first=False))
        return status, reason, headers, _body_for(conn.reader, method, status, headers)


async def _read_head(reader: asyncio.StreamReader, first: bool) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if first and not exc.partial:
            raise _NothingReceived() from None
        raise ProtocolError("response headers truncated") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"response headers exceed {MAX_HEADER_BYTES} bytes") from None


class _NothingReceived(Exception):
    pass


class _StaleConnection(Exception):
    pass


class _StreamContext:
    def __init__(self, client: HttpClient, method: str, path: str, params: Any, json: Any, headers: Any, timeout: float | None, max_line: int) -> None:
        self._args = (client, method, path, params, json, headers, timeout, max_line)
        self._resp: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        client, method, path, params, json, headers, timeout, max_line = self._args
        data, limit = client._prepare(method, path, params, json, headers, timeout)

        async def open_() -> StreamResponse:
            conn = await client._connect()
            try:
                status, reason, hdrs, body = await client._send_and_head(conn, method, data)
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


def _parse_head(head: bytes) -> tuple[int, str, Headers]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ProtocolError("malformed HTTP status line")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError("malformed HTTP header line")
        items.append((name, value.strip()))
    headers = Headers(items)
    if parts[0] == "HTTP/1.0" and "connection" not in headers:
        headers = Headers(items + [("Connection", "close")])
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _body_for(reader: asyncio.StreamReader, method: str, status: int, headers: Headers) -> _Body:
    if method in _NO_BODY_METHODS or status in (204, 304) or 100 <= status < 200:
        return _Body(reader, "none")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _Body(reader, "chunked")
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError("malformed Content-Length header")
        return _Body(reader, "length", int(values.pop()))
    return _Body(reader, "close")


def _keep_alive(headers: Headers) -> bool:
    return "close" not in headers.get("connection", "").lower()


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if exc.__class__.__name__ == "gaierror":
        return f"DNS lookup failed ({exc.strerror or exc})"
    return exc.strerror or type(exc).__name__
