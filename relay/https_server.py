"""A lean HTTPS/1.1 server for the relay's few routes and its 10,000 long-lived SSE streams.

Why not aiohttp over asyncio's TLS transport (the relay's first server): measured with 2,000 idle
TLS streams (bench/relay_tls_memory.py), aiohttp held ~40 KiB per connection, a bare asyncio TLS
Protocol ~26 KiB, TLS over hand-driven MemoryBIOs ~18.4 KiB (a memory BIO keeps the capacity of
the largest flight it carried, the handshake's ~3 KiB, for the connection's life), and a
non-blocking ssl.SSLSocket driven by the loop's add_reader ~15.3 KiB, ~14 of them OpenSSL's own
state (SSL_MODE_RELEASE_BUFFERS is already on: CPython sets it on every context). The last one
is this module: OpenSSL reads and writes the socket itself, no BIO and no transport object.

A connection: TLS handshake -> one request (h11 parses it; head <= MAX_HEAD, body <= max_body)
-> the handler coroutine returns a Response (sent, then the connection closes) or None after it
called `start_stream` (the connection is then a bare object with slots: no task, no queue, no
parser). Stream writes are synchronous sends; the socket's own buffer absorbs bursts, and a
subscriber whose unsent bytes pass MAX_PENDING is closed (it reconnects and refetches: the
protocol's resume). A connection that has not sent its request within REQUEST_TIMEOUT is closed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import h11

MAX_HEAD = 16 * 1024
MAX_PENDING = 256 * 1024  # unsent bytes a stream may hold before it is closed as too slow
REQUEST_TIMEOUT = 10.0
READ_CHUNK = 16 * 1024
MAX_HANDSHAKES = 128  # in progress at once; more connects wait in the kernel's listen backlog
TRIM_AFTER = 256  # connections opened or closed before the freed handshake memory is returned
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}

_HANDSHAKE, _REQUEST, _HANDLING, _STREAM, _CLOSED = range(5)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        return (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n{extra}Connection: close\r\n\r\n").encode() + self.body


Handler = Callable[[Request, "Conn"], Awaitable["Response | None"]]


class Conn:
    """One client connection. After `start_stream`, `write` and `close` are all a subscriber uses."""

    __slots__ = ("server", "sock", "fd", "state", "parser", "req", "body", "out", "closing", "on_close", "since")

    def __init__(self, server: HttpsServer, sock: ssl.SSLSocket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _HANDSHAKE
        self.parser: h11.Connection | None = None
        self.req: h11.Request | None = None
        self.body: bytearray | None = None
        self.out: bytearray | None = None  # bytes the socket did not take yet
        self.closing = False  # close once `out` is sent
        self.on_close: Callable[[], Any] | None = None
        self.since = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.state == _CLOSED

    # -- reading ------------------------------------------------------------------------------
    def readable(self) -> None:
        sock = self.sock
        if self.state == _HANDSHAKE:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.server.loop.add_writer(self.fd, self.writable)
                return
            except (ssl.SSLError, OSError, ValueError):
                self.close(graceful=False)
                return
            self.state = _REQUEST
            self.server.handshake_done()
            self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while self.state != _CLOSED:
            try:
                data = sock.recv(READ_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError, ValueError):
                self.close(graceful=False)
                return
            if not data:  # the peer closed: a subscriber went away
                self.close(graceful=False)
                return
            if self.state == _REQUEST:
                self._feed(data)
            # later bytes (a stream's client sends nothing more) are read and dropped

    def _feed(self, data: bytes) -> None:
        assert self.parser is not None
        try:
            self.parser.receive_data(data)
            while self.state == _REQUEST:
                event = self.parser.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Request):
                    self.req, self.body = event, bytearray()
                    length = dict(event.headers).get(b"content-length")
                    if length is not None and length.isdigit() and int(length) > self.server.max_body:
                        self.respond(_plain(413, "PayloadTooLarge", f"body is {int(length)} bytes; the limit is {self.server.max_body}"))
                        return
                elif isinstance(event, h11.Data):
                    assert self.body is not None
                    self.body += event.data
                    if len(self.body) > self.server.max_body:
                        self.respond(_plain(413, "PayloadTooLarge", f"body exceeds the limit of {self.server.max_body} bytes"))
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self._dispatch()
                    return
                else:  # ConnectionClosed before a whole request
                    self.close(graceful=False)
                    return
        except h11.RemoteProtocolError as exc:
            self.respond(_plain(400, "BadRequest", f"not an HTTP/1.1 request this server accepts ({exc}); "
                                "send one request with Content-Length"))

    def _dispatch(self) -> None:
        req, body = self.req, self.body
        assert req is not None and body is not None
        self.state, self.parser, self.req, self.body = _HANDLING, None, None, None
        target = req.target.decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        request = Request(req.method.decode("latin-1"), target.split("?", 1)[0], headers, bytes(body))
        self.server.spawn(self, request)

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Send what the socket takes now, keep the rest (bounded). False when the connection is
        gone or was closed as too slow."""
        if self.state == _CLOSED:
            return False
        if self.out is not None:
            if len(self.out) + len(data) > MAX_PENDING:
                self.server.slow_closed += 1
                self.close(graceful=False)
                return False
            self.out += data
            return True
        try:
            self.sock.send(data)  # OpenSSL without partial writes: all of it, or WantWrite and retry the same bytes
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self.out = bytearray(data)
            self.server.loop.add_writer(self.fd, self.writable)
        except (ssl.SSLError, OSError, ValueError):
            self.close(graceful=False)
            return False
        return True

    def writable(self) -> None:
        if self.state == _HANDSHAKE:
            self.server.loop.remove_writer(self.fd)
            self.readable()
            return
        if self.out is None:
            self.server.loop.remove_writer(self.fd)
            return
        try:
            self.sock.send(self.out)  # the retried record's bytes lead `out`; more may follow
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except (ssl.SSLError, OSError, ValueError):
            self.close(graceful=False)
            return
        self.out = None
        self.server.loop.remove_writer(self.fd)
        if self.closing:
            self.close()

    def respond(self, resp: Response) -> None:
        """Send a whole response, then close."""
        if self.state == _CLOSED:
            return
        self.state = _HANDLING
        self.parser = None
        if self.write(resp.encode()):
            if self.out is None:
                self.close()
            else:
                self.closing = True

    def start_stream(self, head: bytes) -> None:
        """This connection is a stream from now on: `head` (status line and headers) goes first."""
        self.state = _STREAM
        self.server.pending.discard(self)
        self.server.streams += 1
        self.write(head)

    def close(self, graceful: bool = True) -> None:
        """Graceful: a TLS close_notify first (best effort, never waits for the peer's)."""
        if self.state == _CLOSED:
            return
        was_stream, was_handshake = self.state == _STREAM, self.state == _HANDSHAKE
        self.state = _CLOSED
        server = self.server
        if was_handshake:
            server.handshake_done()
        server.churn += 1
        server.pending.discard(self)
        server.conns.pop(self.fd, None)
        if was_stream:
            server.streams -= 1
        loop = server.loop
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        if graceful:
            try:
                self.sock.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.out = None
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            loop.call_soon(cb)  # not inside a caller's loop over the subscribers


