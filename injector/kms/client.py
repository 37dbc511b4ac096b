"""KmsClient: read a KMS folder (with its imports) as {key: value}, with ETag and typed errors.

    client = KmsClient("http://127.0.0.1:8200/api", UniversalAuthFiles("/kms/auth"))
    result = await client.fetch("secrets-639-c", "prod", "/chat", etag=last_etag)
    if not result.not_modified: write(result.secrets); last_etag = result.etag
    await client.close()

Speaks the Infisical-compatible API (../shared/kms-api.md). Only the standard library is
imported: this sits on the agent's start-up path.
"""

from __future__ import annotations

from typing import Any

from injector.kms.auth import CredentialSource, TokenManager, transport_error
from injector.kms.errors import BadResponse, KmsError, PermissionDenied, error_from_response
from injector.kms.http import HttpClient, HttpError, Response
from injector.kms.retry import retrying
from injector.kms.secrets import LOCAL_ETAG_PREFIX, FetchResult, HiddenValue, ShapeError, local_etag, parse_secrets

__all__ = ["KmsClient", "FetchResult", "retrying"]

SECRETS_PATH = "/v3/secrets/raw"


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
    ) -> None:
        self.host = host
        self.http = HttpClient(host, timeout=timeout, ca_file=ca_file, max_body=max_body)
        self.tokens = TokenManager(self.http, credentials, host=host, logger=logger)
        self.log = logger
        self.requests = 0  # secrets requests sent (for metrics and tests)

    def invalidate(self) -> None:
        """Log in afresh before the next request (credential files changed)."""
        self.tokens.invalidate()

    async def fetch(
        self, project: str, env: str, path: str, *, etag: str | None = None, include_imports: bool = True
    ) -> FetchResult:
        """One folder, imports merged (folder wins). `etag` from the previous result -> 304 path."""
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

    async def close(self, *, revoke: bool = False) -> None:
        """Close connections; `revoke=True` first revokes the token (best effort, on shutdown)."""
        if revoke:
            await self.tokens.revoke()
        await self.http.close()

    async def __aenter__(self) -> "KmsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _header_safe(value: str) -> bool:
    return not any(c in value for c in "\r\n\x00")

