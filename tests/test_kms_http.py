"""injector.kms.http against real servers on 127.0.0.1: an aiohttp app, raw asyncio servers for
framings aiohttp will not produce (close-delimited, truncated, garbage), and real TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from injector.kms.http import BodyTooLarge, ConnectError, HttpClient, ProtocolError, RequestTimeout


RELEASE = web.AppKey("release", asyncio.Event)


# -- servers -----------------------------------------------------------------------------------

def _app() -> web.Application:
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": json.loads(body) if body else None,
        }, headers={"X-Custom-Header": "yes"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for part in (b'{"a": ', b'"' + b"x" * 100_000 + b'", ', b'"b": 2}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await request.app[RELEASE].wait()  # released when the test's server shuts down
        return web.Response(text="late")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000)

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b"y" * 10_000)
        await resp.write_eof()
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"event: one\r\ndata: {\"n\": 1}\n\n")
        await request.app[RELEASE].wait()  # the client must see event one before this returns
        await resp.write(b"data: sp")
        await resp.write(b"lit\n\nda")
        await resp.write(b"ta: last")
        await resp.write_eof()
        return resp

    async def unauthorized(request: web.Request) -> web.Response:
        return web.json_response({"statusCode": 401, "message": "Token missing"}, status=401)

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"abc"'})

    app[RELEASE] = asyncio.Event()
    app.router.add_route("*", "/api/echo", echo)
    app.router.add_get("/api/chunked", chunked)
    app.router.add_get("/api/slow", slow)
    app.router.add_get("/api/big", big)
    app.router.add_get("/api/big-chunked", big_chunked)
    app.router.add_post("/api/events", events)
    app.router.add_get("/api/unauthorized", unauthorized)
    app.router.add_get("/api/not-modified", no_content)
    return app


@asynccontextmanager
async def aiohttp_app(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[web.Application, int]]:
    app = _app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield app, port
    finally:
        app[RELEASE].set()  # let handlers still parked on it finish, so shutdown is quick
        await runner.cleanup()


@asynccontextmanager
async def raw_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answer_once(reply: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A raw_server handler: read one request's head, send `reply` byte for byte, close."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    return handler


# -- tests -------------------------------------------------------------------------------------

async def test_json_request_keepalive_prefix_and_headers() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api/")
        try:
            r1 = await client.request("POST", "/echo", params={"a": "1 2", "secretPath": "/chat"}, json={"k": "v"},
                                      headers={"If-None-Match": '"e1"'})
            r2 = await client.request("GET", "echo")
            assert r1.status == 200 and r2.status == 200
            data = r1.json()
            assert data["method"] == "POST" and data["path"] == "/api/echo"
            assert data["query"] == {"a": "1 2", "secretPath": "/chat"}
            assert data["json"] == {"k": "v"}
            assert data["headers"]["if-none-match"] == '"e1"'
            assert data["headers"]["host"] == f"127.0.0.1:{port}"
            assert r1.headers["x-custom-header"] == "yes" and r1.headers["X-CUSTOM-HEADER"] == "yes"
            assert "content-type" in r1.headers
            assert r2.json()["json"] is None
            assert client.connections_opened == 1, "second request must reuse the kept-alive connection"
        finally:
            await client.close()


async def test_concurrent_requests_all_answered() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api")
        try:
            results = await asyncio.gather(*(client.request("GET", "/echo", params={"i": str(i)}) for i in range(8)))
            assert [r.json()["query"]["i"] for r in results] == [str(i) for i in range(8)]
        finally:
            await client.close()


async def test_chunked_body_and_no_body_statuses() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api")
        try:
            r = await client.request("GET", "/chunked")
            assert r.json()["b"] == 2 and len(r.json()["a"]) == 100_000
            r304 = await client.request("GET", "/not-modified")
            assert r304.status == 304 and r304.body == b"" and r304.headers["etag"] == '"abc"'
            r401 = await client.request("GET", "/unauthorized")
            assert r401.status == 401 and r401.json()["message"] == "Token missing"
            assert client.connections_opened == 1
        finally:
            await client.close()


async def test_timeout_is_hard_and_connection_recovers() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api", timeout=0.5)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(RequestTimeout, match="timed out"):
                await client.request("GET", "/slow")
            assert loop.time() - t0 < 5.0
            r = await client.request("GET", "/echo", timeout=10)
            assert r.status == 200
        finally:
            await client.close()


async def test_body_size_guard() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api", max_body=100_000)
        try:
            with pytest.raises(BodyTooLarge):
                await client.request("GET", "/big")
            with pytest.raises(BodyTooLarge):
                await client.request("GET", "/big-chunked")
            assert (await client.request("GET", "/echo")).status == 200
        finally:
            await client.close()


async def test_stream_lines_incrementally() -> None:
    async with aiohttp_app() as (app, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api")
        try:
            async with client.stream("POST", "/events", json={"register": []}) as resp:
                assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
                lines = resp.lines(idle_timeout=20)
                # the first event arrives while the server still holds the stream open
                assert await asyncio.wait_for(lines.__anext__(), 20) == "event: one"
                assert await lines.__anext__() == 'data: {"n": 1}'
                assert await lines.__anext__() == ""
                app[RELEASE].set()
                rest = [line async for line in lines]
            assert rest == ["data: split", "", "data: last"]
        finally:
            await client.close()


async def test_stream_idle_timeout() -> None:
    async with aiohttp_app() as (_, port):
        client = HttpClient(f"http://127.0.0.1:{port}/api")
        try:
            async with client.stream("POST", "/events", json={}) as resp:
                lines = resp.lines(idle_timeout=0.3)
                assert await lines.__anext__() == "event: one"
                with pytest.raises(RequestTimeout):
                    async for _ in lines:
                        pass
        finally:
            await client.close()


async def test_close_delimited_body_and_http10() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b'{"secrets": []')
        await writer.drain()
        writer.write(b"}")
        writer.close()

    async with raw_server(handler) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            r1 = await client.request("GET", "/x")
            r2 = await client.request("GET", "/x")
            assert r1.json() == {"secrets": []} == r2.json()
            assert client.connections_opened == 2  # a close-delimited body cannot be reused
        finally:
            await client.close()


async def test_truncated_bodies_and_garbage_are_protocol_errors() -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"secrets\"",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ]
    queue = list(replies)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(queue.pop(0))
        await writer.drain()
        writer.close()

    async with raw_server(handler) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            for _ in replies:
                with pytest.raises(ProtocolError):
                    await client.request("GET", "/x")
        finally:
            await client.close()


async def test_stale_kept_alive_connection_is_replaced() -> None:
    """A server that closes idle connections without saying so: the next request reconnects."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # no "Connection: close": the client believes it may reuse it

    async with raw_server(handler) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            for pause in (0.05, 0, 0.05, 0, 0):
                assert (await client.request("GET", "/x")).body == b"ok"
                # with a pause the FIN is seen before reuse; without, the reused socket fails mid-request
                await asyncio.sleep(pause)
            assert served == 5
        finally:
            await client.close()


