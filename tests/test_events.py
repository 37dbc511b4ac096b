"""KMS change events end to end: the real agent (subprocess) subscribed to the dev KMS's event
stream (in-process, real HTTP). A change reaches the file and the app's SIGHUP long before the
poll interval; a burst costs a few fetches; a cut stream reconnects; no stream -> polling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from devkms.server import run_dev_kms
from injector.event_trigger import Debouncer
from injector.kms.event_protocol import SseParser, match_event, registrations
from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, IDENTITY, PROJECT, agent_args, app_reloads, free_port, init_then_app,
    metric, metrics, read_folder, seed, spawn, wait_for, write_credentials,
)

LIST = "GET /v3/secrets/raw"
SUBSCRIBE = "POST /v1/events/subscribe/project-events"
LONG = 60.0  # poll interval: only an event can explain a change within seconds
# How long a test waits for an event-driven update: well inside the first poll (LONG - 10%
# jitter = 54 s after the last sync), so an update seen before it was brought by an event.
EVENT_DEADLINE = 20.0


async def settled(port: int, received_at_least: int) -> bool:
    """The agent has received `received_at_least` matching events and has nothing left to do for
    them: no fetch running or due, no debounced wake held back (kms_agent_fetch_pending 0)."""
    body = await metrics(port)
    return (metric(body, "kms_agent_events_received_total") >= received_at_least
            and metric(body, "kms_agent_fetch_pending") == 0)


@pytest.fixture
async def kms():
    async with run_dev_kms(seed()) as server:
        yield server


class Api:
    """Rotate values through the dev KMS's HTTP API, as an operator's tooling would."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession()
        self.token = ""

    async def login(self) -> None:
        async with self.session.post(f"{self.base_url}/v1/auth/universal-auth/login",
                                     json={"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["accessToken"]

    async def update(self, key: str, value: str, path: str = "/chat") -> None:
        if not self.token:
            await self.login()
        async with self.session.patch(f"{self.base_url}/v3/secrets/raw/{key}", headers={"Authorization": f"Bearer {self.token}"},
                                      json={"workspaceSlug": PROJECT, "environment": ENV, "secretPath": path,
                                            "secretValue": value, "type": "shared"}) as r:
            assert r.status == 200, await r.text()

    async def close(self) -> None:
        await self.session.close()


def agent_fetches(kms) -> int:
    return kms.stats()["identityRoutes"].get(IDENTITY, {}).get(LIST, 0)


async def start(kms, tmp: Path, *extra: str, interval: float = LONG, name: str = "sidecar"):
    return spawn(agent_args(kms.base_url, tmp / "secrets", tmp / "auth", "--refresh-interval", f"{interval:g}s", *extra), tmp, name)


async def test_change_reaches_file_and_app_fast_and_bursts_are_coalesced(kms, tmp_path: Path) -> None:
    mount, app, name = await init_then_app(kms.base_url, tmp_path)
    api = Api(kms.base_url)
    agent = None
    try:
        await wait_for(lambda: "app: loaded" in app.stdout(), what="app start")
        port = free_port()
        agent = await start(kms, tmp_path, "--signal", "SIGHUP", "--signal-process", name, "--health-port", str(port))
        await wait_for(lambda: agent.events("events_connected"), what="event stream connected")
        await wait_for(lambda: kms.stats()["eventStreams"].get(IDENTITY) == 1, what="stream registered on the server")
        await wait_for(lambda: settled(port, 0), what="the connect's resync fetch done")

        # One change through the API: file and SIGHUP long before the 60 s poll; one fetch for it.
        before = agent_fetches(kms)
        await api.update("API_KEY", "VALUE-api-event-1")
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-api-event-1", timeout=EVENT_DEADLINE,
                       what="event-driven update")
        await wait_for(lambda: len(app_reloads(app)) == 1, timeout=EVENT_DEADLINE, what="app reload")
        assert "API_KEY" in app_reloads(app)[0]

        # A burst of 50 updates: debounced into a few fetches, the last value wins.
        await wait_for(lambda: settled(port, 1), what="the first change's fetches done")
        assert agent_fetches(kms) - before == 1, "one event, one fetch"
        before, reloads = agent_fetches(kms), len(app_reloads(app))
        for i in range(50):
            await api.update("API_KEY", f"VALUE-api-burst-{i}")
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-api-burst-49", timeout=EVENT_DEADLINE, what="last burst value")
        await wait_for(lambda: settled(port, 51), what="every burst event received and its fetches done")
        fetches = agent_fetches(kms) - before
        assert 1 <= fetches <= 4, fetches
        assert 1 <= len(app_reloads(app)) - reloads <= 4
        assert read_folder(mount)["API_KEY"] == "VALUE-api-burst-49"
        logs = agent.stderr() + app.stdout()
        assert "VALUE-api" not in logs and CHAT["DATABASE_URL"] not in logs
    finally:
        await api.close()
        app.stop()
        if agent is not None:
            agent.stop()


async def test_cut_stream_and_server_restart_reconnect(kms, tmp_path: Path) -> None:
    mount = tmp_path / "secrets"
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    agent = await start(kms, tmp_path)
    api = Api(kms.base_url)
    try:
        await wait_for(lambda: agent.events("events_connected"), what="event stream connected")
        # 1. The server drops the stream mid-way: the agent reconnects and events flow again.
        await wait_for(lambda: kms.state.drop_event_streams() == 1, what="a stream to drop")
        await wait_for(lambda: len(agent.events("events_connected")) >= 2, timeout=20, what="reconnect after a drop")
        assert agent.events("events_disconnected")
        await api.update("API_KEY", "VALUE-after-drop")
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-after-drop", timeout=EVENT_DEADLINE,
                       what="event after reconnect")

        # 2. The whole KMS goes away and comes back on the same port: reconnect with backoff,
        #    and a change made while it was down arrives without waiting for the poll.
        disconnected = len(agent.events("events_disconnected"))
        await kms.stop()
        kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-during-outage")
        await wait_for(lambda: len(agent.events("events_disconnected")) > disconnected, timeout=30,
                       what="the agent to notice the outage")
        connected = len(agent.events("events_connected"))
        await kms.start()
        # Backoff is capped (30 s for the stream): the catch-up comes far below the 60 s interval.
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-during-outage", timeout=40, what="catch-up after restart")
        await wait_for(lambda: len(agent.events("events_connected")) > connected, timeout=40, what="reconnect after restart")
        await wait_for(lambda: kms.stats()["eventStreams"].get(IDENTITY) == 1, what="stream registered again")
        await api.update("JWT_SECRET", "VALUE-after-restart")
        await wait_for(lambda: (mount / "JWT_SECRET").read_text() == "VALUE-after-restart", timeout=EVENT_DEADLINE,
                       what="event after restart")
        assert kms.stats()["eventStreams"].get(IDENTITY) == 1  # one stream, not a pile of them
    finally:
        await api.close()
        agent.stop()


