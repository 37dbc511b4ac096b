"""What h11 would cost the agent at start-up (issue 13 item 7): import + first request, RSS.

    python bench/http_framing_bench.py [--runs 21] [--h11-path DIR]

Each run is a fresh interpreter (as the agent starts) that imports asyncio and json, then does
one GET of a KMS-sized JSON body (8 secrets, Content-Length) from a local server over asyncio
streams, and reports the time from before its first import to the parsed body, and VmRSS after.
Variants, interleaved run by run so machine noise hits all alike:

- hand:  the response framed by a few lines of hand-written parsing (the stdlib-only baseline);
- h11:   the same exchange framed by an `h11.Connection` (import h11 included): h11 minus hand is
         what h11 costs at start-up;
- agent: `injector.kms.http.HttpClient` as shipped (h11 framing since issue 13 item 7);
- agent-baseline (with `--baseline-tree DIR`, e.g. `git archive <commit> injector | tar -x -C DIR`):
         the same at another checkout, e.g. the hand-written framing before h11. agent minus
         agent-baseline is h11's cost where the agent has already imported what h11 shares.

`--h11-path` adds a folder to the children's path (a `pip install --target DIR h11`), for
measuring from a checkout whose venv lacks h11. Reports medians; the decision rule is
"adopt h11 when it costs <= 2 MiB RSS and <= 10 ms".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BODY = json.dumps({"secrets": [{"secretKey": f"KEY_{i}", "secretValue": "v" * 40, "version": 1} for i in range(8)],
                   "imports": []}).encode()

CHILD = r"""
import time
t0 = time.perf_counter()
import asyncio, json, sys
variant, port = sys.argv[1], int(sys.argv[2])
REQ = f"GET /api/v3/secrets/raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench\r\n\r\n".encode()

async def hand():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQ)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    json.loads(await reader.readexactly(length))
    writer.close()

async def with_h11():
    import h11
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    writer.write(conn.send(h11.Request(method="GET", target="/api/v3/secrets/raw",
                                       headers=[("Host", f"127.0.0.1:{port}"), ("User-Agent", "bench")])))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    body = b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            break
    json.loads(body)
    writer.close()

async def agent():
    import injector.kms.http as kh
    c = kh.HttpClient(f"http://127.0.0.1:{port}/api")
    (await c.request("GET", "/v3/secrets/raw")).json()
    await c.close()

asyncio.run({"hand": hand, "h11": with_h11, "agent": agent}[variant]())
t1 = time.perf_counter()
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(f"{(t1 - t0) * 1000:.3f} {rss}")
"""


def serve(sock: socket.socket) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    while True:
        try:
            c, _ = sock.accept()
        except OSError:
            return
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = c.recv(65536)
                if not data:
                    break
                buf += data
            c.sendall(head + BODY)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--h11-path", default=os.environ.get("H11_PATH", ""))
    ap.add_argument("--baseline-tree", default="", help="a checkout (holding injector/) to compare the agent with")
    args = ap.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
    port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), args.h11_path) if p)}
    results: dict[str, list[tuple[float, int]]] = {"hand": [], "h11": [], "agent": []}
    if args.baseline_tree:
        results["agent-baseline"] = []
    for _ in range(args.runs):
        for variant in results:
            child_env = env
            if variant == "agent-baseline":
                child_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (args.baseline_tree, args.h11_path) if p)}
            out = subprocess.run([sys.executable, "-c", CHILD, variant.split("-")[0], str(port)], env=child_env,
                                 capture_output=True, text=True, check=True, timeout=60, cwd="/")
            ms, rss = out.stdout.split()
            results[variant].append((float(ms), int(rss)))
    med = {v: (statistics.median(m for m, _ in r), statistics.median(k for _, k in r)) for v, r in results.items()}
    for v, (ms, rss) in med.items():
        print(f"{v:14s} import+first request {ms:7.2f} ms   VmRSS {rss / 1024:6.2f} MiB   (median of {args.runs})")
    dms, drss = med["h11"][0] - med["hand"][0], (med["h11"][1] - med["hand"][1]) / 1024
    print(f"h11 costs {dms:+.2f} ms and {drss:+.2f} MiB: {'adopt' if dms <= 10 and drss <= 2 else 'keep the hand-written framing'}")
    if "agent-baseline" in med:
        print(f"agent vs agent-baseline: {med['agent'][0] - med['agent-baseline'][0]:+.2f} ms and "
              f"{(med['agent'][1] - med['agent-baseline'][1]) / 1024:+.2f} MiB")


if __name__ == "__main__":
    main()
