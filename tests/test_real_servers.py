"""The real agent (a subprocess) against the dev KMS profiles that model the servers Hanzo really
runs (shared/kms-api.md; devkms/profiles.py): the canonical Go server's current surface, its older
surface and a server with no list route; Hanzo's Node fork and the recorded upstream Infisical.
Each test is one point of issue 10: host-root routes and both surfaces, the poll's cost, keys
from configuration, root-folder secrets, keys the server cannot address, fail closed on empty,
`${REF}` expansion, non-expiring and periodic tokens, `api: auto` after a 404 blip on login."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from devkms import run_dev_kms
from devkms.model import Fault
from tests.agent_support import (
    BILLING, CHAT, CLIENT_ID, CLIENT_SECRET, ENV, IDENTITY, PROJECT, agent_args, read_folder, seed, serve_app, spawn,
    wait_for, write_credentials,
)
from tests.reliability_support import assert_no_leaks

OLDER_LIST = "GET /v1/kms/orgs/{org}/secrets"
OLDER_GET = "GET /v1/kms/orgs/{org}/secrets/{rest}"
CURRENT_LIST = "GET /v1/kms/secrets"
CURRENT_GET = "GET /v1/kms/secrets/{rest}"


def config_env(**fields: Any) -> dict[str, str]:
    return {"KMS_AGENT_CONFIG": json.dumps(fields)}


def routes(kms: Any) -> dict[str, int]:
    return dict(kms.stats()["identityRoutes"].get(IDENTITY, {}))


def init_line(proc: Any) -> str:
    lines = [ln for ln in proc.stderr().splitlines() if ln.startswith("kms-agent: init failed")]
    assert len(lines) == 1, proc.stderr()[-3000:]
    return lines[0]


def seed_with(**folders: dict[str, Any]) -> dict[str, Any]:
    s = copy.deepcopy(seed())
    s["projects"][PROJECT]["environments"][ENV]["folders"].update(folders)
    return s


def no_leaks(*procs: Any, extra: dict[str, str] | None = None) -> None:
    logs = {f"proc{i}": p.stderr() + p.stdout() for i, p in enumerate(procs)}
    secrets = {"client secret": CLIENT_SECRET, **{k: v for k, v in CHAT.items()}, **(extra or {})}
    assert_no_leaks(logs, secrets)


# -- canonical: the older surface, and what a poll costs ---------------------------------------------

async def test_canonical_older_surface_init_sidecar_rotation_and_a_poll_reads_only_moved_keys(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), profile="canonical-older") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        mount = tmp_path / "secrets"
        init = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", mode="init", paths=("/chat", "billing=/billing")),
                     tmp_path, "init")
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        assert read_folder(mount) == {**CHAT, **{f"billing/{k}": v for k, v in BILLING.items()}}
        assert [d["api"] for d in init.events("kms_api_detected")] == ["canonical"]
        assert [s["surface"] for s in init.events("kms_canonical_surface")] == ["older"]  # current 404 -> older

        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s"), tmp_path, "sidecar")
        try:
            await wait_for(lambda: agent.events("first_sync"), what="sidecar first sync")
            await wait_for(lambda: routes(kms).get(OLDER_LIST, 0) >= 4, timeout=40, what="a few polls")  # init 2 + sidecar 2+
            before = routes(kms)
            await wait_for(lambda: routes(kms).get(OLDER_LIST, 0) >= before[OLDER_LIST] + 1, timeout=30, what="one more poll")
            after = routes(kms)
            # No change: a poll is one list and no read (every version is the one already read).
            assert after.get(OLDER_GET, 0) == before.get(OLDER_GET, 0), (before, after)
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-older-rotated")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-older-rotated", timeout=30, what="rotation")
            moved = routes(kms)
            assert moved[OLDER_GET] - after.get(OLDER_GET, 0) == 1, (after, moved)  # only the moved key is re-read
            assert not agent.events("sync_failing")
        finally:
            agent.stop()
        no_leaks(init, agent, extra={"rotated": "VALUE-older-rotated"})


async def test_canonical_current_surface_poll_costs_a_list_plus_every_value(tmp_path: Path) -> None:
    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.client import KmsClient

    async with run_dev_kms(seed(), profile="canonical") as kms:
        write_credentials(tmp_path, CLIENT_ID, CLIENT_SECRET)
        async with KmsClient(kms.base_url + "/", UniversalAuthFiles(str(tmp_path)), api="canonical") as c:  # ".../api/" normalised
            first = await c.fetch(PROJECT, ENV, "/chat")
            base = routes(kms)
            again = await c.fetch(PROJECT, ENV, "/chat", etag=first.etag)
            assert again.not_modified
            now = routes(kms)
            assert now[CURRENT_LIST] - base[CURRENT_LIST] == 1 and now[CURRENT_GET] - base[CURRENT_GET] == len(CHAT)  # N + 1


# -- canonical: no list route, keys from configuration ----------------------------------------------

async def test_canonical_without_a_list_route_needs_keys_and_works_with_them(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), profile="canonical-nolist") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        bad = spawn(agent_args(kms.base_url, tmp_path / "none", tmp_path / "auth", "--init-timeout", "3s", mode="init"),
                    tmp_path, "nokeys")
        assert await bad.wait_exit() == 1
        line = init_line(bad)
        assert "cannot list a folder" in line and "kms.hanzo.ai/keys" in line and "path=/chat" in line, line
        assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())

        mount = tmp_path / "secrets"
        keys = sorted(CHAT)
        env = config_env(sources=[{"path": "/chat", "keys": keys}])
        init = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", mode="init", paths=()), tmp_path, "init", env=env)
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        assert read_folder(mount) == CHAT
        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s", paths=()),
                      tmp_path, "sidecar", env=env)
        try:
            await wait_for(lambda: agent.events("first_sync"), what="sidecar first sync")
            kms.set_secret(PROJECT, ENV, "/chat", "JWT_SECRET", "VALUE-nolist-rotated")
            await wait_for(lambda: (mount / "JWT_SECRET").read_text() == "VALUE-nolist-rotated", timeout=30, what="rotation")
            assert not agent.events("sync_failing")
        finally:
            agent.stop()
        no_leaks(bad, init, agent, extra={"rotated": "VALUE-nolist-rotated"})


# -- canonical: root-folder secrets and keys the server cannot address ----------------------------

async def test_canonical_root_folder_and_unaddressable_keys(tmp_path: Path) -> None:
    folders = {"/": {"secrets": {"ROOT_KEY": "VALUE-root-1"}},
               "/odd": {"secrets": {"GOOD": "VALUE-good-1", "with space": "VALUE-space-1", "ключ": "VALUE-cyr-1"}}}
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    # Current surface: a root-folder secret is read with no sub-path.
    async with run_dev_kms(seed_with(**folders), profile="canonical") as kms:
        init = spawn(agent_args(kms.base_url, tmp_path / "root", tmp_path / "auth", mode="init", paths=("/",)), tmp_path, "root")
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        assert read_folder(tmp_path / "root") == {"ROOT_KEY": "VALUE-root-1"}  # sub-folders' keys are not the root's
    # Older surface: names outside [A-Za-z0-9._-] cannot be addressed: skipped by name, the rest delivered;
    # the root folder cannot be read at all: one line that says so.
    async with run_dev_kms(seed_with(**folders), profile="canonical-older") as kms:
        odd = spawn(agent_args(kms.base_url, tmp_path / "odd", tmp_path / "auth", mode="init", paths=("/odd",)), tmp_path, "odd")
        assert await odd.wait_exit() == 0, odd.stderr()[-3000:]
        assert read_folder(tmp_path / "odd") == {"GOOD": "VALUE-good-1"}
        skipped = {e["key"]: e["reason"] for e in odd.events("key_skipped")}
        assert set(skipped) == {"with space", "ключ"} and all("A-Za-z0-9._-" in r for r in skipped.values()), skipped
        assert not odd.events("sync_failing")
        root = spawn(agent_args(kms.base_url, tmp_path / "oldroot", tmp_path / "auth", "--init-timeout", "2s", mode="init",
                                paths=("/",)), tmp_path, "oldroot")
        assert await root.wait_exit() == 1
        assert "root folder" in init_line(root)
        no_leaks(init, odd, root, extra={"v1": "VALUE-root-1", "v2": "VALUE-space-1", "v3": "VALUE-cyr-1", "v4": "VALUE-good-1"})


# -- Infisical: fail closed on empty --------------------------------------------------------------

async def test_empty_folder_fails_init_and_the_sidecar_keeps_its_files(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), profile="hanzo-node") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        typo = spawn(agent_args(kms.base_url, tmp_path / "typo", tmp_path / "auth", "--init-timeout", "2s", mode="init",
                                paths=("/chta",)), tmp_path, "typo")
        assert await typo.wait_exit() == 1
        line = init_line(typo)
        for part in ("empty or does not exist", f"host={kms.base_url}", f"project={PROJECT}", f"env={ENV}", "path=/chta"):
            assert part in line, line
        allowed = spawn(agent_args(kms.base_url, tmp_path / "allowed", tmp_path / "auth", mode="init", paths=("/chta",)),
                        tmp_path, "allowed", env=config_env(allow_empty=True))
        assert await allowed.wait_exit() == 0, allowed.stderr()[-2000:]

        mount = tmp_path / "secrets"
        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s",
                                 paths=("/chat", "billing=/billing")), tmp_path, "sidecar")
        try:
            await wait_for(lambda: agent.events("first_sync"), what="first sync")
            kms.delete_secret(PROJECT, ENV, "/billing", "STRIPE_KEY")  # the folder suddenly lists nothing
            await wait_for(lambda: agent.events("sync_failing"), timeout=30, what="the empty folder noticed")
            failing = agent.events("sync_failing")[0]
            assert "empty or does not exist" in failing["error"] and "path=/billing" in failing["error"]
            assert failing["keeping"] == "last good files"
            assert (mount / "billing" / "STRIPE_KEY").read_text() == BILLING["STRIPE_KEY"]  # kept
            kms.set_secret(PROJECT, ENV, "/billing", "STRIPE_KEY", "VALUE-stripe-back")
            await wait_for(lambda: (mount / "billing" / "STRIPE_KEY").read_text() == "VALUE-stripe-back", timeout=30, what="recovery")
            assert agent.events("sync_recovered")
        finally:
            agent.stop()
        no_leaks(typo, allowed, agent, extra={"stripe": BILLING["STRIPE_KEY"]})


# -- Infisical: references, token lifetimes --------------------------------------------------------

async def test_references_are_expanded_by_default_and_not_when_turned_off(tmp_path: Path) -> None:
    folders = {"/refs": {"secrets": {"DB_USER": "chat_user", "URL": "postgres://${DB_USER}@db/chat"}}}
    async with run_dev_kms(seed_with(**folders), profile="hanzo-node") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        on = spawn(agent_args(kms.base_url, tmp_path / "on", tmp_path / "auth", mode="init", paths=("/refs",)), tmp_path, "on")
        off = spawn(agent_args(kms.base_url, tmp_path / "off", tmp_path / "auth", mode="init", paths=("/refs",)), tmp_path, "off",
                    env=config_env(expand_references=False))
        assert await on.wait_exit() == 0 and await off.wait_exit() == 0, on.stderr()[-2000:] + off.stderr()[-2000:]
        assert (tmp_path / "on" / "URL").read_text() == "postgres://chat_user@db/chat"
        assert (tmp_path / "off" / "URL").read_text() == "postgres://${DB_USER}@db/chat"


async def test_a_token_that_never_expires_and_a_periodic_token(tmp_path: Path) -> None:
    s = seed()
    s["identities"][0]["accessTokenTTL"] = 0  # expiresIn: 0 = never expires
    s["identities"].append({**copy.deepcopy(s["identities"][0]), "name": "periodic", "clientId": "periodic-client-id",
                            "clientSecret": "periodic-client-secret-123", "accessTokenPeriod": 20})
    s["identities"][1].pop("accessTokenTTL")
    async with run_dev_kms(s, profile="hanzo-node") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        write_credentials(tmp_path / "pauth", "periodic-client-id", "periodic-client-secret-123")
        forever = spawn(agent_args(kms.base_url, tmp_path / "a", tmp_path / "auth", "--refresh-interval", "5s"), tmp_path, "forever")
        periodic = spawn(agent_args(kms.base_url, tmp_path / "b", tmp_path / "pauth", "--refresh-interval", "5s"), tmp_path, "periodic")
        try:
            await wait_for(lambda: forever.events("first_sync") and periodic.events("first_sync"), what="both synced")
            login = "POST /v1/auth/universal-auth/login"
            renew = "POST /v1/auth/token/renew"
            # period 20 s, polls every ~5 s: renewed at 2/3 of each period, before it lapses (a poll
            # may slip ~6 s on a loaded machine and still renew in time)
            await wait_for(lambda: kms.stats()["identityRoutes"].get("periodic", {}).get(renew, 0) >= 2, timeout=90,
                           what="the periodic token renewed within each period")
            await wait_for(lambda: kms.stats()["identityRoutes"].get(IDENTITY, {}).get("GET /v3/secrets/raw", 0) >= 3,
                           timeout=30, what="polls with the non-expiring token")
            ids = kms.stats()["identityRoutes"]
            assert ids[IDENTITY].get(login) == 1 and renew not in ids[IDENTITY], ids[IDENTITY]  # nothing to renew
            assert ids["periodic"].get(login) == 1, ids["periodic"]  # renewed, never a fresh login
            assert forever.events("kms_login")[0]["expires_in"] > 10 ** 8  # "never" (a finite ten years)
            assert not forever.events("sync_failing") and not periodic.events("sync_failing")
        finally:
            forever.stop()
            periodic.stop()


# -- api: auto ------------------------------------------------------------------------------------

async def test_auto_after_a_404_blip_on_login_stays_on_the_right_backend(tmp_path: Path) -> None:
    async with run_dev_kms(seed(), profile="hanzo-node") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        # An ingress answering 404 to the first login (a rollout): not a sign of another API.
        kms.state.add_fault(Fault(status=404, count=1, path="/v1/auth/universal-auth/login"))
        init = spawn(agent_args(kms.base_url, tmp_path / "s", tmp_path / "auth", mode="init"), tmp_path, "init")
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        assert read_folder(tmp_path / "s")["API_KEY"] == CHAT["API_KEY"]
        detected = init.events("kms_api_detected")
        assert [d["api"] for d in detected] == ["infisical"] and "status" in detected[0]["reason"], detected
        assert "POST /v1/kms/auth/login" not in kms.stats()["routes"]  # never tried the other API
        assert kms.stats()["routes"]["POST /v1/auth/universal-auth/login"] == 2  # the blip, then the real login
        # An unknown clientId answers 404 too: a credentials typo, reported as such, on the same API.
        write_credentials(tmp_path / "typo", "no-such-client-id", CLIENT_SECRET)
        typo = spawn(agent_args(kms.base_url, tmp_path / "t", tmp_path / "typo", "--init-timeout", "2s", mode="init"),
                     tmp_path, "typo")
        assert await typo.wait_exit() == 1
        line = init_line(typo)
        assert "status=404" in line and "op=login" in line and "No identity" in line, line
        assert not typo.events("kms_api_detected") and "POST /v1/kms/auth/login" not in kms.stats()["routes"]
    async with run_dev_kms(seed(), profile="canonical") as kms:  # and the canonical server is found by its health route
        init = spawn(agent_args(kms.base_url, tmp_path / "c", tmp_path / "auth", mode="init"), tmp_path, "canon")
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        assert [d["api"] for d in init.events("kms_api_detected")] == ["canonical"]
        assert "POST /v1/auth/universal-auth/login" not in kms.stats()["routes"]


# -- one malformed entry, organizationSlug ------------------------------------------------------------

async def test_a_malformed_entry_is_skipped_by_name_and_the_rest_delivered(tmp_path: Path) -> None:
    logins: list[dict] = []

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"date": "2026-12-01T00:00:00Z", "message": "Ok"})

    async def login(request: web.Request) -> web.Response:
        logins.append(await request.json())
        return web.json_response({"accessToken": "tok-malformed-1", "expiresIn": 3600, "accessTokenMaxTTL": 7200})

    async def secrets(request: web.Request) -> web.Response:
        assert request.query["expandSecretReferences"] == "true"
        return web.json_response({"secrets": [
            {"secretKey": "", "secretValue": "VALUE-nameless"},
            {"secretKey": "BAD_TYPE", "secretValue": 123456789},
            {"secretKey": "BAD_VERSION", "secretValue": "VALUE-badversion", "version": "seven"},
            {"secretKey": "GOOD", "secretValue": "VALUE-good", "version": 1},
        ], "imports": [{"secretPath": "/shared", "environment": "prod", "secrets": [
            {"secretKey": "IMPORTED", "secretValue": "VALUE-imported", "workspace": ""}]}]})

    app = web.Application()
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/v1/auth/universal-auth/login", login)
    app.router.add_get("/api/v3/secrets/raw", secrets)
    runner, port = await serve_app(app)
    try:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        init = spawn(agent_args(f"http://127.0.0.1:{port}/api", tmp_path / "s", tmp_path / "auth", mode="init"), tmp_path, "init",
                     env=config_env(organization_slug="hanzo"))
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
    finally:
        await runner.cleanup()
    assert read_folder(tmp_path / "s") == {"GOOD": "VALUE-good", "IMPORTED": "VALUE-imported"}
    skipped = init.events("secret_entry_skipped")
    assert sorted(e["key"] for e in skipped) == ["", "BAD_TYPE", "BAD_VERSION"], skipped
    assert all(e["action"] == "the other keys are delivered" for e in skipped)
    assert logins and all(b.get("organizationSlug") == "hanzo" for b in logins)
    assert_no_leaks({"init": init.stderr()}, {"v1": "VALUE-nameless", "v2": "123456789", "v3": "VALUE-badversion",
                                               "token": "tok-malformed-1", "client secret": CLIENT_SECRET})


# -- Retry-After on any status; canonical expiresIn 0 ---------------------------------------------

async def test_retry_after_is_honoured_on_a_500_as_older_servers_rate_limit(tmp_path: Path) -> None:
    import time

    async with run_dev_kms(seed(), profile="infisical-recorded") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        kms.state.add_fault(Fault(status=500, count=1, path="/v3/secrets", retry_after=3))
        t0 = time.monotonic()
        init = spawn(agent_args(kms.base_url, tmp_path / "s", tmp_path / "auth", mode="init"), tmp_path, "init")
        assert await init.wait_exit() == 0, init.stderr()[-3000:]
        # Init's own backoff would retry within ~0.5 s; the server asked for 3 s (a lower bound: load only adds).
        assert time.monotonic() - t0 >= 3.0
        assert kms.stats()["routes"]["GET /v3/secrets/raw"] == 2
        assert "status=500" in init.events("sync_failing")[0]["error"]


async def test_canonical_expires_in_zero_means_one_hour_then_a_fresh_login(tmp_path: Path) -> None:
    import base64
    import io

    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.client import KmsClient
    from injector.log import Logger

    claims = base64.urlsafe_b64encode(json.dumps({"owner": "hanzo"}).encode()).rstrip(b"=").decode()
    token = f"eyJhbGciOiJub25lIn0.{claims}.sig"
    seen: list[str] = []

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": token, "expiresIn": 0, "tokenType": "Bearer"})

    async def names(request: web.Request) -> web.Response:
        return web.json_response({"names": ["K"], "secrets": [{"name": "K", "path": "app", "env": "prod"}], "total": 1})

    async def value(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        return web.json_response({"env": "prod", "name": "K", "value": "VALUE-k-canon"})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/kms/auth/login", login)
    app.router.add_get("/v1/kms/secrets", names)
    app.router.add_get("/v1/kms/secrets/app/K", value)
    runner, port = await serve_app(app)
    try:
        write_credentials(tmp_path, CLIENT_ID, CLIENT_SECRET)
        out = io.StringIO()
        async with KmsClient(f"http://127.0.0.1:{port}/api/", UniversalAuthFiles(str(tmp_path)), api="auto",
                             logger=Logger("t", out)) as c:
            assert (await c.fetch(PROJECT, ENV, "/app")).secrets == {"K": "VALUE-k-canon"}
        logins = [json.loads(x) for x in out.getvalue().splitlines() if '"kms_login"' in x]
        assert [x["expires_in"] for x in logins] == [3600.0]  # not "never": the IAM token's life is unknown
        assert seen == [f"Bearer {token}"]
    finally:
        await runner.cleanup()


async def test_a_truncated_older_listing_fails_closed_and_keys_filter_on_the_infisical_api(tmp_path: Path) -> None:
    import pytest

    from injector.kms.auth import UniversalAuthFiles
    from injector.kms.client import KmsClient
    from injector.kms.errors import ListUnavailable, NotFound

    write_credentials(tmp_path, CLIENT_ID, CLIENT_SECRET)
    async with run_dev_kms(seed(), profile="canonical-older", list_cap=2) as kms:
        async with KmsClient(kms.base_url, UniversalAuthFiles(str(tmp_path)), api="canonical") as c:
            with pytest.raises(ListUnavailable) as info:  # 3 keys, a cap of 2: a cut listing never deletes a key
                await c.fetch(PROJECT, ENV, "/chat")
            assert "cut at 2 rows" in str(info.value) and "kms.hanzo.ai/keys" in str(info.value)
            assert (await c.fetch(PROJECT, ENV, "/chat", keys=tuple(CHAT))).secrets == CHAT  # named keys: no listing
    async with run_dev_kms(seed(), profile="hanzo-node") as kms:
        async with KmsClient(kms.base_url, UniversalAuthFiles(str(tmp_path))) as c:
            assert (await c.fetch(PROJECT, ENV, "/chat", keys=("API_KEY",))).secrets == {"API_KEY": CHAT["API_KEY"]}
            with pytest.raises(NotFound) as missing:
                await c.fetch(PROJECT, ENV, "/chat", keys=("API_KEY", "NO_SUCH_KEY"))
            assert "NO_SUCH_KEY" in str(missing.value) and "path=/chat" in str(missing.value)


async def test_a_periodic_token_shorter_than_the_poll_is_renewed_between_polls(tmp_path: Path) -> None:
    """A period (6 s) shorter than the poll interval (20 s): without the token keeper the token
    lapsed between polls and every poll cost a fresh login; now it is renewed within each period."""
    s = seed()
    s["identities"][0]["accessTokenPeriod"] = 6
    async with run_dev_kms(s, profile="hanzo-node") as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        agent = spawn(agent_args(kms.base_url, tmp_path / "s", tmp_path / "auth", "--refresh-interval", "20s"),
                      tmp_path, "periodic-short")
        try:
            await wait_for(lambda: agent.events("first_sync"), what="first sync")
            routes = lambda: kms.stats()["identityRoutes"].get(IDENTITY, {})  # noqa: E731
            await wait_for(lambda: routes().get("POST /v1/auth/token/renew", 0) >= 3, timeout=60,
                           what="three renewals within the periods")
            await wait_for(lambda: routes().get("GET /v3/secrets/raw", 0) >= 2, timeout=60, what="a second poll")
            assert routes().get("POST /v1/auth/universal-auth/login") == 1, routes()  # never lapsed: no fresh login
            assert not agent.events("sync_failing")
        finally:
            agent.stop()
