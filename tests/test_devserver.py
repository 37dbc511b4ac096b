"""The dev KMS over real HTTP on 127.0.0.1: every route, the documented shapes, errors and hooks."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from devkms import SeedError, parse_seed, run_dev_kms, tiny_seed
from devkms.model import path_matches

ROOT = Path(__file__).resolve().parents[1]
SECRET_FIELDS = {"id", "_id", "workspace", "environment", "version", "type", "secretKey", "secretValue",
                 "secretComment", "secretPath", "secretValueHidden", "tags", "secretMetadata", "createdAt", "updatedAt"}
LIST = "/v3/secrets/raw"
Q = {"workspaceSlug": "test-proj", "environment": "prod"}


async def call(base: str, method: str, path: str, *, token: str | None = None, **kw):
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s:
        async with s.request(method, base + path, headers=headers, **kw) as r:
            raw = await r.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            return r.status, r.headers, body


async def login(base: str, who: str = "svc") -> str:
    status, _, body = await call(base, "POST", "/v1/auth/universal-auth/login",
                                 json={"clientId": f"{who}-id", "clientSecret": f"{who}-secret"})
    assert status == 200, body
    return body["accessToken"]


def assert_error(status: int, body, expected: int, error: str | None = None, *words: str) -> None:
    assert status == expected, body
    assert set(body) == {"reqId", "statusCode", "message", "error"}, body
    assert body["statusCode"] == expected
    if error:
        assert body["error"] == error, body
    for w in words:
        assert w in body["message"], body


async def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = await cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- auth ------------------------------------------------------------------------------------

async def test_login_renew_revoke_shapes(dev_kms):
    status, headers, body = await call(dev_kms.base_url, "POST", "/v1/auth/universal-auth/login",
                                       json={"clientId": "svc-id", "clientSecret": "svc-secret"})
    assert status == 200 and headers.get("ETag")
    assert set(body) == {"accessToken", "expiresIn", "accessTokenMaxTTL", "tokenType"}
    assert body["expiresIn"] == 7200 and body["accessTokenMaxTTL"] == 2592000 and body["tokenType"] == "Bearer"
    tok = body["accessToken"]
    status, _, renewed = await call(dev_kms.base_url, "POST", "/v1/auth/token/renew", json={"accessToken": tok})
    assert status == 200 and renewed["accessToken"] == tok and renewed["expiresIn"] == 7200
    status, _, out = await call(dev_kms.base_url, "POST", "/v1/auth/token/revoke", json={"accessToken": tok})
    assert status == 200 and isinstance(out["message"], str)
    status, _, err = await call(dev_kms.base_url, "GET", LIST, token=tok, params=Q)
    assert_error(status, err, 403, "TokenError")


async def test_wrong_credentials_and_lockout(dev_kms_factory):
    kms = await dev_kms_factory(lockout_seconds=1.5)
    bad = {"clientId": "svc-id", "clientSecret": "nope"}
    status, _, err = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": "who", "clientSecret": "x"})
    assert_error(status, err, 401, "UnauthorizedError", "Invalid credentials")
    for _ in range(2):
        status, _, err = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json=bad)
        assert_error(status, err, 401, "UnauthorizedError", "Invalid credentials")
        assert "nope" not in json.dumps(err)
    status, _, err = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json=bad)
    assert_error(status, err, 401, None, "locked")
    # even the right secret is refused while locked; the message says so
    good = {"clientId": "svc-id", "clientSecret": "svc-secret"}
    status, headers, err = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json=good)
    assert_error(status, err, 401, None, "locked", "svc")
    assert int(headers["Retry-After"]) >= 1

    async def unlocked():
        s, _, b = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json=good)
        return s == 200 and b
    assert (await wait_for(unlocked, what="lockout to end"))["accessToken"]


async def test_token_expiry_is_403_token_error_and_renew_past_max_ttl_is_401(dev_kms_factory):
    kms = await dev_kms_factory(token_ttl=1, max_ttl=2.5)
    tok = await login(kms.base_url)
    # renew inside the max TTL works, and extends the token
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/token/renew", json={"accessToken": tok})
    assert status == 200 and body["expiresIn"] == 1 and body["accessTokenMaxTTL"] == 2.5

    async def renew_refused():
        s, _, b = await call(kms.base_url, "POST", "/v1/auth/token/renew", json={"accessToken": tok})
        return (s, b) if s != 200 else None
    status, err = await wait_for(renew_refused, what="renew past max TTL")
    if status == 401:  # the usual case: age + ttl > max ttl while the token still lives
        assert_error(status, err, 401, "UnauthorizedError", "max TTL")
    else:  # a very slow machine may let the token lapse first
        assert_error(status, err, 403, "TokenError")

    async def expired():
        s, _, b = await call(kms.base_url, "GET", LIST, token=tok, params=Q)
        return (s, b) if s != 200 else None
    status, err = await wait_for(expired, what="token expiry")
    assert_error(status, err, 403, "TokenError", "expired")
    status, _, err = await call(kms.base_url, "POST", "/v1/auth/token/renew", json={"accessToken": tok})
    assert_error(status, err, 403, "TokenError")


async def test_token_missing_and_bad_token(dev_kms):
    status, _, err = await call(dev_kms.base_url, "GET", LIST, params=Q)
    assert_error(status, err, 401, "UnauthorizedError", "Token missing")
    status, _, err = await call(dev_kms.base_url, "GET", LIST, params=Q, token="not-a-token")
    assert_error(status, err, 403, "TokenError")
    status, _, err = await call(dev_kms.base_url, "GET", LIST, params=Q, headers={"Authorization": "Basic abc"})
    assert_error(status, err, 401, None, "Token missing")


@pytest.mark.parametrize("path", ["/v1/auth/universal-auth/login", "/v1/auth/token/renew", "/v1/auth/token/revoke"])
@pytest.mark.parametrize("data,expected", [
    (b"{bad json", 400), (b"[1,2]", 422), (b"", 422), (b"null", 422), (b'{"clientId": 5, "accessToken": 5}', 422),
    (b'{"clientId": null, "accessToken": null}', 422), (b"\xff\xfe", 400), (b'{"clientId": "' + b"a" * 5000 + b'"}', 422),
])
async def test_auth_bad_bodies_are_4xx(dev_kms, path, data, expected):
    status, _, err = await call(dev_kms.base_url, "POST", path, data=data, headers={"Content-Type": "application/json"})
    assert_error(status, err, expected)


async def test_huge_body_is_413(dev_kms):
    tok = await login(dev_kms.base_url)
    body = {**Q, "workspaceId": "test-proj", "secretPath": "/app", "secretValue": "x" * (2 << 20)}
    status, _, err = await call(dev_kms.base_url, "POST", "/v3/secrets/raw/BIG", token=tok, json=body)
    assert_error(status, err, 413, "PayloadTooLarge")


# ---- reading -----------------------------------------------------------------------------------

async def test_list_shapes_imports_and_folder_wins(dev_kms):
    tok = await login(dev_kms.base_url)
    status, headers, body = await call(dev_kms.base_url, "GET", LIST, token=tok,
                                       params={**Q, "secretPath": "/app/", "include_imports": "true"})
    assert status == 200 and headers["ETag"].startswith('"')
    for s in body["secrets"] + [s for i in body["imports"] for s in i["secrets"]]:
        assert set(s) == SECRET_FIELDS, s
        assert s["workspace"] == "proj-test-id" and s["environment"] == "prod" and s["type"] == "shared"
    own = {s["secretKey"]: s["secretValue"] for s in body["secrets"]}
    assert own == {"API_KEY": "from-app", "DATABASE_URL": "postgres://app@db/app"}
    assert all(s["secretPath"] == "/app" for s in body["secrets"])
    (imp,) = body["imports"]
    assert imp["secretPath"] == "/shared" and imp["environment"] == "prod" and imp["folderId"]
    assert {s["secretKey"] for s in imp["secrets"]} == {"API_KEY", "SHARED_TOKEN"}
    # the folder's own value wins: merged the way clients do, and for a single-secret read
    merged = {s["secretKey"]: s["secretValue"] for i in body["imports"] for s in i["secrets"]} | own
    assert merged["API_KEY"] == "from-app" and merged["SHARED_TOKEN"] == "shared-token-value"
    status, _, one = await call(dev_kms.base_url, "GET", f"{LIST}/API_KEY", token=tok, params={**Q, "secretPath": "/app"})
    assert status == 200 and one["secret"]["secretValue"] == "from-app" and set(one["secret"]) == SECRET_FIELDS
    status, _, one = await call(dev_kms.base_url, "GET", f"{LIST}/SHARED_TOKEN", token=tok, params={**Q, "secretPath": "/app"})
    assert status == 200 and one["secret"]["secretValue"] == "shared-token-value" and one["secret"]["secretPath"] == "/shared"
    # without include_imports: no imports key, and only the folder's own secrets
    status, _, body = await call(dev_kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/app"})
    assert "imports" not in body and len(body["secrets"]) == 2


async def test_list_options(dev_kms):
    tok = await login(dev_kms.base_url)
    base = dev_kms.base_url
    # workspaceId may be the id or the slug
    for ws in ("proj-test-id", "test-proj"):
        status, _, body = await call(base, "GET", LIST, token=tok, params={"workspaceId": ws, "environment": "prod", "secretPath": "/app"})
        assert status == 200 and len(body["secrets"]) == 2
    status, _, body = await call(base, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "recursive": "true"})
    assert {(s["secretPath"], s["secretKey"]) for s in body["secrets"]} == {
        ("/app", "API_KEY"), ("/app", "DATABASE_URL"), ("/app/sub", "NESTED_KEY")}
    # accepted-and-ignored parameters
    status, _, body = await call(base, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "tagSlugs": "a,b",
                                                                      "version": "3", "viewSecretValue": "true"})
    assert status == 200
    status, _, body = await call(base, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "viewSecretValue": "false"})
    assert all(s["secretValueHidden"] and s["secretValue"] != "from-app" for s in body["secrets"])
    # references expand only when asked
    dev_kms.set_secret("test-proj", "prod", "/app", "REF", "key=${API_KEY};tok=${SHARED_TOKEN};x=${prod.app.sub.NESTED_KEY};u=${NOPE}")
    status, _, body = await call(base, "GET", f"{LIST}/REF", token=tok, params={**Q, "secretPath": "/app", "expandSecretReferences": "true"})
    assert body["secret"]["secretValue"] == "key=from-app;tok=shared-token-value;x=nested-value;u=${NOPE}"
    status, _, body = await call(base, "GET", f"{LIST}/REF", token=tok, params={**Q, "secretPath": "/app"})
    assert body["secret"]["secretValue"].startswith("key=${API_KEY}")


async def test_etag_304_and_change(dev_kms):
    tok = await login(dev_kms.base_url)
    params = {**Q, "secretPath": "/app", "include_imports": "true"}
    status, headers, _ = await call(dev_kms.base_url, "GET", LIST, token=tok, params=params)
    etag = headers["ETag"]
    async with aiohttp.ClientSession() as s:
        async with s.get(dev_kms.base_url + LIST, params=params,
                         headers={"Authorization": f"Bearer {tok}", "If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b"" and r.headers["ETag"] == etag
    # a change in an imported folder changes the answer
    before = dev_kms.state.folder(dev_kms.state.project("test-proj"), dev_kms.state.project("test-proj").environments["prod"], "/shared").secrets["SHARED_TOKEN"].version
    dev_kms.set_secret("test-proj", "prod", "/shared", "SHARED_TOKEN", "rotated")
    status, headers, body = await call(dev_kms.base_url, "GET", LIST, token=tok, params=params,
                                       headers={"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag
    (s,) = [s for s in body["imports"][0]["secrets"] if s["secretKey"] == "SHARED_TOKEN"]
    assert s["secretValue"] == "rotated" and s["version"] == before + 1
    # single-secret reads carry ETags too
    status, headers, _ = await call(dev_kms.base_url, "GET", f"{LIST}/API_KEY", token=tok, params=params)
    status2, _, body2 = await call(dev_kms.base_url, "GET", f"{LIST}/API_KEY", token=tok, params=params,
                                   headers={"If-None-Match": headers["ETag"]})
    assert status == 200 and status2 == 304 and body2 is None


@pytest.mark.parametrize("params,expected,words", [
    ({"environment": "prod"}, 400, ["Missing project id or environment"]),
    ({"workspaceSlug": "test-proj"}, 400, ["Missing project id or environment"]),
    ({**Q, "recursive": "maybe"}, 400, ["recursive", "true"]),
    ({**Q, "include_imports": "2"}, 400, ["include_imports"]),
    ({**Q, "secretPath": "/app/../restricted"}, 400, [".."]),
    ({**Q, "secretPath": "app"}, 400, ["start with '/'"]),
    ({**Q, "version": "x"}, 400, ["version"]),
    ({"workspaceSlug": "nope", "environment": "prod"}, 404, ["nope"]),
    ({"workspaceSlug": "test-proj", "environment": "qa"}, 404, ["qa"]),
    ({**Q, "secretPath": "/missing"}, 404, ["/missing"]),
])
async def test_list_bad_params(dev_kms, params, expected, words):
    tok = await login(dev_kms.base_url)
    status, _, err = await call(dev_kms.base_url, "GET", LIST, token=tok, params=params)
    assert_error(status, err, expected, None, *words)


async def test_permission_denied_names_project_env_path(dev_kms):
    tok = await login(dev_kms.base_url, "reader")
    status, _, body = await call(dev_kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "recursive": "true"})
    assert status == 200 and len(body["secrets"]) == 3
    status, _, err = await call(dev_kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/restricted"})
    assert_error(status, err, 403, "PermissionDenied", "reader", "test-proj", "prod", "/restricted")
    assert "admin-value" not in json.dumps(err)
    status, _, err = await call(dev_kms.base_url, "GET", LIST, token=tok, params={"workspaceSlug": "test-proj", "environment": "dev", "secretPath": "/app"})
    assert_error(status, err, 403, "PermissionDenied", "dev")
    # an import the identity cannot read is left out, not leaked
    status, _, body = await call(dev_kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "include_imports": "true"})
    assert status == 200 and body["imports"] == []
    status, _, err = await call(dev_kms.base_url, "PATCH", f"{LIST}/API_KEY", token=tok,
                                json={**Q, "workspaceId": "test-proj", "secretPath": "/app", "secretValue": "x"})
    assert_error(status, err, 403, "PermissionDenied", "write", "/app")
    iam = await login(dev_kms.base_url, "iam")
    status, _, err = await call(dev_kms.base_url, "GET", LIST, token=iam, params={**Q, "secretPath": "/app"})
    assert_error(status, err, 403, "PermissionDenied", "iam", "test-proj")


# ---- writing -----------------------------------------------------------------------------------

async def test_create_update_rename_delete(dev_kms):
    tok = await login(dev_kms.base_url)
    loc = {"workspaceId": "proj-test-id", "environment": "prod", "secretPath": "/app/"}
    nulls = {k: None for k in ("secretComment", "skipMultilineEncoding", "tagIds", "secretMetadata",
                               "secretReminderNote", "secretReminderRepeatDays", "newSecretName")}
    status, _, body = await call(dev_kms.base_url, "POST", f"{LIST}/NEW_KEY", token=tok,
                                 json={**loc, **nulls, "secretValue": "v1", "type": "shared"})
    assert status == 200 and set(body["secret"]) == SECRET_FIELDS
    assert body["secret"]["version"] == 1 and body["secret"]["secretPath"] == "/app"
    status, _, err = await call(dev_kms.base_url, "POST", f"{LIST}/NEW_KEY", token=tok, json={**loc, "secretValue": "v1"})
    assert_error(status, err, 400, None, "already exists")
    status, _, body = await call(dev_kms.base_url, "PATCH", f"{LIST}/NEW_KEY", token=tok,
                                 json={"projectSlug": "test-proj", "environment": "prod", "secretPath": "/app",
                                       "secretValue": "v2", **{k: None for k in nulls}, "secretComment": "rotated",
                                       "tagIds": [], "skipMultilineEncoding": False, "secretReminderRepeatDays": 3})
    assert status == 200 and body["secret"]["version"] == 2 and body["secret"]["secretComment"] == "rotated"
    assert dev_kms.get_value("test-proj", "prod", "/app", "NEW_KEY") == "v2"
    status, _, body = await call(dev_kms.base_url, "PATCH", f"{LIST}/NEW_KEY", token=tok,
                                 json={**loc, "newSecretName": "RENAMED"})
    assert status == 200 and body["secret"]["secretKey"] == "RENAMED" and body["secret"]["secretValue"] == "v2"
    status, _, body = await call(dev_kms.base_url, "GET", f"{LIST}/RENAMED", token=tok, params={**Q, "secretPath": "/app"})
    assert status == 200 and body["secret"]["version"] == 3
    status, _, body = await call(dev_kms.base_url, "DELETE", f"{LIST}/RENAMED", token=tok, json=loc)
    assert status == 200 and body["secret"]["secretKey"] == "RENAMED"
    for method, payload in (("GET", None), ("PATCH", {**loc, "secretValue": "x"}), ("DELETE", loc)):
        kw = {"params": {**Q, "secretPath": "/app"}} if method == "GET" else {"json": payload}
        status, _, err = await call(dev_kms.base_url, method, f"{LIST}/RENAMED", token=tok, **kw)
        assert_error(status, err, 404, "NotFound", "RENAMED")


_BAD_WRITES = [
    (b"{nope", 400, "Malformed JSON"),
    (b'"a string"', 422, "JSON object"),
    (b'{"environment": "prod", "secretValue": "x"}', 400, "Missing project id or environment"),
    (b'{"workspaceId": 7, "environment": "prod", "secretValue": "x"}', 422, "workspaceId"),
    (b'{"workspaceId": "test-proj", "environment": ["prod"], "secretValue": "x"}', 422, "environment"),
    (b'{"workspaceId": "test-proj", "environment": "prod", "secretPath": "../x", "secretValue": "x"}', 400, "secretPath"),
]
_BAD_VALUE_FIELDS = [  # fields only POST/PATCH look at
    (b'{"workspaceId": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": "x", "tagIds": "t"}', 422, "tagIds"),
    (b'{"workspaceId": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": "x", "type": "weird"}', 422, "type"),
    (b'{"workspaceId": "test-proj", "environment": "prod", "secretPath": "/app", "secretValue": 12}', 422, "secretValue"),
]


@pytest.mark.parametrize("method,data,expected,word",
                         [(m, *c) for m in ("POST", "PATCH", "DELETE") for c in _BAD_WRITES]
                         + [(m, *c) for m in ("POST", "PATCH") for c in _BAD_VALUE_FIELDS])
async def test_write_bad_bodies(dev_kms, method, data, expected, word):
    tok = await login(dev_kms.base_url)
    status, _, err = await call(dev_kms.base_url, method, f"{LIST}/API_KEY", token=tok, data=data,
                                headers={"Content-Type": "application/json"})
    assert_error(status, err, expected, None, word)
    assert dev_kms.get_value("test-proj", "prod", "/app", "API_KEY") == "from-app"


async def test_create_value_type_errors(dev_kms):
    tok = await login(dev_kms.base_url)
    loc = {"workspaceId": "test-proj", "environment": "prod", "secretPath": "/app"}
    for bad in ({**loc}, {**loc, "secretValue": 5}, {**loc, "secretValue": None}, {**loc, "secretValue": {"a": 1}}):
        status, _, err = await call(dev_kms.base_url, "POST", f"{LIST}/K", token=tok, json=bad)
        assert_error(status, err, 422, "ValidationFailure", "secretValue")
    status, _, err = await call(dev_kms.base_url, "POST", f"{LIST}/{'K' * 600}", token=tok, json={**loc, "secretValue": "x"})
    assert_error(status, err, 422, "ValidationFailure", "too long")


async def test_never_500_on_garbage(dev_kms):
    tok = await login(dev_kms.base_url)
    cases = [
        ("GET", LIST, {"params": {"workspaceSlug": "\x00", "environment": "\u2603", "secretPath": "/" + "a" * 5000}}),
        ("GET", LIST, {"params": {**Q, "secretPath": "//app//"}}),
        ("GET", f"{LIST}/%00", {"params": Q}),
        ("PUT", LIST, {}),
        ("POST", "/v9/unknown", {"data": b"x"}),
        ("POST", f"{LIST}/X", {"data": b'{"workspaceId": "test-proj", "environment": "prod", "secretValue": "\\ud800"}',
                               "headers": {"Content-Type": "application/json"}}),
        ("PATCH", f"{LIST}/X", {"data": b"1e999999", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/v1/events/subscribe/project-events", {"data": b'{"projectId": [], "register": {}}'}),
        ("POST", "/v1/auth/kubernetes-auth/login", {"json": {"identityId": "svc", "jwt": "a.b.c"}}),
        ("POST", "/v1/auth/kubernetes-auth/login", {"json": {"identityId": 1, "jwt": None}}),
    ]
    for method, path, kw in cases:
        status, _, body = await call(dev_kms.base_url, method, path, token=tok, **kw)
        assert status < 500, (method, path, status, body)
        if status >= 400:
            assert isinstance(body, dict) and body["statusCode"] == status, (method, path, body)
    assert dev_kms.stats()["statuses"].get("500") is None


# ---- rate limit, faults, stats, audit, restart -------------------------------------------------

async def test_rate_limit_429_with_retry_after(dev_kms_factory):
    kms = await dev_kms_factory(rate_limit=3)
    tok = await login(kms.base_url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
        async def one():
            async with s.get(kms.base_url + LIST, params={**Q, "secretPath": "/app"}) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()
        results = await asyncio.gather(*(one() for _ in range(12)))
    limited = [r for r in results if r[0] == 429]
    assert limited and any(r[0] == 200 for r in results)
    for _, retry_after, body in limited:
        assert int(retry_after) >= 1
        assert_error(429, body, 429, "RateLimitExceeded", "svc")
    # another identity has its own budget
    other = await login(kms.base_url, "reader")
    status, _, _ = await call(kms.base_url, "GET", LIST, token=other, params={**Q, "secretPath": "/app"})
    assert status == 200


async def test_faults_and_stats(dev_kms):
    base, tok = dev_kms.base_url, await login(dev_kms.base_url)
    params = {**Q, "secretPath": "/app"}
    status, _, _ = await call(base, "DELETE", "/_dev/stats")
    assert status == 200
    status, _, out = await call(base, "POST", "/_dev/faults", json={"status": 503, "count": 2, "path": "/v3/secrets", "retryAfter": 2})
    assert status == 200 and out["faults"][0]["status"] == 503
    for _ in range(2):
        status, headers, err = await call(base, "GET", LIST, token=tok, params=params)
        assert_error(status, err, 503, "ServiceUnavailable", "Injected fault")
        assert headers["Retry-After"] == "2"
    status, _, _ = await call(base, "GET", LIST, token=tok, params=params)
    assert status == 200
    # wrong types: a 200 whose fields have the wrong JSON types
    await call(base, "POST", "/_dev/faults", json={"body": "wrong_types", "count": 1})
    status, _, body = await call(base, "GET", LIST, token=tok, params=params)
    assert status == 200 and not isinstance(body["secrets"], list)
    await call(base, "POST", "/_dev/faults", json={"body": "invalid_json", "count": 1})
    status, _, body = await call(base, "GET", LIST, token=tok, params=params)
    assert status == 200 and isinstance(body, bytes)
    # truncated: the connection is cut before Content-Length bytes arrive (stdlib client sees it too)
    await call(base, "POST", "/_dev/faults", json={"body": "truncate", "count": 1})

    def stdlib_get():
        req = urllib.request.Request(base + LIST + "?workspaceSlug=test-proj&environment=prod&secretPath=/app",
                                     headers={"Authorization": f"Bearer {tok}"})
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.read()
    with pytest.raises(Exception) as exc:
        await asyncio.to_thread(stdlib_get)
    assert "IncompleteRead" in type(exc.value).__name__ or "IncompleteRead" in repr(exc.value)
    # a delay applies until cleared
    await call(base, "POST", "/_dev/faults", json={"delay": 0.3})
    t0 = time.monotonic()
    status, _, _ = await call(base, "GET", LIST, token=tok, params=params)
    assert status == 200 and time.monotonic() - t0 >= 0.3
    status, _, out = await call(base, "DELETE", "/_dev/faults")
    assert status == 200 and out["faults"] == []
    status, _, err = await call(base, "POST", "/_dev/faults", json={"status": "x"})
    assert_error(status, err, 422, "ValidationFailure", "status")
    status, _, err = await call(base, "POST", "/_dev/faults", json={"bogus": 1})
    assert_error(status, err, 422, "ValidationFailure", "bogus")
    status, _, stats = await call(base, "GET", "/_dev/stats")
    assert stats["routes"]["GET /v3/secrets/raw"] == 7
    assert stats["identities"]["svc"] >= 5 and stats["statuses"]["503"] == 2
    assert stats["identityRoutes"]["svc"]["GET /v3/secrets/raw"] >= 5
    assert stats == {**stats, "total": sum(stats["routes"].values())}


async def test_test_hooks_can_be_turned_off(dev_kms_factory):
    kms = await dev_kms_factory(test_hooks=False)
    status, _, err = await call(kms.base_url, "GET", "/_dev/stats")
    assert_error(status, err, 404, "NotFound")


async def test_audit_lines_never_hold_values(dev_kms_factory, tmp_path):
    audit = tmp_path / "audit.jsonl"
    kms = await dev_kms_factory(audit_log=audit)
    tok = await login(kms.base_url)
    await call(kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/app", "include_imports": "true"})
    await call(kms.base_url, "GET", f"{LIST}/API_KEY", token=tok, params={**Q, "secretPath": "/app"})
    await call(kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/nope"})
    await call(kms.base_url, "GET", LIST, params=Q)
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["identity"], x["path"], x["status"]) for x in lines] == [
        ("svc", "/app", 200), ("svc", "/app", 200), ("svc", "/nope", 404), (None, "/", 401)]
    assert lines[0]["project"] == "test-proj" and lines[0]["environment"] == "prod" and lines[0]["client"] == "127.0.0.1"
    assert lines[1]["key"] == "API_KEY"
    text = audit.read_text()
    for value in ("from-app", "postgres://app@db/app", "shared-token-value", tok, "svc-secret"):
        assert value not in text


async def test_restart_on_same_port_keeps_state(dev_kms):
    tok = await login(dev_kms.base_url)
    port = dev_kms.port
    await dev_kms.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(dev_kms.base_url, "GET", LIST, token=tok, params=Q)
    await dev_kms.start()
    assert dev_kms.port == port
    status, _, body = await call(dev_kms.base_url, "GET", LIST, token=tok, params={**Q, "secretPath": "/app"})
    assert status == 200 and len(body["secrets"]) == 2


# ---- seed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate,words", [
    (lambda s: s["identities"][0].pop("clientId"), ["identities[0].clientId"]),
    (lambda s: s["identities"][0]["access"][0].update(paths=["app"]), ["paths[0]", "start with '/'"]),
    (lambda s: s["identities"][0]["access"][0].update(read="yes"), ["read", "true or false"]),
    (lambda s: s["identities"].append(dict(s["identities"][0])), ["duplicate"]),
    (lambda s: s["projects"]["test-proj"]["environments"]["prod"]["folders"].update({"/a/../b": {}}), [".."]),
    (lambda s: s.update(extra=1), ["extra"]),
    (lambda s: s["projects"]["test-proj"]["environments"]["prod"]["folders"]["/app"].update(imports="/shared"), ["imports"]),
])
def test_seed_errors_name_the_field(mutate, words):
    seed = tiny_seed()
    mutate(seed)
    with pytest.raises(SeedError) as err:
        parse_seed(seed)
    for w in words:
        assert w in str(err.value)


def test_path_globs():
    assert path_matches("/**", "/") and path_matches("/**", "/a/b")
    assert path_matches("/chat/**", "/chat") and path_matches("/chat/**", "/chat/x/y")
    assert not path_matches("/chat/**", "/chatty") and not path_matches("/*", "/a/b")
    assert path_matches("/chat/", "/chat") and path_matches("/svc-*", "/svc-a")


async def test_example_seed_platform_access():
    async with run_dev_kms(ROOT / "examples" / "dev-kms.yaml") as kms:
        svc = await login_as(kms, "hanzo-services")
        services = ["chat", "console", "analytics", "commerce", "flow", "rag", "search", "pricing", "vector",
                    "bootnode", "studio", "bot-hub", "app", "crawl", "auto", "lux-chat"]
        for name in services:
            status, _, body = await call(kms.base_url, "GET", LIST, token=svc,
                                         params={"workspaceSlug": "secrets-639-c", "environment": "prod",
                                                 "secretPath": f"/{name}", "include_imports": "true"})
            assert status == 200 and len(body["secrets"]) >= 3, name
        status, _, err = await call(kms.base_url, "GET", LIST, token=svc, params={"workspaceSlug": "hanzo-iam", "environment": "prod"})
        assert_error(status, err, 403, "PermissionDenied", "hanzo-iam")
        iam = await login_as(kms, "iam-service")
        status, _, body = await call(kms.base_url, "GET", LIST, token=iam, params={"workspaceSlug": "hanzo-iam", "environment": "prod", "secretPath": "/"})
        assert status == 200 and len(body["secrets"]) == 23
        status, _, err = await call(kms.base_url, "GET", LIST, token=iam,
                                    params={"workspaceSlug": "secrets-639-c", "environment": "prod", "secretPath": "/chat"})
        assert_error(status, err, 403, "PermissionDenied", "/chat")


async def login_as(kms, identity: str) -> str:
    cid, csec = kms.credentials(identity)
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": cid, "clientSecret": csec})
    assert status == 200
    return body["accessToken"]


# ---- the CLI as a real process -----------------------------------------------------------------

def _http(method: str, url: str, body: dict | None = None, token: str | None = None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_cli_prints_url_and_serves_curl_like_flow(dev_server_process, tmp_path):
    audit = tmp_path / "audit.jsonl"
    srv = dev_server_process("--seed", str(ROOT / "examples" / "dev-kms.yaml"), "--audit-log", str(audit))
    assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/api")
    status, body = _http("POST", srv.base_url + "/v1/auth/universal-auth/login",
                         {"clientId": "dev-hanzo-services-client-id", "clientSecret": "dev-hanzo-services-client-secret"})
    assert status == 200 and set(body) == {"accessToken", "expiresIn", "accessTokenMaxTTL", "tokenType"}
    status, listing = _http("GET", srv.base_url + "/v3/secrets/raw?workspaceSlug=secrets-639-c&environment=prod"
                                                  "&secretPath=/chat&include_imports=true", token=body["accessToken"])
    assert status == 200 and {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "JWT_SECRET"} <= {s["secretKey"] for s in listing["secrets"]}
    assert all(set(s) == SECRET_FIELDS for s in listing["secrets"])
    assert listing["imports"][0]["secretPath"] == "/shared"
    status, _ = _http("GET", srv.base_url + "/_dev/stats")
    assert status == 404  # test hooks are off unless --test-hooks
    assert srv.stop() == 0
    assert '"action":"read"' in audit.read_text()
    err = srv.stderr()
    assert '"event":"started"' in err and "dev-hanzo-services-client-secret" not in err


def test_cli_test_hooks_and_sigint(dev_server_process):
    import signal

    srv = dev_server_process("--seed", str(ROOT / "examples" / "dev-kms.yaml"), "--test-hooks", "--rate-limit", "100")
    status, stats = _http("GET", srv.base_url + "/_dev/stats")
    assert status == 200 and stats["total"] == 0
    assert srv.stop(signal.SIGINT) == 0


def test_cli_bad_arguments(tmp_path):
    import subprocess

    from tests.conftest import KMS_INJECTOR

    bad_seed = tmp_path / "seed.yaml"
    bad_seed.write_text("identities: [{name: x}]\n")
    r = subprocess.run([*KMS_INJECTOR, "dev-server", "--seed", str(bad_seed), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "identities[0].clientId" in r.stderr and r.stdout == ""
    r = subprocess.run([*KMS_INJECTOR, "dev-server", "--port", "-5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*KMS_INJECTOR, "dev-server", "--seed", str(ROOT / "examples" / "dev-kms.yaml"), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot listen" in r.stderr
