"""`kms-injector agent --mode sidecar` as a real subprocess: rotation, SIGHUP, outages,
credential rotation, health endpoints, SIGTERM. The dev KMS runs in-process on a real port."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from devkms.server import run_dev_kms
from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, IDENTITY, PROJECT, SHARED, agent_args, aget, app_reloads,
    free_port, init_then_app, metric, metrics, read_folder, seed, spawn, wait_for, write_credentials,
)

INTERVAL = 5.0  # the minimum refresh interval
LOGIN = "POST /v1/auth/universal-auth/login"


@pytest.fixture
async def kms():
    async with run_dev_kms(seed()) as server:
        yield server


def version(mount: Path) -> str:
    return os.readlink(mount / "..data")


async def start_sidecar(kms, tmp: Path, *extra: str, interval: float = INTERVAL, name: str = "sidecar"):
    port = free_port()
    agent = spawn(agent_args(kms.base_url, tmp / "secrets", tmp / "auth", "--refresh-interval", f"{interval:g}s",
                             "--health-port", str(port), *extra), tmp, name)
    return agent, port


async def test_rotation_delete_and_one_sighup_per_change(kms, tmp_path: Path) -> None:
    # As in a pod: the init container writes first, then the app starts, then the sidecar.
    mount, app, name = await init_then_app(kms.base_url, tmp_path)
    agent = None
    try:
        await wait_for(lambda: "app: loaded" in app.stdout(), what="app start")
        first_version = version(mount)
        agent, port = await start_sidecar(kms, tmp_path, "--signal", "SIGHUP", "--signal-process", name)
        await wait_for(lambda: agent.events("first_sync"), what="first sidecar sync")
        # Same content as init wrote: no write, no signal.
        assert agent.events("first_sync")[0]["changed"] is False
        assert version(mount) == first_version
        assert (await aget(f"http://127.0.0.1:{port}/readyz"))[0] == 200

        unchanged_before = metric(await metrics(port), "kms_agent_not_modified_total")
        kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-api-rotated-41")
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-api-rotated-41", what="rotated value")
        # The first poll after the rotation brought it: at most one 304 (a poll already in flight
        # when KMS changed) came in between, never a cycle that missed the change.
        assert metric(await metrics(port), "kms_agent_not_modified_total") - unchanged_before <= 1
        assert version(mount) != first_version
        await wait_for(lambda: len(app_reloads(app)) == 1, what="app reload")
        assert "(changed)" in app_reloads(app)[0] and "API_KEY" in app_reloads(app)[0]

        # Unchanged cycles cost a 304 each and signal nobody.
        body = await metrics(port)
        seen = metric(body, "kms_agent_not_modified_total")
        await wait_for(lambda: _metric_above(port, "kms_agent_not_modified_total", seen), timeout=20, what="a 304 cycle")
        assert len(app_reloads(app)) == 1

        kms.delete_secret(PROJECT, ENV, "/chat", "JWT_SECRET")
        await wait_for(lambda: not os.path.lexists(mount / "JWT_SECRET"), what="deleted key gone")
        await wait_for(lambda: len(app_reloads(app)) == 2, what="second reload")
        expected = {**SHARED, **CHAT, "API_KEY": "VALUE-api-rotated-41"}
        del expected["JWT_SECRET"]
        assert read_folder(mount) == expected

        body = await metrics(port)
        assert metric(body, "kms_agent_changes_total") == 2
        assert metric(body, "kms_agent_signals_total") == 2
        assert metric(body, "kms_agent_sync_failures_total") == 0
        assert metric(body, "kms_agent_ready") == 1
        assert metric(body, "kms_agent_last_success_timestamp_seconds") > time.time() - 60
        assert "VALUE-" not in body

        # SIGTERM: exit 0 at once (proc.wait's 10 s is far inside kubelet's 30 s grace; the
        # agent waits for nothing but a bounded close).
        agent.popen.send_signal(signal.SIGTERM)
        rc = await asyncio.get_running_loop().run_in_executor(None, agent.popen.wait, 10)
        assert rc == 0 and agent.events("stopping"), rc
        assert read_folder(mount) == expected  # the files outlive the agent
        logs = agent.stderr() + app.stdout()
        assert not any(v in logs for v in (*CHAT.values(), "VALUE-api-rotated-41"))
    finally:
        app.stop()
        if agent is not None:
            agent.stop()
    assert app.stdout().count("on SIGHUP") == 2


async def _metric_above(port: int, name: str, value: float) -> bool:
    return metric(await metrics(port), name) > value


async def test_outage_keeps_files_backs_off_and_catches_up(kms, tmp_path: Path) -> None:
    mount = tmp_path / "secrets"
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    agent, port = await start_sidecar(kms, tmp_path)
    try:
        await wait_for(lambda: agent.events("first_sync"), what="first sync")
        before, before_version = read_folder(mount), version(mount)

        await kms.stop()
        await wait_for(lambda: _metric_above(port, "kms_agent_sync_failures_total", 0), timeout=20, what="first failure")
        t_fail = time.monotonic()
        kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-api-during-outage")  # lands in KMS state only

        async def unchanged_through_failures() -> bool:  # the outage itself: files stay as they were
            assert read_folder(mount) == before and version(mount) == before_version
            return await _metric_above(port, "kms_agent_sync_failures_total", 3)

        await wait_for(unchanged_through_failures, timeout=60, what="four failed attempts", interval=0.2)
        body = await metrics(port)
        failures = metric(body, "kms_agent_sync_failures_total")
        elapsed = time.monotonic() - t_fail
        # Capped exponential backoff (0.5 s doubling, full jitter): attempt n waits uniform(0,
        # 0.5 * 2**n) on average half that, so four failures take seconds. A spinning agent
        # makes thousands; this bounds the attempts by what the elapsed time allows a fixed
        # 0.25 s retry, a bound a slow machine only makes easier to meet.
        assert 4 <= failures <= 5 + elapsed / 0.25, (failures, elapsed)
        assert metric(body, "kms_agent_healthy") == 0
        assert read_folder(mount) == before and version(mount) == before_version
        assert (await aget(f"http://127.0.0.1:{port}/readyz"))[0] == 200  # last good files still serve

        await kms.start()
        # Backoff is capped at the interval (5 s): the catch-up comes within a few of them.
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-api-during-outage", timeout=30, what="catch-up")
        await wait_for(lambda: agent.events("sync_recovered"), what="recovery logged")
        # State changes are logged, not every attempt.
        assert len(agent.events("sync_failing")) == 1
        assert len(agent.events("sync_recovered")) == 1
        assert agent.events("sync_recovered")[0]["failed_attempts"] >= failures
        assert metric(await metrics(port), "kms_agent_healthy") == 1
    finally:
        agent.stop()


async def test_replaced_credentials_lead_to_a_fresh_login(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    # A long interval: only the credentials watch can explain a prompt fetch.
    agent, port = await start_sidecar(kms, tmp_path, interval=300)
    try:
        await wait_for(lambda: agent.events("first_sync"), what="first sync")
        assert kms.stats()["routes"][LOGIN] == 1
        new_secret = "agent-test-secret-rotated-77aa"
        kms.state.identity(IDENTITY).client_secret = new_secret  # rotate in KMS: the old one stops working
        kms.state.expire_tokens(IDENTITY)
        write_credentials(tmp_path / "auth", CLIENT_ID, new_secret)  # kubelet's ..data swap
        await wait_for(lambda: agent.events("credentials_changed"), timeout=20, what="credentials change noticed")
        await wait_for(lambda: _metric_above(port, "kms_agent_syncs_total", 1), timeout=20, what="sync with new credentials")
        stats = kms.stats()
        # One fresh login with the new files; a second is possible when the expired token is
        # noticed (event stream or a sync) just before the files change. Never a refused login.
        assert stats["routes"][LOGIN] in (2, 3) and stats["statuses"].get("401", 0) == 0, stats
        assert not agent.events("sync_failing")
        assert new_secret not in agent.stderr() and CLIENT_SECRET not in agent.stderr()
    finally:
        agent.stop()


async def test_health_endpoints_and_fixing_wrong_credentials(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, "wrong-secret-0000")
    agent, port = await start_sidecar(kms, tmp_path, interval=300)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_for(lambda: _metric_above(port, "kms_agent_sync_failures_total", 0) if agent.events("health_listening") else False,
                       what="a failed sync")
        assert await aget(f"{url}/healthz") == (200, "ok\n")
        status, body = await aget(f"{url}/readyz")
        assert status == 503 and "no successful sync" in body
        assert (await aget(f"{url}/nope"))[0] == 404
        body = await metrics(port)
        assert "# TYPE kms_agent_syncs_total counter" in body
        assert metric(body, "kms_agent_ready") == 0 and metric(body, "kms_agent_syncs_total") == 0

        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)  # the Secret gets fixed
        await wait_for(lambda: _ready(url), timeout=20, what="ready after the credentials were fixed")
        assert read_folder(tmp_path / "secrets")["API_KEY"] == CHAT["API_KEY"]
        assert "wrong-secret-0000" not in agent.stderr()
    finally:
        agent.stop()


async def _ready(url: str) -> bool:
    return (await aget(f"{url}/readyz"))[0] == 200


async def test_rejected_credentials_are_not_retried_into_a_lockout(kms, tmp_path: Path) -> None:
    """KMS locks a shared identity after 3 wrong logins in a row: an agent whose Secret is wrong
    tries twice, then waits for the files to change instead of locking out every other pod."""
    write_credentials(tmp_path / "auth", CLIENT_ID, "wrong-secret-lockout-1111")
    agent, port = await start_sidecar(kms, tmp_path, interval=5)
    try:
        await wait_for(lambda: agent.events("credentials_rejected"), timeout=30, what="credentials parked")
        # Parked: the loop holds these credentials back (for AUTH_PARK, 600 s, or until the files
        # change), where a retry per interval (or per backoff) would reach the lockout.
        await wait_for(lambda: _metric_above(port, "kms_agent_credentials_parked", 0), timeout=20, what="parked state")
        body = await metrics(port)
        assert metric(body, "kms_agent_fetch_pending") == 0 and metric(body, "kms_agent_sync_failures_total") == 2
        assert agent.events("credentials_rejected")[0]["retry_in"] >= 300
        assert kms.stats()["statuses"].get("401", 0) == 2, kms.stats()
        assert kms.stats()["routes"][LOGIN] == 2
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)  # the Secret gets fixed
        await wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), timeout=20, what="ready after the fix")
        assert kms.stats()["routes"][LOGIN] == 3  # not locked: the right secret works at once
        assert metric(await metrics(port), "kms_agent_credentials_parked") == 0
        assert "wrong-secret-lockout-1111" not in agent.stderr()
    finally:
        agent.stop()
