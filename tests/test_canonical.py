"""The canonical KMS API backend end to end: `kms-injector dev-server --profile canonical` (Hanzo's
Go server, current surface, at the host root) as a real process, the real agent (init + sidecar)
against it, a rotation; `api: auto` detects it once and says so in the log; explicit
`api: canonical` needs no detection. Go servers have no folder imports: a folder is its own keys."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, SHARED, agent_args, read_folder, seed, serve_app, spawn, wait_for, write_credentials,
)

CANON_LIST = "GET /v1/kms/secrets"
CANON_GET = "GET /v1/kms/secrets/{rest}"
CANON_LOGIN = "POST /v1/kms/auth/login"


def hook(base_url: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base_url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def start_canonical(dev_server_process, tmp: Path):
    seed_file = tmp / "seed.json"  # JSON is YAML
    seed_file.write_text(json.dumps(seed()))
    return dev_server_process("--seed", str(seed_file), "--profile", "canonical", "--test-hooks")


def api_env(api: str) -> dict[str, str]:
    return {"KMS_AGENT_CONFIG": json.dumps({"api": api})}


async def test_auto_detects_canonical_init_sidecar_and_rotation(dev_server_process, tmp_path: Path) -> None:
    srv = start_canonical(dev_server_process, tmp_path)
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount = tmp_path / "secrets"
    init = spawn(agent_args(srv.base_url, mount, tmp_path / "auth", mode="init", paths=("/chat", "billing=/billing")),
                 tmp_path, "init")  # api defaults to auto
    assert await init.wait_exit() == 0, init.stderr()
    from tests.agent_support import BILLING

    assert read_folder(mount) == {**CHAT, **{f"billing/{k}": v for k, v in BILLING.items()}}
    detected = init.events("kms_api_detected")
    assert [d["api"] for d in detected] == ["canonical"], init.stderr()

    hook(srv.base_url, "DELETE", "/_dev/stats")
    agent = spawn(agent_args(srv.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s",
                             paths=("/chat", "billing=/billing")), tmp_path, "sidecar")
    try:
        await wait_for(lambda: agent.events("first_sync"), what="sidecar first sync")
        assert agent.events("first_sync")[0]["changed"] is False  # same content as init wrote
        assert [d["api"] for d in agent.events("kms_api_detected")] == ["canonical"]
        await wait_for(lambda: agent.events("events_unsupported"), what="no events on the canonical API")

        hook(srv.base_url, "PUT", "/_dev/secrets", {"project": PROJECT, "environment": ENV, "path": "/chat",
                                                      "key": "API_KEY", "value": "VALUE-canonical-rotated"})
        # (a second key first: a folder that suddenly lists nothing fails closed and keeps the files)
        hook(srv.base_url, "PUT", "/_dev/secrets", {"project": PROJECT, "environment": ENV, "path": "/billing",
                                                      "key": "PLAN", "value": "VALUE-plan"})
        hook(srv.base_url, "DELETE", "/_dev/secrets", {"project": PROJECT, "environment": ENV, "path": "/billing",
                                                         "key": "STRIPE_KEY"})
        await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-canonical-rotated", timeout=30, what="rotation")
        await wait_for(lambda: not (mount / "billing" / "STRIPE_KEY").exists(), timeout=30, what="deleted key gone")
        stats = hook(srv.base_url, "GET", "/_dev/stats")
        assert stats["routes"].get(CANON_LOGIN) == 1  # detected once, one login; no per-request re-detection
        assert stats["routes"].get(CANON_LIST, 0) >= 4 and stats["routes"].get(CANON_GET, 0) >= 4
        assert "POST /v1/auth/token/renew" not in stats["routes"]
        assert len(agent.events("kms_api_detected")) == 1
        changes = [e for e in agent.events("sync_failing")]
        assert not changes, changes
        logs = init.stderr() + agent.stderr() + srv.stderr()
        assert "VALUE-" not in logs and CLIENT_SECRET not in logs
    finally:
        agent.stop()


async def test_explicit_canonical_and_typed_errors(dev_server_process, tmp_path: Path) -> None:
    srv = start_canonical(dev_server_process, tmp_path)
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    init = spawn(agent_args(srv.base_url, tmp_path / "secrets", tmp_path / "auth", mode="init"), tmp_path, "init",
                 env=api_env("canonical"))
    assert await init.wait_exit() == 0, init.stderr()
    assert read_folder(tmp_path / "secrets") == CHAT
    assert not init.events("kms_api_detected")  # configured, not detected

    # A folder that does not exist (the server lists nothing for it): init fails with one line
    # naming host, project, path and saying the folder is empty or does not exist.
    bad = spawn(agent_args(srv.base_url, tmp_path / "other", tmp_path / "auth", "--init-timeout", "2s", mode="init",
                           paths=("/nope",)), tmp_path, "bad", env=api_env("canonical"))
    assert await bad.wait_exit() == 1
    line = [ln for ln in bad.stderr().splitlines() if ln.startswith("kms-agent: init failed")]
    assert line and "empty or does not exist" in line[0] and "path=/nope" in line[0] and srv.base_url in line[0], bad.stderr()
    assert "kms.hanzo.ai/allow-empty" in line[0] and len(line) == 1
    assert not (tmp_path / "other" / "API_KEY").exists()

    # api: infisical against a canonical server: a clear 404 on the login path, no silent fallback.
    inf = spawn(agent_args(srv.base_url, tmp_path / "inf", tmp_path / "auth", "--init-timeout", "2s", mode="init"),
                tmp_path, "inf", env=api_env("infisical"))
    assert await inf.wait_exit() == 1
    assert "op=login" in inf.stderr() and "status=404" in inf.stderr()


async def test_client_canonical_backend_detects_once_hashes_and_relogs_in(tmp_path: Path) -> None:
    """The client alone (in-process dev KMS, real HTTP): typed errors, local ETag, re-login."""
    import asyncio
    import io

    from devkms import run_dev_kms
    from injector.kms import KmsClient
    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.errors import InvalidCredentials, NotFound
    from injector.log import Logger

    async with run_dev_kms(seed(), profile="canonical") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        out = io.StringIO()
        async with KmsClient(kms.base_url, UniversalAuthFiles(str(tmp_path / "auth")), api="auto", logger=Logger("t", out)) as c:
            chat, billing = await asyncio.gather(c.fetch(PROJECT, ENV, "/chat"), c.fetch(PROJECT, ENV, "/billing"))
            assert chat.secrets == CHAT and not chat.not_modified
            assert set(billing.secrets) == {"STRIPE_KEY"}
            assert c.api == "canonical" and out.getvalue().count('"event":"kms_api_detected"') == 1
            again = await c.fetch(PROJECT, ENV, "/chat", etag=chat.etag)
            assert again.not_modified and again.etag == chat.etag  # no ETag from the server: hashed here
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-new")
            changed = await c.fetch(PROJECT, ENV, "/chat", etag=chat.etag)
            assert not changed.not_modified and changed.secrets["API_KEY"] == "VALUE-new"
            kms.state.expire_tokens()  # 401 on the next read -> one fresh login, then it works
            assert (await c.fetch(PROJECT, ENV, "/chat")).secrets["API_KEY"] == "VALUE-new"
            assert kms.stats()["routes"][CANON_LOGIN] == 2
            try:
                await c.fetch(PROJECT, ENV, "/nope")
                raise AssertionError("a missing folder must raise")
            except NotFound as exc:  # EmptyFolder: the server lists nothing there
                assert "path=/nope" in str(exc) and "empty or does not exist" in str(exc)
        write_credentials(tmp_path / "bad", CLIENT_ID, "wrong-secret-123456")
        async with KmsClient(kms.base_url, UniversalAuthFiles(str(tmp_path / "bad")), api="canonical") as c:
            try:
                await c.fetch(PROJECT, ENV, "/chat")
                raise AssertionError("wrong credentials must raise")
            except InvalidCredentials as exc:
                assert "status=401" in str(exc) and "wrong-secret-123456" not in str(exc)
        assert "VALUE-" not in out.getvalue() and CLIENT_SECRET not in out.getvalue()


async def test_canonical_listing_with_a_lone_surrogate_name_skips_it_and_syncs_the_rest(tmp_path: Path) -> None:
    # JSON "\ud800" in a listing decodes to a lone surrogate: urllib's quote() cannot even encode it,
    # which used to fail the whole folder. It must be skipped (logged by name), the rest written.
    # A hand-written canonical KMS: the dev KMS cannot store such a key.
    from aiohttp import web

    from tests.reliability_support import assert_no_leaks

    values = {"GOOD": "good-canon-1", "ALSO_GOOD": "good-canon-2"}
    value_paths: list[str] = []

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "tok-canon-odd", "expiresIn": 3600, "tokenType": "Bearer"})

    async def names(request: web.Request) -> web.Response:
        return web.Response(text='{"names": ["GOOD", "BAD\\ud800", "ALSO_GOOD"]}', content_type="application/json")

    async def value(request: web.Request) -> web.Response:
        value_paths.append(request.path)
        name = request.match_info["name"]
        if name not in values:
            return web.json_response({"message": "secret not found"}, status=404)
        return web.json_response({"env": "prod", "name": name, "value": values[name]})

    app = web.Application()  # the current surface, at the host root
    app.router.add_post("/v1/kms/auth/login", login)
    app.router.add_get("/v1/kms/secrets", names)
    app.router.add_get("/v1/kms/secrets/odd/{name}", value)
    runner, port = await serve_app(app)
    mount = tmp_path / "secrets"
    try:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        init = spawn(agent_args(f"http://127.0.0.1:{port}/api", mount, tmp_path / "auth", "--api", "canonical",
                                "--init-timeout", "20s", mode="init", paths=("/odd",)), tmp_path, "init")
        rc = await init.wait_exit(timeout=60)
    finally:
        await runner.cleanup()
    assert rc == 0, init.stderr()[-2000:]
    assert read_folder(mount) == values
    assert sorted(value_paths) == [f"/v1/kms/secrets/odd/{n}" for n in ("ALSO_GOOD", "GOOD")]
    skipped = init.events("key_skipped")
    assert [r["key"] for r in skipped] == ["BAD\ud800"], skipped
    assert "UTF-8" in skipped[0]["reason"]
    assert not init.events("sync_failing"), init.stderr()[-2000:]
    assert_no_leaks({"init stderr": init.stderr()}, {"token": "tok-canon-odd", "client secret": CLIENT_SECRET})
