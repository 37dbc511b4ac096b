"""Events benchmark: change-to-file latency with KMS change events vs 5 s polling, and the KMS
requests an idle agent costs per hour.

  1. events: one sidecar (refresh 60 s, events on); ROTATIONS sequential rotations of one key
     (set in the dev KMS, as an API write would), first with random 300-600 ms pauses between them
     (isolated changes), then with 50-250 ms pauses (back to back: each change lands inside the
     previous one's debounce window); latency = time from the write to the new content in the
     mounted file (read every 2 ms).
  2. polling: AGENTS sidecars (refresh 5 s, --no-events), each on its own folder; every round
     rotates all folders at once at a random moment; ROTATIONS samples in all.
  3. idle: three more sidecars whose folders never change (events + 60 s poll; 60 s poll only;
     5 s poll only) run through the whole bench; their requests (dev KMS stats, per identity) are
     counted over the window and extrapolated to one hour (the window is minutes, not an hour:
     a token renewal, due every 2/3 x 7200 s, is added by arithmetic, not measured).

The dev KMS runs in this process (real HTTP on 127.0.0.1); the agents are real subprocesses.

    python bench/events_bench.py [--rotations 200] [--agents 10] [--idle-seconds 180] [--no-write]

Results are printed and written into bench/README.md under "## Events" (only that section).

    python bench/events_bench.py --refusals [--refusal-seconds 60] [--no-write]

measures what a server that refuses events costs (section "## Events refused"): real agents
against the dev KMS profiles of Hanzo's fork (422), the recorded upstream (404) and a newer
upstream without the plan (400), counting subscribe requests; and the subscriber itself on a
short clock (every wait of SubscribePolicy / 1800, so 20 s stand for 10 hours) against a server
that refuses with 422, with 503 and with 401, counting attempts per (scaled) hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "events"
VENV_BIN = Path(sys.executable).parent
KMS = str(VENV_BIN / "kms-injector") if (VENV_BIN / "kms-injector").exists() else None
PROJECT, ENV = "bench", "prod"
KEYS = {f"KEY_{i}": f"bench-value-{i:02d}-" + "x" * 24 for i in range(8)}
TOKEN_TTL = 7200.0


def kms_cmd(*args: str) -> list[str]:
    return [KMS, *args] if KMS else [sys.executable, "-m", "injector", *args]


def seed(names: list[str]) -> dict:
    return {
        "identities": [{"name": n, "clientId": f"{n}-id", "clientSecret": f"{n}-secret-0123456789",
                        "access": [{"project": PROJECT, "environments": ["*"], "paths": ["/**"], "read": True}]}
                       for n in names],
        "projects": {PROJECT: {"environments": {ENV: {"folders": {f"/{n}": {"secrets": dict(KEYS)} for n in names}}}}},
    }


class Agent:
    def __init__(self, name: str, base_url: str, interval: float, events: bool) -> None:
        self.name = name
        self.dir = OUT / name
        if self.dir.exists():
            import shutil

            shutil.rmtree(self.dir)
        (self.dir / "auth").mkdir(parents=True)
        (self.dir / "auth" / "clientId").write_text(f"{name}-id")
        (self.dir / "auth" / "clientSecret").write_text(f"{name}-secret-0123456789")
        self.mount = self.dir / "secrets"
        argv = kms_cmd("agent", "--mode", "sidecar", "--host", base_url, "--project", PROJECT, "--env", ENV,
                       "--path", f"/{name}", "--mount-path", str(self.mount), "--credentials-dir", str(self.dir / "auth"),
                       "--refresh-interval", f"{interval:g}s")
        if not events:
            argv.append("--no-events")
        self.err = self.dir / "agent.err"
        env = {k: v for k, v in os.environ.items() if k != "KMS_AGENT_CONFIG"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.err, "w"), env=env, cwd=str(ROOT))

    def logged(self, event: str) -> bool:
        try:
            text = self.err.read_text(errors="replace")
        except OSError:
            return False
        return f'"event":"{event}"' in text

    def value(self, key: str) -> str | None:
        try:
            return (self.mount / key).read_text()
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def until(cond, timeout: float, what: str, step: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(step)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(pct(xs, 0.5) * 1000, 1), "p99_ms": round(pct(xs, 0.99) * 1000, 1),
            "max_ms": round(max(xs) * 1000, 1), "mean_ms": round(statistics.mean(xs) * 1000, 1)}


async def run(args: argparse.Namespace) -> dict:
    from devkms import run_dev_kms

    poll_names = [f"poll{i}" for i in range(args.agents)]
    idle_names = ["idle-events-60s", "idle-poll-60s", "idle-poll-5s"]
    names = ["events", *poll_names, *idle_names]
    rng = random.Random(7)
    result: dict = {}
    async with run_dev_kms(seed=seed(names), token_ttl=TOKEN_TTL, audit_log=OUT / "audit.log") as kms:
        agents: list[Agent] = []
        try:
            idle = [Agent("idle-events-60s", kms.base_url, 60, True), Agent("idle-poll-60s", kms.base_url, 60, False),
                    Agent("idle-poll-5s", kms.base_url, 5, False)]
            agents += idle
            ev = Agent("events", kms.base_url, 60, True)
            agents.append(ev)
            await until(lambda: all(a.logged("first_sync") for a in idle), 60, "idle agents' first sync", 0.05)
            await until(lambda: ev.logged("events_connected") and idle[0].logged("events_connected"), 60, "event streams", 0.05)
            idle_start = {n: sum(kms.stats()["identityRoutes"].get(n, {}).values()) for n in idle_names}
            idle_routes_start = {n: dict(kms.stats()["identityRoutes"].get(n, {})) for n in idle_names}
            t_idle = time.monotonic()
            await asyncio.sleep(2.0)  # let start-up settle

            # 1. events: sequential rotations, isolated (pauses longer than the debounce window),
            #    then back to back (pauses shorter than it: every rotation lands in a burst)
            for label, gap in (("events", (0.3, 0.6)), ("events_rapid", (0.05, 0.25))):
                lat: list[float] = []
                for i in range(args.rotations):
                    await asyncio.sleep(rng.uniform(*gap))
                    value = f"{label}-rotation-{i:04d}"
                    kms.set_secret(PROJECT, ENV, "/events", "KEY_0", value)
                    t0 = time.monotonic()
                    await until(lambda: ev.value("KEY_0") == value, 30, f"{label} rotation {i}")
                    lat.append(time.monotonic() - t0)
                result[label] = summary(lat)
                print(f"{label}:", result[label], flush=True)
            ev.stop()

            # 2. 5 s polling: AGENTS agents, all rotated at once per round
            polls = [Agent(n, kms.base_url, 5, False) for n in poll_names]
            agents += polls
            await until(lambda: all(a.logged("first_sync") for a in polls), 60, "polling agents' first sync", 0.05)
            lat_poll: list[float] = []
            rounds = max(1, args.rotations // len(polls))
            for r in range(rounds):
                await asyncio.sleep(rng.uniform(0.0, 5.0))
                value = f"poll-rotation-{r:04d}"
                for a in polls:
                    kms.set_secret(PROJECT, ENV, f"/{a.name}", "KEY_0", value)
                t0 = time.monotonic()
                pending = {a.name: a for a in polls}
                while pending:
                    for n, a in list(pending.items()):
                        if a.value("KEY_0") == value:
                            lat_poll.append(time.monotonic() - t0)
                            del pending[n]
                    if time.monotonic() - t0 > 30:
                        raise RuntimeError(f"polling round {r}: {sorted(pending)} never caught up")
                    await asyncio.sleep(0.002)
            result["polling_5s"] = summary(lat_poll)
            print("polling 5s:", result["polling_5s"], flush=True)
            for a in polls:
                a.stop()

            # 3. idle requests per hour
            left = args.idle_seconds - (time.monotonic() - t_idle)
            if left > 0:
                await asyncio.sleep(left)
            window = time.monotonic() - t_idle
            stats = kms.stats()
            idle_out = {}
            for n in idle_names:
                total = sum(stats["identityRoutes"].get(n, {}).values()) - idle_start[n]
                routes = {k: v - idle_routes_start[n].get(k, 0) for k, v in stats["identityRoutes"].get(n, {}).items()}
                per_hour = total * 3600 / window
                renew_per_hour = 3600 / (TOKEN_TTL * 2 / 3)
                idle_out[n] = {"requests": total, "routes": {k: v for k, v in routes.items() if v},
                               "per_hour_measured": round(per_hour, 1), "per_hour_with_renewal": round(per_hour + renew_per_hour, 1)}
            result["idle"] = {"window_s": round(window, 1), "agents": idle_out}
            print("idle:", json.dumps(result["idle"]), flush=True)
        finally:
            for a in agents:
                a.stop()
    return result


def section(res: dict, args: argparse.Namespace) -> str:
    ev, rapid, po, idle = res["events"], res["events_rapid"], res["polling_5s"], res["idle"]
    lines = [
        "## Events", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}, by `python bench/events_bench.py` (dev KMS in-process on 127.0.0.1, "
        "agents as real subprocesses; the machine is shared, so tails move between runs).", "",
        "Change-to-file latency: from the write in KMS to the new content in the mounted file.", "",
        "| mode | rotations | p50 | p99 | max | mean |", "|---|---|---|---|---|---|",
        f"| events, isolated changes (refresh 60 s) | {ev['n']} | {ev['p50_ms']} ms | {ev['p99_ms']} ms | {ev['max_ms']} ms | {ev['mean_ms']} ms |",
        f"| events, back-to-back changes (50-250 ms apart) | {rapid['n']} | {rapid['p50_ms']} ms | {rapid['p99_ms']} ms | {rapid['max_ms']} ms | {rapid['mean_ms']} ms |",
        f"| polling every 5 s ({args.agents} agents) | {po['n']} | {po['p50_ms']} ms | {po['p99_ms']} ms | {po['max_ms']} ms | {po['mean_ms']} ms |",
        "",
        f"Target events p99 <= 1 s: {max(ev['p99_ms'], rapid['p99_ms'])} ms (worst of the two): "
        f"{'met' if max(ev['p99_ms'], rapid['p99_ms']) <= 1000 else 'MISSED'}. "
        "A lone event is fetched at once (leading edge); an event within 250 ms of the last fetch "
        "waits for a 250 ms quiet window (at most 1 s), which is the back-to-back row: 50 updates in a "
        "row cost two fetches, not 50.", "",
        f"KMS requests per agent per hour when nothing changes: counted by the dev KMS over a "
        f"{idle['window_s']:g} s window and extrapolated to an hour (not an hour-long measurement); "
        "the last column adds the token renewal due every 2/3 of the 7200 s token TTL.", "",
        "| agent | requests in window | routes | per hour (measured) | per hour + renewal |", "|---|---|---|---|---|",
    ]
    for n, d in idle["agents"].items():
        routes = ", ".join(f"{k}: {v}" for k, v in sorted(d["routes"].items()))
        lines.append(f"| {n} | {d['requests']} | {routes} | {d['per_hour_measured']} | {d['per_hour_with_renewal']} |")
    lines += ["", "With events the poll stays on as a safety net, so an idle agent costs the same polls plus one "
              "long-lived stream (a heartbeat every 15 s is not a request); a stream is re-opened only when it drops. "
              "The gain is latency, not requests: at a 60 s interval with events an agent sees changes in well under "
              "a second while costing what a 60 s poller costs, where 5 s polling costs 12x the requests and still "
              "averages 2.5 s.", ""]
    return "\n".join(lines)


def write_section(text: str, heading: str = "## Events\n") -> None:
    readme = ROOT / "bench" / "README.md"
    body = readme.read_text() if readme.exists() else "# Benchmarks\n"
    start = body.find(heading)
    if start == -1:
        body = body.rstrip("\n") + "\n\n" + text
    else:
        end = body.find("\n## ", start + 1)
        body = body[:start] + text + (body[end + 1:] if end != -1 else "")
    readme.write_text(body if body.endswith("\n") else body + "\n")


async def refusals(args: argparse.Namespace) -> dict:
    from aiohttp import web

    from devkms import run_dev_kms
    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.client import KmsClient
    from injector.kms.events import EventSubscriber, SubscribePolicy

    out: dict = {"agents": {}, "scaled": {}, "policy_bound_per_hour": SubscribePolicy().attempts_per_hour()}
    for profile, options in (("hanzo-node", {}), ("infisical-recorded", {}), ("infisical-events", {"events_on_plan": False})):
        name = f"refused-{profile}"
        async with run_dev_kms(seed=seed([name]), profile=profile, **options) as kms:
            agent = Agent(name, kms.base_url, 5, True)
            try:
                await until(lambda: agent.logged("events_unsupported"), 60, f"{profile}: events refused", 0.05)
                t0 = time.monotonic()
                await asyncio.sleep(args.refusal_seconds)  # the measurement window
                window = time.monotonic() - t0
                routes = kms.stats()["routes"]
                subs = routes.get("POST /v1/events/subscribe/project-events", 0) + routes.get("POST unmatched", 0)
                polls = kms.stats()["identityRoutes"].get(name, {}).get("GET /v3/secrets/raw", 0)
                out["agents"][profile] = {"window_s": round(window, 1), "subscribes": subs, "polls": polls}
                print(profile, out["agents"][profile], flush=True)
            finally:
                agent.stop()

    scale = 1 / 1800
    policy = SubscribePolicy(unavailable_retry=900 * scale, rate_limited_floor=300 * scale, backoff_base=0.5 * scale,
                             backoff_cap=30 * scale, project_id_wait=0.01)
    for status in (422, 503, 429, 401):
        count = {"n": 0}

        async def login(request: web.Request) -> web.Response:
            return web.json_response({"accessToken": "bench-token", "expiresIn": 3600, "accessTokenMaxTTL": 7200})

        async def secrets(request: web.Request) -> web.Response:
            return web.json_response({"secrets": [{"secretKey": "K", "secretValue": "v", "workspace": "pid-1"}], "imports": []})

        async def subscribe(request: web.Request, status: int = status) -> web.Response:
            count["n"] += 1
            return web.json_response({"statusCode": status, "message": "refused"}, status=status,
                                     headers={})  # no Retry-After: the policy floor alone

        app = web.Application()
        app.router.add_post("/api/v1/auth/universal-auth/login", login)
        app.router.add_get("/api/v3/secrets/raw", secrets)
        app.router.add_post("/api/v1/events/subscribe/project-events", subscribe)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        creds = OUT / "scaled-auth"
        creds.mkdir(parents=True, exist_ok=True)
        (creds / "clientId").write_text("bench-id")
        (creds / "clientSecret").write_text("bench-secret-0123456789")
        try:
            async with KmsClient(f"http://127.0.0.1:{port}/api", UniversalAuthFiles(str(creds))) as client:
                await client.fetch(PROJECT, ENV, "/x")
                sub = EventSubscriber(client, PROJECT, ENV, ["/x"], policy=policy)
                task = asyncio.create_task(sub.run(lambda ev: None))
                window = 20.0
                await asyncio.sleep(window)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            hours = window / scale / 3600
            out["scaled"][status] = {"scaled_hours": round(hours, 1), "attempts": count["n"],
                                     "per_hour": round(count["n"] / hours, 1)}
            print(status, out["scaled"][status], flush=True)
        finally:
            await runner.cleanup()
    return out


def refusal_section(res: dict) -> str:
    lines = ["## Events refused", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python bench/events_bench.py --refusals`.", "",
             "Real agents (refresh 5 s) against dev KMS profiles whose events are not available:", "",
             "| profile | refusal | window | subscribe requests | polls |", "|---|---|---|---|---|"]
    why = {"hanzo-node": "422 (stub schema)", "infisical-recorded": "404 (no route)", "infisical-events": "400 (not on the plan)"}
    for profile, d in res["agents"].items():
        lines.append(f"| {profile} | {why[profile]} | {d['window_s']:g} s | {d['subscribes']} | {d['polls']} |")
    lines += ["", "The subscriber on a short clock (SubscribePolicy's waits / 1800; 20 s = 10 h) against a server "
              "that always refuses:", "", "| refusal | scaled hours | attempts | per hour |", "|---|---|---|---|"]
    for status, d in res["scaled"].items():
        lines.append(f"| {status} | {d['scaled_hours']} | {d['attempts']} | {d['per_hour']} |")
    lines += ["", f"Bound from the policy (SubscribePolicy.attempts_per_hour): at most {res['policy_bound_per_hour']:g} "
              "subscribe requests per hour per agent, worst case (5xx, 401, 429); a 4xx refusal costs one request "
              "every 12-18 minutes (<= 5 per hour). Before this policy, every refusal was retried within 30 s "
              "(>= 120 per hour, forever).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rotations", type=int, default=200)
    p.add_argument("--agents", type=int, default=10, help="polling agents measured side by side")
    p.add_argument("--idle-seconds", type=float, default=180.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    p.add_argument("--refusals", action="store_true", help="measure refused events only (section 'Events refused')")
    p.add_argument("--refusal-seconds", type=float, default=60.0)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    if args.refusals:
        res = asyncio.run(refusals(args))
        (OUT / "refusals.json").write_text(json.dumps(res, indent=2))
        text = refusal_section(res)
        print(text)
        if not args.no_write:
            write_section(text, "## Events refused\n")
        return 0

    def on_term(*_: object) -> None:  # SIGTERM: unwind like Ctrl-C, so the agents are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    res = asyncio.run(run(args))
    (OUT / "result.json").write_text(json.dumps(res, indent=2))
    text = section(res, args)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
