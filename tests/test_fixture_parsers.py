"""Every response recorded from a real upstream Infisical server (tests/fixtures/kms/, see its
README) goes through the client's own parsers: each is understood, or refused with the typed
error its status means. A drift between what the client expects and what the server really sends
fails here, by file name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from injector.kms.auth import NEVER_EXPIRES, UniversalAuthFiles, parse_token_response
from injector.kms.client import KmsClient
from injector.kms.errors import (
    BadRequest, EmptyFolder, InvalidCredentials, KmsError, NotFound, PermissionDenied, ServerError, error_from_response,
)
from injector.kms.event_protocol import classify_refusal
from injector.kms.http import Headers, Response
from injector.kms.secrets import parse_folder, parse_secret

FIXTURES = Path(__file__).parent / "fixtures" / "kms"
FILES = sorted(FIXTURES.glob("*.json"))
SHARED = Path("/work/shared/fixtures/kms")

# The typed error each refused exchange must map to (status -> meaning, kms-api.md "Errors").
EXPECTED_ERRORS: dict[str, type[KmsError]] = {
    "02-login-wrong-secret": InvalidCredentials,
    "03-login-wrong-4th-attempt": InvalidCredentials,
    "05-list-with-ttl-expired-token": InvalidCredentials,
    "05-renew-ttl-expired-again": InvalidCredentials,
    "05-renew-ttl-expired": InvalidCredentials,
    "06-list-with-jwt-expired-token": InvalidCredentials,  # 403 TokenError: log in again
    "06-renew-jwt-expired": InvalidCredentials,
    "06-renew-past-max-ttl": InvalidCredentials,
    "08-list-with-revoked-token": InvalidCredentials,
    "08-renew-revoked-token": InvalidCredentials,
    "16-list-missing-project": ServerError,  # 500 "Failed to find project by slug" on this version
    "17-list-no-access": PermissionDenied,
    "19-get-single-secret-missing": NotFound,
    "20-create-secret-by-slug": InvalidCredentials,  # validation as 401 on this version
    "20-create-secret-exists": BadRequest,
    "21-update-secret-missing": NotFound,
    "21-update-secret-null-optionals": InvalidCredentials,
    "21-update-secret-viewer-403": PermissionDenied,
    "22-delete-secret-missing": NotFound,
    "23-events-subscribe": NotFound,
    "24-k8s-login-junk-jwt": InvalidCredentials,
    "24-k8s-login-namespace-not-allowed": InvalidCredentials,
    "24-k8s-login-not-a-jwt": InvalidCredentials,
    "24-k8s-login-not-configured": NotFound,
    "24-k8s-login-unknown-identity": NotFound,
    "25-list-no-token": InvalidCredentials,
    "26-list-missing-environment": BadRequest,
    "27-list-workspaceId-is-slug": NotFound,
    "28-list-bad-enum": InvalidCredentials,
    "29-list-garbage-token": InvalidCredentials,  # 403 TokenError (malformed)
    "32-login-missing-field": InvalidCredentials,
    "32-login-unknown-client": NotFound,  # an unknown clientId: NOT a sign of another API
    "33-list-rate-limited": ServerError,  # a 500 that carries Retry-After
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def response_of(ex: dict[str, Any]) -> Response:
    r = ex["response"]
    body = r["body"]
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return Response(r["status"], "", Headers(list(r["headers"].items())), raw)


def client(tmp_path: Path) -> KmsClient:
    return KmsClient("http://127.0.0.1:9/api", UniversalAuthFiles(str(tmp_path)))


def test_fixtures_are_the_recorded_ones() -> None:
    assert len(FILES) == 55, [f.name for f in FILES]
    if SHARED.is_dir():  # the copy is byte-identical to the shared recording
        for f in FILES:
            assert f.read_bytes() == (SHARED / f.name).read_bytes(), f.name


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_recorded_response_is_understood_or_typed(path: Path, tmp_path: Path) -> None:
    ex = load(path)
    req, status = ex["request"], ex["response"]["status"]
    resp = response_of(ex)
    route = req["path"].removeprefix("/api")
    where = {"host": "http://kms", "op": "fixture"}
    if status not in (200, 304):
        expected = EXPECTED_ERRORS[path.stem]
        err = error_from_response(status, resp.body, resp.headers.get("retry-after"), [], **where)
        assert type(err) is expected, (path.stem, type(err).__name__, str(err))
        assert f"status={status}" in str(err) and "<token>" not in str(err)
        if route.startswith("/v3/secrets/raw") and req["method"] == "GET" and route == "/v3/secrets/raw":
            with pytest.raises(expected):  # the client's own list path maps it the same way
                client(tmp_path)._result(resp, dict(where, project="p", env="e", path="/x"), None, True, False)
        if "retry-after" in resp.headers:
            assert err.retry_after == float(resp.headers["retry-after"]) and err.retryable
        return
    assert path.stem not in EXPECTED_ERRORS
    if route.startswith("/v1/auth/") and route != "/v1/auth/token/revoke":
        token, expires_in, max_ttl = parse_token_response(resp, where, [])
        assert token == "<token>" and expires_in == 60 and max_ttl == 600
    elif route == "/v1/auth/token/revoke":
        assert isinstance(resp.json().get("message"), str)
    elif route == "/v3/secrets/raw":
        conditional = "If-None-Match" in req["headers"]
        result = client(tmp_path)._result(resp, dict(where, project="secrets-639-c", env="prod", path=req["query"]["secretPath"]),
                                          req["headers"].get("If-None-Match"), req["query"].get("include_imports") == "true",
                                          conditional) if status == 304 or resp.json()["secrets"] else None
        if status == 304:
            assert result is not None and result.not_modified
            return
        parsed = parse_folder(resp.json(), req["query"].get("include_imports") == "true")
        assert not parsed.skipped, parsed.skipped
        if result is not None:
            assert result.secrets == parsed.secrets and result.etag == resp.headers["etag"]
            assert parsed.project_id.startswith("bc7c8033-")  # the real project id, for the event stream
    elif route.startswith("/v3/secrets/raw/"):
        key, value = parse_secret(resp.json())
        assert key == route.rsplit("/", 1)[1] and isinstance(value, str)
    else:  # pragma: no cover - a new fixture kind must be handled above
        raise AssertionError(f"unhandled fixture {path.name}")


def test_what_the_recorded_folders_deliver(tmp_path: Path) -> None:
    c = client(tmp_path)
    where = {"host": "http://kms", "project": "secrets-639-c", "env": "prod", "path": "/chat", "op": "list-secrets"}
    plain = c._result(response_of(load(FIXTURES / "09-list-chat-with-imports.json")), where, None, True, False).secrets
    assert plain["API_KEY"] == "chat-api-key-v4"  # the folder's own value beats the import's
    assert plain["SHARED_TOKEN"] == "shared-v2"  # from the import
    assert plain["URL"] == "postgres://${DB_USER}@db/chat"  # not expanded unless asked
    assert {"..data", "../escape", "a/b", "with space", "ключ"} <= set(plain)  # render skips the unsafe ones, by name
    expanded = c._result(response_of(load(FIXTURES / "10-list-expand-references.json")), where, None, True, False).secrets
    assert expanded["URL"] == "postgres://chat_user@db/chat" and expanded["REF_TEST"] == "prefix-postgres://chat:dummy@db/chat"
    assert expanded["XENV_REF"] == "${commerce.STRIPE_KEY}"  # unresolvable: left as written
    assert c.known_project_id("secrets-639-c") == "bc7c8033-386f-401d-bebc-51314dcc6a6d"
    recursive = parse_folder(load(FIXTURES / "18-list-recursive-root.json")["response"]["body"], False)
    assert recursive.secrets and not recursive.skipped


@pytest.mark.parametrize("name", ["14-list-missing-folder", "15-list-missing-env"])
def test_a_missing_folder_or_env_is_refused_as_empty(name: str, tmp_path: Path) -> None:
    where = {"host": "http://kms", "project": "secrets-639-c", "env": "prod", "path": "/nope", "op": "list-secrets"}
    with pytest.raises(EmptyFolder) as info:
        client(tmp_path)._result(response_of(load(FIXTURES / f"{name}.json")), where, None, True, False)
    line = str(info.value)
    for part in ("empty or does not exist", "host=http://kms", "project=secrets-639-c", "env=prod", "path=/nope",
                 "kms.hanzo.ai/allow-empty"):
        assert part in line, line
    allowed = KmsClient("http://127.0.0.1:9/api", UniversalAuthFiles(str(tmp_path)), allow_empty=True)
    assert allowed._result(response_of(load(FIXTURES / f"{name}.json")), where, None, True, False).secrets == {}


def test_the_recorded_events_404_means_not_available_here() -> None:
    ex = load(FIXTURES / "23-events-subscribe.json")
    kind, err = classify_refusal(404, response_of(ex).body)
    assert kind == "unavailable" and "404" in err.detail and "not found" in err.detail


def test_token_lifetimes_zero_and_periodic() -> None:
    def resp(body: dict) -> Response:
        return Response(200, "OK", Headers([("Content-Type", "application/json")]), json.dumps(body).encode())

    assert parse_token_response(resp({"accessToken": "t", "expiresIn": 0, "accessTokenMaxTTL": 0}), {}, [])[1:] == (NEVER_EXPIRES, None)
    assert parse_token_response(resp({"accessToken": "t", "expiresIn": 0}), {}, [], zero_means=3600.0)[1] == 3600.0
    assert parse_token_response(resp({"accessToken": "t", "expiresIn": 30, "accessTokenMaxTTL": 1_000_000_000}), {}, [])[1:] == (30.0, 1e9)
    for bad in ({"accessToken": "t", "expiresIn": -1}, {"accessToken": "t", "expiresIn": "60"}, {"accessToken": "", "expiresIn": 1},
                {"accessToken": "t\r\nX: y", "expiresIn": 1}, {"accessToken": "t", "expiresIn": 1, "accessTokenMaxTTL": True}):
        with pytest.raises(KmsError):
            parse_token_response(resp(bad), {}, [])
