"""The agent on the change relay, end to end (issue 11 point 4): the dev KMS in the upstream profile
with no event stream (`infisical-recorded`), the real `kms-injector relay` over TLS with the
TokenReview stand-in (tests/test_relay.py), and real `kms-injector agent` sidecars on different
folders, configured as the webhook does (KMS_AGENT_CONFIG: relay_url, relay_ca, relay_token_path).

Each agent logs in with its own identity, so the dev KMS's per-identity stats count every agent's
reads apart from the relay's (identity `svc`): that is how the stretched poll is seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkms.seed import tiny_seed
from tests.agent_support import Proc, free_port, metric, metrics, read_folder, spawn, stop_process, wait_for, write_credentials
from tests.conftest import KMS_INJECTOR
from tests.test_relay import ENV, PROJECT, ROTATED_PREFIX, FakeKubeAuth, RecordingKms, RelayHarness

READ = "GET /v3/secrets/raw"
AGENTS = ("agent-app", "agent-restricted")


def relay_seed() -> dict:
    seed = tiny_seed()
    for name in AGENTS:  # one identity per agent: its reads are counted apart (dev KMS stats)
        seed["identities"].append({"name": name, "clientId": f"{name}-id", "clientSecret": f"{name}-secret",
                                   "access": [{"project": PROJECT, "environments": ["*"], "paths": ["/**"], "read": True}]})
    return seed


class Agent:
    """A real sidecar agent process subscribed to the relay."""

    def __init__(self, relay: RelayHarness, name: str, path: str, token: str, refresh: str, factor: float) -> None:
        self.name, self.path = name, path
        tmp = relay.tmp / name
        tmp.mkdir()
        self.mount = tmp / "secrets"
        write_credentials(tmp / "auth", f"{name}-id", f"{name}-secret")
        (tmp / "token").write_text(token)
        self.port = free_port()
        config = {"relay_url": relay.url, "relay_ca": relay.ca_pem, "relay_token_path": str(tmp / "token"),
                  "relay_poll_factor": factor}
        argv = [*KMS_INJECTOR, "agent", "--mode", "sidecar", "--host", relay.kms.base_url, "--project", PROJECT,
                "--env", ENV, "--path", path, "--mount-path", str(self.mount), "--credentials-dir", str(tmp / "auth"),
                "--refresh-interval", refresh, "--health-port", str(self.port)]
        self.proc: Proc = spawn(argv, tmp, "agent", env={"KMS_AGENT_CONFIG": json.dumps(config)})
        self.kms = relay.kms

    def reads(self) -> int:
        return self.kms.state.stats()["identityRoutes"].get(self.name, {}).get(READ, 0)

    def files(self) -> dict[str, str]:
        return read_folder(self.mount)

    async def metric(self, name: str) -> float:
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.popen.returncode}):\n{self.proc.stderr()[-3000:]}")
        return metric(await metrics(self.port), f"kms_agent_{name}")

    async def wait_metric(self, name: str, value: float, timeout: float = 60.0, at_least: bool = False) -> None:
        async def check() -> bool:
            try:
                got = await self.metric(name)
            except OSError:
                return False
            return got >= value if at_least else got == value

        await wait_for(check, timeout, f"{self.name}: kms_agent_{name} {'>=' if at_least else '=='} {value:g}", interval=0.2)

    async def subscribed(self, factor: float) -> None:
        """Connected, the poll stretched, and the subscribe-time refetch done (sync #2 or later): from here
        on, every KMS read of this agent is a notice's or a safety-net poll's."""
        await self.wait_metric("relay_connected", 1)
        await self.wait_metric("poll_factor", factor)
        await self.wait_metric("relay_wakeups_total", 1)
        await self.wait_metric("syncs_total", 2, at_least=True)
        await self.wait_metric("fetch_pending", 0)  # woken by the relay, and that fetch is over

    def stop(self) -> None:
        stop_process(self.proc.popen, timeout=10)


@pytest.fixture
async def relay_env(tmp_path: Path):
    kms = RecordingKms(relay_seed(), profile="infisical-recorded")
    kube = FakeKubeAuth()
    await kms.start()
    await kube.start()
    relay = RelayHarness(tmp_path, kms, kube)
    relay.prepare()
    agents: list[Agent] = []
    try:
        yield relay, agents
    finally:
        for a in agents:
            a.stop()
        relay.stop()
        await kube.stop()
        await kms.stop()


def relay_reads(relay: RelayHarness) -> int:
    return relay.kms.state.stats()["identityRoutes"].get("svc", {}).get(READ, 0)


async def relay_polls(relay: RelayHarness, n: int, timeout: float = 60.0) -> None:
    """A window measured by the relay's own polls of the dev KMS (not by a sleep)."""
    start = relay_reads(relay)
    await wait_for(lambda: relay_reads(relay) >= start + n, timeout, f"{n} relay polls")


def leaks(agents: list[Agent], values: list[str]) -> list[str]:
    text = "".join(a.proc.stderr() + a.proc.stdout() for a in agents)
    return [v[:8] for v in values if v in text]


async def test_a_rotation_reaches_the_right_agent_in_about_the_relay_poll_interval(relay_env) -> None:
    relay, agents = relay_env
    relay.start("--poll-interval", "2")  # the chart's default relay.pollInterval
    await relay.wait_ready()
    app = Agent(relay, "agent-app", "/app", relay.kube.token_for("chat", "chat"), "60s", 10)
    restricted = Agent(relay, "agent-restricted", "/restricted", relay.kube.token_for("shop", "shop"), "60s", 10)
    agents += [app, restricted]
    for a in agents:
        await a.subscribed(10)  # 60 s x 10 while the relay is healthy
    assert app.files()["DATABASE_URL"] == "postgres://app@db/app"
    assert restricted.files() == {"ONLY_ADMIN": "admin-value"}
    reads = {a.name: a.reads() for a in agents}

    # The agent's own poll is >= 54 s away (60 s +-10%, stretched x10): only the relay can bring
    # it within the deadline below.
    value = relay.kms.rotate("/restricted")
    await wait_for(lambda: restricted.files().get("ROTATED") == value, 20, "the rotation in /restricted's files")
    assert await restricted.metric("relay_notices_total") == 1
    assert await restricted.metric("relay_wakeups_total") == 2  # the subscribe-time refetch, then the notice
    await relay_polls(relay, 2)  # the other agent had two relay rounds to (wrongly) fetch
    assert app.reads() == reads["agent-app"] and "ROTATED" not in app.files()
    assert await app.metric("relay_notices_total") == 0
    assert restricted.reads() == reads["agent-restricted"] + 1  # one fetch per notice, with its own identity

    value2 = relay.kms.rotate("/app")
    await wait_for(lambda: app.files().get("ROTATED") == value2, 20, "the rotation in /app's files")
    await relay_polls(relay, 2)
    assert restricted.files().get("ROTATED") == value and restricted.reads() == reads["agent-restricted"] + 1
    assert await app.metric("relay_notices_total") == 1
    for a in agents:
        assert await a.metric("relay_failures_total") == 0 and await a.metric("relay_refusals_total") == 0
        assert not a.proc.events("sync_failing")
    assert leaks(agents, [value, value2, "svc-secret", "agent-app-secret", "admin-value"]) == []


async def test_relay_killed_agents_poll_at_the_normal_interval_then_resubscribe(relay_env) -> None:
    relay, agents = relay_env
    relay.start("--poll-interval", "0.5")
    await relay.wait_ready()
    # 5 s normally (the shortest allowed), x50 = 250 s while the relay is healthy.
    app = Agent(relay, "agent-app", "/app", relay.kube.token_for("chat", "chat"), "5s", 50)
    agents.append(app)
    await app.subscribed(50)

    # Healthy: no safety-net read at all over 14 relay polls (7 s: more than one normal interval).
    before = app.reads()
    await relay_polls(relay, 14)
    assert app.reads() == before, "the stretched poll read KMS"

    relay.kill()
    await app.wait_metric("relay_connected", 0, timeout=30)
    await app.wait_metric("poll_factor", 1)
    # The 250 s sleep was re-planned: the normal 5 s interval, and a rotation still arrives.
    value = relay.kms.rotate("/app")
    await wait_for(lambda: app.files().get("ROTATED") == value, 30, "the rotation delivered by polling")
    before = app.reads()
    await wait_for(lambda: app.reads() >= before + 2, 30, "two more polls at the normal interval")
    assert await app.metric("healthy") == 1 and not app.proc.events("sync_failing")

    relay.start("--poll-interval", "0.5")
    await relay.wait_ready()
    await app.wait_metric("relay_connected", 1, timeout=90)  # the client's backoff: up to ~30 s here
    assert await app.metric("relay_reconnects_total") == 1
    await app.wait_metric("poll_factor", 50)
    value2 = relay.kms.rotate("/app")
    await wait_for(lambda: app.files().get("ROTATED") == value2, 20, "the rotation through the new relay")
    before = app.reads()
    await relay_polls(relay, 14)
    assert app.reads() == before, "the poll is stretched again"
    # The outage was told once (and once more at most when its error changed), not per attempt.
    assert 1 <= len(app.proc.events("relay_disconnected")) <= 3
    assert await app.metric("relay_failures_total") >= 1
    assert leaks(agents, [value, value2, "agent-app-secret", "svc-secret"]) == []
    assert ROTATED_PREFIX not in relay.all_output()
