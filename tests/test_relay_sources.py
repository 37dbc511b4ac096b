"""Where the relay learns of a change: the KMS event stream when it works (one per project, not per
pod or folder), else polls; a server that sends values although asked for none (older Infisical
ignores viewSecretValue=false) is digested and its values dropped, or, with --read-values false,
left to the agents' own polling."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from aiohttp import web

from tests.agent_support import serve_app, wait_for
from tests.test_relay import (RelayHarness, metric_value, relay_env, relay_environment,  # noqa: F401 (fixture)
                              stop_subscribers, subscribe)


@pytest.fixture
async def relay_with_events(tmp_path: Path):
    async with relay_environment(tmp_path, events=True) as relay:
        yield relay


async def test_event_stream_one_per_project_makes_notices_faster_than_the_poll(relay_with_events: RelayHarness) -> None:
    relay = relay_with_events
    # polls far apart: a notice within seconds can only come from the event stream
    relay.start("--poll-interval", "60", "--safety-interval", "60")
    await relay.wait_ready()
    token = relay.kube.token_for("shop", "shop")
    subs = [subscribe(relay, f"s{i}", token, ("/shared",) if i % 2 else ("/restricted",)) for i in range(6)]
    try:
        await wait_for(lambda: all(s.state.healthy for s in subs), 30, "subscribed")
        await wait_for(lambda: relay.kms.state.stats()["eventStreams"].get("svc") == 1, 20, "the relay's event stream")
        relay.kms.rotate("/restricted")
        await wait_for(lambda: all(s.changes() == ["relay: /restricted"] for s in subs if s.paths == ("/restricted",)),
                       15, "notified through the event stream")
        assert not any(s.changes() for s in subs if s.paths == ("/shared",))
        # two folders, six subscribers, one stream
        assert relay.kms.state.stats()["eventStreams"] == {"svc": 1}
        _, text = await relay.get("/metrics")
        assert metric_value(text, 'kms_relay_event_streams{state="connected"}') == 1
    finally:
        await stop_subscribers(subs)


async def test_without_events_the_relay_polls_and_says_so(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    sub = subscribe(relay, "a", relay.kube.token_for("shop", "shop"), ("/shared",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "subscribed")
        await wait_for(lambda: relay.proc is not None and relay.proc.events("events_unsupported"), 20, "events_unsupported")
        assert relay.kms.state.stats()["eventStreams"] == {}
        relay.kms.rotate("/shared")
        await wait_for(lambda: sub.changes() == ["relay: /shared"], 20, "notified by polling")
    finally:
        await stop_subscribers([sub])


class OldInfisical:
    """An older Infisical-API server: it ignores viewSecretValue=false and sends values (with an
    ETag and 304s, as every version does)."""

    def __init__(self) -> None:
        self.value = "old-server-value-" + secrets.token_hex(6)
        self.version = 1
        self.view_flags: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()

        async def login(request: web.Request) -> web.Response:
            return web.json_response({"accessToken": "old-server-token", "expiresIn": 7200, "accessTokenMaxTTL": 7200,
                                      "tokenType": "Bearer"})

        async def secrets_raw(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != "Bearer old-server-token":
                return web.json_response({"statusCode": 401, "message": "no", "error": "UnauthorizedError"}, status=401)
            self.view_flags.append(request.query.get("viewSecretValue", ""))
            body = json.dumps({"secrets": [{"id": "1", "_id": "1", "workspace": "w", "environment": "prod",
                                            "version": self.version, "type": "shared", "secretKey": "DB_PASSWORD",
                                            "secretValue": self.value, "secretComment": ""}], "imports": []}).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

        app.router.add_post("/api/v1/auth/universal-auth/login", login)
        app.router.add_get("/api/v3/secrets/raw", secrets_raw)
        return app

    def rotate(self) -> None:
        self.value = "old-server-value-" + secrets.token_hex(6)
        self.version += 1


@pytest.mark.parametrize("read_values", [True, False])
async def test_a_server_that_sends_values_anyway(relay_env: RelayHarness, read_values: bool) -> None:
    relay = relay_env
    old = OldInfisical()
    runner, port = await serve_app(old.app())
    old_host = f"http://127.0.0.1:{port}/api"
    settings = relay.tmp / "settings.yaml"
    settings.write_text(settings.read_text().replace("env: prod\n", f"env: prod\nallowed_hosts: [{old_host}]\n"))
    relay.start("--read-values", str(read_values).lower(), "--events", "false")
    await relay.wait_ready()
    sub = subscribe(relay, "old", relay.kube.token_for("shop", "shop"), ("/shared",), host=old_host)
    state, cfg = sub.state, sub.config
    seen = [old.value]
    try:
        await wait_for(lambda: state.connected, 30, "subscribed")
        if not read_values:
            assert state.watched == {"/shared": False} and not state.healthy  # the agent keeps its own poll
            assert state.poll_factor(cfg) == 1.0
            n = len(old.view_flags)
            assert n <= 1  # one look, then left alone (retried only every UNWATCHED_RETRY)
            old.rotate()
            seen.append(old.value)
        else:
            assert state.healthy
            for _ in range(2):
                old.rotate()
                seen.append(old.value)
                before = state.notices
                await wait_for(lambda: state.notices > before, 20, "notified")
        _, text = await relay.get("/metrics")
        assert metric_value(text, "kms_relay_value_answers_total") >= 1
        assert all(f == "false" for f in old.view_flags)  # it asked for none, every time
    finally:
        await stop_subscribers([sub])
        await runner.cleanup()
    relay.stop()
    output = relay.all_output() + text + json.dumps(sub.log.records)
    for v in seen:
        assert v not in output
    if not read_values:
        assert relay.proc is not None and relay.proc.events("folder_unwatched")
