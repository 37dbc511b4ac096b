"""The KMS client against the real dev KMS (devkms) over HTTP on 127.0.0.1.

Seed: devkms.tiny_seed(): project test-proj, /app imports /shared; identities svc
(all of test-proj), reader (prod /app/** only), iam; clientSecret = "<name>-secret".
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web

from injector.backoff import Backoff
from devkms import Fault
from injector.kms import KmsClient
from injector.kms.auth import KubernetesAuthFile, UniversalAuthFiles
from injector.kms.errors import (
    BadResponse,
    CredentialsUnavailable,
    InvalidCredentials,
    KmsError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    Unreachable,
    sanitize,
)

P, ENV = "test-proj", "prod"
APP_SECRETS = {
    "DATABASE_URL": "postgres://app@db/app",
    "API_KEY": "from-app",  # the folder's own value beats /shared's "from-shared"
    "SHARED_TOKEN": "shared-token-value",
}


def write_creds(directory: Path, identity: str, secret: str | None = None) -> UniversalAuthFiles:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "clientId").write_text(f"{identity}-id\n")
    (directory / "clientSecret").write_text(f"  {secret or identity + '-secret'}\n")
    return UniversalAuthFiles(str(directory))


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def retrying(call: Callable[[], Awaitable[Any]], *, backoff: Backoff, deadline: float,
                   on_error: Callable[[KmsError, float], None] | None = None,
                   should_retry: Callable[[KmsError], bool] = lambda e: e.retryable) -> Any:
    """What a caller's retry loop does with the client's typed errors (injector/kms/retry.py had
    this loop, used by nothing but these tests): retry what `err.retryable` says, never sooner
    than a RateLimited's Retry-After, until `deadline` (time.monotonic()) would pass."""
    while True:
        try:
            return await call()
        except KmsError as err:
            if not should_retry(err):
                raise
            delay = backoff.next_delay(floor=getattr(err, "retry_after", None) or 0.0)
            if time.monotonic() + delay > deadline:
                raise
            if on_error is not None:
                on_error(err, delay)
            await asyncio.sleep(delay)


def route_count(kms: Any, route: str) -> int:
    return kms.stats()["routes"].get(route, 0)


LOGIN = "POST /v1/auth/universal-auth/login"
RENEW = "POST /v1/auth/token/renew"
LIST = "GET /v3/secrets/raw"


def assert_clean(err: BaseException, *forbidden: str) -> None:
    """One line, and none of the forbidden strings (secrets, tokens, values) anywhere."""
    text = str(err)
    assert "\n" not in text and "\r" not in text
    for f in forbidden:
        assert f and f not in text and f not in repr(err), f"leaked {f[:3]}... in: {text}"
        for value in vars(err).values():
            assert f not in str(value)


# -- happy path, imports, ETag -------------------------------------------------------------------