async def test_event_metrics_on_the_health_port(kms, tmp_path: Path) -> None:
    mount = tmp_path / "secrets"
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    port = free_port()
    agent = await start(kms, tmp_path, "--health-port", str(port))
    api = Api(kms.base_url)

    async def value(name: str) -> float:
        return metric(await metrics(port), f"kms_agent_{name}")

    async def at_least(name: str, n: float) -> bool:
        return await value(name) >= n

    async def equals(name: str, n: float) -> bool:
        return await value(name) == n

    try:
        await wait_for(lambda: agent.events("health_listening"), what="health server")
        await wait_for(lambda: at_least("events_connected", 1), what="events_connected 1")
        await wait_for(lambda: kms.stats()["eventStreams"].get(IDENTITY) == 1, what="stream registered on the server")
        await wait_for(lambda: at_least("event_wakeups_total", 1), what="the connect's resync wake-up")
        body = await metrics(port)
        assert "# TYPE kms_agent_events_connected gauge" in body
        assert "# TYPE kms_agent_events_received_total counter" in body
        assert metric(body, "kms_agent_events_received_total") == 0
        assert metric(body, "kms_agent_events_reconnects_total") == 0
        assert metric(body, "kms_agent_auth_logins_total") >= 1
        assert metric(body, "kms_agent_auth_renewals_total") >= 0
        wakeups = metric(body, "kms_agent_event_wakeups_total")

        # One change through the API: one matching event, one (debounced) early fetch.
        await api.update("API_KEY", "VALUE-metrics-1")
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-metrics-1", timeout=EVENT_DEADLINE, what="event-driven update")
        await wait_for(lambda: at_least("events_received_total", 1), timeout=20, what="received counted")
        await wait_for(lambda: at_least("event_wakeups_total", wakeups + 1), timeout=20, what="wake-up counted")

        # The KMS goes away and comes back on the same port: disconnected, then one more connection.
        await kms.stop()
        await wait_for(lambda: equals("events_connected", 0), timeout=20, what="events_connected 0 while KMS is down")
        assert await value("events_reconnects_total") == 0
        await kms.start()
        await wait_for(lambda: at_least("events_reconnects_total", 1), timeout=30, what="reconnect counted")
        await wait_for(lambda: at_least("events_connected", 1), timeout=30, what="events_connected 1 again")
        body = await metrics(port)
        for secret in ("VALUE-metrics", "API_KEY", CHAT["DATABASE_URL"], CLIENT_SECRET, api.token):
            assert secret not in body
    finally:
        await api.close()
        agent.stop()


