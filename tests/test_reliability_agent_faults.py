"""Faults, agent side (issue 6 item 1): the real agent (`kms-injector agent --mode sidecar`,
5 s interval) as a subprocess against the dev KMS with fault injection (POST /api/_dev/faults),
one dev KMS per scenario, all scenarios at once so the file costs one outage, not ten.

For every fault: the files stay byte-for-byte what they were and `..data` keeps its inode (the
last good copy is never deleted, truncated or rewritten), the requests made during the fault are
bounded by the backoff (no spinning) and so is the agent's CPU, and once the fault is gone a value
rotated during the fault is on disk within one interval. Logs, metrics, audit lines: no value,
client secret or token (tests/reliability_support.assert_no_leaks).

`make soak` (KMS_SOAK=1) lengthens the outage to 30 s and the other faults to 20 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from devkms.server import run_dev_kms
from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, IDENTITY, PROJECT, SHARED, agent_args, free_port, metric, metrics, read_folder,
    seed, spawn, wait_for, write_credentials,
)

from .reliability_support import SOAK, assert_no_leaks, cpu_seconds, snapshot

INTERVAL = 5.0
OUTAGE = 30.0 if SOAK else 12.0
WINDOW = 20.0 if SOAK else 8.0
SECRETS_ROUTE = "GET /v3/secrets/raw"
LOGIN_ROUTE = "POST /v1/auth/universal-auth/login"
RENEW_ROUTE = "POST /v1/auth/token/renew"


def attempts_bound(window: float) -> int:
    """Capped exponential backoff (0.5 s doubling, cap = interval, full jitter) makes about
    3 + window/2.5 attempts; allow 3 + window (a fixed 0.5 s retry would make 2 * window, a
    spinning agent thousands)."""
    return 3 + int(window)


@dataclass
class Ctx:
    name: str
    kms: Any
    tmp: Path
    mount: Path
    port: int = 0
    agent: Any = None
    tokens: set[str] = field(default_factory=set)
    notes: dict[str, Any] = field(default_factory=dict)

    async def dev(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"{self.kms.base_url}/_dev/{path}", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json()

    def stats(self) -> dict:
        self.tokens.update(self.kms.state.tokens)
        return self.kms.stats()

    def route(self, route: str) -> int:
        return self.stats()["routes"].get(route, 0)

    async def failures(self) -> float:
        return metric(await metrics(self.port), "kms_agent_sync_failures_total")


@dataclass
class Scenario:
    name: str
    start: Callable[[Ctx], Awaitable[None]]
    stop: Callable[[Ctx], Awaitable[None]]
    window: float = WINDOW
    expect_failures: bool = True
    kms_kw: dict = field(default_factory=dict)
    agent_flags: tuple[str, ...] = ()
    check: Callable[[Ctx, dict], None] | None = None  # extra assertions on the window's numbers


def fault(**f: Any) -> Callable[[Ctx], Awaitable[None]]:
    async def start(ctx: Ctx) -> None:
        await ctx.dev("POST", "faults", f)
    return start


async def clear(ctx: Ctx) -> None:
    await ctx.dev("DELETE", "faults")


async def outage_start(ctx: Ctx) -> None:
    await ctx.kms.stop()


async def outage_stop(ctx: Ctx) -> None:
    await ctx.kms.start()


async def creds_rotate(ctx: Ctx) -> None:
    ctx.notes["new_secret"] = "agent-test-secret-ROTATED-8c1d"
    ctx.kms.state.identity(IDENTITY).client_secret = ctx.notes["new_secret"]
    ctx.kms.state.expire_tokens(IDENTITY)


async def creds_fixed(ctx: Ctx) -> None:
    write_credentials(ctx.tmp / "auth", CLIENT_ID, ctx.notes["new_secret"])  # kubelet's ..data swap


async def expire_now(ctx: Ctx) -> None:
    await ctx.dev("POST", "tokens/expire", {})


async def nothing(ctx: Ctx) -> None:
    return None


def check_429(ctx: Ctx, n: dict) -> None:
    # Retry-After: 3 is a floor under every retry: at most one request per 3 s, plus the first.
    assert n["requests"] <= n["window"] / 3 + 2, n


def check_login_bounded(ctx: Ctx, n: dict) -> None:
    # 3 wrong logins in a row lock the identity: the agent must stay under that (5 s auth floor).
    assert n["statuses"].get("401", 0) <= 2, n


def check_renew_failing(ctx: Ctx, n: dict) -> None:
    assert n["renews"] >= 1, f"renew was never tried: {n}"
    assert n["logins"] >= 1, f"no fresh login after the token expired: {n}"


def check_relogin(ctx: Ctx, n: dict) -> None:
    assert n["statuses"].get("403", 0) >= 1 and n["logins"] >= 1, n  # 403 TokenError -> a fresh login


SCENARIOS = [
    Scenario("kms-down", outage_start, outage_stop, window=OUTAGE),
    Scenario("http-500", fault(status=500, path="/v3/secrets"), clear),
    Scenario("http-503-all-routes", fault(status=503), clear),
    Scenario("slow-past-timeout", fault(delay=3, path="/v3/secrets"), clear, agent_flags=("--request-timeout", "1s")),
    Scenario("truncated-body", fault(body="truncate", path="/v3/secrets"), clear),
    Scenario("invalid-json", fault(body="invalid_json", path="/v3/secrets"), clear),
    Scenario("wrong-field-types", fault(body="wrong_types", path="/v3/secrets"), clear),
    Scenario("429-storm", fault(status=429, retryAfter=3), clear, check=check_429),
    # A fixed 8 s window even in soak: the agent retries wrong credentials every interval (5 s here),
    # so a longer window reaches the dev KMS's lockout (3 wrong logins in a row). See docs/reliability.md.
    Scenario("credentials-rotated", creds_rotate, creds_fixed, window=8.0, check=check_login_bounded),
    # No sync may fail here: an expiring token whose renewal fails is replaced by a fresh login.
    # TTL 12 s, renewal due at 2/3: the ~10 s tick renews (and fails), the ~15 s tick logs in afresh.
    Scenario("token-expiring-renew-failing", fault(status=500, path="/v1/auth/token/renew"), clear, expect_failures=False,
             window=18.0, kms_kw={"token_ttl": 12}, check=check_renew_failing),
    Scenario("token-expired-now", expire_now, nothing, window=INTERVAL * 1.1 + 2, expect_failures=False, check=check_relogin),
]


async def run_scenario(sc: Scenario, tmp: Path, sink: dict) -> dict:
    """Run one scenario; its captured outputs and the tokens KMS issued go to sink[sc.name]."""
    tmp.mkdir()
    audit = tmp / "audit.jsonl"
    async with run_dev_kms(seed(), audit_log=audit, **sc.kms_kw) as kms:
        ctx = Ctx(sc.name, kms, tmp, tmp / "secrets")
        write_credentials(tmp / "auth", CLIENT_ID, CLIENT_SECRET)
        ctx.port = free_port()
        ctx.agent = spawn(agent_args(kms.base_url, ctx.mount, tmp / "auth", "--refresh-interval", f"{INTERVAL:g}s",
                                     "--health-port", str(ctx.port), *sc.agent_flags), tmp, "agent")
        try:
            return await _drive(sc, ctx)
        finally:
            ctx.agent.stop()
            ctx.stats()
            outputs = {f"{sc.name} agent stderr": ctx.agent.stderr(), f"{sc.name} agent stdout": ctx.agent.stdout(),
                       f"{sc.name} audit": audit.read_text() if audit.exists() else ""}
            sink[sc.name] = {"outputs": outputs, "tokens": ctx.tokens}


async def _drive(sc: Scenario, ctx: Ctx) -> dict:
    await wait_for(lambda: ctx.agent.events("first_sync") or ctx.agent.popen.poll() is not None, 30, f"{sc.name}: first sync")
    assert ctx.agent.popen.poll() is None, ctx.agent.stderr()[-2000:]
    before = snapshot(ctx.mount)
    assert set(before.files) == set(CHAT) | set(SHARED)
    stats0 = ctx.stats()
    failures0 = await ctx.failures()
    cpu0 = cpu_seconds(ctx.agent.popen.pid)

    await sc.start(ctx)
    t0 = time.monotonic()
    rotated = f"VALUE-api-{sc.name}-rotated"
    ctx.kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", rotated)  # lands in KMS (state) during the fault
    if sc.expect_failures:
        await wait_for(lambda: _failed(ctx, failures0), 30, f"{sc.name}: first failed sync")
    t_window = time.monotonic()
    while time.monotonic() - t_window < sc.window:
        now = snapshot(ctx.mount)
        if sc.expect_failures:
            assert now == before, f"{sc.name}: files or ..data changed during the fault"
        else:  # expected to keep syncing: the rotation lands, as one complete version
            assert now.files in (before.files, {**before.files, "API_KEY": rotated.encode()}), f"{sc.name}: mixed files"
        assert ctx.agent.popen.poll() is None, f"{sc.name}: agent exited {ctx.agent.popen.returncode}"
        ctx.stats()
        await asyncio.sleep(0.3)
    window = time.monotonic() - t0
    stats1 = ctx.stats()
    failures = await ctx.failures() - failures0
    cpu = cpu_seconds(ctx.agent.popen.pid) - cpu0
    numbers = {
        "window": round(window, 1), "failures": failures,
        "requests": stats1["routes"].get(SECRETS_ROUTE, 0) - stats0["routes"].get(SECRETS_ROUTE, 0),
        "logins": stats1["routes"].get(LOGIN_ROUTE, 0) - stats0["routes"].get(LOGIN_ROUTE, 0),
        "renews": stats1["routes"].get(RENEW_ROUTE, 0) - stats0["routes"].get(RENEW_ROUTE, 0),
        "statuses": {k: v - stats0["statuses"].get(k, 0) for k, v in stats1["statuses"].items()},
        "cpu_seconds": round(cpu, 3),
    }
    if sc.expect_failures:
        assert 1 <= failures <= attempts_bound(window), (sc.name, numbers)
        assert numbers["requests"] <= attempts_bound(window) * 2, (sc.name, numbers)  # at most a re-login retry each
        assert (ctx.mount / "API_KEY").read_text() == CHAT["API_KEY"]
    else:
        assert failures == 0, (sc.name, numbers, ctx.agent.events("sync_failing"))
    assert cpu < 0.25 * window + 1.0, (sc.name, numbers)  # never spins
    if sc.check:
        sc.check(ctx, numbers)

    await sc.stop(ctx)
    t_back = time.monotonic()
    await wait_for(lambda: (ctx.mount / "API_KEY").read_text() == rotated, 30, f"{sc.name}: catch-up after the fault")
    recovery = time.monotonic() - t_back
    numbers["recovery_seconds"] = round(recovery, 1)
    # Backoff is capped at the interval: back within one interval (+10% jitter), plus slack for a busy machine.
    assert recovery < INTERVAL * 1.1 + 4, (sc.name, numbers)
    assert read_folder(ctx.mount) == {**SHARED, **CHAT, "API_KEY": rotated}  # one complete new version
    if sc.expect_failures:
        await wait_for(lambda: ctx.agent.events("sync_recovered"), 20, f"{sc.name}: recovery logged")
        assert len(ctx.agent.events("sync_failing")) == 1, f"{sc.name}: state changes only, not every attempt"
    numbers["metrics"] = await metrics(ctx.port)
    return numbers


async def _failed(ctx: Ctx, base: float) -> bool:
    return await ctx.failures() > base


async def test_agent_survives_every_fault_keeps_the_last_good_copy_and_recovers(tmp_path: Path, capfd) -> None:
    sink: dict[str, dict] = {}
    results = await asyncio.gather(*(run_scenario(sc, tmp_path / sc.name, sink) for sc in SCENARIOS), return_exceptions=True)
    errors = [f"{sc.name}: {type(r).__name__}: {r}" for sc, r in zip(SCENARIOS, results) if isinstance(r, BaseException)]
    assert not errors, "\n".join(errors)
    # Leak scan over everything the scenarios produced: agents' stderr/stdout, dev KMS logs (this
    # process's stderr) and audit lines, metrics. Markers: every secret value, the client secrets
    # (old and rotated), every token KMS issued.
    captured = capfd.readouterr()
    sources = {"dev-kms logs": captured.err + captured.out}
    markers = {f"value {k}": v for k, v in {**CHAT, **SHARED}.items() if len(v) >= 8}
    markers.update({f"rotated {sc.name}": f"VALUE-api-{sc.name}-rotated" for sc in SCENARIOS})
    markers["client secret"] = CLIENT_SECRET
    markers["rotated client secret"] = "agent-test-secret-ROTATED-8c1d"
    tokens: set[str] = set()
    for sc, r in zip(SCENARIOS, results):
        sources[f"{sc.name} metrics"] = r.pop("metrics")
    for sc in SCENARIOS:
        out = sink.get(sc.name, {})
        sources.update(out.get("outputs", {}))
        tokens |= out.get("tokens", set())
    assert len(tokens) >= len(SCENARIOS), "token collection failed"
    markers.update({f"token #{i}": t for i, t in enumerate(sorted(tokens))})
    scanned = assert_no_leaks(sources, markers)
    summary = {sc.name: r for sc, r in zip(SCENARIOS, results)}
    print(json.dumps({"scenarios": summary, "bytes_scanned": scanned, "markers": len(markers)}, default=str))
