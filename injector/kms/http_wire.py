"""One HTTP/1.1 connection for injector.kms.http: h11 framing over an asyncio stream (send a
request, read the head, read the body piece by piece), the transport errors and the response
types. h11 is strict RFC 9112; anything malformed is a ProtocolError whose message never quotes
the bytes (they may be a value or our token).
"""

from __future__ import annotations

import asyncio
import json as _json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import h11

DEFAULT_MAX_BODY = 16 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 64 * 1024


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
class Origin:
    scheme: str
    host: str
    port: int
    prefix: str  # path prefix without trailing slash, e.g. "/api"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_base_url(base_url: str) -> Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("base URL must not carry a query, fragment or credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


@dataclass
class WireRequest:
    """One request, validated, ready to be framed on any connection."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class Connection:
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

    async def send(self, req: WireRequest) -> None:
        self.received = 0
        try:
            data = self.h11.send(h11.Request(method=req.method, target=req.target, headers=req.headers))
            if req.body:
                data += self.h11.send(h11.Data(data=req.body))
            data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"request cannot be framed: {h11_reason(exc)}") from None
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
            data = await self.reader.read(READ_SIZE)
            self.received += len(data)
            self.h11.receive_data(data)  # b"" = the server closed its side

    def _what_broke(self, exc: h11.RemoteProtocolError, in_body: bool) -> str:
        eof = self.reader.at_eof()
        if in_body:
            return "response body truncated" if eof else f"malformed response body: {h11_reason(exc)}"
        if not self.received:
            return "server closed the connection without a response"
        return "response headers truncated" if eof else f"malformed HTTP response: {h11_reason(exc)}"

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

    async def send_and_head(self, req: WireRequest) -> tuple[int, str, Headers, Body]:
        """Send `req` and read the answer's head (interim responses skipped): status, reason,
        headers and the body still to read. StaleConnection: a reused connection closed unseen."""
        try:
            await self.send(req)
            event = await self.next_event()
            while isinstance(event, h11.InformationalResponse):  # 100 Continue and the like: skip
                event = await self.next_event()
        except (ConnectionResetError, BrokenPipeError):
            if self.reused and self.received == 0:
                raise StaleConnection() from None
            raise
        except ProtocolError:
            if self.reused and self.received == 0:  # EOF before a single byte of an answer
                raise StaleConnection() from None
            if self.received == 0:
                raise ConnectError("server closed the connection without a response") from None
            raise
        if not isinstance(event, h11.Response):
            raise ProtocolError(f"expected a response, got {type(event).__name__}")
        headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers])
        length = headers.get("content-length")  # h11 checked it: one value, ASCII digits only
        has_body = req.method != "HEAD" and event.status_code not in (204, 304) and "transfer-encoding" not in headers
        body = Body(self, int(length) if length is not None and has_body else None)
        return event.status_code, event.reason.decode("latin-1"), headers, body


class Body:
    """Reads a response body piece by piece (h11 does the framing)."""

    def __init__(self, conn: Connection, length: int | None) -> None:
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


class StaleConnection(Exception):
    """A reused connection closed before any byte of the answer: the server dropped it idle."""


def h11_reason(exc: Exception) -> str:
    """h11's message without the bytes it quotes ("illegal chunk header: b'...'"): those may be
    body bytes (secret values) or our own headers (the token). Its leading words say enough."""
    words = re.match(r"[A-Za-z][A-Za-z -]*", str(exc))
    text = re.sub(r"\s+(b|bytearray)$", "", words.group(0).strip()) if words else ""
    return text or type(exc).__name__


def os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if exc.__class__.__name__ == "gaierror":
        return f"DNS lookup failed ({exc.strerror or exc})"
    return exc.strerror or type(exc).__name__
