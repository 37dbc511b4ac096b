"""The dev KMS serving the newer canonical KMS API (`--api canonical`) over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.test_devserver import call, login

LOGIN = "/v1/kms/auth/login"


async def canonical_login(base: str, who: str = "svc") -> str:
    status, headers, body = await call(base, "POST", LOGIN, json={"clientId": f"{who}-id", "clientSecret": f"{who}-secret"})
    assert status == 200 and set(body) == {"accessToken", "expiresIn", "tokenType"}, body
    return body["accessToken"]


async def test_canonical_login_list_get(dev_kms_factory):
    kms = await dev_kms_factory(api="canonical")
    tok = await canonical_login(kms.base_url)
    status, headers, body = await call(kms.base_url, "GET", "/v1/kms/orgs/test-proj/secrets", token=tok,
                                       params={"path": "/app", "env": "prod"})
    assert status == 200 and "ETag" not in headers
    assert body == {"names": ["API_KEY", "DATABASE_URL", "SHARED_TOKEN"]}  # with the import of /shared
    for name, value in (("API_KEY", "from-app"), ("SHARED_TOKEN", "shared-token-value"), ("DATABASE_URL", "postgres://app@db/app")):
        status, _, body = await call(kms.base_url, "GET", f"/v1/kms/orgs/test-proj/secrets/app/{name}", token=tok, params={"env": "prod"})
        assert status == 200 and body == {"secret": {"value": value}}
    status, _, body = await call(kms.base_url, "GET", "/v1/kms/orgs/proj-test-id/secrets/app/sub/NESTED_KEY", token=tok, params={"env": "prod"})
    assert body == {"secret": {"value": "nested-value"}}
    kms.set_secret("test-proj", "prod", "/", "ROOT_KEY", "r")
    status, _, body = await call(kms.base_url, "GET", "/v1/kms/orgs/test-proj/secrets/ROOT_KEY", token=tok, params={"env": "prod"})
    assert body == {"secret": {"value": "r"}}


async def test_canonical_errors_and_infisical_paths_404(dev_kms_factory):
    kms = await dev_kms_factory(api="canonical")
    status, _, body = await call(kms.base_url, "POST", "/v1/auth/universal-auth/login", json={"clientId": "svc-id", "clientSecret": "svc-secret"})
    assert status == 404
    tok = await canonical_login(kms.base_url)
    cases = [
        ("POST", LOGIN, None, {"json": {"clientId": "svc-id", "clientSecret": "wrong"}}, 401, "Invalid credentials"),
        ("GET", "/v1/kms/orgs/test-proj/secrets", None, {"params": {"env": "prod", "path": "/app"}}, 401, "Token missing"),
        ("GET", "/v1/kms/orgs/test-proj/secrets", tok, {"params": {"path": "/app"}}, 400, "env"),
        ("GET", "/v1/kms/orgs/nope/secrets", tok, {"params": {"env": "prod"}}, 404, "nope"),
        ("GET", "/v1/kms/orgs/test-proj/secrets/app/MISSING", tok, {"params": {"env": "prod"}}, 404, "MISSING"),
        ("GET", "/v1/kms/orgs/test-proj/secrets", tok, {"params": {"env": "prod", "path": "/app/../x"}}, 400, ".."),
        ("GET", "/v1/kms/orgs/test-proj/secrets", tok, {"params": {"env": "prod", "path": "/nowhere"}}, 404, "/nowhere"),
    ]
    for method, path, token, kw, expected, word in cases:
        status, _, body = await call(kms.base_url, method, path, token=token, **kw)
        assert status == expected and set(body) == {"statusCode", "message"} and word in body["message"], (path, body)
    reader = await canonical_login(kms.base_url, "reader")
    status, _, body = await call(kms.base_url, "GET", "/v1/kms/orgs/test-proj/secrets", token=reader, params={"env": "prod", "path": "/restricted"})
    assert status == 403 and "/restricted" in body["message"]
    assert kms.stats()["routes"]["GET /v1/kms/orgs/{org}/secrets"] >= 3


async def test_both_apis_and_dev_secret_hook(dev_kms_factory):
    kms = await dev_kms_factory(api="both")
    inf, can = await login(kms.base_url), await canonical_login(kms.base_url)
    status, _, out = await call(kms.base_url, "PUT", "/_dev/secrets",
                                json={"project": "test-proj", "environment": "prod", "path": "/new/", "key": "K", "value": "v1"})
    assert status == 200 and out == {"key": "K", "path": "/new", "version": 1}
    status, _, out = await call(kms.base_url, "PUT", "/_dev/secrets",
                                json={"project": "test-proj", "environment": "prod", "path": "/new", "key": "K", "value": "v2"})
    assert out["version"] == 2
    status, _, body = await call(kms.base_url, "GET", "/v1/kms/orgs/test-proj/secrets/new/K", token=can, params={"env": "prod"})
    assert body == {"secret": {"value": "v2"}}
    status, _, body = await call(kms.base_url, "GET", "/v3/secrets/raw/K", token=inf,
                                 params={"workspaceSlug": "test-proj", "environment": "prod", "secretPath": "/new"})
    assert body["secret"]["secretValue"] == "v2"
    status, _, err = await call(kms.base_url, "PUT", "/_dev/secrets", json={"project": "test-proj", "environment": "prod", "key": "K"})
    assert status == 422 and "value" in err["message"]
    status, _, out = await call(kms.base_url, "DELETE", "/_dev/secrets", json={"project": "test-proj", "environment": "prod", "path": "/new", "key": "K"})
    assert status == 200
    status, _, err = await call(kms.base_url, "DELETE", "/_dev/secrets", json={"project": "test-proj", "environment": "prod", "path": "/new", "key": "K"})
    assert status == 404


def test_cli_api_canonical(dev_server_process):
    from tests.conftest import ROOT

    srv = dev_server_process("--seed", str(ROOT / "examples" / "dev-kms.yaml"), "--api", "canonical")
    req = urllib.request.Request(srv.base_url + LOGIN, method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"clientId": "dev-iam-service-client-id", "clientSecret": "dev-iam-service-client-secret"}).encode())
    with urllib.request.urlopen(req, timeout=20) as r:
        tok = json.loads(r.read())["accessToken"]
    req = urllib.request.Request(srv.base_url + "/v1/kms/orgs/hanzo-iam/secrets?env=prod&path=/", headers={"Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert len(json.loads(r.read())["names"]) == 23
    req = urllib.request.Request(srv.base_url + "/v1/auth/universal-auth/login", method="POST", data=b"{}")
    try:
        urllib.request.urlopen(req, timeout=20)
        raise AssertionError("the infisical login must be 404 under --api canonical")
    except urllib.error.HTTPError as e:
        assert e.code == 404
