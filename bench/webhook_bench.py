"""Webhook benchmark: one worker over TLS keep-alive, against a bare aiohttp floor.

    .venv/bin/python bench/webhook_bench.py [--seconds 5] [--no-readme]

Starts the servers as subprocesses on 127.0.0.1 (this process is only the load generator):
  - `kms-injector webhook` (the real thing: settings defaults, TLS, logging to a file), loaded with
    unique pods (every admission runs review()) and, separately, with rollout pods (8 workloads);
  - the floor: a bare aiohttp handler over the same TLS that parses the same AdmissionReview with
    orjson and answers the same response bytes (uid echoed, the same base64 patch);
  - our server with a canned review(), to show what the server costs without the mutation.
For each: open-loop fixed-rate load (requests scheduled at t0 + i/rate, latency measured from the
scheduled time, so a stalled server is not hidden by a waiting client) at 100, 500 and 1,000/s.
Then rounds of saturated closed-loop load, each server in turn, so ratios compare runs taken
seconds apart. Writes the "Webhook" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import json
import os
import random
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from host import describe_host  # bench/ is on sys.path (script or bench/run.py)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATES = (100, 500, 1000)
SATURATION_CONCURRENCY = 32
CONNECTIONS = 64
SATURATION_ROUNDS = 7
WORKLOADS = 8  # Deployments rolling out at once in the rollout mix


def realistic_review() -> dict:
    """A Deployment's pod with two containers (app + log shipper) as the apiserver sends it."""
    doc = json.loads((ROOT / "tests/fixtures/admission/deployment-pod-generatename-signal.json").read_text())
    pod = doc["request"]["object"]
    app = pod["spec"]["containers"][0]
    app.setdefault("env", []).extend([{"name": "PORT", "value": "8080"}, {"name": "LOG_LEVEL", "value": "info"}])
    app["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    app["ports"] = [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
    app["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5}
    shipper = copy.deepcopy(app)
    shipper.update(name="log-shipper", image="ghcr.io/hanzoai/vector:0.40", command=["/usr/bin/vector"],
                   ports=[], resources={"requests": {"cpu": "20m", "memory": "32Mi"}})
    shipper.pop("readinessProbe", None)
    pod["spec"]["containers"].append(shipper)
    return doc


# --- the floor server ----------------------------------------------------------------------------

def floor_main(args: argparse.Namespace) -> int:
    import orjson
    from aiohttp import web

    template = orjson.loads(Path(args.response).read_bytes())
    headers = {"Content-Type": "application/json"}
    if args.server_only:
        return server_only_main(args, template)

    async def mutate(request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        out = dict(template)
        out["response"] = {**template["response"], "uid": doc["request"]["uid"]}
        return web.Response(body=orjson.dumps(out), headers=headers)

    async def run() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        app = web.Application(client_max_size=3 * 1024 * 1024)
        app.router.add_post("/mutate", mutate)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
        await site.start()
        print(json.dumps({"event": "listening", "port": site._server.sockets[0].getsockname()[1]}), file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())
    return 0


def server_only_main(args: argparse.Namespace, template: dict) -> int:
    """Our server (webhook.server.make_app: checks, metrics, logs, TLS reloader) with review()
    replaced by a canned answer: what the server costs beyond the floor, without the mutation."""
    from aiohttp import web

    from webhook.mutate import ReviewResult
    from webhook.server import WebhookState, fast_logger, make_app
    from webhook.settings import Settings
    from webhook.tls import CertReloader

    def canned(doc: dict, settings) -> ReviewResult:
        uid = doc["request"]["uid"]
        resp = dict(template)
        resp["response"] = {**template["response"], "uid": uid}
        return ReviewResult(resp, "injected", uid=uid, namespace="hanzo", pod="chat-", warnings=[])

    async def run() -> None:
        reloader = CertReloader(args.cert, args.key)
        reloader.load_now()
        state = WebhookState(settings=Settings(), reloader=reloader, log=fast_logger("webhook"), review=canned)
        runner = web.AppRunner(make_app(state), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.server_context, backlog=1024)
        await site.start()
        print(json.dumps({"event": "listening", "port": site._server.sockets[0].getsockname()[1]}), file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())
    return 0


# --- load generation -----------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Conn:
    """One kept-alive HTTP/1.1 connection over TLS. A minimal client: the load generator must cost
    less than the server it measures (aiohttp's client costs about as much as its server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, host: str, port: int, ctx: ssl.SSLContext) -> "Conn":
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        head = f"POST /mutate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: ".encode()
        return cls(reader, writer, head)

    async def post(self, body: bytes) -> bool:
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        data = await self.reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200") and b'"allowed":true' in data

    def close(self) -> None:
        self.writer.close()


class Load:
    def __init__(self, port: int, ctx: ssl.SSLContext, body_template: dict, mix: str) -> None:
        self.port, self.ctx, self.mix = port, ctx, mix
        self._tmpl: bytes | None = None
        self.template = body_template
        self.idle: asyncio.Queue[Conn] = asyncio.Queue()
        self.conns: list[Conn] = []

    async def connect(self, n: int) -> None:
        for _ in range(n):
            c = await Conn.open("127.0.0.1", self.port, self.ctx)
            self.conns.append(c)
            self.idle.put_nowait(c)

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def fresh(self) -> bytes:
        """The next request body, as kube-apiserver sends it: a fresh uid and its own
        `kube-api-access-xxxxx` service-account volume every time (the ServiceAccount plugin runs
        before webhooks). "rollout": otherwise the pods of WORKLOADS Deployments, interleaved, as
        in a rollout or scale-up. "unique": every pod has its own image tag (and template hash),
        so no two admissions share an answer and every one runs review(): the worst case."""
        if self._tmpl is None:
            req = self.template["request"]
            req["uid"] = "@@UID@@"
            pod = req["object"]
            meta, spec = pod["metadata"], pod["spec"]
            meta.setdefault("labels", {})["pod-template-hash"] = "@@TAG@@"
            meta["generateName"] = "chat-@@TAG@@-"
            spec["containers"][0]["image"] = "ghcr.io/hanzoai/chat:@@TAG@@"
            for v in spec["volumes"]:
                if v["name"].startswith("kube-api-access-"):
                    v["name"] = "kube-api-access-@@SA@@"
            for c in spec["containers"]:
                for m in c.get("volumeMounts") or []:
                    if m["name"].startswith("kube-api-access-"):
                        m["name"] = "kube-api-access-@@SA@@"
            self._tmpl = json.dumps(self.template).encode()
            assert b"@@SA@@" in self._tmpl, "the pod has no kube-api-access volume to vary"
        tag = os.urandom(5).hex() if self.mix == "unique" else f"{random.randrange(WORKLOADS):010x}"
        return (self._tmpl.replace(b"@@UID@@", str(uuid.uuid4()).encode()).replace(b"@@TAG@@", tag.encode())
                .replace(b"@@SA@@", os.urandom(3).hex()[:5].encode()))

    async def one(self, body: bytes) -> bool:
        c = await self.idle.get()  # waiting for a free connection counts as latency in the open loop
        try:
            return await c.post(body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return False
        finally:
            self.idle.put_nowait(c)

    async def open_loop(self, rate: int, seconds: float) -> dict:
        n = int(rate * seconds)
        bodies = [self.fresh() for _ in range(n)]
        latencies: list[float] = []
        errors = 0
        tasks = []

        async def send(i: int, due: float) -> None:
            nonlocal errors
            if await self.one(bodies[i]):
                latencies.append(time.perf_counter() - due)
            else:
                errors += 1

        t0 = time.perf_counter() + 0.05
        i = 0
        while i < n:
            now = time.perf_counter()
            while i < n and t0 + i / rate <= now:
                tasks.append(asyncio.ensure_future(send(i, t0 + i / rate)))
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        return {"rate": rate, "sent": n, "ok": len(latencies), "errors": errors, "achieved": len(latencies) / elapsed,
                "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000, "max_ms": max(latencies, default=0) * 1000}

    async def saturate(self, seconds: float, concurrency: int) -> dict:
        done = 0
        errors = 0
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                body = self.fresh()
                t = time.perf_counter()
                if await self.one(body):
                    done += 1
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
        return {"throughput": done / elapsed, "errors": errors, "p50_ms": pct(latencies, 50) * 1000,
                "p99_ms": pct(latencies, 99) * 1000, "concurrency": concurrency}


async def open_loops(name: str, port: int, pid: int, ctx: ssl.SSLContext, review: dict, seconds: float, mix: str) -> dict:
    load = Load(port, ctx, copy.deepcopy(review), mix)
    out: dict = {"name": name, "open": [], "saturated": None}
    await load.connect(CONNECTIONS)
    try:
        await load.open_loop(200, 1.0)  # warm-up
        for rate in RATES:
            c0, me0 = cpu_seconds(pid), time.process_time()
            r = await load.open_loop(rate, seconds)
            r["server_cpu_us"] = (cpu_seconds(pid) - c0) / max(1, r["ok"]) * 1e6
            r["client_cpu"] = (time.process_time() - me0) / seconds
            out["open"].append(r)
            print(f"  {name:11} {rate:5}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                  f"ok {r['ok']}/{r['sent']}  server CPU {r['server_cpu_us']:.0f} µs/admission  "
                  f"load generator {r['client_cpu']:.2f} cores", flush=True)
    finally:
        load.close()
    return out


async def saturation_rounds(servers: list[tuple[str, int, int, str]], ctx: ssl.SSLContext, review: dict,
                            seconds: float, rounds: int) -> dict[str, dict]:
    """Saturate each server in turn, round after round, so every ratio compares runs made a few
    seconds apart: on a shared machine the background load changes from minute to minute, and
    one server measured a minute after another is a different machine."""
    loads = {}
    for name, port, _, mix in servers:
        loads[name] = Load(port, ctx, copy.deepcopy(review), mix)
        await loads[name].connect(SATURATION_CONCURRENCY)
    runs: dict[str, list[dict]] = {name: [] for name, *_ in servers}
    try:
        for k in range(rounds):
            for name, _, pid, _ in servers:
                await loads[name].saturate(0.3, SATURATION_CONCURRENCY)  # warm this server's caches again
                c0, me0 = cpu_seconds(pid), time.process_time()
                s = await loads[name].saturate(seconds, SATURATION_CONCURRENCY)
                s["server_cpu"] = (cpu_seconds(pid) - c0) / seconds
                s["client_cpu"] = (time.process_time() - me0) / seconds
                s["server_cpu_us"] = s["server_cpu"] / max(1.0, s["throughput"]) * 1e6
                runs[name].append(s)
            print(f"  round {k + 1}/{rounds}: " + ", ".join(f"{n} {r[-1]['throughput']:.0f}/s" for n, r in runs.items()), flush=True)
    finally:
        for load in loads.values():
            load.close()
    out = {}
    for name, rs in runs.items():
        out[name] = {"throughput": statistics.median(r["throughput"] for r in rs),
                     "server_cpu_us": statistics.median(r["server_cpu_us"] for r in rs),
                     "errors": sum(r["errors"] for r in rs), "all_runs": [round(r["throughput"]) for r in rs]}
    floor = runs["floor"]
    for name, rs in runs.items():
        # Per round, then the median: a ratio of two numbers taken seconds apart.
        out[name]["ratio"] = statistics.median(r["throughput"] / f["throughput"] for r, f in zip(rs, floor))
        out[name]["cpu_ratio"] = statistics.median(f["server_cpu_us"] / r["server_cpu_us"] for r, f in zip(rs, floor))
    return out


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"listening"' in line:
                return proc, int(json.loads(line)["port"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def micro(review: dict) -> dict:
    """Per-request costs inside the handler, to justify the hot path's choices."""
    import orjson

    from webhook.metrics import Metrics
    from webhook.mutate import review as do_review
    from webhook.settings import Settings

    settings = Settings()
    raw = json.dumps(review).encode()
    resp = do_review(review, settings).response

    def per_op(fn, n=2000) -> float:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e6

    m = Metrics()
    return {
        "body_bytes": len(raw),
        "json_loads_us": per_op(lambda: json.loads(raw)),
        "orjson_loads_us": per_op(lambda: orjson.loads(raw)),
        "json_dumps_us": per_op(lambda: json.dumps(resp).encode()),
        "orjson_dumps_us": per_op(lambda: orjson.dumps(resp)),
        "review_us": per_op(lambda: do_review(review, settings), 1000),
        "metrics_observe_us": per_op(lambda: m.observe("injected", 0.001), 100000),
    }


def write_readme(results: list[dict], micro_r: dict, seconds: float) -> None:
    ours, floor, server_only, replicas = results  # unique, floor, canned review(), rollout
    fs, so = floor["saturated"], server_only["saturated"]
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    lines = [
        "## Webhook",
        "",
        f"Measured {dt.date.today().isoformat()} on {describe_host()}, by `bench/webhook_bench.py`",
        f"({seconds:g} s per step). One webhook worker over TLS 1.3 keep-alive (64 connections), the load",
        "generator (a minimal asyncio HTTP/1.1 client) in a separate process on the same 2-core machine.",
        f"Request: a Deployment's pod with two containers and `kms.hanzo.ai/path` + `signal` ({micro_r['body_bytes']}",
        "bytes); every admission injects. Open loop: requests scheduled at a fixed rate, latency measured",
        f"from the scheduled time. Saturated: 32 requests in flight, {len(fs['all_runs'])} rounds in which each server takes",
        "its turn (so each ratio compares runs seconds apart), medians. Two request mixes:",
        "- **rollout pods** (the headline): the pods of 8 Deployments, interleaved, each with its own uid",
        "  and service-account volume as kube-apiserver sends them; the server answers a workload's",
        "  later pods from its answer cache (`--review-cache`, keyed by what `review()` reads);",
        "- **unique pods** (the worst case): every pod has its own image tag, so every admission runs `review()`.",
        "",
        "Floor: a bare aiohttp handler over the same TLS that parses the same JSON with orjson and answers",
        "the same response bytes.",
        "",
        "| load | unique pods p50 / p99 | CPU / admission | rollout pods p50 / p99 | CPU / admission | floor p50 / p99 | CPU / admission |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, rr, f in zip(ours["open"], replicas["open"], floor["open"]):
        lines.append(f"| {r['rate']}/s | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms | {r['server_cpu_us']:.0f} µs | "
                     f"{rr['p50_ms']:.2f} / {rr['p99_ms']:.2f} ms | {rr['server_cpu_us']:.0f} µs | "
                     f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms | {f['server_cpu_us']:.0f} µs |")
    s, rs = ours["saturated"], replicas["saturated"]
    lines.append(f"| saturated | {s['throughput']:.0f}/s (runs {s['all_runs']}) | {s['server_cpu_us']:.0f} µs | "
                 f"{rs['throughput']:.0f}/s (runs {rs['all_runs']}) | {rs['server_cpu_us']:.0f} µs | "
                 f"{fs['throughput']:.0f}/s (runs {fs['all_runs']}) | {fs['server_cpu_us']:.0f} µs |")
    p500 = {r["rate"]: r for r in ours["open"]}[500]["p99_ms"]
    r500 = {r["rate"]: r for r in replicas["open"]}[500]["p99_ms"]
    ratio, rratio = s["ratio"], rs["ratio"]
    lines += [
        "",
        "| target | unique pods | rollout pods |",
        "|---|---|---|",
        f"| p99 ≤ 10 ms at 500/s | {p500:.2f} ms: {ok(p500 <= 10)} | {r500:.2f} ms: {ok(r500 <= 10)} |",
        f"| ≥ 1,500/s saturated, one worker | {s['throughput']:.0f}/s: {ok(s['throughput'] >= 1500)} | "
        f"{rs['throughput']:.0f}/s: {ok(rs['throughput'] >= 1500)} |",
        f"| ≥ 0.6 × floor (saturated) | {ratio:.2f}: {ok(ratio >= 0.6)} | {rratio:.2f}: {ok(rratio >= 0.6)} |",
        "",
        "Where the time goes: the same server (`webhook.server.make_app`: content checks, envelope",
        "validation, metrics, one JSON log line, the hot-reloading TLS context) with `review()` replaced by",
        f"a canned answer does {so['throughput']:.0f}/s saturated ({so['ratio']:.2f} × floor; "
        f"{so['server_cpu_us']:.0f} µs CPU per admission against the",
        f"floor's {fs['server_cpu_us']:.0f} µs). The rest of the unique-pod cost is `review()` itself:",
        "",
        "| step, per request (µs) | stdlib | chosen |",
        "|---|---|---|",
        f"| parse the body: json / orjson | {micro_r['json_loads_us']:.0f} | {micro_r['orjson_loads_us']:.0f} |",
        f"| encode the answer: json / orjson | {micro_r['json_dumps_us']:.1f} | {micro_r['orjson_dumps_us']:.1f} |",
        f"| `review()` (annotations, AgentConfig, patch) | | {micro_r['review_us']:.0f} |",
        f"| metrics observe (hand-rolled, no prometheus-client) | | {micro_r['metrics_observe_us']:.2f} |",
        "",
        "The machine is shared with other work (load average 1-2 during runs), so a server seldom has a",
        "whole core and p99 moves by several ms between runs; CPU per admission is the steadier figure.",
        "",
    ]
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\nResults recorded by the scripts in this folder.\n\n"
    section = "\n".join(lines) + "\n"
    m = re.search(r"^## Webhook\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    text = text[: m.start()] + section + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)
    print(f"wrote {readme}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    fl = sub.add_parser("floor", help="(internal) run the bare floor server")
    fl.add_argument("--cert", required=True)
    fl.add_argument("--key", required=True)
    fl.add_argument("--response", required=True)
    fl.add_argument("--server-only", action="store_true", help="our server with a canned review()")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each load step")
    p.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    p.add_argument("--only", choices=("unique", "server-only", "rollout"), help="measure one server and the floor (implies --no-readme)")
    p.add_argument("--rounds", type=int, default=SATURATION_ROUNDS, help="interleaved saturation rounds")
    args = p.parse_args(argv)
    if args.cmd == "floor":
        return floor_main(args)

    from webhook import certs
    from webhook.mutate import review as do_review
    from webhook.settings import Settings

    review = realistic_review()
    expected = do_review(review, Settings())
    assert expected.decision == "injected", expected.decision
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        t = Path(tmp)
        ca = certs.generate_ca()
        leaf = certs.generate_serving_cert(ca, ["localhost"], ip_addresses=["127.0.0.1"])
        (t / "tls.crt").write_bytes(leaf.cert_pem)
        (t / "tls.key").write_bytes(leaf.key_pem)
        (t / "response.json").write_text(json.dumps(expected.response))
        ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
        ctx.check_hostname = False  # 127.0.0.1 is in the cert's SANs; server_hostname is not sent for IPs
        micro_r = micro(review)
        print("per request: " + ", ".join(f"{k} {v:.2f}" for k, v in micro_r.items()), flush=True)
        results = []
        webhook_cmd = [sys.executable, "-m", "injector", "webhook", "--host", "127.0.0.1", "--port", "0",
                       "--tls-cert", str(t / "tls.crt"), "--tls-key", str(t / "tls.key")]
        floor_cmd = [sys.executable, str(Path(__file__).resolve()), "floor", "--cert", str(t / "tls.crt"),
                     "--key", str(t / "tls.key"), "--response", str(t / "response.json")]
        plan = [("unique", webhook_cmd, "unique"), ("floor", floor_cmd, "unique"),
                ("server-only", [*floor_cmd, "--server-only"], "unique"), ("rollout", webhook_cmd, "rollout")]
        if args.only:
            plan = [p for p in plan if p[0] in (args.only, "floor")]
        procs = []
        try:
            servers = []
            for name, cmd, mix in plan:
                proc, port = start(cmd, t / f"{name}.log")
                procs.append(proc)
                servers.append((name, port, proc.pid, mix))
            results = {name: asyncio.run(open_loops(name, port, pid, ctx, review, args.seconds, mix))
                       for name, port, pid, mix in servers}
            saturated = asyncio.run(saturation_rounds(servers, ctx, review, args.seconds / 2, args.rounds))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)
        for name, sat in saturated.items():
            results[name]["saturated"] = sat
            print(f"  {name:11} saturated median {sat['throughput']:7.0f}/s  runs {sat['all_runs']}  "
                  f"{sat['server_cpu_us']:.0f} µs CPU/admission  ratio to floor {sat['ratio']:.2f} "
                  f"(by CPU {sat['cpu_ratio']:.2f})  errors {sat['errors']}", flush=True)
        if args.only or args.no_readme:
            return 0
        write_readme([results[n] for n in ("unique", "floor", "server-only", "rollout")], micro_r, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
