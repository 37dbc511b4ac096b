"""KmsClient: read a KMS folder (with its imports) as {key: value}, with ETag and typed errors.

    client = KmsClient("http://127.0.0.1:8200/api", UniversalAuthFiles("/kms/auth"))
    result = await client.fetch("secrets-639-c", "prod", "/chat", etag=last_etag)
    if not result.not_modified: write(result.secrets); last_etag = result.etag
    await client.close()

Backends (`api`): "infisical" speaks the Infisical-compatible API (../shared/kms-api.md);
"canonical" the /v1/kms API of Hanzo's Go servers (injector/kms/canonical.py); "auto" tells them
apart by the routes that identify each server (the Infisical status route `GET {host}/status`
answering its JSON, the canonical health route `GET {root}/healthz`), never by a 404 on login
(the Infisical API answers 404 to an unknown clientId), and commits to a backend only after a
successful login on it, logging `kms_api_detected` with the reason. Until then every attempt
identifies afresh, so a blip (an ingress 404 during a rollout) cannot lock in the wrong backend.
Callers see the same fetch(), FetchResult and typed errors either way. Only the standard library
is imported: this sits on the agent's start-up path.

A folder that yields nothing (no secrets, no imports) raises EmptyFolder unless `allow_empty`:
the Infisical API answers 200 with empty lists for a path or env that does not exist. One
malformed entry is skipped with a warning naming its key; the rest is delivered.

`build_client(config, logger)` makes the client an AgentConfig asks for (auth method, backend,
the CA bundle for https hosts). Every request says which pod sent it, in its User-Agent
(`kms-injector-agent/0.1.0 (pod=NS/NAME)`, from the downward-API env the webhook injects), so the
KMS audit log records who read what.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Mapping

from injector.kms.auth import CredentialSource, TokenManager, transport_error
from injector.kms.errors import (
    BadRequest, BadResponse, EmptyFolder, InvalidCredentials, KmsError, NotFound, PermissionDenied, error_from_response,
)
from injector.kms.http import HttpClient, HttpError, Response
from injector.kms.secrets import LOCAL_ETAG_PREFIX, FetchResult, HiddenValue, ShapeError, local_etag, parse_folder

__all__ = ["KmsClient", "FetchResult", "build_client", "pod_user_agent"]

SECRETS_PATH = "/v3/secrets/raw"
KEEPER_RECHECK = 600.0  # the token keeper's re-check with nothing to keep (`api: auto` may swap managers)
STATUS_PATH = "/status"  # the Infisical status route, under the API base ({host}/api/status)
APIS = ("infisical", "canonical", "auto")
VERSION = "0.1.0"  # the distribution's version (pyproject.toml; a test keeps them equal)
_POD_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")  # DNS names: what a pod/namespace name may be


def pod_user_agent(env: Mapping[str, str] = os.environ) -> str:
    """`kms-injector-agent/VERSION (pod=NAMESPACE/NAME)` from KMS_POD_NAMESPACE / KMS_POD_NAME.

    Without them (outside a pod), or when they are not DNS names (nothing else may reach a
    header), just `kms-injector-agent/VERSION`."""
    base = f"kms-injector-agent/{VERSION}"
    ns, name = env.get("KMS_POD_NAMESPACE", ""), env.get("KMS_POD_NAME", "")
    if _POD_PART.match(ns) and _POD_PART.match(name):
        return f"{base} (pod={ns}/{name})"
    return base
EMPTY_HINT = ("KMS answered 200 with no secrets and no imports, which is also its answer for a path or env "
              "that does not exist; check kms.hanzo.ai/path and kms.hanzo.ai/env, or set "
              "kms.hanzo.ai/allow-empty: \"true\"")


class WithOrganization:
    """A credential source whose login also names the organization (`organizationSlug`)."""

    def __init__(self, inner: Any, organization_slug: str) -> None:
        self.inner = inner
        self.organization_slug = organization_slug
        self.method = inner.method
        self.login_path = inner.login_path

    def login_body(self) -> dict[str, str]:
        return {**self.inner.login_body(), "organizationSlug": self.organization_slug}

    def sensitive(self) -> list[str]:
        return self.inner.sensitive()

    def describe(self) -> str:
        return self.inner.describe()


class KmsClient:
    def __init__(
        self,
        host: str,
        credentials: CredentialSource,
        *,
        timeout: float = 10.0,
        logger: Any = None,
        ca_file: str | None = None,
        max_body: int = 16 * 1024 * 1024,
        api: str = "infisical",
        user_agent: str | None = None,
        expand_references: bool = True,
        allow_empty: bool = False,
        organization_slug: str = "",
    ) -> None:
        if api not in APIS:
            raise ValueError(f"api {api!r} is not accepted; use one of {', '.join(APIS)}")
        self.host = host
        self._http_options = {"timeout": timeout, "ca_file": ca_file, "max_body": max_body,
                              "user_agent": user_agent or pod_user_agent()}
        self.http = self._make_http(host)
        self.credentials = credentials
        self.log = logger
        self.api_setting = api
        self.api: str | None = None if api == "auto" else api  # the backend in use (None: not detected yet)
        self.expand_references = expand_references
        self.allow_empty = allow_empty
        self.organization_slug = organization_slug
        self._canonical: Any = None
        self.tokens = self._token_manager(self.api or "infisical")
        self.requests = 0  # secrets requests sent (for metrics and tests)
        self._project_ids: dict[str, str] = {}
        self._detect_lock = asyncio.Lock()
        self._warned: set[tuple[str, str, str]] = set()

    def _make_http(self, base_url: str) -> HttpClient:
        return HttpClient(base_url, **self._http_options)

    def _token_manager(self, api: str) -> TokenManager:
        if api != "canonical":
            creds: Any = self.credentials
            if self.organization_slug:
                creds = WithOrganization(creds, self.organization_slug)
            return TokenManager(self.http, creds, host=self.host, logger=self.log)
        from injector.kms import canonical

        backend = self.canonical_backend()
        tm = TokenManager(backend.http, canonical.CanonicalLogin(self.credentials), host=self.host, logger=self.log)
        tm.needs_fresh_login = canonical.needs_fresh_login
        return tm

    def invalidate(self, token: str | None = None) -> bool:
        """Log in afresh before the next request. `token=None`: the credentials changed (drop the
        current token, and any login in flight). `token=T`: T was refused; drop it only if it is
        still the current token. True when a token was dropped. See TokenManager.invalidate."""
        return self.tokens.invalidate(token)

    def credentials_changed(self) -> bool:
        """The credential files changed. True when the caller should fetch now with a fresh login.

        Universal auth: the token is dropped (the next request logs in with the new files).
        Kubernetes auth: a rotated projected token needs no login while the KMS token is valid
        (the next login reads the file); with no valid token (the last login failed) the new
        file is worth a try now, so True without dropping anything."""
        if getattr(self.credentials, "relogin_on_change", True):
            self.tokens.invalidate()
            return True
        return self.tokens.valid_token() is None

    def canonical_backend(self) -> Any:
        """The canonical backend (its own HTTP client bound to the host root), made on first use."""
        if self._canonical is None:
            from injector.kms import canonical

            self._canonical = canonical.CanonicalBackend(self, self._make_http(canonical.root_url(self.host)))
        return self._canonical


    def project_id(self, project: str) -> str:
        """The project's id when a secrets answer named it (`workspace`), else the slug itself."""
        return self._project_ids.get(project, project)

    def known_project_id(self, project: str) -> str | None:
        """The project's real id, once a secrets answer named it (`workspace`); None before."""
        return self._project_ids.get(project)

    # -- api: auto ------------------------------------------------------------------------------
    async def resolve_api(self) -> str:
        """The backend in use; with api="auto", identify the server and commit after a login."""
        if self.api is not None:
            return self.api
        async with self._detect_lock:
            if self.api is not None:
                return self.api
            candidates, reason = await self._identify()
            last: KmsError | None = None
            for api in candidates:
                if api == "canonical" and getattr(self.credentials, "method", "") == "kubernetes-auth":
                    last = BadRequest(f"the server speaks the canonical KMS API, which has no kubernetes auth; "
                                      f"use universal auth (clientId/clientSecret) with it", host=self.host, op="login")
                    continue
                tokens = self._token_manager(api)
                try:
                    await tokens.token()
                except KmsError as exc:
                    if len(candidates) > 1 and _login_route_missing(exc):
                        last = last or exc
                        continue  # this login route does not exist here: try the other API's
                    raise
                self.tokens = tokens
                self.api = api
                if self.log is not None:
                    self.log.info("kms_api_detected", api=api, host=self.host,
                                  reason=f"{reason}; logged in at {tokens.credentials.login_path}")
                return api
            if last is not None and not _login_route_missing(last):
                raise last
            raise NotFound("neither KMS API answered here: no Infisical status route, no canonical health route, "
                           "and neither login route exists; check the host (kms.hanzo.ai/host)",
                           host=self.host, op="login", status=last.status if last else None)

    async def _identify(self) -> tuple[list[str], str]:
        """Which API this server speaks, by the routes that identify it; both when none answers."""
        if await self._probe(self.http, STATUS_PATH, _infisical_status):
            return ["infisical"], f"GET {self.http.origin.prefix}{STATUS_PATH} answered the Infisical status"
        from injector.kms import canonical  # only now: ~1.3 ms of start-up (with base64) an Infisical server never needs

        if await self._probe(self.canonical_backend().http, canonical.HEALTH_PATH, _canonical_health):
            return ["canonical"], f"GET {canonical.HEALTH_PATH} answered (the canonical health route)"
        return ["infisical", "canonical"], "no status or health route answered; tried each API's login"

    async def _probe(self, http: HttpClient, path: str, accept: Any) -> bool:
        try:
            resp = await http.request("GET", path, timeout=min(5.0, self.http.timeout))
        except HttpError:
            return False
        return resp.status == 200 and accept(resp)

    # -- reading a folder -----------------------------------------------------------------------
    async def fetch(
        self, project: str, env: str, path: str, *, etag: str | None = None, include_imports: bool = True,
        keys: tuple[str, ...] | list[str] = (),
    ) -> FetchResult:
        """One folder, imports merged (folder wins). `etag` from the previous result -> 304 path.
        `keys`: read only these names (a canonical server without a list route needs them)."""
        keys = tuple(keys or ())
        if self.api != "infisical":
            try:
                api = await self.resolve_api()
            except KmsError as exc:
                raise exc.with_context(project=project, env=env, path=path) from None
            if api == "canonical":
                try:
                    return await self.canonical_backend().fetch(project, env, path, etag=etag, keys=keys)
                except KmsError as exc:
                    if exc.op in ("login", "renew"):
                        raise exc.with_context(project=project, env=env, path=path) from None
                    raise
        where = {"host": self.host, "project": project, "env": env, "path": path, "op": "list-secrets"}
        params = {
            "workspaceSlug": project,
            "environment": env,
            "secretPath": path,
            "include_imports": "true" if include_imports else "false",
            # v3 expands ${KEY} references only when asked; the operator always asked.
            "expandSecretReferences": "true" if self.expand_references else "false",
        }
        headers = {}
        if etag and not etag.startswith(LOCAL_ETAG_PREFIX) and _header_safe(etag):
            headers["If-None-Match"] = etag

        async def send(token: str) -> Response:
            self.requests += 1
            return await self.http.request("GET", SECRETS_PATH, params=params, headers={**headers, "Authorization": f"Bearer {token}"})

        try:
            resp = await self.tokens.authorized(send)
        except HttpError as exc:
            raise transport_error(exc, self.tokens.redact(), **where) from None
        except KmsError as exc:
            if exc.op in ("login", "renew"):  # auth failed on the way to this folder: name the folder too
                raise exc.with_context(project=project, env=env, path=path) from None
            raise
        return self._result(resp, where, etag, include_imports, "If-None-Match" in headers, keys)

    def _result(self, resp: Response, where: dict[str, Any], etag: str | None, include_imports: bool,
                conditional: bool, keys: tuple[str, ...] = ()) -> FetchResult:
        redact = self.tokens.redact()
        if resp.status == 304:
            if not conditional:
                raise BadResponse("304 Not Modified to a request without If-None-Match", status=304, redact=redact, **where)
            return FetchResult(True, {}, etag)
        if resp.status != 200:
            raise error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), redact, **where)
        try:
            data = resp.json()
        except ValueError:
            raise BadResponse("body is not valid JSON", status=200, redact=redact, **where) from None
        try:
            parsed = parse_folder(data, include_imports)
        except ShapeError as exc:
            raise BadResponse(str(exc), status=200, redact=redact, **where) from None
        except HiddenValue as exc:
            raise PermissionDenied(
                f"KMS hid the value of key {exc.key!r} ({exc.field}): the identity may not read secret values",
                status=200, redact=redact, **where,
            ) from None
        if parsed.project_id and where["project"] not in self._project_ids:
            self._project_ids[where["project"]] = parsed.project_id
        for sk in parsed.skipped:
            self._warn_skipped(where["path"], sk.key, f"{sk.where} {sk.problem}")
        if parsed.empty and not self.allow_empty:
            raise EmptyFolder(EMPTY_HINT, status=200, **where)
        secrets = parsed.secrets
        if keys:
            missing = [k for k in keys if k not in secrets]
            if missing:
                raise NotFound(f"key {missing[0][:100]!r} named in kms.hanzo.ai/keys is not in the folder",
                               status=200, **where)
            secrets = {k: secrets[k] for k in keys}
        server_etag = resp.headers.get("etag")
        if server_etag:
            return FetchResult(False, secrets, server_etag)
        # No ETag from this server: hash what we got, so an unchanged folder still reads as unchanged.
        computed = local_etag(secrets)
        if etag == computed:
            return FetchResult(True, {}, computed)
        return FetchResult(False, secrets, computed)

    def _warn_skipped(self, path: str, key: str, problem: str) -> None:
        """Once per (folder, key, problem) per client: a poll every minute must not repeat it."""
        mark = (path, key, problem)
        if mark in self._warned or self.log is None:
            return
        self._warned.add(mark)
        self.log.warning("secret_entry_skipped", key=key[:200], path=path, problem=problem[:200],
                         action="the other keys are delivered")

    async def keep_token_fresh(self, horizon: float, retry_cap: float = 300.0) -> None:
        """Renew a periodic token on time between polls (`horizon`: the poll interval), for the
        sidecar's life: with a period shorter than the poll interval the token would lapse between
        polls and every poll would cost a fresh login (TokenManager.renew_wait). It never logs in
        (the sync loop does, with its lockout policy); a failed renewal is retried with a doubling
        pause (5 s up to `retry_cap`), so a KMS outage costs a handful of requests, not a storm."""
        pause = 5.0
        while True:
            tokens = self.tokens  # re-read: `api: auto` may switch token managers on detection
            wait = tokens.renew_wait(horizon)
            if wait is None:  # nothing to keep: sleep until a login (by the sync loop) stores a token,
                await tokens.wait_stored(KEEPER_RECHECK)  # not once per poll (a wake-up costs CPU)
            elif wait > 0:
                await asyncio.sleep(wait)
            elif await tokens.renew_now():
                pause = 5.0
            else:
                await asyncio.sleep(pause)
                pause = min(retry_cap, pause * 2)

    async def close(self, *, revoke: bool = False) -> None:
        """Close connections; `revoke=True` first revokes the token (best effort, on shutdown)."""
        if revoke and self.api == "infisical":
            await self.tokens.revoke()
        await self.http.close()
        if self._canonical is not None:
            await self._canonical.http.close()

    async def __aenter__(self) -> "KmsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _header_safe(value: str) -> bool:
    return not any(c in value for c in "\r\n\x00")


