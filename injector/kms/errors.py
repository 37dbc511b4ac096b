"""Typed KMS errors. `str(err)` is one line naming where it failed and what KMS said.

The line names host, project, env, path, HTTP status and KMS's message; never a secret value,
token or client secret. Server messages are untrusted: they are capped, stripped of control
characters, and scrubbed of any known secret (`redact`) and of anything shaped like a JWT.
`err.retryable` says whether waiting can help (the caller decides what to do with that).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Iterable

MAX_MESSAGE = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_MIN_REDACT = 4  # shorter "secrets" would shred ordinary words


def sanitize(text: Any, redact: Iterable[str] = (), limit: int = MAX_MESSAGE) -> str:
    """Make untrusted text safe for a one-line log/error: no control chars, no secrets, capped."""
    s = text if isinstance(text, str) else str(text)
    for secret in redact:
        if secret and len(secret) >= _MIN_REDACT:
            s = s.replace(secret, "***")
    s = _JWT.sub("***", s)
    s = _CONTROL.sub(" ", s).strip()
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


class KmsError(Exception):
    """Base of every KMS client error. Fields are plain data for logs and metrics."""

    retryable: ClassVar[bool] = False
    summary: ClassVar[str] = "KMS request failed"

    def __init__(
        self,
        detail: str = "",
        *,
        host: str = "",
        project: str = "",
        env: str = "",
        path: str = "",
        status: int | None = None,
        kms_message: str = "",
        error_code: str = "",
        op: str = "",
        redact: Iterable[str] = (),
        retry_after: float | None = None,
    ) -> None:
        redact = tuple(redact)
        # Retry-After as sent with ANY status: older Infisical servers rate-limit with a 500.
        self.retry_after = retry_after
        self.host = sanitize(host, redact)
        self.project = sanitize(project, redact)
        self.env = sanitize(env, redact)
        self.path = sanitize(path, redact)
        self.status = status
        self.kms_message = sanitize(kms_message, redact)
        self.error_code = sanitize(error_code, redact, limit=60)
        self.op = op
        self.detail = sanitize(detail, redact)
        super().__init__(self._line())

    def _line(self) -> str:
        where = [f"host={self.host}"] if self.host else []
        where += [f"{k}={v}" for k, v in (("project", self.project), ("env", self.env), ("path", self.path)) if v]
        if self.op:
            where.append(f"op={self.op}")
        if self.status is not None:
            where.append(f"status={self.status}")
        line = f"{self.summary}"
        if self.detail:
            line += f": {self.detail}"
        line += f" ({' '.join(where)})" if where else ""
        if self.kms_message or self.error_code:
            said = f"{self.error_code}: {self.kms_message}" if self.error_code and self.kms_message else self.error_code or self.kms_message
            line += f"; KMS said: {said}"
        return line

    def with_context(self, **where: str) -> "KmsError":
        """A copy with more context (e.g. the folder a failed login was for)."""
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        for name, value in where.items():
            setattr(new, name, sanitize(value) if name != "op" else value)
        Exception.__init__(new, new._line())
        return new

    def to_fields(self) -> dict[str, Any]:
        """Structured fields for a JSON log line (no values, no tokens)."""
        return {
            "error": type(self).__name__,
            "host": self.host,
            "project": self.project,
            "env": self.env,
            "path": self.path,
            "status": self.status,
            "kms_message": self.kms_message,
            "retryable": self.retryable,
            **({"retry_after": self.retry_after} if self.retry_after is not None else {}),
        }


class InvalidCredentials(KmsError):
    summary = "invalid credentials"


class CredentialsUnavailable(KmsError):
    """The credential files could not be read (not mounted yet, wrong path, empty)."""

    summary = "credentials unavailable"


class PermissionDenied(KmsError):
    summary = "permission denied"


class NotFound(KmsError):
    summary = "not found"


class BadRequest(KmsError):
    summary = "bad request"


class Unreachable(KmsError):
    retryable = True
    summary = "KMS unreachable"


class RateLimited(KmsError):
    retryable = True
    summary = "rate limited"

    def __init__(self, detail: str = "", *, retry_after: float | None = None, **kw: Any) -> None:
        if retry_after is not None and not detail:
            detail = f"retry after {retry_after:g}s"
        super().__init__(detail, retry_after=retry_after, **kw)


class EmptyFolder(NotFound):
    """KMS answered 200 with no secrets and no imports. The Infisical API answers so for a folder
    or env that does not exist, so a typo in a path would otherwise give an empty mount."""

    summary = "folder is empty or does not exist"


class ListUnavailable(KmsError):
    """A canonical server with no list route, and no key names configured for the folder."""

    summary = "this KMS server cannot list a folder"


class ServerError(KmsError):
    """5xx (or 408): the server failed; trying again later may work."""

    retryable = True
    summary = "KMS server error"


class BadResponse(KmsError):
    """The response was not what the API promises: invalid JSON, wrong field types, truncated."""

    retryable = True
    summary = "bad response from KMS"


def parse_retry_after(value: str | None, cap: float = 3600.0) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP-date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # rare form: import only when needed
    import time

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(cap, max(0.0, when - time.time()))


def error_from_response(
    status: int,
    body: bytes,
    retry_after: str | None = None,
    redact: Iterable[str] = (),
    **where: Any,
) -> KmsError:
    """Map a non-success KMS response to its typed error. `where` = host/project/env/path/op."""
    message, code = _error_body(body)
    kw: dict[str, Any] = dict(where, status=status, kms_message=message, error_code=code, redact=redact)
    if status == 429:
        return RateLimited(retry_after=parse_retry_after(retry_after), **kw)
    kw["retry_after"] = parse_retry_after(retry_after)
    if status == 401:
        return InvalidCredentials(**kw)
    if status == 403:
        if code == "TokenError":
            return InvalidCredentials("access token rejected", **kw)
        return PermissionDenied(**kw)
    if status == 404:
        return NotFound(**kw)
    if status in (400, 405, 409, 413, 422):
        return BadRequest(**kw)
    if status == 408 or status >= 500:
        return ServerError(**kw)
    return KmsError(f"unexpected HTTP status {status}", **kw)


def _error_body(body: bytes) -> tuple[str, str]:
    """(message, error code) from a KMS error body; tolerant of non-JSON bodies (proxies)."""
    import json

    try:
        data = json.loads(body) if body else None
    except ValueError:
        text = body[:MAX_MESSAGE].decode("utf-8", errors="replace")
        return (f"non-JSON body: {text}" if text.strip() else ""), ""
    if not isinstance(data, dict):
        return "", ""
    message = data.get("message")
    code = data.get("error")
    if isinstance(message, list):  # a ValidationFailure: zod issues; name the fields, not the input
        message = "; ".join(_issue(i) for i in message[:5] if isinstance(i, dict))
    return (message if isinstance(message, str) else ""), (code if isinstance(code, str) else "")


def _issue(issue: dict[str, Any]) -> str:
    path = issue.get("path")
    where = ".".join(str(p) for p in path) if isinstance(path, list) else ""
    text = issue.get("message") if isinstance(issue.get("message"), str) else "invalid"
    return f"{where}: {text}" if where else text
