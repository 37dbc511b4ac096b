"""The canonical KMS API of Hanzo's Go servers (shared/kms-api.md, "The canonical API").

Routes live at the host root: a configured `http://kms.../api` is normalised (one trailing `/`
and one trailing `/api` stripped) and the client calls `{root}/v1/kms/...`.

    POST /v1/kms/auth/login {clientId, clientSecret}   -> {accessToken, expiresIn, tokenType}
    current surface (the org rides the token's `owner` claim):
      GET /v1/kms/secrets?path=&env=                 -> {"names", "secrets": [{name, path, env}], "total"}
      GET /v1/kms/secrets/{subpath/}{name}?env=      -> {"env", "name", "value"}
    older surface (the org in the URL):
      GET /v1/kms/orgs/{org}/secrets?prefix=&env=    -> {"secrets": [{path, name, env, version}], ...}
      GET /v1/kms/orgs/{org}/secrets/{path/}{name}?env= -> {"secret": {"value"}, "version"}

The current surface is tried first; a route that does not exist there (a plain 404 or a 405,
not the server's JSON "secret not found") sends the client to the older one, for good. Both
listings are recursive: only entries of the folder itself are kept. Some servers have no list
route: the key names then come from the Source (annotation `kms.hanzo.ai/keys`), one read each.

Cost of a poll: current surface, one list + a read of every value (no change signal); older
surface, one list + a read of each name that is new or whose version moved. No ETag: the merged
folder is hashed locally, so an unchanged folder reads as not_modified. No renew: the token
manager logs in afresh at 2/3 of the token's life and on any 401; `expiresIn: 0` counts as one
hour. No events. A key the server cannot address (its segment rules) is skipped with a warning
naming the key; the rest is delivered.

The pure rules (names each surface can address, listings, a missing route) are canonical_listing.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from injector.keys import unsafe_key_reason
from injector.kms.auth import token_rejected, transport_error
from injector.kms.errors import BadResponse, EmptyFolder, KmsError, ListUnavailable, NotFound, error_from_response
from injector.kms.http import HttpError, Response
from injector.kms.secrets import FetchResult, local_etag
from injector.kms.canonical_listing import (
    CONTROL_CHARS, CURRENT, KEYS_ANNOTATION, OLDER, Entry, current_entries, older_entries, route_missing, sub_path,
    unaddressable,
)

LOGIN_PATH = "/v1/kms/auth/login"
HEALTH_PATH = "/healthz"
CONCURRENCY = 4
ZERO_EXPIRES_IN = 3600.0  # `expiresIn: 0` from an IAM-backed server: use it an hour, then log in again
_RACE_RETRIES = 1  # a key deleted between the listing and its read: list again, once


def root_url(host: str) -> str:
    """The host root the canonical routes hang off: one trailing '/' and one trailing '/api' go."""
    base = host[:-1] if host.endswith("/") else host
    return base[: -len("/api")] if base.endswith("/api") else base


class CanonicalLogin:
    """Universal-auth credentials (clientId/clientSecret files), logged in at the canonical path."""

    method = "canonical"
    login_path = LOGIN_PATH
    zero_expires_in = ZERO_EXPIRES_IN  # read by TokenManager's login: 0 = one hour, not "never"

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
    """Any 401, or a 403 that blames the token: the canonical API has no `error: TokenError`
    code, only a message (a 403 "not a member of the org" is a permission, not a token)."""
    return token_rejected(resp, _message_blames_token)


def _message_blames_token(data: Any) -> bool:
    message = data.get("message") if isinstance(data, dict) else None
    text = message.lower() if isinstance(message, str) else ""
    return "token" in text or "expired" in text or "authenticat" in text


def token_org(token: str) -> str:
    """The `owner` claim of an IAM JWT (the org every call is scoped to); "" when absent.

    Read without verifying: the server verifies; we only need to know which org it will use."""
    parts = token.split(".")
    if len(parts) != 3:
        return ""
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return ""
    owner = claims.get("owner") if isinstance(claims, dict) else None
    return owner if isinstance(owner, str) and owner and not CONTROL_CHARS.search(owner) else ""


class _RouteMissing(Exception):
    """The route does not exist on this server (plain 404 or 405): another surface may have it."""


class _Vanished(Exception):
    pass


@dataclass
class _FolderCache:
    """Older surface: the value read at each version, so a poll re-reads only moved keys."""

    values: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False)


class CanonicalBackend:
    """Reads folders from a canonical server for one KmsClient (its tokens, log, settings)."""

    def __init__(self, client: Any, http: Any) -> None:
        self.client = client
        self.http = http  # bound to the host root
        self.surface: str | None = None  # detected at the first list or read
        self.has_list: bool | None = None
        self._caches: dict[tuple[str, str], _FolderCache] = {}
        self._warned: set[tuple[str, str, str]] = set()

    # -- HTTP ---------------------------------------------------------------------------------
    async def _get(self, url: str, params: dict[str, str], where: dict[str, Any], *, route_check: bool) -> Any:
        client = self.client

        async def send(token: str) -> Response:
            client.requests += 1
            return await self.http.request("GET", url, params=params, headers={"Authorization": f"Bearer {token}"})

        try:
            resp = await client.tokens.authorized(send)
        except HttpError as exc:
            raise transport_error(exc, client.tokens.redact(), **where) from None
        if route_check and route_missing(resp):
            raise _RouteMissing()
        redact = client.tokens.redact()
        if resp.status != 200:
            raise error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), redact, **where)
        try:
            return resp.json()
        except ValueError:
            raise BadResponse("body is not valid JSON", status=200, redact=redact, **where) from None

    async def _org(self, project: str) -> str:
        token = await self.client.tokens.token()
        return token_org(token) or project  # a token without `owner`: the project slug names the org

    # -- listing ------------------------------------------------------------------------------
    async def _list(self, project: str, env: str, path: str, where: dict[str, Any]) -> list[Entry]:
        surfaces = [self.surface] if self.surface else [CURRENT, OLDER]
        for surface in surfaces:
            try:
                if surface == CURRENT:
                    data = await self._get("/v1/kms/secrets", {"path": path, "env": env}, where, route_check=True)
                    entries = current_entries(data, path, where)
                else:
                    org = await self._org(project)
                    data = await self._get(f"/v1/kms/orgs/{quote(org, safe='')}/secrets",
                                           {"prefix": sub_path(path), "env": env}, where, route_check=True)
                    entries = older_entries(data, path, where)
            except _RouteMissing:
                continue
            self._settle(surface, has_list=True)
            return entries
        self.has_list = False
        raise ListUnavailable(
            f"no list route (GET /v1/kms/secrets and /v1/kms/orgs/{{org}}/secrets answer 404/405); name the keys "
            f"in the annotation {KEYS_ANNOTATION} (comma list)", **where)

    def _settle(self, surface: str, *, has_list: bool | None = None) -> None:
        if self.surface != surface:
            self.surface = surface
            if self.client.log is not None:
                self.client.log.info("kms_canonical_surface", surface=surface, host=self.client.host,
                                     list_route=has_list if has_list is not None else self.has_list)
        if has_list is not None:
            self.has_list = has_list

    # -- reading one value --------------------------------------------------------------------
    async def _read(self, project: str, env: str, path: str, name: str, where: dict[str, Any]) -> tuple[Any, str]:
        """(version or None, value) of one key; NotFound as _Vanished only via the caller."""
        w = dict(where, op=f"get-secret {name[:100]}")
        surfaces = [self.surface] if self.surface else [CURRENT, OLDER]
        for surface in surfaces:
            segments = [quote(p, safe="") for p in path.split("/") if p] + [quote(name, safe="")]
            try:
                if surface == CURRENT:
                    body = await self._get("/v1/kms/secrets/" + "/".join(segments), {"env": env}, w,
                                           route_check=self.surface is None)
                    value = body.get("value") if isinstance(body, dict) else None
                    version = None
                    field_name = "value"
                else:
                    if not sub_path(path):
                        raise KmsError("the older canonical API cannot read secrets of the root folder "
                                       "(it answers 400 \"path and name required\"); use a sub-folder", **w)
                    org = await self._org(project)
                    body = await self._get(f"/v1/kms/orgs/{quote(org, safe='')}/secrets/" + "/".join(segments),
                                           {"env": env}, w, route_check=self.surface is None)
                    secret = body.get("secret") if isinstance(body, dict) else None
                    value = secret.get("value") if isinstance(secret, dict) else None
                    version = body.get("version") if isinstance(body, dict) else None
                    field_name = "secret.value"
            except _RouteMissing:
                continue
            if not isinstance(value, str):
                raise BadResponse(f"field {field_name} of key {name[:100]!r} is missing or not a string", status=200, **w)
            self._settle(surface)
            return version, value
        # Not NotFound: that would read as "this key is missing"; it is the server that lacks the route.
        raise KmsError("neither canonical surface has a read route for secrets (404/405 on both)", **w)

    # -- one folder ---------------------------------------------------------------------------
    async def fetch(self, project: str, env: str, path: str, *, etag: str | None = None,
                    keys: tuple[str, ...] = (), concurrency: int = CONCURRENCY) -> FetchResult:
        where = {"host": self.client.host, "project": project, "env": env, "path": path, "op": "list-secrets"}
        for attempt in range(_RACE_RETRIES + 1):
            try:
                secrets, listed = await self._read_folder(project, env, path, keys, concurrency, where)
                break
            except _Vanished:
                if attempt == _RACE_RETRIES:
                    raise NotFound("a listed key disappeared before it could be read, twice in a row",
                                   **dict(where, op="get-secret")) from None
        if not listed and not self.client.allow_empty:
            raise EmptyFolder("KMS lists no secrets here; check the path and env (kms.hanzo.ai/path, "
                              "kms.hanzo.ai/env), or set kms.hanzo.ai/allow-empty: \"true\"", status=200, **where)
        computed = local_etag(secrets)
        if etag == computed:
            return FetchResult(True, {}, computed)
        return FetchResult(False, secrets, computed)

    async def _read_folder(self, project: str, env: str, path: str, keys: tuple[str, ...], concurrency: int,
                           where: dict[str, Any]) -> tuple[dict[str, str], int]:
        """({name: value}, how many names the server listed or the config named)."""
        explicit = bool(keys)
        if explicit:
            entries = [Entry(k) for k in dict.fromkeys(keys)]
        else:
            entries = await self._list(project, env, path, where)
        surface = self.surface or CURRENT
        cache = self._caches.setdefault((env, path), _FolderCache())
        out: dict[str, str] = {}
        todo: list[Entry] = []
        unsafe: dict[str, str] = {}
        for e in entries:
            reason = unaddressable(e.name, surface)
            if reason is not None:
                self._warn(path, e.name, reason)
                continue
            if unsafe_key_reason(e.name) is not None:
                # Never a file (keys.unsafe_key_reason): not fetched; an empty placeholder lets render
                # skip it by the same rule and log `key_skipped` naming it, as with the Infisical API.
                unsafe[e.name] = ""
                continue
            cached = cache.values.get(e.name)
            if e.version is not None and cached is not None and cached[0] == e.version:
                out[e.name] = cached[1]  # version unchanged: no read
                continue
            todo.append(e)
        sem = asyncio.Semaphore(max(1, concurrency))
        fresh: dict[str, tuple[Any, str]] = {}

        async def one(e: Entry) -> None:
            async with sem:
                try:
                    version, value = await self._read(project, env, path, e.name, where)
                except NotFound as exc:
                    if explicit:
                        raise exc.__class__(f"key {e.name[:100]!r} named in {KEYS_ANNOTATION} was not found",
                                            **{k: getattr(exc, k) for k in ("host", "project", "env", "path", "status",
                                                                           "kms_message", "op")}) from None
                    raise _Vanished() from None
            fresh[e.name] = (version if version is not None else e.version, value)

        tasks = [asyncio.ensure_future(one(e)) for e in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for name, (version, value) in fresh.items():
            out[name] = value
        # Remember versions (older surface) for the next poll; forget keys that went away.
        cache.values = {n: (fresh[n][0] if n in fresh else cache.values[n][0], out[n]) for n in out
                        if (n in fresh and fresh[n][0] is not None) or (n not in fresh and n in cache.values)}
        out.update(unsafe)
        return {n: out[n] for n in sorted(out)}, len(entries)

    def _warn(self, path: str, name: str, reason: str) -> None:
        key = (path, name, reason)
        if key in self._warned or self.client.log is None:
            return
        self._warned.add(key)
        self.client.log.warning("key_skipped", key=name[:200], path=path, reason=reason,
                                action="the other keys are delivered")
