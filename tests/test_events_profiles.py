"""Change events against the dev KMS profiles of the real Infisical servers: a newer upstream with
the real stream (events, `event: ping`, prefix matching, the project id, the plan and permission
gates), Hanzo's Node fork (a stub route answering 422) and the recorded upstream (no route: 404).
The real agent is a subprocess; the dev KMS runs in-process over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkms import run_dev_kms
from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, IDENTITY, PROJECT, agent_args, seed, spawn, wait_for, write_credentials,
)

SUBSCRIBE = "POST /v1/events/subscribe/project-events"
LONG = "60s"  # poll interval: only an event explains a change within seconds


def subscribes(kms) -> int:
    """Subscribe requests answered (a server without the route counts it as an unmatched POST;
    a stream is counted when it ends, so an open one is seen in eventStreams instead)."""
    routes = kms.stats()["routes"]
    return routes.get(SUBSCRIBE, 0) + routes.get("POST unmatched", 0)


async def test_the_real_stream_delivers_a_change_long_before_the_poll(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), profile="infisical-events", event_heartbeat=0.5) as kms:
        mount = tmp_path / "secrets"
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", LONG,
                                 paths=("/chat", "billing=/billing", "shared=/shared")), tmp_path, "sidecar")
        try:
            await wait_for(lambda: agent.events("events_connected"), what="stream connected (3 folders: 4 registrations)")
            await wait_for(lambda: kms.stats()["eventStreams"].get(IDENTITY) == 1, what="stream registered")
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-live-event")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-live-event", timeout=20, what="event-driven update")
            assert len(agent.events("events_connected")) == 1 and not agent.events("events_unsupported")
            # A change in a folder we do not read, under our prefix: matched by the server, ignored here.
            lists = kms.stats()["identityRoutes"][IDENTITY].get("GET /v3/secrets/raw", 0)
            kms.set_secret(PROJECT, ENV, "/chatbot", "OTHER", "VALUE-other-folder")
            kms.set_secret(PROJECT, ENV, "/billing", "STRIPE_KEY", "VALUE-live-billing")
            await wait_for(lambda: (mount / "billing" / "STRIPE_KEY").read_text() == "VALUE-live-billing", timeout=20, what="2nd event")
            assert kms.stats()["identityRoutes"][IDENTITY]["GET /v3/secrets/raw"] - lists <= 3 * 2  # one sync (3 folders), maybe two
            assert "VALUE-live" not in agent.stderr() and CHAT["API_KEY"] not in agent.stderr()
        finally:
            agent.stop()


@pytest.mark.parametrize("profile, options, status", [
    ("hanzo-node", {}, "422"),  # the fork's stub schema refuses the upstream body
    ("infisical-recorded", {}, "404"),  # no events route in that version
    ("infisical-events", {"events_on_plan": False}, "400"),  # not on the plan
    ("infisical-events", {"events_permitted": False}, "403"),  # no secret-events permission
])
async def test_events_not_available_polling_delivers(tmp_path: Path, profile: str, options: dict, status: str) -> None:
    async with run_dev_kms(seed(), profile=profile, **options) as kms:
        mount = tmp_path / "secrets"
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s"), tmp_path, "sidecar")
        try:
            await wait_for(lambda: agent.events("events_unsupported"), what="events not available, said once")
            told = agent.events("events_unsupported")
            assert len(told) == 1 and status in told[0]["reason"] and told[0]["probe_again_in"] >= 600, told
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-polled-rotation")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-polled-rotation", timeout=30, what="polled rotation")
            assert subscribes(kms) == 1  # asked once; the next probe is minutes away
            assert not agent.events("events_disconnected")
        finally:
            agent.stop()


async def test_the_servers_stream_close_is_followed_by_a_reconnect_and_events_flow(tmp_path: Path) -> None:
    # The real server closes each stream after an hour; here after 2 s (event_max_seconds).
    async with run_dev_kms(seed(), profile="infisical-events", event_heartbeat=0.5, event_max_seconds=2) as kms:
        mount = tmp_path / "secrets"
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", LONG), tmp_path, "sidecar")
        try:
            await wait_for(lambda: len(agent.events("events_connected")) >= 1, what="connected")
            await wait_for(lambda: kms.stats()["routes"].get(SUBSCRIBE, 0) >= 2, timeout=30, what="two closed streams")
            await wait_for(lambda: kms.stats()["eventStreams"].get(IDENTITY) == 1, timeout=30, what="a stream open again")
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-after-close")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-after-close", timeout=30, what="the change, after reconnects (event or the reconnect resync)")
            assert not agent.events("events_unsupported")
        finally:
            agent.stop()