async def test_login_fetch_merge_and_304(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        first = await client.fetch(P, ENV, "/app")
        assert not first.not_modified and first.secrets == APP_SECRETS and first.etag
        assert "from-app" not in repr(first)  # FetchResult's repr shows key names only

        again = await client.fetch(P, ENV, "/app", etag=first.etag)
        assert again.not_modified and again.secrets == {} and again.etag == first.etag
        assert dev_kms.stats()["statuses"].get("304") == 1

        own_only = await client.fetch(P, ENV, "/app/", include_imports=False)
        assert own_only.secrets == {"DATABASE_URL": "postgres://app@db/app", "API_KEY": "from-app"}

        dev_kms.set_secret(P, ENV, "/shared", "SHARED_TOKEN", "rotated")
        changed = await client.fetch(P, ENV, "/app", etag=first.etag)
        assert not changed.not_modified and changed.secrets["SHARED_TOKEN"] == "rotated"
        assert changed.etag != first.etag

        assert route_count(dev_kms, LOGIN) == 1 and client.tokens.logins == 1
        assert client.http.connections_opened == 1  # one kept-alive connection for everything


async def test_wrong_secret_and_locked_out(dev_kms_factory: Any, tmp_path: Path) -> None:
    kms = await dev_kms_factory(lockout_seconds=30)
    wrong = "definitely-not-the-secret-123"
    async with KmsClient(kms.base_url, write_creds(tmp_path / "bad", "svc", wrong)) as bad:
        for attempt in range(3):
            with pytest.raises(InvalidCredentials) as info:
                await bad.fetch(P, ENV, "/app")
            err = info.value
            assert err.status == 401 and not err.retryable and err.op == "login"
            assert kms.base_url in str(err) and "project=test-proj" in str(err) and "path=/app" in str(err)
            assert_clean(err, wrong)
        assert "locked out" in str(err)
    # the right secret is refused too while the identity is locked
    async with KmsClient(kms.base_url, write_creds(tmp_path / "good", "svc")) as good:
        with pytest.raises(InvalidCredentials, match="locked out") as info:
            await good.fetch(P, ENV, "/app")
        assert_clean(info.value, "svc-secret")


async def test_missing_credential_files_name_the_file(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, UniversalAuthFiles(str(tmp_path / "nowhere"))) as client:
        with pytest.raises(CredentialsUnavailable, match="clientId file .*nowhere/clientId"):
            await client.fetch(P, ENV, "/app")
    assert route_count(dev_kms, LOGIN) == 0


# -- token life ----------------------------------------------------------------------------------

async def test_token_renewed_before_expiry(dev_kms_factory: Any, tmp_path: Path) -> None:
    kms = await dev_kms_factory(token_ttl=1.5, max_ttl=3600)
    async with KmsClient(kms.base_url, write_creds(tmp_path, "svc")) as client:
        async def renewed() -> bool:
            res = await client.fetch(P, ENV, "/app")  # every fetch must succeed meanwhile
            assert res.secrets == APP_SECRETS
            return client.tokens.renewals >= 2

        await until(renewed, step=0.1)
        assert client.tokens.logins == 1 and route_count(kms, LOGIN) == 1
        assert route_count(kms, RENEW) >= 2
        assert kms.stats()["statuses"].get("403", 0) == 0  # never used an expired token


async def test_max_ttl_leads_to_fresh_login_not_failed_renew(dev_kms_factory: Any, tmp_path: Path) -> None:
    kms = await dev_kms_factory(token_ttl=1.2, max_ttl=2.5)
    async with KmsClient(kms.base_url, write_creds(tmp_path, "svc")) as client:
        async def relogged() -> bool:
            assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS
            return client.tokens.logins >= 2

        await until(relogged, step=0.1)
        statuses = kms.stats()["statuses"]
        # the client saw the max TTL coming: it never tried a renewal the server would refuse
        assert statuses.get("401", 0) == 0 and statuses.get("403", 0) == 0
        assert route_count(kms, LOGIN) == client.tokens.logins


async def test_expired_token_403_token_error_leads_to_fresh_login(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        await client.fetch(P, ENV, "/app")
        token = client.tokens._token.value  # type: ignore[union-attr]
        assert dev_kms.state.expire_tokens("svc") >= 1
        res = await client.fetch(P, ENV, "/app")  # 403 TokenError -> login -> same request again
        assert res.secrets == APP_SECRETS
        assert dev_kms.stats()["statuses"].get("403") == 1
        assert client.tokens.logins == 2 and client.tokens._token.value != token  # type: ignore[union-attr]


async def test_invalidate_logs_in_with_new_credential_files(dev_kms: Any, tmp_path: Path) -> None:
    creds = write_creds(tmp_path, "reader")
    async with KmsClient(dev_kms.base_url, creds) as client:
        with pytest.raises(PermissionDenied):
            await client.fetch(P, ENV, "/restricted")
        write_creds(tmp_path, "svc")  # the Secret was rotated to another identity
        client.invalidate()
        res = await client.fetch(P, ENV, "/restricted")
        assert res.secrets == {"ONLY_ADMIN": "admin-value"}
        assert dev_kms.stats()["identities"].get("svc", 0) >= 2  # login + list as svc


async def test_revoke_on_close(dev_kms: Any, tmp_path: Path) -> None:
    client = KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc"))
    await client.fetch(P, ENV, "/app")
    token = client.tokens._token.value  # type: ignore[union-attr]
    await client.close(revoke=True)
    assert route_count(dev_kms, "POST /v1/auth/token/revoke") == 1
    assert dev_kms.state.tokens[token].revoked


# -- errors --------------------------------------------------------------------------------------

async def test_permission_denied_and_not_found_name_the_path(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "reader")) as client:
        await client.fetch(P, ENV, "/app")
        token = client.tokens._token.value  # type: ignore[union-attr]
        with pytest.raises(PermissionDenied) as info:
            await client.fetch(P, ENV, "/restricted")
        err = info.value
        assert err.status == 403 and not err.retryable and err.path == "/restricted"
        line = str(err)
        for part in (dev_kms.base_url, "project=test-proj", "env=prod", "path=/restricted", "status=403", "PermissionDenied"):
            assert part in line
        assert_clean(err, token, "reader-secret", "admin-value")
        async with KmsClient(dev_kms.base_url, write_creds(tmp_path / "svc", "svc")) as svc:
            with pytest.raises(NotFound, match="path=/no/such/folder") as nf:
                await svc.fetch(P, ENV, "/no/such/folder")
            assert nf.value.status == 404 and not nf.value.retryable


async def test_rate_limited_exposes_and_honours_retry_after(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        await client.fetch(P, ENV, "/app")
        dev_kms.state.add_fault(Fault(status=429, retry_after=1, count=2, path="/v3/secrets"))
        with pytest.raises(RateLimited) as info:
            await client.fetch(P, ENV, "/app")
        assert info.value.retry_after == 1.0 and info.value.retryable and info.value.status == 429

        delays: list[float] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        res = await retrying(lambda: client.fetch(P, ENV, "/app"), backoff=Backoff(base=0.01, cap=0.02),
                             deadline=time.monotonic() + 30, on_error=lambda e, d: delays.append(d))
        assert res.secrets == APP_SECRETS
        assert len(delays) == 1 and delays[0] >= 1.0  # jitter (<= 0.02 s) never undercuts Retry-After
        assert loop.time() - t0 >= 0.95


async def test_real_rate_limiter(dev_kms_factory: Any, tmp_path: Path) -> None:
    kms = await dev_kms_factory(rate_limit=2)
    async with KmsClient(kms.base_url, write_creds(tmp_path, "svc")) as client:
        with pytest.raises(RateLimited) as info:
            for _ in range(10):
                await client.fetch(P, ENV, "/app")
        assert info.value.retry_after is not None and info.value.retry_after >= 1


async def test_server_stopped_unreachable_then_recovers(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc"), timeout=5) as client:
        first = await client.fetch(P, ENV, "/app")
        await dev_kms.stop()
        with pytest.raises(Unreachable) as info:
            await client.fetch(P, ENV, "/app", etag=first.etag)
        err = info.value
        assert err.retryable and err.status is None
        for part in (dev_kms.base_url, "project=test-proj", "env=prod", "path=/app"):
            assert part in str(err)

        # retrying() rides out the outage: the server comes back on the same port a moment later
        errors: list[KmsError] = []
        task = asyncio.create_task(retrying(lambda: client.fetch(P, ENV, "/app", etag=first.etag),
                                            backoff=Backoff(base=0.05, cap=0.2), deadline=time.monotonic() + 30,
                                            on_error=lambda e, d: errors.append(e)))
        await until(lambda: _true(len(errors) >= 2))
        await dev_kms.start()
        res = await asyncio.wait_for(task, 30)
        assert res.not_modified  # nothing changed while it was down
        assert all(isinstance(e, Unreachable) for e in errors)


async def _true(value: bool) -> bool:
    return value


async def test_timeout_is_unreachable(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc"), timeout=0.3) as client:
        await client.fetch(P, ENV, "/app")
        dev_kms.state.add_fault(Fault(delay=1.5, count=1, path="/v3/secrets"))
        with pytest.raises(Unreachable, match="timed out"):
            await client.fetch(P, ENV, "/app")
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS


@pytest.mark.parametrize("mode, match", [
    ("invalid_json", "not valid JSON"),
    ("wrong_types", "field secrets is missing or not a list"),
    ("truncate", "truncated"),
])
async def test_bad_responses(dev_kms: Any, tmp_path: Path, mode: str, match: str) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        await client.fetch(P, ENV, "/app")
        dev_kms.state.add_fault(Fault(body=mode, count=1, path="/v3/secrets"))
        with pytest.raises(BadResponse, match=match) as info:
            await client.fetch(P, ENV, "/app")
        assert info.value.retryable
        assert_clean(info.value, "postgres://app@db/app", "from-app", "shared-token-value")
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS


async def test_server_errors_are_retryable_and_retrying_stops_on_permanent_errors(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        dev_kms.state.add_fault(Fault(status=503, count=1, path="/v3/secrets"))
        with pytest.raises(ServerError) as info:
            await client.fetch(P, ENV, "/app")
        assert info.value.retryable and info.value.status == 503

        calls = 0

        async def denied() -> Any:
            nonlocal calls
            calls += 1
            return await client.fetch(P, ENV, "/no/such")

        with pytest.raises(NotFound):
            await retrying(denied, backoff=Backoff(base=0.01), deadline=time.monotonic() + 10)
        assert calls == 1  # permanent: raised at once
        # init mode retries everything, until its deadline
        t0 = time.monotonic()
        with pytest.raises(NotFound):
            await retrying(denied, backoff=Backoff(base=0.05, cap=0.1), deadline=time.monotonic() + 0.6,
                           should_retry=lambda e: True)
        assert calls > 2 and time.monotonic() - t0 < 5


# -- secrets never leak --------------------------------------------------------------------------

async def test_echoed_secrets_and_control_chars_are_scrubbed(tmp_path: Path) -> None:
    """A hostile or buggy server echoing the client secret / token in its messages."""
    secret = "s3cr3t-client-secret-value"
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"accessToken": "tok-ABCDEFGH-123456", "expiresIn": 60}) if body["clientId"] == "ok" else \
            web.json_response({"message": f"bad secret {body['clientSecret']}\n\x1b[31m" + "x" * 500, "error": "Unauthorized"}, status=401)

    async def secrets(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        return web.json_response({"message": f"no access for {auth} {jwt_like}", "error": "PermissionDenied"}, status=403)

    app = web.Application()
    app.router.add_post("/api/v1/auth/universal-auth/login", login)
    app.router.add_get("/api/v3/secrets/raw", secrets)
    async with _serve(app) as base:
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "clientId").write_text("nope")
        (tmp_path / "a" / "clientSecret").write_text(secret)
        async with KmsClient(base, UniversalAuthFiles(str(tmp_path / "a"))) as client:
            with pytest.raises(InvalidCredentials) as info:
                await client.fetch(P, ENV, "/app")
            assert_clean(info.value, secret, "\x1b")
            assert len(str(info.value)) < 500 and "bad secret ***" in str(info.value)
        (tmp_path / "a" / "clientId").write_text("ok")
        async with KmsClient(base, UniversalAuthFiles(str(tmp_path / "a"))) as client:
            with pytest.raises(PermissionDenied) as info2:
                await client.fetch(P, ENV, "/app")
            assert_clean(info2.value, "tok-ABCDEFGH-123456", jwt_like, secret)


def test_sanitize() -> None:
    assert sanitize("a\nb\x00c\u2028d", ["zzzz"]) == "a b c d"
    assert sanitize("x" * 1000).endswith("...") and len(sanitize("x" * 1000)) == 200
    assert sanitize("pre topsecret post", ["topsecret"]) == "pre *** post"


# -- a server without ETag or max TTL ------------------------------------------------------------

async def test_no_etag_server_hash_and_no_max_ttl_relogin(tmp_path: Path) -> None:
    state = {"logins": 0, "renews": 0, "value": "v1"}

    async def login(request: web.Request) -> web.Response:
        state["logins"] += 1
        return web.json_response({"accessToken": f"tok-{state['logins']}", "expiresIn": 0.6})  # no max TTL

    async def renew(request: web.Request) -> web.Response:
        state["renews"] += 1
        return web.json_response({"message": "no"}, status=500)

    async def secrets(request: web.Request) -> web.Response:
        assert "If-None-Match" not in request.headers  # a locally computed ETag is never sent
        return web.json_response({"secrets": [{"secretKey": "K", "secretValue": state["value"]}]})  # minimal, no ETag

    app = web.Application()
    app.router.add_post("/api/v1/auth/universal-auth/login", login)
    app.router.add_post("/api/v1/auth/token/renew", renew)
    app.router.add_get("/api/v3/secrets/raw", secrets)
    async with _serve(app) as base:
        async with KmsClient(base, write_creds(tmp_path, "x")) as client:
            first = await client.fetch(P, ENV, "/app")
            assert first.secrets == {"K": "v1"} and first.etag and first.etag.startswith("local:")
            second = await client.fetch(P, ENV, "/app", etag=first.etag)
            assert second.not_modified and second.etag == first.etag
            state["value"] = "v2"
            third = await client.fetch(P, ENV, "/app", etag=first.etag)
            assert not third.not_modified and third.secrets == {"K": "v2"}

            async def relogged() -> bool:
                await client.fetch(P, ENV, "/app")
                return state["logins"] >= 2

            await until(relogged, step=0.1)
            assert state["renews"] == 0  # without a max TTL the client logs in again, never renews


class _serve:
    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/api"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


# -- kubernetes auth -----------------------------------------------------------------------------

def _jwt(key: Any, claims: dict) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


async def _k8s_dev_kms(dev_kms_factory: Any) -> tuple[Any, Any, dict[str, Any]]:
    """A dev KMS whose identity ident-k8s-app logs in as service account apps:chat (audience kms),
    verified with a fresh RSA key: (the server, the signing key, the claims of a valid token)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from devkms import tiny_seed

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    seed = tiny_seed()
    seed["identities"].append({"name": "k8s-app", "id": "ident-k8s-app", "clientId": "k8s-app-id", "clientSecret": "unused-secret",
                               "kubernetes": {"serviceAccounts": ["apps:chat"], "audience": "kms"},
                               "access": [{"project": P, "environments": ["prod"], "paths": ["/**"], "read": True}]})
    kms = await dev_kms_factory(seed=seed, k8s_public_key_pem=pem)
    return kms, key, {"sub": "system:serviceaccount:apps:chat", "aud": ["kms"], "exp": int(time.time()) + 600}


async def test_kubernetes_auth_rereads_token_file(dev_kms_factory: Any, tmp_path: Path) -> None:
    kms, key, claims = await _k8s_dev_kms(dev_kms_factory)
    token_file = tmp_path / "token"
    good = _jwt(key, claims)
    token_file.write_text(good + "\n")
    async with KmsClient(kms.base_url, KubernetesAuthFile("ident-k8s-app", str(token_file))) as client:
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS
        # kubelet rotates the token file; the next login must read it (here: a service account
        # the identity does not allow, so the login visibly used the new file)
        other = _jwt(key, {**claims, "sub": "system:serviceaccount:apps:other"})
        token_file.write_text(other)
        client.invalidate()
        with pytest.raises(InvalidCredentials, match="not allowed") as info:
            await client.fetch(P, ENV, "/app")
        assert_clean(info.value, good, other)
        token_file.write_text(_jwt(key, {**claims, "iat": int(time.time())}))
        client.invalidate()
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS
        assert route_count(kms, "POST /v1/auth/kubernetes-auth/login") == 3


async def test_kubernetes_token_rotation_needs_no_login_and_the_next_login_reads_the_file(dev_kms_factory: Any, tmp_path: Path) -> None:
    """Issue 12 point 7: a rotated projected token (the agent's watch calls credentials_changed())
    keeps the KMS token; the login that comes anyway (here: KMS expired the token) reads the file."""
    kms, key, claims = await _k8s_dev_kms(dev_kms_factory)
    token_file = tmp_path / "token"
    token_file.write_text(_jwt(key, claims))
    creds = KubernetesAuthFile("ident-k8s-app", str(token_file))
    assert creds.relogin_on_change is False and UniversalAuthFiles(str(tmp_path)).relogin_on_change is True
    async with KmsClient(kms.base_url, creds) as client:
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS
        for i in range(3):  # kubelet rotates the token three times
            token_file.write_text(_jwt(key, {**claims, "iat": int(time.time()) + i}))
            assert client.credentials_changed() is False  # nothing to do now
            assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS
        assert route_count(kms, "POST /v1/auth/kubernetes-auth/login") == 1
        # the next login (KMS dropped the token) reads the file as it is now: a service account the
        # identity does not allow, so that login visibly used the newest file
        token_file.write_text(_jwt(key, {**claims, "sub": "system:serviceaccount:apps:other"}))
        assert client.credentials_changed() is False
        assert kms.state.expire_tokens("k8s-app") >= 1
        with pytest.raises(InvalidCredentials, match="not allowed"):
            await client.fetch(P, ENV, "/app")
        assert route_count(kms, "POST /v1/auth/kubernetes-auth/login") == 2
        # with no valid token, a changed file is worth a login now
        token_file.write_text(_jwt(key, claims))
        assert client.credentials_changed() is True
        assert (await client.fetch(P, ENV, "/app")).secrets == APP_SECRETS


async def test_universal_auth_change_drops_the_token(dev_kms: Any, tmp_path: Path) -> None:
    async with KmsClient(dev_kms.base_url, write_creds(tmp_path, "svc")) as client:
        await client.fetch(P, ENV, "/app")
        assert client.credentials_changed() is True and client.tokens.valid_token() is None
        await client.fetch(P, ENV, "/app")
        assert client.tokens.logins == 2


class _GatedLogins:
    """A KMS whose logins wait on a gate: a login is "in flight" for as long as the test wants.
    Tokens name the clientSecret they were minted from (a test server; never a real secret)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()
        self.logins: list[str] = []
        self.lists: list[str] = []
        self.expires_in = 3600.0

    def app(self) -> web.Application:
        async def login(request: web.Request) -> web.Response:
            secret = (await request.json())["clientSecret"]
            self.logins.append(secret)
            self.arrived.set()
            await self.gate.wait()
            return web.json_response({"accessToken": f"tok-{secret}-{len(self.logins)}", "expiresIn": self.expires_in,
                                      "accessTokenMaxTTL": 7200})

        async def secrets(request: web.Request) -> web.Response:
            token = request.headers["Authorization"].removeprefix("Bearer ")
            self.lists.append(token)
            return web.json_response({"secrets": [{"secretKey": "K", "secretValue": "v"}]}, headers={"ETag": '"e"'})

        app = web.Application()
        app.router.add_post("/api/v1/auth/universal-auth/login", login)
        app.router.add_get("/api/v3/secrets/raw", secrets)
        return app


async def test_login_in_flight_during_a_credential_rotation_is_not_kept(tmp_path: Path) -> None:
    """Issue 12 point 8: invalidate() while a login with the OLD credentials is in flight. That
    login's token must not become the current one (it would be renewed to its max TTL)."""
    kms = _GatedLogins()
    async with _serve(kms.app()) as base:
        async with KmsClient(base, write_creds(tmp_path, "svc", "old-secret")) as client:
            kms.gate.clear()
            kms.arrived.clear()
            first = asyncio.create_task(client.fetch(P, ENV, "/app"))
            await asyncio.wait_for(kms.arrived.wait(), 20)  # the old-credentials login is at the server
            write_creds(tmp_path, "svc", "new-secret")
            dropped = client.invalidate()  # what the credential watch does
            kms.gate.set()
            await asyncio.wait_for(first, 20)
            assert kms.logins == ["old-secret", "new-secret"]
            assert dropped is False  # there was no token yet: nothing dropped, the login in flight is void
            assert kms.lists == ["tok-new-secret-2"]  # the fetch used the new credentials' token
            assert client.tokens.valid_token() == "tok-new-secret-2"
            await client.fetch(P, ENV, "/app")
            assert kms.lists[-1] == "tok-new-secret-2" and len(kms.logins) == 2


async def test_invalidate_with_a_token_drops_only_that_token(tmp_path: Path) -> None:
    """A 401 seen with an old token (e.g. on the event stream) must not throw away a fresh one."""
    kms = _GatedLogins()
    async with _serve(kms.app()) as base:
        async with KmsClient(base, write_creds(tmp_path, "svc", "s")) as client:
            await client.fetch(P, ENV, "/app")
            old = client.tokens.valid_token()
            assert old == "tok-s-1"
            assert client.invalidate("some-other-token") is False
            assert client.tokens.valid_token() == old
            assert client.invalidate(old) is True and client.tokens.valid_token() is None
            await client.fetch(P, ENV, "/app")
            fresh = client.tokens.valid_token()
            assert fresh == "tok-s-2"
            assert client.invalidate(old) is False  # the refused token is gone already: keep the fresh one
            assert client.tokens.valid_token() == fresh
            await client.fetch(P, ENV, "/app")
            assert len(kms.logins) == 2 and kms.lists == ["tok-s-1", "tok-s-2", "tok-s-2"]

            # A refusal of the expired current token while its replacement's login is in flight
            # drops the expired one and lets that login finish: one login, not two.
            kms.expires_in = 0.2
            client.invalidate()
            await client.fetch(P, ENV, "/app")  # tok-s-3, short-lived
            await until(lambda: _true(client.tokens.valid_token() is None))
            expired = client.tokens._token.value  # type: ignore[union-attr]
            kms.expires_in = 3600.0
            kms.gate.clear()
            kms.arrived.clear()
            task = asyncio.create_task(client.fetch(P, ENV, "/app"))
            await asyncio.wait_for(kms.arrived.wait(), 20)
            assert client.invalidate(expired) is True
            kms.gate.set()
            await asyncio.wait_for(task, 20)
            assert len(kms.logins) == 4 and kms.lists[-1] == "tok-s-4" == client.tokens.valid_token()