async def test_server_without_events_falls_back_to_polling(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), events=False) as kms:
        mount = tmp_path / "secrets"
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        agent = await start(kms, tmp_path, interval=5)
        try:
            await wait_for(lambda: agent.events("events_unsupported"), what="events unsupported logged")
            subscribes = kms.stats()["routes"].get(SUBSCRIBE, 0)
            assert subscribes == 1  # asked once, then polling only
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-polled")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-polled", timeout=5 * 1.1 + 10, what="polled update")
            assert kms.stats()["routes"].get(SUBSCRIBE, 0) == 1
            assert not agent.events("events_disconnected")
        finally:
            agent.stop()


async def test_events_off_by_flag_never_subscribes(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    agent = await start(kms, tmp_path, "--no-events", interval=5)
    try:
        await wait_for(lambda: agent.events("events_disabled"), what="events disabled logged")
        await wait_for(lambda: agent_fetches(kms) >= 2, timeout=20, what="a poll")
        assert kms.stats()["routes"].get(SUBSCRIBE, 0) == 0
    finally:
        agent.stop()


# ---- the pure parts -----------------------------------------------------------------------------

def test_sse_parser_handles_comments_multiline_data_and_event_names() -> None:
    p = SseParser()
    out = [p.feed(line) for line in [": connected", "", "id: 1", "event: message", 'data: {"a":', "data: 1}", "",
                                     "retry: 3000", ": ping", "", "data:x", ""]]
    msgs = [m for m in out if m is not None]
    assert [(m.event, m.data, m.id) for m in msgs] == [("message", '{"a":\n1}', "1"), ("message", "x", "1")]
    assert p.retry_ms == 3000


def test_match_event_filters_env_and_folder() -> None:
    def ev(event: str, env: str, path: str) -> dict:
        return {"projectType": "secret-manager", "data": {"eventType": event, "payload": [
            {"environment": env, "secretPath": path, "secretKey": "K"}]}}

    paths = ["/chat", "/billing/"]
    hit = match_event(ev("secret:update", "prod", "/chat"), "prod", paths)
    assert hit is not None and hit.secret_path == "/chat" and hit.keys == ("K",)
    assert match_event(ev("secret:delete", "prod", "/billing"), "prod", paths) is not None
    assert match_event(ev("secret:update", "dev", "/chat"), "prod", paths) is None
    assert match_event(ev("secret:update", "prod", "/chat/sub"), "prod", paths) is None
    assert match_event(ev("secret:import-mutation", "prod", "/shared"), "prod", paths) is not None
    assert match_event(ev("secret:rotate-the-moon", "prod", "/chat"), "prod", paths) is None
    assert match_event({"data": {"eventType": "secret:create"}}, "prod", paths) is not None  # no payload: fetch
    assert match_event("nonsense", "prod", paths) is None
    reg = registrations("prod", paths)
    assert {(r["event"], r["conditions"]["secretPath"]) for r in reg} == {
        (e, p) for e in ("secret:create", "secret:update", "secret:delete", "secret:import-mutation") for p in ("/chat", "/billing")}


async def test_debouncer_coalesces_a_burst_and_caps_the_wait() -> None:
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    d = Debouncer(lambda reason: fired.append(loop.time()), quiet=0.1, max_wait=0.4)
    task = asyncio.create_task(d.run())
    try:
        t0 = loop.time()
        for _ in range(30):  # a steady stream, every 30 ms, for ~0.9 s: max_wait forces fetches
            d.poke("event")
            await asyncio.sleep(0.03)
        await wait_for(lambda: loop.time() - d._last > 0.3 and not d._pending.is_set(), timeout=10, what="burst done")
        assert 2 <= d.fired <= 6, d.fired  # leading + one per max_wait + trailing; never 30
        assert fired[0] - t0 < 0.05  # the first event of a burst is not delayed
        n = d.fired
        t1 = loop.time()
        d.poke("one more")  # a lone event: fetched at once (leading edge), nothing held back
        assert d.fired == n + 1 and fired[-1] - t1 < 0.05 and not d._pending.is_set()
        d.poke("right after")  # within the quiet window: held back, then fired after it
        assert d.fired == n + 1
        await wait_for(lambda: d.fired == n + 2, timeout=10, what="held-back event fired")
        assert fired[-1] - t1 >= 0.09
    finally:
        task.cancel()
