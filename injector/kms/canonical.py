"""The newer canonical KMS API (shared/kms-api.md, "The newer canonical KMS API"), second backend.

    POST /v1/kms/auth/login {clientId, clientSecret}        -> {accessToken, expiresIn, tokenType}
    GET  /v1/kms/orgs/{org}/secrets?path=/chat&env=prod      -> {"names": [...]}
    GET  /v1/kms/orgs/{org}/secrets/{path...}/{name}?env=prod -> {"secret": {"value": "..."}}

No renew and no max TTL: the token manager logs in afresh at 2/3 of the token's life (it does so
whenever a server gives no accessTokenMaxTTL). No ETag: the merged folder is hashed locally, so an
unchanged folder still reads as not_modified (and nothing is rewritten). No events. `org` is the
AgentConfig project. Values are fetched concurrently, at most CONCURRENCY at a time. Errors are the
same typed errors as the Infisical backend (injector.kms.errors).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from injector.keys import unsafe_key_reason
from injector.kms.auth import token_rejected, transport_error
from injector.kms.errors import BadResponse, KmsError, NotFound, error_from_response
from injector.kms.http import HttpError, Response
from injector.kms.secrets import FetchResult, local_etag

LOGIN_PATH = "/v1/kms/auth/login"
CONCURRENCY = 4
_RACE_RETRIES = 1  # a key deleted between the listing and its read: list again, once


class CanonicalLogin:
    """Universal-auth credentials (clientId/clientSecret files), logged in at the canonical path."""

    method = "canonical"
    login_path = LOGIN_PATH

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def login_body(self) -> dict[str, str]:
        body = self.inner.login_body()
        if "clientId" not in body or "clientSecret" not in body:
            from injector.kms.errors import CredentialsUnavailable

            raise CredentialsUnavailable(
                f"the canonical KMS API accepts only clientId/clientSecret credentials, not {self.inner.method}", op="login")
        return {"clientId": body["clientId"], "clientSecret": body["clientSecret"]}

    def sensitive(self) -> list[str]:
        return self.inner.sensitive()

    def describe(self) -> str:
        return self.inner.describe()


def needs_fresh_login(resp: Response) -> bool:
    """401, or a 403 that blames the token: the canonical API has no `error: TokenError` code, only
    a message (e.g. "Your token has expired. Please re-authenticate.")."""
    return token_rejected(resp, _message_blames_token)


def _message_blames_token(data: Any) -> bool:
    message = data.get("message") if isinstance(data, dict) else None
    text = message.lower() if isinstance(message, str) else ""
    return "token" in text or "expired" in text or "authenticat" in text


def _folder_url(org: str) -> str:
    return f"/v1/kms/orgs/{quote(org, safe='')}/secrets"


def _value_url(org: str, path: str, name: str) -> str:
    segments = [quote(p, safe="") for p in path.split("/") if p]
    return "/".join([_folder_url(org), *segments, quote(name, safe="")])


async def fetch(client: Any, project: str, env: str, path: str, *, etag: str | None = None,
                concurrency: int = CONCURRENCY) -> FetchResult:
    """One folder as {name: value} (the server merges imports into the listing)."""
    for attempt in range(_RACE_RETRIES + 1):
        try:
            secrets = await _read_folder(client, project, env, path, concurrency)
            break
        except _Vanished:
            if attempt == _RACE_RETRIES:
                raise NotFound("a listed key disappeared before it could be read, twice in a row",
                               host=client.host, project=project, env=env, path=path, op="get-secret") from None
    computed = local_etag(secrets)
    if etag == computed:
        return FetchResult(True, {}, computed)
    return FetchResult(False, secrets, computed)


class _Vanished(Exception):
    pass


async def _get(client: Any, url: str, params: dict[str, str], where: dict[str, Any]) -> Any:
    async def send(token: str) -> Response:
        client.requests += 1
        return await client.http.request("GET", url, params=params, headers={"Authorization": f"Bearer {token}"})

    try:
        resp = await client.tokens.authorized(send)
    except HttpError as exc:
        raise transport_error(exc, client.tokens.redact(), **where) from None
    redact = client.tokens.redact()
    if resp.status != 200:
        raise error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), redact, **where)
    try:
        return resp.json()
    except ValueError:
        raise BadResponse("body is not valid JSON", status=200, redact=redact, **where) from None


async def _read_folder(client: Any, org: str, env: str, path: str, concurrency: int) -> dict[str, str]:
    where = {"host": client.host, "project": org, "env": env, "path": path, "op": "list-secrets"}
    data = await _get(client, _folder_url(org), {"path": path, "env": env}, where)
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise BadResponse("field names is missing or not a list of non-empty strings", status=200, **where)
    sem = asyncio.Semaphore(max(1, concurrency))
    out: dict[str, str] = {}

    async def one(name: str) -> None:
        w = dict(where, op="get-secret")
        async with sem:
            try:
                body = await _get(client, _value_url(org, path, name), {"env": env}, w)
            except NotFound:
                raise _Vanished() from None
            except KmsError as exc:
                raise exc.with_context(op=f"get-secret {name[:100]}") from None
        secret = body.get("secret") if isinstance(body, dict) else None
        value = secret.get("value") if isinstance(secret, dict) else None
        if not isinstance(value, str):
            raise BadResponse(f"field secret.value of key {name[:100]!r} is missing or not a string", status=200, **w)
        out[name] = value

    # A name that can never be a file (keys.unsafe_key_reason: '..', '/', a lone surrogate that
    # quote() cannot even encode, ...) is not fetched: its value is never needed. It stays in the
    # result with an empty placeholder so that render skips it by the same rule and the agent logs
    # `key_skipped` naming it, exactly as with the Infisical backend; the other keys still sync.
    unsafe = {n: "" for n in names if unsafe_key_reason(n) is not None}
    tasks = [asyncio.ensure_future(one(n)) for n in dict.fromkeys(names) if n not in unsafe]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    out.update(unsafe)
    return {n: out[n] for n in sorted(out)}
