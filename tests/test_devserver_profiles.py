"""The dev KMS's profiles over real HTTP: each models one real server of shared/kms-api.md
(Hanzo's Node fork, a newer upstream with events, the Go servers' canonical surfaces). The
recorded upstream server has its own test: test_contract_fixtures.py."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request

import aiohttp
import pytest
import yarl

from devkms import tiny_seed
from devkms.profiles import PROFILES
from tests.test_devserver import call

SUBSCRIBE = "/v1/events/subscribe/project-events"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def raw(url: str, method: str = "GET", *, token: str | None = None, **kw) -> tuple[int, dict, bytes]:
    headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, yarl.URL(url, encoded=True), headers=headers, **kw) as r:  # the path as written
            return r.status, dict(r.headers), await r.read()


async def infisical_login(kms, who: str = "svc") -> str:
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login",
                                 json={"clientId": f"{who}-id", "clientSecret": f"{who}-secret"})
    assert status == 200, body
    return body["accessToken"]


def jwt_claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# ---- status / health routes: what `auto` probes ---------------------------------------------

@pytest.mark.parametrize("profile", list(PROFILES))
async def test_each_profile_serves_its_identifying_route_only(dev_kms_factory, profile):
    kms = await dev_kms_factory(profile=profile)
    status_inf, _, body_inf = await raw(kms.root_url + "/api/status")
    status_can, _, body_can = await raw(kms.root_url + "/v1/kms/health")
    if PROFILES[profile].infisical:
        assert status_inf == 200 and json.loads(body_inf)["message"] == "Ok"
        assert status_can == 404
    else:
        assert status_can == 200 and json.loads(body_can) == {"status": "ok"}
        assert status_inf == 404 and body_inf == b"404 page not found\n"


# ---- hanzo-node ----------------------------------------------------------------------------------

async def test_hanzo_node_lockout_3_failures_in_30s_then_300s(dev_kms_factory):
    clock = Clock()
    kms = await dev_kms_factory(profile="hanzo-node", clock=clock)
    login = "/v1/auth/universal-auth/login"
    for _ in range(2):
        status, _, err = await call(kms.base_url, "POST", login, json={"clientId": "svc-id", "clientSecret": "nope"})
        assert status == 401 and err["message"] == "Invalid credentials" and err["reqId"]
    clock.now += 31  # outside the 30 s window: the two failures no longer count
    for _ in range(3):
        status, _, err = await call(kms.base_url, "POST", login, json={"clientId": "svc-id", "clientSecret": "nope"})
        assert status == 401 and err["message"] == "Invalid credentials"
    status, _, err = await call(kms.base_url, "POST", login, json={"clientId": "svc-id", "clientSecret": "svc-secret"})
    assert status == 401 and err["message"] == "This identity auth method is temporarily locked, please try again later"
    assert set(err) == {"reqId", "statusCode", "message", "error"}
    # the lock is per identity: another identity logs in
    assert await infisical_login(kms, "reader")
    clock.now += 299
    status, _, _ = await call(kms.base_url, "POST", login, json={"clientId": "svc-id", "clientSecret": "svc-secret"})
    assert status == 401
    clock.now += 2
    assert await infisical_login(kms)
    status, _, err = await call(kms.base_url, "POST", login, json={"clientId": "no-such-id", "clientSecret": "x"})
    assert status == 404 and err["message"] == "No identity with specified client ID was found"


async def test_hanzo_node_validation_422_and_events_stub(dev_kms_factory):
    kms = await dev_kms_factory(profile="hanzo-node")
    status, headers, err = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": "svc-id"})
    assert status == 422 and err["error"] == "ValidationFailure" and headers.get("ETag")
    assert err["message"] == [{"code": "invalid_type", "expected": "string", "received": "undefined",
                               "path": ["clientSecret"], "message": "Required"}]
    body = {"projectId": "proj-test-id", "register": [{"event": "secret:update", "conditions": {"secretPath": "/app"}}]}
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, json=body)
    assert status == 401 and err["message"] == "Token missing"
    tok = await infisical_login(kms)
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json=body)
    assert status == 422 and err["error"] == "ValidationFailure" and err["message"][0]["path"] == ["eventType"]


async def test_hanzo_node_reads_newer_shapes(dev_kms_factory):
    kms = await dev_kms_factory(profile="hanzo-node")
    tok = await infisical_login(kms)
    q = {"workspaceSlug": "test-proj", "environment": "prod", "secretPath": "/app", "include_imports": "true"}
    status, headers, body = await call(kms.base_url, "GET", "/v3/secrets/raw", token=tok, params=q)
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert {s["secretKey"] for s in body["secrets"]} == {"API_KEY", "DATABASE_URL"}
    assert all(s["secretValueHidden"] is False and "secretPath" in s for s in body["secrets"])
    assert body["imports"][0]["secrets"][0]["workspace"] == ""
    status, _, body = await call(kms.base_url, "GET", "/v3/secrets/raw", token=tok, params={**q, "viewSecretValue": "false"})
    assert all(s["secretValueHidden"] and s["secretValue"] == "<hidden-by-infisical>" for s in body["secrets"])
    # a typo in a folder or env is a 200 with empty lists, as on every real Infisical server
    for params in ({**q, "secretPath": "/ap"}, {**q, "environment": "prood"}):
        status, _, body = await call(kms.base_url, "GET", "/v3/secrets/raw", token=tok, params=params)
        assert status == 200 and body == {"secrets": [], "imports": []}
    status, _, err = await call(kms.base_url, "GET", "/v3/secrets/raw", token=tok, params={**q, "workspaceSlug": "nope"})
    assert status == 404 and "nope" in err["message"]
    # newer servers take a slug and JSON nulls on writes
    status, _, body = await call(kms.base_url, "POST", "/v3/secrets/raw/NEW", token=tok, json={
        "workspaceSlug": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": "v1",
        "secretComment": None, "tagIds": None, "skipMultilineEncoding": None})
    assert status == 200 and body["secret"]["version"] == 1 and "secretPath" not in body["secret"]
    status, _, body = await call(kms.base_url, "PATCH", "/v3/secrets/raw/NEW", token=tok, json={
        "workspaceId": "proj-test-id", "environment": "prod", "secretPath": "/app", "secretValue": "v2", "newSecretName": None})
    assert status == 200 and body["secret"]["version"] == 2 and kms.get_value("test-proj", "prod", "/app", "NEW") == "v2"
    status, _, err = await call(kms.base_url, "PATCH", "/v3/secrets/raw/NEW", token=tok, json={
        "workspaceId": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": "v3"})
    assert status == 404 and "correct project ID" in err["message"]


async def test_real_token_lifecycle_and_ttl_zero_and_periodic(dev_kms_factory):
    seed = tiny_seed()
    seed["identities"][0].update(accessTokenTTL=0)           # expiresIn 0: never expires
    seed["identities"][1].update(accessTokenPeriod=10)        # periodic: renew within each period
    clock = Clock()
    kms = await dev_kms_factory(profile="hanzo-node", seed=seed, clock=clock, token_ttl=5, max_ttl=20)
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": "svc-id", "clientSecret": "svc-secret"})
    assert body["expiresIn"] == 0 and body["accessTokenMaxTTL"] == 20
    forever = body["accessToken"]
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": "reader-id", "clientSecret": "reader-secret"})
    assert body["expiresIn"] == 10 and body["accessTokenMaxTTL"] == 1000000000
    periodic = body["accessToken"]
    iam = await infisical_login(kms, "iam")
    q = {"workspaceSlug": "test-proj", "environment": "prod", "secretPath": "/app"}
    for _ in range(3):  # the periodic token lives as long as it is renewed within each period
        clock.now += 8
        status, _, body = await call(kms.base_url, "POST", "/v1/auth/token/renew", json={"accessToken": periodic})
        assert status == 200 and body["accessToken"] == periodic and body["expiresIn"] == 10
    status, _, err = await call(kms.base_url, "GET", "/v3/secrets/raw", token=forever, params=q)
    assert status == 200  # 24 s later: the expiresIn 0 token still works (its max TTL is not enforced: no exp)
    status, _, err = await call(kms.base_url, "GET", "/v3/secrets/raw", token=iam, params={**q, "workspaceSlug": "iam-proj"})
    assert status == 403 and err["error"] == "TokenError"  # 24 s > max TTL 20: the JWT expired
    clock.now += 11
    status, _, err = await call(kms.base_url, "GET", "/v3/secrets/raw", token=periodic, params=q)
    assert status == 401 and err["message"] == "Failed to renew MI access token due to TTL expiration"
    status, _, err = await call(kms.base_url, "GET", "/v3/secrets/raw", token=periodic, params=q)
    assert status == 401 and err["message"] == "No identity access token found"  # the server deleted it


# ---- infisical-events -----------------------------------------------------------------------------

async def read_event(resp: aiohttp.ClientResponse, timeout: float = 20.0) -> dict | None:
    """The next SSE event as {"event", "id"?, "data"?}; None when the stream ends."""
    async def read() -> dict | None:
        ev: dict = {}
        while True:
            line = await resp.content.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if ev:
                    return ev
                continue
            field, _, value = text.partition(": ")
            ev[field] = json.loads(value) if field == "data" else value
    async with asyncio.timeout(timeout):
        return await read()


async def next_event(resp: aiohttp.ClientResponse, timeout: float = 20.0) -> dict:
    """The next event that is not a ping (pings arrive every heartbeat meanwhile)."""
    async with asyncio.timeout(timeout):
        while True:
            ev = await read_event(resp, timeout)
            assert ev is not None, "the stream ended"
            if ev["event"] != "ping":
                return ev


EVENTS = ("secret:create", "secret:update", "secret:delete", "secret:import-mutation")


def register(path: str = "/app", events=("secret:create", "secret:update", "secret:delete"), env: str = "prod") -> list:
    return [{"event": e, "conditions": {"secretPath": path, "environmentSlug": env}} for e in events]


async def test_upstream_events_framing_prefix_and_ping(dev_kms_factory):
    kms = await dev_kms_factory(profile="infisical-events", event_heartbeat=0.2)
    tok = await infisical_login(kms)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        body = {"projectId": "proj-test-id", "register": register("/app", EVENTS)}
        async with s.post(kms.base_url + SUBSCRIBE, json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            assert await read_event(r) == {"event": "ping"}
            kms.set_secret("test-proj", "prod", "/restricted", "ONLY_ADMIN", "x")   # not under /app
            kms.set_secret("test-proj", "dev", "/app", "DATABASE_URL", "x")         # other env
            kms.set_secret("test-proj", "prod", "/app/sub", "NESTED_KEY", "v2")     # /app is a prefix of /app/sub
            ev = await next_event(r)
            assert ev["event"] == "secret:update" and ev["id"].isdigit()
            assert ev["data"] == {"type": "secret-manager", "data": {"eventType": "secret:update", "payload": [
                {"environment": "prod", "secretPath": "/app/sub", "secretKeys": "NESTED_KEY"}]}}
            # /app imports /shared: a change there is an import mutation of /app (payload: an object)
            kms.set_secret("test-proj", "prod", "/shared", "SHARED_TOKEN", "rotated")
            ev = await next_event(r)
            assert ev["event"] == "secret:import-mutation"
            assert ev["data"]["data"] == {"eventType": "secret:import-mutation", "payload": {"environment": "prod", "secretPath": "/app"}}


async def test_upstream_events_refusals(dev_kms_factory):
    kms = await dev_kms_factory(profile="infisical-events")
    tok = await infisical_login(kms)
    ok = {"projectId": "proj-test-id", "register": register()}
    for body, code, path in [({**ok, "register": register() * 4}, "too_big", ["register"]),   # 12 > 10
                             ({**ok, "register": []}, "too_small", ["register"]),
                             ({"register": register()}, "invalid_type", ["projectId"]),
                             ({**ok, "register": [{"event": "secret:explode"}]}, "invalid_enum_value", ["register", 0, "event"])]:
        status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json=body)
        assert status == 422 and err["message"][0]["code"] == code and err["message"][0]["path"] == path, err
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(kms.base_url + SUBSCRIBE, json={**ok, "register": register() * 3 + register()[:1]}) as r:
            assert r.status == 200  # exactly 10 registrations are fine
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json={**ok, "projectId": "test-proj"})
    assert status == 404 and "test-proj" in err["message"]  # the slug is not the project id
    iam = await infisical_login(kms, "iam")
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=iam, json=ok)
    assert status == 403
    for kw, expected, word in [({"events_on_plan": False}, 400, "not available on your current plan"),
                               ({"events_permitted": False}, 403, "secret-events")]:
        other = await dev_kms_factory(profile="infisical-events", **kw)
        status, _, err = await call(other.base_url, "POST", SUBSCRIBE, token=await infisical_login(other), json=ok)
        assert status == expected and word in err["message"], err


async def test_upstream_events_five_streams_per_project_and_identity_and_the_close(dev_kms_factory):
    kms = await dev_kms_factory(profile="infisical-events", event_max_seconds=1.0)
    tok, reader = await infisical_login(kms), await infisical_login(kms, "reader")
    ok = {"projectId": "proj-test-id", "register": register()}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        streams = [await s.post(kms.base_url + SUBSCRIBE, json=ok) for _ in range(5)]
        assert [r.status for r in streams] == [200] * 5
        for r in streams:
            assert await read_event(r) == {"event": "ping"}
        status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json=ok)
        assert status == 429, err
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as s2:
            async with s2.post(kms.base_url + SUBSCRIBE, json=ok) as r:
                assert r.status == 200  # another identity has its own 5
        for r in streams:  # the server closes each stream after event_max_seconds (the one-hour close)
            ev = await read_event(r)
            while ev is not None:
                ev = await read_event(r)
            r.close()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(kms.base_url + SUBSCRIBE, json=ok) as r:
            assert r.status == 200  # the closed streams no longer count


# ---- canonical (Go servers) -----------------------------------------------------------------------

async def canonical_login(kms, who: str = "svc") -> str:
    status, headers, body = await raw(kms.root_url + "/v1/kms/auth/login", "POST",
                                      json={"clientId": f"{who}-id", "clientSecret": f"{who}-secret"})
    assert status == 200 and "ETag" not in headers, body
    out = json.loads(body)
    assert set(out) == {"accessToken", "expiresIn", "tokenType"}
    return out["accessToken"]


async def test_canonical_current_surface(dev_kms_factory):
    kms = await dev_kms_factory(profile="canonical")
    tok = await canonical_login(kms)
    assert jwt_claims(tok)["owner"] == "test-proj"  # the org rides the token
    status, headers, body = await raw(kms.root_url + "/v1/kms/secrets?path=app&env=prod", token=tok)
    out = json.loads(body)
    assert status == 200 and "ETag" not in headers
    assert out["names"] == ["API_KEY", "DATABASE_URL", "NESTED_KEY"] and out["total"] == 3  # recursive, no imports
    assert {"name": "NESTED_KEY", "path": "app/sub", "env": "prod", "scheme": "aes-256-gcm"} in out["secrets"]
    assert all("value" not in s and "version" not in s for s in out["secrets"])
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets/app/sub/NESTED_KEY?env=prod", token=tok)
    assert status == 200 and json.loads(body) == {"env": "prod", "name": "NESTED_KEY", "value": "nested-value"}
    # a root-folder secret, and a name with characters the older surface refuses, both work here
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets", "POST", token=tok,
                                json={"path": "", "name": "ROOT key", "env": "prod", "value": "r1"})
    assert status == 200, body
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets/ROOT%20key?env=prod", token=tok)
    assert status == 200 and json.loads(body)["value"] == "r1"
    kms.set_secret("test-proj", "prod", "/app", "a/b", "slash")  # an escaped '/' stays in its segment
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets/app/a%2Fb?env=prod", token=tok)
    assert status == 200 and json.loads(body)["value"] == "slash"
    for path, expected, word in [("/v1/kms/secrets/app/..?env=prod", 400, "invalid path"),
                                 ("/v1/kms/secrets/app//API_KEY?env=prod", 400, "invalid path"),
                                 ("/v1/kms/secrets/app/%01bad?env=prod", 400, "control"),
                                 ("/v1/kms/secrets/app/" + "x" * 254 + "?env=prod", 400, "253"),
                                 ("/v1/kms/secrets/app/NOPE?env=prod", 404, "secret not found"),
                                 ("/v1/kms/secrets/app/API_KEY", 400, "env")]:
        status, _, body = await raw(kms.root_url + path, token=tok)
        err = json.loads(body)
        assert status == expected and set(err) == {"statusCode", "message"} and word in err["message"], (path, err)
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets?path=app&env=prod", token="not-a-token")
    assert status == 401 and json.loads(body)["statusCode"] == 401
    status, _, body = await raw(kms.root_url + "/v1/kms/auth/login", "POST", json={"clientId": "svc-id"})
    assert status == 400 and json.loads(body) == {"statusCode": 400, "message": "clientId and clientSecret required"}
    status, _, body = await raw(kms.root_url + "/v1/kms/auth/login", "POST", json={"clientId": "svc-id", "clientSecret": "no"})
    assert status == 401 and json.loads(body) == {"statusCode": 401, "message": "invalid credentials"}
    status, headers, body = await raw(kms.root_url + "/v1/kms/secrets", "PUT", token=tok)
    assert status == 405 and "POST" in headers["Allow"]
    for path in ("/api/v1/kms/secrets?env=prod", "/v1/kms/orgs/test-proj/secrets?env=prod", "/v1/auth/token/renew"):
        status, _, body = await raw(kms.root_url + path, token=tok)
        assert status == 404 and body == b"404 page not found\n", path
    reader = await canonical_login(kms, "reader")
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets/restricted/ONLY_ADMIN?env=prod", token=reader)
    assert status == 403 and "admin-value" not in body.decode()
    status, _, _ = await raw(kms.root_url + "/v1/kms/secrets/app/API_KEY?env=prod", "DELETE", token=tok)
    assert status == 204
    status, _, _ = await raw(kms.root_url + "/v1/kms/secrets/app/API_KEY?env=prod", token=tok)
    assert status == 404


async def test_canonical_older_surface(dev_kms_factory):
    kms = await dev_kms_factory(profile="canonical-older", list_cap=2)
    tok = await canonical_login(kms)
    base = kms.root_url + "/v1/kms/orgs/test-proj/secrets"
    status, _, body = await raw(base + "?prefix=app&env=prod", token=tok)
    out = json.loads(body)
    assert status == 200 and out["count"] == 2 and out["truncated"] is True  # 3 rows, cap 2
    assert set(out["secrets"][0]) == {"path", "name", "env", "version", "updatedTime"}
    status, _, body = await raw(base + "?prefix=app/sub&env=prod", token=tok)
    out = json.loads(body)
    assert out["count"] == 1 and "truncated" not in out and out["secrets"][0]["name"] == "NESTED_KEY"
    status, _, body = await raw(base + "/app/API_KEY?env=prod", token=tok)
    assert status == 200 and json.loads(body) == {"secret": {"value": "from-app"}, "version": 1}
    status, _, body = await raw(base + "/app/API_KEY?env=prod", "PATCH", token=tok, json={"value": "v2"},
                                headers={"If-Match": "1"})
    assert status == 200 and json.loads(body) == {"version": 2}
    status, _, body = await raw(base + "/app/API_KEY?env=prod", "PATCH", token=tok, json={"value": "v3"},
                                headers={"If-Match": "1"})
    assert status == 409 and "version" in json.loads(body)["message"]
    kms.set_secret("test-proj", "prod", "/", "ROOT_KEY", "r")
    for path, expected, message in [(base + "/ROOT_KEY?env=prod", 400, "path and name required"),
                                    (base + "/app/with%20space?env=prod", 400, "invalid path"),
                                    (base + "/app/NOPE?env=prod", 404, "not found"),
                                    (kms.root_url + "/v1/kms/orgs/iam-proj/secrets?env=prod", 403, "org claim does not match URL")]:
        status, _, body = await raw(path, token=tok)
        err = json.loads(body)
        assert status == expected and set(err) == {"message"} and message in err["message"], (path, err)
    status, _, body = await raw(base + "?env=prod", token="junk")
    assert status == 401 and json.loads(body) == {"message": "unauthorized"}
    status, _, body = await raw(base, "POST", token=tok, json={"path": "app", "name": "NEW", "env": "prod", "value": "n"})
    assert status == 200 and json.loads(body)["version"] == 1
    status, _, _ = await raw(kms.root_url + "/v1/kms/secrets?path=app&env=prod", token=tok)
    assert status == 404  # no current surface here: a client falls back to this one on 404


async def test_canonical_nolist(dev_kms_factory):
    kms = await dev_kms_factory(profile="canonical-nolist")
    tok = await canonical_login(kms)
    status, headers, body = await raw(kms.root_url + "/v1/kms/secrets?path=app&env=prod", token=tok)
    assert status == 405 and headers["Allow"] == "POST"  # the route takes writes only: Go's mux answers 405
    status, _, body = await raw(kms.root_url + "/v1/kms/orgs/test-proj/secrets?env=prod", token=tok)
    assert status == 404
    status, _, body = await raw(kms.root_url + "/v1/kms/secrets/app/API_KEY?env=prod", token=tok)
    assert status == 200 and json.loads(body)["value"] == "from-app"


# ---- CLI -------------------------------------------------------------------------------------------

def test_cli_profile_flag(dev_server_process, tmp_path):
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(tiny_seed()))
    srv = dev_server_process("--seed", str(seed), "--profile", "canonical")
    assert srv.base_url.endswith("/api")
    root = srv.base_url.removesuffix("/api")
    with urllib.request.urlopen(root + "/v1/kms/health", timeout=20) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    try:
        urllib.request.urlopen(srv.base_url + "/status", timeout=20)
        raise AssertionError("a canonical server has no /api/status")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_cli_refuses_legacy_api_on_a_real_profile(tmp_path):
    import subprocess

    from tests.conftest import KMS_INJECTOR, ROOT

    out = subprocess.run([*KMS_INJECTOR, "dev-server", "--port", "0", "--profile", "hanzo-node", "--api", "canonical"],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--profile canonical" in out.stderr


# ---- the agent against each Infisical profile (the canonical ones need the canonical client) -------

@pytest.mark.parametrize("profile", ["infisical-recorded", "hanzo-node", "infisical-events"])
async def test_agent_init_sidecar_rotation_against_infisical_profiles(dev_kms_factory, tmp_path, profile):
    from tests.agent_support import CHAT, CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, SHARED, agent_args, read_folder, seed, spawn, wait_for, write_credentials

    kms = await dev_kms_factory(profile=profile, seed=seed())
    mount, creds = tmp_path / "secrets", tmp_path / "auth"
    write_credentials(creds, CLIENT_ID, CLIENT_SECRET)
    init = spawn(agent_args(kms.base_url, mount, creds, mode="init"), tmp_path, "init")
    assert await init.wait_exit() == 0, init.stderr()
    assert read_folder(mount) == {**SHARED, **CHAT}
    sidecar = spawn(agent_args(kms.base_url, mount, creds, "--refresh-interval", "5s"), tmp_path, "sidecar")
    try:
        await wait_for(lambda: '"first_sync"' in sidecar.stderr(), what="first sync")
        kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-rotated-9f0e")
        await wait_for(lambda: read_folder(mount).get("API_KEY") == "VALUE-rotated-9f0e", timeout=60, what="the rotation on disk")
    finally:
        sidecar.stop()
    assert "VALUE-rotated-9f0e" not in sidecar.stderr() and CLIENT_SECRET not in sidecar.stderr()


async def test_newer_servers_serve_v4_list_with_imports_and_references_on(dev_kms_factory):
    seed = tiny_seed()
    seed["projects"]["test-proj"]["environments"]["prod"]["folders"]["/app"]["secrets"]["REF"] = "x-${DATABASE_URL}"
    kms = await dev_kms_factory(profile="hanzo-node", seed=seed)
    tok = await infisical_login(kms)
    status, _, body = await call(kms.base_url, "GET", "/v4/secrets", token=tok,
                                 params={"projectId": "proj-test-id", "environment": "prod", "secretPath": "/app"})
    assert status == 200 and body["imports"] and {s["secretKey"]: s["secretValue"] for s in body["secrets"]}["REF"] == "x-postgres://app@db/app"
    status, _, body = await call(kms.base_url, "GET", "/v4/secrets", token=tok, params={
        "projectId": "proj-test-id", "environment": "prod", "secretPath": "/app", "includeImports": "false", "expandSecretReferences": "false"})
    assert status == 200 and "imports" not in body and {s["secretKey"]: s["secretValue"] for s in body["secrets"]}["REF"] == "x-${DATABASE_URL}"
    status, _, err = await call(kms.base_url, "GET", "/v4/secrets", token=tok, params={"environment": "prod"})
    assert status == 422 and err["message"][0]["path"] == ["projectId"]
    recorded = await dev_kms_factory(profile="infisical-recorded")
    status, _, err = await call(recorded.base_url, "GET", "/v4/secrets", token=await infisical_login(recorded), params={"projectId": "proj-test-id"})
    assert status == 404 and err["error"] == "Not Found"  # the October 2024 server had no v4
