"""Server RSS per idle TLS stream, by server design (bench/README.md, "Where the relay's memory goes").

    python bench/relay_tls_memory.py [--streams 2000] [VARIANT ...]

Each variant runs as its own server subprocess; a client subprocess holds --streams TLS
connections that sent one POST and read the 200 head and a first SSE frame. RSS (VmRSS) is read
before and after, after a gc; the difference per stream is printed. Variants:
  aiohttp    aiohttp StreamResponse over asyncio's TLS transport (read buffer 4 KiB, as the relay had)
  asyncio    a bare asyncio TLS Protocol (the same 4 KiB read buffer)
  memorybio  plain asyncio TCP + ssl.SSLObject over MemoryBIOs, one shared read buffer
  sslsocket  a non-blocking ssl.SSLSocket per connection driven by loop.add_reader (relay/https_server.py)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
FRAME = b'event: subscribed\ndata: {"folders":[]}\n\n'
VARIANTS = ("aiohttp", "asyncio", "memorybio", "sslsocket")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def server(variant: str, port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    import asyncio.sslproto as sslproto

    sslproto.SSLProtocol.max_size = 4096  # asyncio's TLS transport: 256 KiB read buffer per connection otherwise
    if variant == "aiohttp":
        from aiohttp import web

        async def handler(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(FRAME)
            await asyncio.Event().wait()
            return resp

        app = web.Application()
        app.router.add_post("/v1/watch", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=4096).start()
    elif variant == "asyncio":
        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(HEAD + FRAME)  # type: ignore[attr-defined]

        await loop.create_server(Proto, "127.0.0.1", port, ssl=ctx, backlog=4096)
    elif variant == "memorybio":
        view = memoryview(bytearray(16384))

        class Bio(asyncio.BufferedProtocol):
            __slots__ = ("t", "inc", "out", "obj", "done", "req")

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t, self.inc, self.out = transport, ssl.MemoryBIO(), ssl.MemoryBIO()
                self.obj, self.done, self.req = ctx.wrap_bio(self.inc, self.out, server_side=True), False, b""

            def get_buffer(self, sizehint: int) -> memoryview:
                return view

            def buffer_updated(self, nbytes: int) -> None:
                self.inc.write(view[:nbytes])
                if not self.done:
                    try:
                        self.obj.do_handshake()
                        self.done = True
                    except ssl.SSLWantReadError:
                        pass
                    self.flush()
                    if not self.done:
                        return
                try:
                    while data := self.obj.read(16384):
                        self.req += data
                except ssl.SSLWantReadError:
                    pass
                if b"\r\n\r\n" in self.req:
                    self.req = b""
                    self.obj.write(HEAD + FRAME)
                    self.flush()

            def flush(self) -> None:
                if self.out.pending:
                    self.t.write(self.out.read())  # type: ignore[attr-defined]

        await loop.create_server(Bio, "127.0.0.1", port, backlog=4096)
    else:
        listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        listener.setblocking(False)
        held = {}

        def readable(tls: ssl.SSLSocket, state: list) -> None:
            if not state[0]:
                try:
                    tls.do_handshake()
                    state[0] = True
                except ssl.SSLWantReadError:
                    return
            try:
                while data := tls.recv(16384):
                    state[1] += data
            except ssl.SSLWantReadError:
                pass
            if b"\r\n\r\n" in state[1]:
                state[1] = b""
                tls.send(HEAD + FRAME)

        def accept() -> None:
            while True:
                try:
                    raw, _ = listener.accept()
                except BlockingIOError:
                    return
                raw.setblocking(False)
                tls = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                held[tls.fileno()] = tls
                loop.add_reader(tls.fileno(), readable, tls, [False, b""])

        loop.add_reader(listener.fileno(), accept)
    gc.collect()
    print("ready", rss_kib(), flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):
        gc.collect()
        print("rss", rss_kib(), flush=True)


async def client(port: int, ca: str, n: int) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    body = b'{"folders":[]}'
    req = (f"POST /v1/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    sem, keep = asyncio.Semaphore(64), []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(req)
            buf = b""
            while b"subscribed" not in buf:
                buf += await reader.read(4096)
            keep.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    print("held", len(keep), flush=True)
    await asyncio.Event().wait()


def measure(variant: str, n: int, files: dict[str, str]) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    me = [sys.executable, __file__]
    srv = subprocess.Popen([*me, "--server", variant, str(port), files["crt"], files["key"]], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
    cl = None
    try:
        assert srv.stdin and srv.stdout
        base = int(srv.stdout.readline().split()[1])
        cl = subprocess.Popen([*me, "--client", str(port), files["ca"], str(n)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=raise_fd_limit)
        assert cl.stdout and cl.stdout.readline().startswith("held")
        time.sleep(2)
        srv.stdin.write("x\n")
        srv.stdin.flush()
        after = int(srv.stdout.readline().split()[1])
        return (after - base) / n
    finally:
        for p in (cl, srv):
            if p is not None:
                p.kill()
                p.wait()


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    if sys.argv[1:2] == ["--server"]:
        asyncio.run(server(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
        return 0
    if sys.argv[1:2] == ["--client"]:
        asyncio.run(client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from webhook import certs

    with tempfile.TemporaryDirectory(prefix="relay-tls-mem-") as tmp:
        ca = certs.generate_ca("relay-tls-memory")
        leaf = certs.generate_serving_cert(ca, ["localhost"], ip_addresses=["127.0.0.1"])
        files = {"crt": f"{tmp}/tls.crt", "key": f"{tmp}/tls.key", "ca": f"{tmp}/ca.crt"}
        Path(files["crt"]).write_bytes(leaf.cert_pem)
        Path(files["key"]).write_bytes(leaf.key_pem)
        Path(files["ca"]).write_bytes(ca.cert_pem)
        for v in args.variants:
            print(f"{v:10s} {measure(v, args.streams, files):6.2f} KiB per stream ({args.streams} streams)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
