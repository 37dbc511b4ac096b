"""Dev KMS phase 2 over real HTTP: the change-event stream and kubernetes-auth login (RS256 JWTs
signed by a key pair made here)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.agent_support import make_jwt
from tests.test_devserver import assert_error, call, login

SUBSCRIBE = "/v1/events/subscribe/project-events"


async def next_event(resp: aiohttp.ClientResponse, timeout: float = 20.0) -> dict | None:
    """The next `data:` payload of an SSE stream; None when the stream ends."""
    async def read() -> dict | None:
        data = []
        while True:
            line = await resp.content.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                return json.loads("\n".join(data))
    return await asyncio.wait_for(read(), timeout)


def register(path: str = "/app", env: str = "prod", events=("secret:create", "secret:update", "secret:delete")) -> list:
    return [{"event": e, "conditions": {"secretPath": path, "environmentSlug": env}} for e in events]


async def test_events_for_api_and_helper_writes(dev_kms):
    tok = await login(dev_kms.base_url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(dev_kms.base_url + SUBSCRIBE, json={"projectId": "proj-test-id", "register": register("/app/**")}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            # a write elsewhere is filtered out; a write through the API arrives
            dev_kms.set_secret("test-proj", "prod", "/restricted", "ONLY_ADMIN", "x")
            dev_kms.set_secret("test-proj", "dev", "/app", "DATABASE_URL", "x")
            status, _, _ = await call(dev_kms.base_url, "PATCH", "/v3/secrets/raw/API_KEY", token=tok,
                                      json={"workspaceId": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": "v2"})
            assert status == 200
            ev = await next_event(r)
            assert ev == {"projectType": "secret-manager", "data": {"eventType": "secret:update",
                          "payload": [{"environment": "prod", "secretPath": "/app", "secretKey": "API_KEY"}]}}
            # in-process helpers emit too: create, update and delete in a sub-folder matching the glob
            dev_kms.set_secret("test-proj", "prod", "/app/sub", "NEW", "1")
            dev_kms.set_secret("test-proj", "prod", "/app/sub", "NEW", "2")
            dev_kms.delete_secret("test-proj", "prod", "/app/sub", "NEW")
            got = [(await next_event(r))["data"] for _ in range(3)]
            assert [(d["eventType"], d["payload"][0]["secretPath"], d["payload"][0]["secretKey"]) for d in got] == [
                ("secret:create", "/app/sub", "NEW"), ("secret:update", "/app/sub", "NEW"), ("secret:delete", "/app/sub", "NEW")]
            # the server can drop streams (reconnect tests): the stream ends cleanly
            status, _, out = await call(dev_kms.base_url, "POST", "/_dev/events/drop")
            assert status == 200 and out["dropped"] == 1
            assert await next_event(r) is None


async def test_import_mutation_event(dev_kms):
    tok = await login(dev_kms.base_url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(dev_kms.base_url + SUBSCRIBE, json={"projectId": "test-proj",
                          "register": register("/app", events=("secret:import-mutation",))}) as r:
            assert r.status == 200
            dev_kms.set_secret("test-proj", "prod", "/shared", "SHARED_TOKEN", "rotated")
            ev = await next_event(r)
            assert ev["data"]["eventType"] == "secret:import-mutation"
            assert ev["data"]["payload"][0]["secretPath"] == "/app"


async def test_events_errors_cap_and_disabled(dev_kms_factory):
    kms = await dev_kms_factory(max_event_streams=1)
    tok = await login(kms.base_url)
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, json={"projectId": "test-proj", "register": register()})
    assert_error(status, err, 401, "UnauthorizedError", "Token missing")
    for body, expected, word in [
        ({"register": register()}, 422, "projectId"),
        ({"projectId": "test-proj", "register": []}, 422, "register"),
        ({"projectId": "test-proj", "register": [{"event": "secret:explode"}]}, 422, "secret:update"),
        ({"projectId": "test-proj", "register": [{"event": "secret:update", "conditions": {"secretPath": 3}}]}, 422, "secretPath"),
        ({"projectId": "nope", "register": register()}, 404, "nope"),
    ]:
        status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json=body)
        assert_error(status, err, expected, None, word)
    iam = await login(kms.base_url, "iam")
    status, _, err = await call(kms.base_url, "POST", SUBSCRIBE, token=iam, json={"projectId": "test-proj", "register": register()})
    assert_error(status, err, 403, "PermissionDenied", "test-proj")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(kms.base_url + SUBSCRIBE, json={"projectId": "test-proj", "register": register()}) as r:
            assert r.status == 200
            await r.content.readline()  # ": connected": the stream is registered
            status, headers, err = await call(kms.base_url, "POST", SUBSCRIBE, token=tok, json={"projectId": "test-proj", "register": register()})
            assert_error(status, err, 429, "RateLimitExceeded", "event streams")
            assert int(headers["Retry-After"]) >= 1
    off = await dev_kms_factory(events=False)
    tok = await login(off.base_url)
    status, _, err = await call(off.base_url, "POST", SUBSCRIBE, token=tok, json={"projectId": "test-proj", "register": register()})
    assert_error(status, err, 404, "NotFound", "poll")


async def test_stop_ends_open_streams_quickly(dev_kms):
    tok = await login(dev_kms.base_url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async with s.post(dev_kms.base_url + SUBSCRIBE, json={"projectId": "test-proj", "register": register()}) as r:
            await r.content.readline()
            t0 = time.monotonic()
            await dev_kms.stop()
            assert time.monotonic() - t0 < 10
            try:
                assert await next_event(r) is None
            except aiohttp.ClientPayloadError:
                pass  # a cut stream is also a fine way to end
    await dev_kms.start()
    assert dev_kms.state.subscribers == []


# ---- kubernetes auth ---------------------------------------------------------------------------

def k8s_seed() -> dict:
    from devkms import tiny_seed

    seed = tiny_seed()
    seed["identities"][0].update(id="svc-identity-id", kubernetes={"serviceAccounts": ["hanzo:*"]})
    seed["identities"][1].update(kubernetes={"serviceAccounts": ["other:reader"], "audience": "special"})
    return seed


async def test_kubernetes_login(dev_kms_factory, rsa_keys):
    key, other, pem = rsa_keys
    kms = await dev_kms_factory(seed=k8s_seed(), k8s_public_key_pem=pem, k8s_audience="kms.hanzo.ai")
    url = "/v1/auth/kubernetes-auth/login"
    status, _, body = await call(kms.base_url, "POST", url, json={"identityId": "svc-identity-id", "jwt": make_jwt(key)})
    assert status == 200 and set(body) == {"accessToken", "expiresIn", "accessTokenMaxTTL", "tokenType"}
    status, _, listing = await call(kms.base_url, "GET", "/v3/secrets/raw", token=body["accessToken"],
                                    params={"workspaceSlug": "test-proj", "environment": "prod", "secretPath": "/app"})
    assert status == 200 and len(listing["secrets"]) == 2
    now = int(time.time())
    for ident, jwt, word in [
        ("svc-identity-id", make_jwt(other), "signature"),
        ("svc-identity-id", make_jwt(key, exp=now - 120), "expired"),
        ("svc-identity-id", make_jwt(key, aud="someone-else"), "audience"),
        ("svc-identity-id", make_jwt(key, sub="system:serviceaccount:evil:chat"), "not allowed"),
        ("svc-identity-id", "not.a.jwt", "JWT"),
        ("svc-identity-id", "abc", "three"),
        ("reader", make_jwt(key, sub="system:serviceaccount:other:reader"), "audience"),  # needs aud "special"
        ("iam", make_jwt(key), "no kubernetes auth"),
        ("no-such-id", make_jwt(key), "no-such-id"),
    ]:
        status, _, err = await call(kms.base_url, "POST", url, json={"identityId": ident, "jwt": jwt})
        assert_error(status, err, 401, "UnauthorizedError", word)
        assert jwt not in json.dumps(err) or len(jwt) < 12
    status, _, body = await call(kms.base_url, "POST", url, json={
        "identityId": "reader", "jwt": make_jwt(key, sub="system:serviceaccount:other:reader", aud="special")})
    assert status == 200
    status, _, err = await call(kms.base_url, "POST", url, json={"identityId": "svc-identity-id"})
    assert_error(status, err, 422, "ValidationFailure", "jwt")


async def test_kubernetes_login_without_key_configured(dev_kms_factory, rsa_keys):
    key, _, _ = rsa_keys
    kms = await dev_kms_factory(seed=k8s_seed())
    status, _, err = await call(kms.base_url, "POST", "/v1/auth/kubernetes-auth/login",
                                json={"identityId": "svc-identity-id", "jwt": make_jwt(key)})
    assert_error(status, err, 401, "UnauthorizedError", "not configured")


def test_cli_k8s_public_key_flag(dev_server_process, rsa_keys, tmp_path):
    import urllib.request

    key, _, pem = rsa_keys
    pem_file = tmp_path / "sa.pub"
    pem_file.write_text(pem)
    from tests.conftest import ROOT

    srv = dev_server_process("--seed", str(ROOT / "examples" / "dev-kms.yaml"), "--k8s-jwt-public-key", str(pem_file))
    req = urllib.request.Request(srv.base_url + "/v1/auth/kubernetes-auth/login", method="POST",
                                 data=json.dumps({"identityId": "1d7e0f3a-5c2b-4b8e-9a61-0000000000a1", "jwt": make_jwt(key)}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.status == 200 and json.loads(r.read())["tokenType"] == "Bearer"