class HttpsServer:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext, *, max_body: int, log: Any,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_body = max_body
        self.log = log
        self.request_timeout = request_timeout
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = None
        self.conns: dict[int, Conn] = {}
        self.pending: set[Conn] = set()  # not yet answered nor streaming: swept after request_timeout
        self.tasks: set[asyncio.Task] = set()
        self.streams = 0
        self.slow_closed = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_paused = False
        self.handshaking = 0
        self._full = False  # MAX_HANDSHAKES in progress: the rest wait in the listen backlog
        self.churn = 0  # connections opened or closed since the last malloc_trim
        self._trim = _malloc_trim()

    @property
    def port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def listen(self, host: str, port: int, backlog: int = 4096) -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # a burst of 10,000 connects: take many per wakeup, then let the rest run
            try:
                raw, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE/ENFILE: stop accepting for a moment instead of spinning
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and not self._accept_paused:
                    self._accept_paused = True
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(0.5, self._resume_accept)
                    self.log.warning("accept_paused", error=errno.errorcode.get(exc.errno or 0, str(exc.errno)), retry_in=0.5)
                return
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError, ValueError):
                raw.close()
                continue
            conn = Conn(self, tls)
            self.conns[conn.fd] = conn
            self.pending.add(conn)
            self.loop.add_reader(conn.fd, conn.readable)
            self.churn += 1
            self.handshaking += 1
            if self.handshaking >= MAX_HANDSHAKES:
                self._full = True
                self.loop.remove_reader(self.sock.fileno())
                return

    def handshake_done(self) -> None:
        self.handshaking -= 1
        if self._full and self.handshaking < MAX_HANDSHAKES // 2 and self.sock is not None:
            self._full = False
            if not self._accept_paused:
                self.loop.add_reader(self.sock.fileno(), self._accept)

    def _resume_accept(self) -> None:
        self._accept_paused = False
        if self.sock is not None and not self._full:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _sweep(self) -> None:
        cutoff = time.monotonic() - self.request_timeout
        # not yet a whole request, or a response the client does not read: both are dropped
        for conn in [c for c in self.pending if c.since < cutoff and (c.state in (_HANDSHAKE, _REQUEST) or c.closing)]:
            if conn.state == _REQUEST:
                conn.respond(_plain(408, "RequestTimeout", f"no whole request within {self.request_timeout:g}s"))
            else:
                conn.close(graceful=False)
        if self.churn >= TRIM_AFTER and self._trim is not None and not self.handshaking:
            self.churn = 0
            self._trim(0)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def spawn(self, conn: Conn, request: Request) -> None:
        task = self.loop.create_task(self._handle(conn, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: Conn, request: Request) -> None:
        try:
            resp = await self.handler(request, conn)
        except asyncio.CancelledError:
            conn.close(graceful=False)
            raise
        except Exception as exc:  # a bug: say so without details, never hang the client
            self.log.error("handler_failed", path=request.path, error=type(exc).__name__)
            resp = _plain(500, "InternalError", "the relay failed to answer this request; retry")
        if resp is not None:  # it stays in `pending` until closed: a response nobody reads is swept too
            conn.respond(resp)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for conn in list(self.conns.values()):
            conn.close()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS). Each TLS handshake allocates ~35 KiB
    for a moment; after a burst (10,000 agents reconnecting) the freed chunks sit between live
    ones and RSS stays at the burst's peak until trimmed (measured: 48 KiB per subscriber after
    1,000 simultaneous connects, ~16 KiB once trimmed)."""
    import ctypes  # noqa: PLC0415

    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def _plain(status: int, error: str, message: str) -> Response:
    import json

    return Response(status, json.dumps({"error": error, "message": message}).encode())
