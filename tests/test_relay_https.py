"""The relay's lean HTTPS server (relay/https_server.py) over real TLS sockets, in process with a
small handler: bad requests get clear errors, a silent connection is dropped after the request
timeout, a subscriber that stops reading is closed once its backlog passes MAX_PENDING (not
buffered without bound), and a stream's close reaches its on_close. Then relay/kubeapi.py: the
kubeconfig it reads and a TokenReview POST over TLS to a stand-in with a private CA."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from relay.https_server import MAX_PENDING, Conn, HttpsServer, Request, Response
from relay.kubeapi import KubeApi, KubeConfigError, from_kubeconfig
from tests.agent_support import wait_for
from tests.test_relay import ListLog
from webhook import certs


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, certs.KeyPair]:
    ca = certs.generate_ca("https-test-ca")
    leaf = certs.generate_serving_cert(ca, ["localhost"], ip_addresses=["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return server_ctx, client_ctx, ca


class Streams:
    """A handler: POST /stream starts a stream (kept in `conns`), anything else echoes its body."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.closed = 0

    async def __call__(self, req: Request, conn: Conn) -> Response | None:
        if req.path == "/stream":
            conn.start_stream(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            conn.on_close = self._closed
            self.conns.append(conn)
            return None
        return Response(200, json.dumps({"method": req.method, "path": req.path, "body": req.body.decode()}).encode())

    def _closed(self) -> None:
        self.closed += 1


async def _server(ctx: ssl.SSLContext, handler: Streams, **kw: float) -> HttpsServer:
    server = HttpsServer(handler, ctx, max_body=1024, log=ListLog(), **kw)
    server.listen("127.0.0.1", 0)
    return server


async def _exchange(port: int, ctx: ssl.SSLContext, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    writer.write(raw)
    data = await reader.read()  # the server closes after a response
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_requests_and_their_errors(tls) -> None:
    server_ctx, client_ctx, _ = tls
    handler = Streams()
    server = await _server(server_ctx, handler)
    try:
        status, body = await _exchange(server.port, client_ctx, b"POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        assert status == 200 and json.loads(body) == {"method": "POST", "path": "/echo", "body": "hello"}
        # a chunked body is read too
        status, body = await _exchange(server.port, client_ctx, b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                                b"3\r\nabc\r\n0\r\n\r\n")
        assert status == 200 and json.loads(body)["body"] == "abc"
        status, body = await _exchange(server.port, client_ctx, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        assert status == 413 and "5000" in json.loads(body)["message"] and "1024" in json.loads(body)["message"]
        status, body = await _exchange(server.port, client_ctx, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and "HTTP/1.1" in json.loads(body)["message"]
    finally:
        await server.close()


async def test_a_silent_connection_is_dropped_after_the_request_timeout(tls) -> None:
    server_ctx, client_ctx, _ = tls
    server = await _server(server_ctx, Streams(), request_timeout=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1")
        writer.write(b"GET /half HTTP/1.1\r\nHost: a\r\n")  # never finished
        async with asyncio.timeout(30):
            data = await reader.read()
        assert data.startswith(b"HTTP/1.1 408")
        writer.close()
        await wait_for(lambda: not server.conns, 30, "the connection released")
    finally:
        await server.close()


async def test_a_subscriber_that_stops_reading_is_closed_not_buffered(tls) -> None:
    server_ctx, client_ctx, _ = tls
    handler = Streams()
    server = await _server(server_ctx, handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1",
                                                       limit=1024)
        writer.write(b"POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        await wait_for(lambda: handler.conns, 30, "the stream started")
        reader._transport.pause_reading()  # type: ignore[attr-defined]  # the client stops reading
        conn, frame = handler.conns[0], b"data: " + b"x" * 65536 + b"\n\n"
        writes = 0
        while conn.write(frame):  # kernel buffers fill, then our backlog up to MAX_PENDING
            writes += 1
            assert writes < 10_000, "never closed"
            if conn.out is not None:
                assert len(conn.out) <= MAX_PENDING
        assert conn.closed and server.slow_closed == 1
        await wait_for(lambda: handler.closed == 1, 30, "on_close called")
        assert server.streams == 0 and not server.conns
        writer.close()
    finally:
        await server.close()


async def test_a_stream_closed_by_the_peer_reaches_on_close(tls) -> None:
    server_ctx, client_ctx, _ = tls
    handler = Streams()
    server = await _server(server_ctx, handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1")
        writer.write(b"POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        await wait_for(lambda: handler.conns, 30, "the stream started")
        assert handler.conns[0].write(b"data: one\n\n")
        assert (await reader.readuntil(b"data: one\n\n")).startswith(b"HTTP/1.1 200 OK")
        assert server.streams == 1
        writer.close()
        await wait_for(lambda: handler.closed == 1, 30, "the server saw the close")
        assert server.streams == 0 and handler.conns[0].write(b"x") is False
    finally:
        await server.close()


# --- relay/kubeapi.py ----------------------------------------------------------------------------

def _kubeconfig(path: Path, cluster: dict, user: dict) -> str:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}],
                                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def test_kubeconfig_fields_and_refusals(tmp_path: Path) -> None:
    t = from_kubeconfig(_kubeconfig(tmp_path / "a", {"server": "https://k8s:6443/", "certificate-authority": "/ca.pem"},
                                    {"token": "abc"}))
    assert (t.server, t.ca_file, t.verify, t.bearer()) == ("https://k8s:6443", "/ca.pem", True, "abc")
    with pytest.raises(KubeConfigError, match="'exec' is not supported"):
        from_kubeconfig(_kubeconfig(tmp_path / "b", {"server": "https://k8s"}, {"exec": {"command": "aws"}}))
    with pytest.raises(KubeConfigError, match="not an http"):
        from_kubeconfig(_kubeconfig(tmp_path / "c", {"server": "k8s:6443"}, {}))
    with pytest.raises(KubeConfigError, match="cannot read the kubeconfig"):
        from_kubeconfig(str(tmp_path / "missing"))


async def test_token_review_post_over_tls_with_the_kubeconfig_ca_and_a_rotating_token_file(tls, tmp_path: Path) -> None:
    server_ctx, _, ca = tls
    seen: list[tuple[str, dict]] = []

    async def review(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"kind": "TokenReview", "status": {"authenticated": True}}, status=201)

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", review)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    target = from_kubeconfig(_kubeconfig(tmp_path / "kc", {"server": f"https://127.0.0.1:{port}",
                                                           "certificate-authority-data": base64.b64encode(ca.cert_pem).decode()},
                                         {"tokenFile": str(token_file)}))
    api = KubeApi(target, timeout=10)
    try:
        doc = await api.post("/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": "t"}})
        assert doc["status"] == {"authenticated": True}
        token_file.write_text("second\n")  # the kubelet rotated it
        await api.post("/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": "t"}})
        assert [a for a, _ in seen] == ["Bearer first", "Bearer second"]
        assert seen[0][1] == {"spec": {"token": "t"}}
    finally:
        await api.close()
        await runner.cleanup()
