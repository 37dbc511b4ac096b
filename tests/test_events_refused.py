"""Change events refused the ways the real servers refuse them (shared/kms-api.md, "Change
events"): the plan gate (400), a missing permission (403), no route (404), 405, Hanzo's stub route
(422), 501, repeated 5xx, too many streams (429), a token the stream refuses (401). Each time the
real agent (a subprocess) says so once, polls, and still delivers a rotation; its subscribe
attempts stay bounded. The KMS here is a small real aiohttp server on 127.0.0.1 that refuses the
stream and serves the secrets, so every refusal is exactly the one named."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from injector.kms.auth import UniversalAuthFiles
from injector.kms.client import KmsClient
from injector.kms.event_protocol import MAX_REGISTRATIONS, common_prefix, match_event, registrations
from injector.kms.events import EventSubscriber, SubscribePolicy
from injector.log import Logger
from tests.agent_support import (
    CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, agent_args, read_folder, serve_app, spawn, wait_for, write_credentials,
)

PROJECT_ID = "bc7c8033-386f-401d-bebc-51314dcc6a6d"
SUBSCRIBE = "/api/v1/events/subscribe/project-events"


class RefusingKms:
    """Login, list (one rotating key) and a subscribe route that refuses with `status`."""

    def __init__(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body or {"statusCode": status, "message": "no", "error": "X"}, headers or {}
        self.value = "VALUE-refused-1"
        self.logins = 0
        self.lists = 0
        self.subscribes: list[dict[str, Any]] = []
        self.tokens: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/status", self.status_route)
        app.router.add_post("/api/v1/auth/universal-auth/login", self.login)
        app.router.add_get("/api/v3/secrets/raw", self.list)
        app.router.add_post(SUBSCRIBE, self.subscribe)
        return app

    async def status_route(self, request: web.Request) -> web.Response:
        return web.json_response({"date": "2026-12-01T00:00:00Z", "message": "Ok"})

    async def login(self, request: web.Request) -> web.Response:
        self.logins += 1
        token = f"tok-refused-{self.logins}-abcdef"
        self.tokens.append(token)
        return web.json_response({"accessToken": token, "expiresIn": 3600, "accessTokenMaxTTL": 7200, "tokenType": "Bearer"})

    async def list(self, request: web.Request) -> web.Response:
        self.lists += 1
        return web.json_response({"secrets": [{"secretKey": "API_KEY", "secretValue": self.value, "workspace": PROJECT_ID,
                                               "version": 1, "type": "shared"}], "imports": []})

    async def subscribe(self, request: web.Request) -> web.Response:
        self.subscribes.append(await request.json())
        return web.json_response(self.body, status=self.status, headers=self.headers)


REFUSALS = [
    pytest.param(400, {"statusCode": 400, "message": "Failed to subscribe: event subscriptions are not available on your current plan",
                       "error": "BadRequest"}, {}, 1, id="400-plan"),
    pytest.param(403, {"statusCode": 403, "message": "You are not allowed to subscribe on secret-events",
                       "error": "PermissionDenied"}, {}, 1, id="403-permission"),
    pytest.param(404, {"message": "Route POST:/api/v1/events/subscribe/project-events not found", "error": "Not Found",
                       "statusCode": 404}, {}, 1, id="404-no-route"),
    pytest.param(405, {"statusCode": 405, "message": "Method Not Allowed"}, {}, 1, id="405"),
    pytest.param(422, {"statusCode": 422, "message": [{"path": ["eventType"], "message": "Required"}],
                       "error": "ValidationFailure"}, {}, 1, id="422-hanzo-stub"),
    pytest.param(501, {"statusCode": 501, "message": "Not Implemented"}, {}, 1, id="501"),
    pytest.param(429, {"statusCode": 429, "message": "Rate limit exceeded. Please try again in 1 seconds"},
                 {"Retry-After": "1"}, 1, id="429-streams"),
    pytest.param(503, {"statusCode": 503, "message": "Service Unavailable"}, {}, 3, id="5xx-repeated"),
    pytest.param(401, {"statusCode": 401, "message": "Token missing", "error": "UnauthorizedError"}, {}, 3, id="401-stream"),
]


@pytest.mark.parametrize("status, body, headers, attempts", REFUSALS)
async def test_refused_events_are_told_once_polling_delivers_and_attempts_stay_bounded(
        tmp_path: Path, status: int, body: dict, headers: dict, attempts: int) -> None:
    kms = RefusingKms(status, body, headers)
    runner, port = await serve_app(kms.app())
    mount = tmp_path / "secrets"
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    agent = spawn(agent_args(f"http://127.0.0.1:{port}/api", mount, tmp_path / "auth", "--refresh-interval", "5s"),
                  tmp_path, "sidecar")
    try:
        await wait_for(lambda: (mount / "API_KEY").exists(), what="first sync")
        if status == 429:
            await wait_for(lambda: agent.events("events_disconnected"), what="429 logged")
        else:
            await wait_for(lambda: agent.events("events_unsupported"), timeout=30, what="events not available, logged")
        await wait_for(lambda: len(kms.subscribes) >= attempts, what="the refused attempts")
        kms.value = "VALUE-refused-2"
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-refused-2", timeout=30, what="rotation by polling")
        lists = kms.lists
        await wait_for(lambda: kms.lists >= lists + 1, timeout=30, what="one more poll")
        assert len(kms.subscribes) == attempts, (status, len(kms.subscribes))  # bounded: no reconnect loop
        unsupported = agent.events("events_unsupported")
        if status == 429:
            assert not unsupported  # 429 is "not now", not "never": a long wait, then again
            assert agent.events("events_disconnected")[0]["retry_in"] >= 240  # >= 5 min (jitter's low end)
        else:
            assert len(unsupported) == 1, unsupported  # said once
            assert unsupported[0]["action"] == "polling only" and unsupported[0]["probe_again_in"] >= 600
            assert str(status) in unsupported[0]["reason"]
        for sent in kms.subscribes:  # the real body: the project's id, 1..10 registrations
            assert sent["projectId"] == PROJECT_ID
            assert 1 <= len(sent["register"]) <= MAX_REGISTRATIONS
            assert {r["conditions"]["environmentSlug"] for r in sent["register"]} == {ENV}
        if status == 401:
            assert kms.logins <= 1 + attempts  # each refusal drops that token only: one fresh login each
        assert read_folder(mount) == {"API_KEY": "VALUE-refused-2"}
        logs = agent.stderr()
        assert "VALUE-refused" not in logs and CLIENT_SECRET not in logs and "tok-refused" not in logs
    finally:
        agent.stop()
        await runner.cleanup()


async def test_subscribe_attempts_per_hour_against_a_server_that_always_refuses(tmp_path: Path) -> None:
    """The policy on a short clock (every wait / 1800): the attempts counted in the window stay
    under the bound attempts_per_hour() states, for a 4xx refusal and for repeated 5xx."""
    scale = 1 / 1800
    policy = SubscribePolicy(unavailable_retry=900 * scale, rate_limited_floor=300 * scale, backoff_base=0.01,
                             backoff_cap=0.05, project_id_wait=0.01)
    assert SubscribePolicy().attempts_per_hour() == 15.0  # the defaults: <= 15 requests an hour, worst case
    write_credentials(tmp_path, CLIENT_ID, CLIENT_SECRET)
    for status, per_round in ((422, 1), (503, 3)):
        kms = RefusingKms(status)
        runner, port = await serve_app(kms.app())
        try:
            async with KmsClient(f"http://127.0.0.1:{port}/api", UniversalAuthFiles(str(tmp_path))) as client:
                await client.fetch(PROJECT, ENV, "/chat")  # learns the project id
                out = __import__("io").StringIO()
                sub = EventSubscriber(client, PROJECT, ENV, ["/chat"], logger=Logger("t", out, level="debug"), policy=policy)
                task = asyncio.create_task(sub.run(lambda ev: None))
                window = 4.0  # = 2 hours on the real clock
                await asyncio.sleep(window)  # the measurement window itself, not a wait for a condition
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            bound = policy.attempts_per_hour() * window / 3600 / scale + per_round  # + the first round
            assert per_round * 2 <= sub.attempts <= bound, (status, sub.attempts, bound)
            assert sub.attempts == len(kms.subscribes)
            lines = [json.loads(x) for x in out.getvalue().splitlines()]
            assert sum(1 for x in lines if x["event"] == "events_unsupported") == 1  # told once, not per probe
        finally:
            await runner.cleanup()


def test_registrations_fit_the_servers_limit_and_match_by_prefix() -> None:
    assert len(registrations("prod", ["/chat", "/billing"])) == 8
    many = registrations("prod", ["/svc/chat", "/svc/billing", "/svc/commerce/eu"])
    assert len(many) == 4 and {r["conditions"]["secretPath"] for r in many} == {"/svc"}
    assert common_prefix(["/chat", "/billing", "/x"]) == "/" and common_prefix(["/a/b", "/a/b"]) == "/a/b"
    assert all(1 <= len(registrations("prod", [f"/f{i}" for i in range(n)])) <= MAX_REGISTRATIONS for n in range(1, 20))


def test_match_event_reads_the_real_servers_shape() -> None:
    """`data:` as upstream sends it: {"type": "secret-manager", "data": {"eventType", "payload":
    [{"environment", "secretPath", "secretKeys"}]}}; import mutations carry an object payload."""
    def ev(event: str, path: str, env: str = "prod", payload: Any = None) -> dict:
        item = {"environment": env, "secretPath": path, "secretKeys": "API_KEY"}
        return {"type": "secret-manager", "data": {"eventType": event, "payload": [item] if payload is None else payload}}

    paths = ["/chat", "/billing"]
    hit = match_event(ev("secret:update", "/chat"), "prod", paths)
    assert hit is not None and hit.keys == ("API_KEY",) and hit.secret_path == "/chat"
    assert match_event(ev("secret:update", "/chatbot"), "prod", paths) is None  # the server's prefix match, filtered here
    assert match_event(ev("secret:update", "/chat/sub"), "prod", paths) is None
    assert match_event(ev("secret:create", "/chat", env="dev"), "prod", paths) is None
    imported = ev("secret:import-mutation", "/shared", payload={"environment": "prod", "secretPath": "/shared"})
    assert match_event(imported, "prod", paths) is not None
