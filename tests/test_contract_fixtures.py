"""Contract: the dev KMS in profile `infisical-recorded` answers every recorded request of
tests/fixtures/kms/ (55 exchanges with a real upstream Infisical server, see its README) as the
real server did: same status, same body shape (keys and JSON types, recursively, lists element
by element), the same values wherever they are deterministic (messages, error names, ids,
versions, values, timestamps of the seeded secrets), the same Content-Type, ETag presence (and
the same ETag wherever the body is byte-identical) and Retry-After.

Each fixture is replayed on a fresh server seeded like the recording (RECORDED_SEED) with a
test clock, after the steps that led to it in the recording (SCENARIOS). A drift between the
model and the recorded shapes fails here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from devkms import run_dev_kms
from tests.agent_support import make_jwt

FIXTURES = Path(__file__).parent / "fixtures" / "kms"
FILES = sorted(p.name for p in FIXTURES.glob("*.json"))
PROJECT_ID = "bc7c8033-386f-401d-bebc-51314dcc6a6d"
SHARED_FOLDER_ID = "bbe06386-3566-41af-bb1b-458b79c34371"
VIEWER_ID = "1e115b10-232b-4294-b9c3-66e1d76ba769"
K8S_ID = "c16f2369-aa0d-4095-a251-38119e4d4719"
MASKED = "<masked>"


def _s(value: str, sid: str, version: int, created: str, updated: str | None = None) -> dict:
    return {"value": value, "id": sid, "version": version, "createdAt": created, "updatedAt": updated or created}


# The recording's data (fixtures README): project secrets-639-c, env prod, /chat (importing
# /shared), /commerce, /shared, with the ids, versions and times the recorded bodies carry.
RECORDED_SEED: dict = {
    "identities": [
        {"name": "kms-injector-test", "id": VIEWER_ID, "clientId": "0b7784dd-6b56-4570-a699-6c2bc7d7462e",
         "clientSecret": "viewer-client-secret", "accessTokenTTL": 60, "accessTokenMaxTTL": 600,
         "access": [{"project": "secrets-639-c", "read": True}]},
        {"name": "fx-ttl5", "clientId": "fx-ttl5-id", "clientSecret": "fx-ttl5-secret", "accessTokenTTL": 5,
         "accessTokenMaxTTL": 600, "access": [{"project": "secrets-639-c", "read": True}]},
        {"name": "fx-jwtexp", "clientId": "fx-jwtexp-id", "clientSecret": "fx-jwtexp-secret", "accessTokenTTL": 2,
         "accessTokenMaxTTL": 4, "access": [{"project": "secrets-639-c", "read": True}]},
        {"name": "fx-maxttl60", "clientId": "fx-maxttl60-id", "clientSecret": "fx-maxttl60-secret", "accessTokenTTL": 60,
         "accessTokenMaxTTL": 60, "access": [{"project": "secrets-639-c", "read": True}]},
        {"name": "fx-writer", "clientId": "fx-writer-id", "clientSecret": "fx-writer-secret", "accessTokenTTL": 60,
         "accessTokenMaxTTL": 600, "access": [{"project": "secrets-639-c", "read": True, "write": True}]},
        {"name": "fx-outsider", "clientId": "fx-outsider-id", "clientSecret": "fx-outsider-secret", "accessTokenTTL": 60,
         "accessTokenMaxTTL": 600, "access": []},
        {"name": "fx-k8s", "id": K8S_ID, "clientId": "fx-k8s-id", "clientSecret": "fx-k8s-secret", "accessTokenTTL": 60,
         "accessTokenMaxTTL": 600, "kubernetes": {"serviceAccounts": ["chat:*"]},
         "access": [{"project": "secrets-639-c", "read": True}]},
    ],
    "projects": {"secrets-639-c": {"id": PROJECT_ID, "environments": {"prod": {"folders": {
        "/chat": {"imports": ["/shared"], "secrets": {
            "lower-case.key": _s("odd-9455", "014f9a10-8215-4966-a075-e5afe67e0c3d", 1, "2026-12-01T07:02:12.335Z"),
            "URL": _s("postgres://${DB_USER}@db/chat", "4291327c-3235-4fe1-babd-52b835fd7074", 1, "2026-12-01T07:25:31.701Z"),
            ".hidden": _s("odd-8614", "4c10ccf2-936e-40c1-bd51-d9e1aebd779f", 1, "2026-12-01T07:02:12.221Z"),
            "DATABASE_URL": _s("postgres://chat:dummy@db/chat", "5eeba507-2ad1-4ba1-92c2-0e48d21fa8ad", 1, "2026-12-01T07:01:01.206Z"),
            "..data": _s("odd-809", "6793f08c-9279-4d20-a698-849cc338b911", 1, "2026-12-01T07:02:11.733Z"),
            "DB_USER": _s("chat_user", "71ad46f0-1b84-4d93-8217-8843ed6da643", 1, "2026-12-01T07:25:31.658Z"),
            "XENV_REF": _s("${commerce.STRIPE_KEY}", "7accd5c3-bfa7-4184-a08a-adf75cc9d944", 1, "2026-12-01T07:04:57.876Z"),
            "API_KEY": _s("chat-api-key-v4", "8482b6ef-42b8-4f88-83bc-5138e55c19e9", 4, "2026-12-01T07:01:01.268Z",
                          "2026-12-01T07:04:07.553Z"),
            "REF_TEST": _s("prefix-${DATABASE_URL}", "99654c7f-35d0-40b0-a6d3-1ce53cb30fdf", 1, "2026-12-01T07:04:57.754Z"),
            "odd.name-with_dash": _s("odd-v1", "9be70e89-f5c7-4cb1-a346-40e06adfbbae", 1, "2026-12-01T07:01:01.336Z"),
            "ключ": _s("odd-10556", "a3fdcebf-9d45-4fcc-8b13-0a75ece68cb3", 1, "2026-12-01T07:02:12.068Z"),
            "../escape": _s("odd-31265", "a6044957-30e8-4865-a011-41bd236d6e78", 1, "2026-12-01T07:02:11.592Z"),
            "a/b": _s("odd-28704", "b25e310e-2f35-4451-966c-b81b829d4d22", 1, "2026-12-01T07:02:11.870Z"),
            "with space": _s("odd-29979", "df79d293-ad19-4c0c-84d4-c15a11b2c3e6", 1, "2026-12-01T07:02:11.449Z"),
        }},
        "/commerce": {"secrets": {
            "STRIPE_KEY": _s("sk_test_dummy", "61cc11c2-a050-40ef-9767-322ebb88b42f", 1, "2026-12-01T07:01:01.431Z"),
            "DATABASE_URL": _s("postgres://commerce:dummy@db/commerce", "be589719-00c5-47d4-9473-78b4663f02ed", 1,
                               "2026-12-01T07:01:01.510Z"),
        }},
        "/shared": {"id": SHARED_FOLDER_ID, "secrets": {
            "API_KEY": _s("shared-api-key-should-lose", "0cfed0d5-57f3-4c23-87ce-cfc5f4e49723", 1, "2026-12-01T07:01:01.608Z"),
            "SHARED_TOKEN": _s("shared-v2", "16b15118-c232-4f11-9202-3bc918f8df61", 2, "2026-12-01T07:01:01.559Z",
                               "2026-12-01T07:01:51.565Z"),
        }},
    }}}}},
}
SECRETS = {i["name"]: i["clientSecret"] for i in RECORDED_SEED["identities"]}
VIEWER_CLIENT_ID = RECORDED_SEED["identities"][0]["clientId"]


class ReplayClock:
    """The dev KMS's clock for this test (DevKms(clock=...)): TTLs pass when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replay:
    """What a scenario sets up before the recorded request is sent."""
    kms: Any
    session: aiohttp.ClientSession
    clock: ReplayClock
    key: Any
    token: str | None = None          # substituted for "<token>" in the Authorization header / body
    body_token: str | None = None     # substituted for "<token>" in the request body (k8s JWT, renew)
    masked: set[str] = field(default_factory=set)  # response keys whose values are not deterministic

    async def post(self, path: str, body: dict, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.post(self.kms.base_url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def login(self, who: str = "kms-injector-test") -> str:
        cid = VIEWER_CLIENT_ID if who == "kms-injector-test" else f"{who}-id"
        status, body = await self.post("/v1/auth/universal-auth/login", {"clientId": cid, "clientSecret": SECRETS[who]})
        assert status == 200, body
        return body["accessToken"]

    async def write(self, method: str, name: str, value: str) -> None:
        tok = await self.login("fx-writer")
        async with self.session.request(method, f"{self.kms.base_url}/v3/secrets/raw/{name}", headers={"Authorization": f"Bearer {tok}"},
                                        json={"workspaceId": PROJECT_ID, "environment": "prod", "secretPath": "/chat",
                                              "type": "shared", "secretValue": value}) as r:
            assert r.status == 200, await r.text()

    def after_api_key_update(self) -> None:
        """The state of the later files: API_KEY in /chat was updated once more (13 'after')."""
        s = self.kms.state.projects["secrets-639-c"].environments["prod"].folders["/chat"].secrets["API_KEY"]
        s.value, s.version, s.updated_at = "chat-api-key-v-etag-test", 5, "2026-12-01T07:25:47.802Z"


Scenario = Callable[[Replay], Any]


async def viewer(r: Replay) -> None:
    r.token = await r.login()


def as_identity(who: str, *, advance: float = 0.0, revoke: bool = False, renew_first: bool = False) -> Scenario:
    async def run(r: Replay) -> None:
        tok = await r.login(who)
        if revoke:
            status, _ = await r.post("/v1/auth/token/revoke", {"accessToken": tok})
            assert status == 200
        r.clock.now += advance
        if renew_first:
            status, _ = await r.post("/v1/auth/token/renew", {"accessToken": tok})
            assert status == 401
        r.token = r.body_token = tok
    return run


async def nothing(r: Replay) -> None:
    pass


async def four_wrong_logins(r: Replay) -> None:
    for _ in range(4):
        status, _ = await r.post("/v1/auth/universal-auth/login", {"clientId": VIEWER_CLIENT_ID, "clientSecret": "not-the-client-secret-0000"})
        assert status == 401


async def after_state(r: Replay) -> None:
    r.after_api_key_update()
    r.token = await r.login()


async def writer(r: Replay) -> None:
    r.token = await r.login("fx-writer")


def writer_with_new_secret(*steps: tuple[str, str]) -> Scenario:
    async def run(r: Replay) -> None:
        for method, value in steps:
            await r.write(method, "NEW_SECRET", value)
        r.token = await r.login("fx-writer")
        r.masked |= {"id", "_id", "createdAt", "updatedAt"}
    return run


async def viewer_with_new_secret(r: Replay) -> None:
    await r.write("POST", "NEW_SECRET", "new-v1")
    r.token = await r.login()


async def writer_creates(r: Replay) -> None:
    r.token = await r.login("fx-writer")
    r.masked |= {"id", "_id", "createdAt", "updatedAt"}


async def outsider(r: Replay) -> None:
    r.token = await r.login("fx-outsider")


def k8s_jwt(sa: str) -> Scenario:
    async def run(r: Replay) -> None:
        ns, name = sa.split("/")
        r.body_token = make_jwt(r.key, sub=f"system:serviceaccount:{ns}:{name}")
    return run


async def k8s_token_then_list(r: Replay) -> None:
    r.after_api_key_update()
    status, body = await r.post("/v1/auth/kubernetes-auth/login", {"identityId": K8S_ID, "jwt": make_jwt(r.key, sub="system:serviceaccount:chat:chat")})
    assert status == 200, body
    r.token = body["accessToken"]


async def garbage_token(r: Replay) -> None:
    r.token = "not-a-jwt-garbage"


async def rate_limited(r: Replay) -> None:
    r.kms.state.rate_limit = 1  # the dev limiter (per identity per second; the clock stands still)
    r.token = await r.login()
    async with r.session.get(r.kms.base_url + "/v3/secrets/raw", headers={"Authorization": f"Bearer {r.token}"},
                             params={"workspaceSlug": "secrets-639-c", "environment": "prod", "secretPath": "/chat"}) as resp:
        assert resp.status == 200


SCENARIOS: dict[str, Scenario] = {
    "01-login-ok.json": nothing,
    "02-login-wrong-secret.json": nothing,
    "03-login-wrong-4th-attempt.json": four_wrong_logins,
    "03-login-ok-after-3-failures.json": four_wrong_logins,
    "04-renew-ok.json": as_identity("kms-injector-test", advance=1),
    "05-list-with-ttl-expired-token.json": as_identity("fx-ttl5", advance=6.5),
    "05-renew-ttl-expired.json": as_identity("fx-ttl5", advance=6.5),
    "05-renew-ttl-expired-again.json": as_identity("fx-ttl5", advance=6.5, renew_first=True),
    "06-list-with-jwt-expired-token.json": as_identity("fx-jwtexp", advance=6.5),
    "06-renew-jwt-expired.json": as_identity("fx-jwtexp", advance=6.5),
    "06-renew-past-max-ttl.json": as_identity("fx-maxttl60", advance=0.5),
    "07-revoke.json": as_identity("kms-injector-test"),
    "08-list-with-revoked-token.json": as_identity("kms-injector-test", revoke=True),
    "08-renew-revoked-token.json": as_identity("kms-injector-test", revoke=True),
    "09-list-chat-with-imports.json": viewer,
    "10-list-expand-references.json": viewer,
    "11-list-no-expand.json": viewer,
    "12-list-if-none-match-304.json": viewer,
    "13-list-viewSecretValue-false-before.json": viewer,
    "13-list-viewSecretValue-false-after.json": after_state,
    "14-list-missing-folder.json": viewer,
    "15-list-missing-env.json": viewer,
    "16-list-missing-project.json": viewer,
    "17-list-no-access.json": outsider,
    "18-list-recursive-root.json": after_state,
    "19-get-single-secret.json": viewer,
    "19-get-single-secret-missing.json": viewer,
    "19-get-single-secret-from-import.json": viewer,
    "20-create-secret.json": writer_creates,
    "20-create-secret-exists.json": writer_with_new_secret(("POST", "new-v1")),
    "20-create-secret-by-slug.json": writer,
    "21-update-secret.json": writer_with_new_secret(("POST", "new-v1")),
    "21-update-secret-null-optionals.json": writer_with_new_secret(("POST", "new-v1")),
    "21-update-secret-missing.json": writer,
    "21-update-secret-viewer-403.json": viewer_with_new_secret,
    "22-delete-secret.json": writer_with_new_secret(("POST", "new-v1"), ("PATCH", "new-v2")),
    "22-delete-secret-missing.json": writer,
    "23-events-subscribe.json": viewer,
    "24-k8s-login-not-configured.json": nothing,
    "24-k8s-login-unknown-identity.json": nothing,
    "24-k8s-login-junk-jwt.json": nothing,
    "24-k8s-login-not-a-jwt.json": nothing,
    "24-k8s-login-namespace-not-allowed.json": k8s_jwt("default/kms-reviewer"),
    "24-k8s-login-ok.json": k8s_jwt("chat/chat"),
    "24-k8s-list-with-k8s-token.json": k8s_token_then_list,
    "25-list-no-token.json": nothing,
    "26-list-missing-environment.json": viewer,
    "27-list-workspaceId-is-slug.json": viewer,
    "28-list-bad-enum.json": viewer,
    "29-list-garbage-token.json": garbage_token,
    "30-list-trailing-slash.json": after_state,
    "31-list-by-workspaceId.json": after_state,
    "32-login-missing-field.json": nothing,
    "32-login-unknown-client.json": nothing,
    "33-list-rate-limited.json": rate_limited,
}


def test_every_fixture_has_a_scenario():
    assert len(FILES) == 55, FILES
    assert set(FILES) == set(SCENARIOS), set(FILES) ^ set(SCENARIOS)


def shape_diff(want: Any, got: Any, where: str = "$", masked: frozenset = frozenset()) -> list[str]:
    """Differences in keys, JSON types and values (recursively; lists element by element). A
    recorded "<token>" only requires a string; keys in `masked` only require the same type."""
    if want == "<token>":
        return [] if isinstance(got, str) and got else [f"{where}: expected a token string, got {got!r:.80}"]
    if type(want) is not type(got) and not (isinstance(want, (int, float)) and isinstance(got, (int, float))
                                            and not isinstance(want, bool) and not isinstance(got, bool)):
        return [f"{where}: type {type(want).__name__} recorded, {type(got).__name__} served"]
    if isinstance(want, dict):
        out = []
        if list(want) != list(got):
            out.append(f"{where}: keys {list(want)} recorded, {list(got)} served")
        for k in want:
            if k in got:
                out += shape_diff(want[k], got[k], f"{where}.{k}", masked) if k not in masked else []
        return out
    if isinstance(want, list):
        if len(want) != len(got):
            return [f"{where}: {len(want)} items recorded, {len(got)} served"]
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in shape_diff(w, g, f"{where}[{i}]", masked)]
    return [] if want == got else [f"{where}: {want!r:.120} recorded, {got!r:.120} served"]


def _substitute(value: Any, token: str | None) -> Any:
    if value == "<token>":
        return token
    if value == "<client-secret>":
        return SECRETS["kms-injector-test"]
    if isinstance(value, dict):
        return {k: _substitute(v, token) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", FILES)
async def test_recorded_exchange(name: str, rsa_keys) -> None:
    fx = json.loads((FIXTURES / name).read_text())
    req, want = fx["request"], fx["response"]
    key, _, pem = rsa_keys
    clock = ReplayClock()
    async with run_dev_kms(RECORDED_SEED, profile="infisical-recorded", clock=clock, k8s_public_key_pem=pem,
                           k8s_audience="kms.hanzo.ai") as kms, aiohttp.ClientSession() as session:
        replay = Replay(kms, session, clock, key)
        await SCENARIOS[name](replay)
        headers = {k: v for k, v in req["headers"].items() if k != "Authorization"}
        if "Authorization" in req["headers"]:
            headers["Authorization"] = req["headers"]["Authorization"].replace("<token>", replay.token or "")
        body = _substitute(req["body"], replay.body_token) if req["body"] is not None else None
        data = json.dumps(body).encode() if body is not None else None
        url = kms.root_url + req["path"]
        async with session.request(req["method"], url, params=req["query"], headers=headers, data=data) as r:
            status, got_headers, raw = r.status, r.headers, await r.read()
    assert status == want["status"], (name, raw[:400])
    assert got_headers.get("Content-Type") == want["headers"]["Content-Type"], name
    assert ("ETag" in got_headers) == ("ETag" in want["headers"]), name
    assert ("Retry-After" in got_headers) == ("Retry-After" in want["headers"]), name
    if "Retry-After" in want["headers"]:
        assert int(got_headers["Retry-After"]) >= 1
    if want["body"] == "":
        assert raw == b"", name
    else:
        got = json.loads(raw)
        masked = frozenset(replay.masked) if want["status"] == 200 else frozenset()  # errors carry no fresh ids
        diffs = shape_diff(want["body"], got, masked=masked)
        assert not diffs, (name, diffs[:10])
        if not masked and "<token>" not in json.dumps(want["body"]):
            # deterministic: byte for byte the recorded body, so the ETag (a hash of it) is the recorded one
            assert raw == json.dumps(want["body"], separators=(",", ":"), ensure_ascii=False).encode(), name
            assert got_headers["ETag"] == want["headers"]["ETag"], name
    if want["status"] == 304:
        assert got_headers["ETag"] == want["headers"]["ETag"]
