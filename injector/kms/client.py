"""KmsClient: read a KMS folder (with its imports) as {key: value}, with ETag and typed errors.

    client = KmsClient("http://127.0.0.1:8200/api", UniversalAuthFiles("/kms/auth"))
    result = await client.fetch("secrets-639-c", "prod", "/chat", etag=last_etag)
    if not result.not_modified: write(result.secrets); last_etag = result.etag
    await client.close()

Backends (`api`): "infisical" speaks the Infisical-compatible API (../shared/kms-api.md);
"canonical" the newer /v1/kms API (injector/kms/canonical.py); "auto" tries the Infisical login
once and falls back to canonical when that path answers 404, then logs
`kms_api_detected` and sticks to it. Callers see the same fetch(), FetchResult and typed errors
either way. Only the standard library is imported: this sits on the agent's start-up path.

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
from injector.kms.errors import BadResponse, InvalidCredentials, KmsError, NotFound, PermissionDenied, error_from_response
from injector.kms.http import HttpClient, HttpError, Response
from injector.kms.secrets import LOCAL_ETAG_PREFIX, FetchResult, HiddenValue, ShapeError, local_etag, parse_secrets

__all__ = ["KmsClient", "FetchResult", "build_client", "pod_user_agent"]

SECRETS_PATH = "/v3/secrets/raw"
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
    ) -> None:
        if api not in APIS:
            raise ValueError(f"api {api!r} is not accepted; use one of {', '.join(APIS)}")
        self.host = host
        self.http = HttpClient(host, timeout=timeout, ca_file=ca_file, max_body=max_body,
                               user_agent=user_agent or pod_user_agent())
        self.credentials = credentials
        self.log = logger
        self.api_setting = api
        self.api: str | None = None if api == "auto" else api  # the backend in use (None: not detected yet)
        self.tokens = self._token_manager(self.api or "infisical")
        self.requests = 0  # secrets requests sent (for metrics and tests)
        self._project_ids: dict[str, str] = {}
        self._detect_lock = asyncio.Lock()

    def _token_manager(self, api: str) -> TokenManager:
        if api != "canonical":
            return TokenManager(self.http, self.credentials, host=self.host, logger=self.log)
        from injector.kms import canonical

        tm = TokenManager(self.http, canonical.CanonicalLogin(self.credentials), host=self.host, logger=self.log)
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

    def project_id(self, project: str) -> str:
        """The project's id when a secrets answer named it (`workspace`), else the slug itself."""
        return self._project_ids.get(project, project)

    async def resolve_api(self) -> str:
        """The backend in use; with api="auto", detect it once (an Infisical login; 404 -> canonical)."""
        if self.api is not None:
            return self.api
        async with self._detect_lock:
            if self.api is not None:
                return self.api
            try:
                await self.tokens.token()
                api = "infisical"
            except NotFound as exc:
                if exc.op != "login":
                    raise
                if getattr(self.credentials, "method", "") == "kubernetes-auth":
                    raise NotFound(f"{self.credentials.login_path} answered 404 and the canonical KMS API has no "
                                   f"{self.credentials.method}; use universal auth with this KMS",
                                   host=self.host, op="login", status=404) from None
                api = "canonical"
                self.tokens = self._token_manager(api)
            except InvalidCredentials:
                api = "infisical"  # the login path exists (it refused us): this is the Infisical API
                self._detected(api)
                raise
            self._detected(api)
            return api

    def _detected(self, api: str) -> None:
        self.api = api
        if self.log is not None:
            self.log.info("kms_api_detected", api=api, host=self.host)

    async def fetch(
        self, project: str, env: str, path: str, *, etag: str | None = None, include_imports: bool = True
    ) -> FetchResult:
        """One folder, imports merged (folder wins). `etag` from the previous result -> 304 path."""
        if self.api != "infisical":
            try:
                api = await self.resolve_api()
            except KmsError as exc:
                raise exc.with_context(project=project, env=env, path=path) from None
            if api == "canonical":
                from injector.kms import canonical

                return await canonical.fetch(self, project, env, path, etag=etag)
        where = {"host": self.host, "project": project, "env": env, "path": path, "op": "list-secrets"}
        params = {
            "workspaceSlug": project,
            "environment": env,
            "secretPath": path,
            "include_imports": "true" if include_imports else "false",
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
        return self._result(resp, where, etag, include_imports, "If-None-Match" in headers)

    def _result(self, resp: Response, where: dict[str, Any], etag: str | None, include_imports: bool, conditional: bool) -> FetchResult:
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
        self._remember_project_id(where["project"], data)
        try:
            secrets = parse_secrets(data, include_imports)
        except ShapeError as exc:
            raise BadResponse(str(exc), status=200, redact=redact, **where) from None
        except HiddenValue as exc:
            raise PermissionDenied(
                f"KMS hid the value of key {exc.key!r} ({exc.field}): the identity may not read secret values",
                status=200, redact=redact, **where,
            ) from None
        server_etag = resp.headers.get("etag")
        if server_etag:
            return FetchResult(False, secrets, server_etag)
        # No ETag from this server: hash what we got, so an unchanged folder still reads as unchanged.
        computed = local_etag(secrets)
        if etag == computed:
            return FetchResult(True, {}, computed)
        return FetchResult(False, secrets, computed)

    def _remember_project_id(self, project: str, data: Any) -> None:
        if project in self._project_ids or not isinstance(data, dict):
            return
        items = data.get("secrets")
        first = items[0] if isinstance(items, list) and items else None
        pid = first.get("workspace") if isinstance(first, dict) else None
        if isinstance(pid, str) and 0 < len(pid) <= 200 and _header_safe(pid):
            self._project_ids[project] = pid

    async def close(self, *, revoke: bool = False) -> None:
        """Close connections; `revoke=True` first revokes the token (best effort, on shutdown)."""
        if revoke and self.api == "infisical":
            await self.tokens.revoke()
        await self.http.close()

    async def __aenter__(self) -> "KmsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _header_safe(value: str) -> bool:
    return not any(c in value for c in "\r\n\x00")



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
                     ca_file=config.ca_file or None)