def _infisical_status(resp: Response) -> bool:
    """`GET /api/status` on an Infisical server: JSON {"date", "message": "Ok", ...}. A Go server
    with a UI answers unknown paths with its index.html (200): that is not it."""
    try:
        data = resp.json()
    except ValueError:
        return False
    return isinstance(data, dict) and ("date" in data or data.get("message") == "Ok")


def _canonical_health(resp: Response) -> bool:
    """`GET /healthz` on a canonical server; an HTML page (some UI's fallback) does not count."""
    return "text/html" not in resp.headers.get("content-type", "").lower()


def _login_route_missing(exc: KmsError) -> bool:
    """The login route is not there (fastify's "Route POST:... not found", a plain 404, a 405),
    as opposed to the server refusing us (an unknown clientId is a JSON 404 too, with a message)."""
    if exc.status not in (404, 405):
        return False
    msg = exc.kms_message
    return exc.status == 405 or not msg or msg.startswith("non-JSON body") or (msg.startswith("Route ") and msg.endswith("not found"))



def build_client(config: Any, logger: Any = None) -> KmsClient:
    """The KmsClient an AgentConfig asks for: auth (universal | kubernetes) and api backend.

    Kubernetes auth reads the projected service-account token file at every login (kubelet
    rotates it by swapping a ..data symlink; a rotation alone needs no login: see
    KubernetesAuthFile.relogin_on_change). `ca_file` (a PEM bundle) is what https hosts are
    verified against, instead of the system CAs: a KMS behind a private CA."""
    from injector.config import ConfigError
    from injector.kms.auth import KubernetesAuthFile, UniversalAuthFiles

    credentials: CredentialSource
    if config.auth == "kubernetes":
        if config.api == "canonical":
            raise ConfigError("auth", "kubernetes auth is not available with api: canonical (that KMS API has only clientId/clientSecret login)")
        credentials = KubernetesAuthFile(config.identity_id, config.token_path)
    else:
        credentials = UniversalAuthFiles(config.credentials_dir)
    return KmsClient(config.host, credentials, timeout=config.request_timeout, logger=logger, api=config.api,
                     ca_file=config.ca_file or None,
                     expand_references=config.expand_references, allow_empty=config.allow_empty,
                     organization_slug=config.organization_slug)