async def _drop_second_request_per_connection(seen: list[str]):
    """A server that answers the first request of each connection (keep-alive, no "Connection:
    close") and closes the connection right after reading the second one, without answering:
    what a server's idle timeout does to a request racing its FIN."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(2):
            try:
                head = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
            if length:
                await reader.readexactly(length)
            seen.append(head.split(b" ", 2)[0].decode() + (" answered" if n == 0 else " dropped"))
            if n == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    return raw_server(handler)


async def test_stale_connection_retries_only_requests_safe_to_repeat() -> None:
    """Issue 12 point 11: a GET on a connection the server dropped is re-sent once on a fresh
    connection (counted); a POST (login, renew: the server may have acted on it) never is."""
    seen: list[str] = []
    async with await _drop_second_request_per_connection(seen) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            for _ in range(5):
                assert (await client.request("GET", "/x")).body == b"ok"
            assert client.stale_retries == 4  # every GET after the first hit a dropped connection
            assert client.connections_opened == 5
            assert seen == ["GET answered"] + ["GET dropped", "GET answered"] * 4
            with pytest.raises(ConnectError, match="not re-sent"):
                await client.request("POST", "/v1/auth/universal-auth/login", json={"clientId": "x"})
            assert seen[-1] == "POST dropped" and seen.count("POST dropped") == 1 and "POST answered" not in seen
            assert client.stale_retries == 4
            # a POST on a fresh connection is answered as usual
            assert (await client.request("POST", "/v1/auth/token/renew", json={})).body == b"ok"
        finally:
            await client.close()


BAD_FRAMINGS = [
    # chunk sizes: hex digits only (int(x, 16) took all of these)
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0_5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-0\r\n\r\n",
    # Content-Length: ASCII digits only, one value ('\xb2' is latin-1 superscript two: isdigit() said yes)
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    # header lines: no space before the colon, no bare names
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nJunk\r\nContent-Length: 2\r\n\r\nok",
]


@pytest.mark.parametrize("reply", BAD_FRAMINGS, ids=range(len(BAD_FRAMINGS)))
async def test_strict_framing_refuses_loose_sizes_and_lengths(reply: bytes) -> None:
    async with raw_server(answer_once(reply)) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(ProtocolError):
                await client.request("GET", "/x")
            # the event stream gets the same typed error (a stray ValueError killed the watcher)
            with pytest.raises(ProtocolError):
                async with client.stream("POST", "/events", json={}) as resp:
                    async for _ in resp.lines(idle_timeout=10):
                        pass
        finally:
            await client.close()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nVALUE-secret-9f1\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nVALUE-secret-9f1\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Broken VALUE-secret-9f1\r\nContent-Length: 2\r\n\r\nok",
    b"VALUE-secret-9f1 200 OK\r\n\r\n",
])
async def test_framing_errors_never_quote_the_bytes(reply: bytes) -> None:
    """h11 quotes what it could not parse; those bytes may be secret values: never in our errors."""
    async with raw_server(answer_once(reply)) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(ProtocolError) as info:
                await client.request("GET", "/x", headers={"Authorization": "Bearer tok-secret-77"})
            assert "secret" not in str(info.value) and "VALUE" not in str(info.value), str(info.value)
        finally:
            await client.close()
    with pytest.raises(ValueError) as bad:  # our own header refused by h11: the token is not quoted
        await HttpClient("http://127.0.0.1:1").request("GET", "/x", headers={"Authorization": "Bearer tok-secret-77\x01"})
    assert "tok-secret" not in str(bad.value)


async def test_chunk_extensions_and_trailers_are_accepted() -> None:
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5;name=value\r\nhello\r\nA\r\n 0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")

    async with raw_server(answer_once(reply.replace(b"\r\n 0123456789", b"\r\n0123456789"))) as port:
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            assert (await client.request("GET", "/x")).body == b"hello0123456789"
        finally:
            await client.close()


async def test_connection_refused_is_connect_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = HttpClient(f"http://127.0.0.1:{port}/api")
    with pytest.raises(ConnectError, match="refused"):
        await client.request("GET", "/v1/x")
    await client.close()


def test_bad_base_url_and_header_injection() -> None:
    with pytest.raises(ValueError):
        HttpClient("ftp://x/api")
    client = HttpClient("http://127.0.0.1:1/api")
    with pytest.raises(ValueError, match="line break"):
        client._encode("GET", "/x", None, None, {"If-None-Match": 'a"\r\nX-Evil: 1'})


# -- TLS ---------------------------------------------------------------------------------------

def _make_ca_and_cert(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "tls.crt", tmp / "tls.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


async def test_https_with_ca_file_and_verification_failure(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = _make_ca_and_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    async with aiohttp_app(server_ctx) as (_, port):
        client = HttpClient(f"https://127.0.0.1:{port}/api", ca_file=str(ca_file))
        try:
            r1 = await client.request("GET", "/echo")
            r2 = await client.request("GET", "/chunked")
            assert r1.status == 200 and r1.json()["path"] == "/api/echo" and r2.json()["b"] == 2
            assert client.connections_opened == 1
        finally:
            await client.close()
        untrusting = HttpClient(f"https://127.0.0.1:{port}/api")  # system CAs only
        with pytest.raises(ConnectError, match="TLS"):
            await untrusting.request("GET", "/echo")
        await untrusting.close()


def test_import_is_light() -> None:
    """The agent imports the client at start-up: no aiohttp (or other heavy packages) allowed."""
    code = ("import sys, injector.kms.client, injector.kms.auth; "
            "bad = [m for m in ('aiohttp', 'yarl', 'multidict', 'yaml', 'watchfiles', 'cryptography', 'concurrent.futures.thread') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


async def test_malformed_content_length_on_the_event_stream_does_not_kill_the_subscriber(tmp_path: Path) -> None:
    """Issue 12 point 11: `Content-Length: ²` on the event stream raised a ValueError past the
    client's typed errors and ended the subscriber for the pod's life; now it is a ProtocolError
    (an HttpError), so the subscriber backs off and reconnects."""
    from injector.backoff import Backoff
    from injector.kms import KmsClient
    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.events import EventSubscriber

    subscribes = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal subscribes
        try:
            while True:
                head = await _read_request(reader)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if b"/universal-auth/login" in head.split(b"\r\n")[0]:
                    body = b'{"accessToken": "tok", "expiresIn": 3600, "accessTokenMaxTTL": 7200}'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                if b"/v3/secrets/raw" in head.split(b"\r\n")[0]:  # teaches the client the project id
                    body = (b'{"secrets": [{"secretKey": "K", "secretValue": "v", "workspace": "proj-id",'
                            b' "environment": "prod", "version": 1, "type": "shared"}], "imports": []}')
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                subscribes += 1
                if subscribes == 1:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: \xb2\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"7\r\n: ping\n\r\n")
                await writer.drain()
                await reader.read()  # hold the stream open until the client goes
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    creds = tmp_path / "auth"
    creds.mkdir()
    (creds / "clientId").write_text("id")
    (creds / "clientSecret").write_text("secret")
    async with raw_server(handler) as port:
        client = KmsClient(f"http://127.0.0.1:{port}/api", UniversalAuthFiles(str(creds)))
        await client.fetch("proj", "prod", "/app")  # the subscriber needs the real project id first
        sub = EventSubscriber(client, "proj", "prod", ["/app"], backoff=Backoff(base=0.01, cap=0.02))
        task = asyncio.create_task(sub.run(lambda ev: None))
        try:
            for _ in range(800):  # up to 20 s
                if sub.connected or task.done():
                    break
                await asyncio.sleep(0.025)
            assert not task.done(), task.exception()
            assert sub.connected and sub.failures == 1 and subscribes == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
