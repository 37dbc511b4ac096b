"""KMS authentication: credential sources read from files, and a token manager.

Credential sources re-read their files at every login, so a rotated Secret (or a kubelet-rotated
service-account token) is picked up by the next login without restarting the agent. A source says
whether a change of its files calls for a login right away (`relogin_on_change`): new universal-
auth credentials do (the old ones may be revoked); a rotated projected service-account token does
not (kubelet rotates it at 80% of its life, about every 8 minutes for 600 s, while the KMS token
from the last login stays valid: the next login reads the new file).

Generations: every token set or dropped bumps `TokenManager.generation`; a change of credentials
(`invalidate()` without a token) also starts a new epoch, and a login or renewal that was in
flight across it is not kept: its token came from the old credentials. `invalidate(token)` drops only that token, if it is still the
current one, so a 401 seen with an old token never throws away a fresh one.

The token manager logs in, renews at about 2/3 of the token's life, logs in afresh when a renewal
would pass accessTokenMaxTTL (or, when the server gives no max TTL, instead of renewing), and logs
in afresh on 401 / 403 TokenError, retrying the original request once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from injector.kms.errors import (
    BadResponse,
    CredentialsUnavailable,
    InvalidCredentials,
    KmsError,
    Unreachable,
    error_from_response,
)
from injector.kms.http import ConnectError, HttpClient, HttpError, RequestTimeout, Response

RENEW_FRACTION = 2 / 3
_STALE_LOGIN_TRIES = 3  # logins in a row whose credentials changed mid-flight before one is used anyway
_MAX_CREDENTIAL_BYTES = 64 * 1024


class CredentialSource(Protocol):
    """Where login credentials come from. Implementations read files on every call."""

    method: str  # short name for logs, e.g. "universal-auth"
    login_path: str  # API path of the login endpoint
    relogin_on_change: bool  # a change of the files calls for a fresh login now (else: at the next login)

    def login_body(self) -> dict[str, str]:
        """The login request body; raises CredentialsUnavailable naming the file, never content."""
        ...

    def sensitive(self) -> list[str]:
        """Values read at the last login that must never appear in messages (for redaction)."""
        ...

    def describe(self) -> str:
        """Where the credentials come from, for messages (paths, never content)."""
        ...


def _read_file(path: str, what: str) -> str:
    # These are tiny files on a tmpfs Secret/projected volume: a synchronous read costs
    # microseconds, cheaper than a thread hop (and avoids importing the executor machinery).
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise CredentialsUnavailable(f"cannot read {what} file {path}: {exc.strerror or type(exc).__name__}", op="login") from None
    if len(data) > _MAX_CREDENTIAL_BYTES:
        raise CredentialsUnavailable(f"{what} file {path} is larger than {_MAX_CREDENTIAL_BYTES} bytes", op="login")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialsUnavailable(f"{what} file {path} is not UTF-8 text", op="login") from None
    if not text:
        raise CredentialsUnavailable(f"{what} file {path} is empty", op="login")
    return text


class UniversalAuthFiles:
    """Universal Auth: `clientId` and `clientSecret` files in a directory (the mounted Secret)."""

    method = "universal-auth"
    login_path = "/v1/auth/universal-auth/login"
    relogin_on_change = True  # rotated credentials: the old clientSecret may be revoked any moment

    def __init__(self, directory: str, id_file: str = "clientId", secret_file: str = "clientSecret") -> None:
        self.directory = directory
        self.id_path = os.path.join(directory, id_file)
        self.secret_path = os.path.join(directory, secret_file)
        self._last: list[str] = []

    def login_body(self) -> dict[str, str]:
        client_id = _read_file(self.id_path, "clientId")
        client_secret = _read_file(self.secret_path, "clientSecret")
        self._last = [client_secret]
        return {"clientId": client_id, "clientSecret": client_secret}

    def sensitive(self) -> list[str]:
        return list(self._last)

    def describe(self) -> str:
        return f"universal-auth credentials in {self.directory}"


class KubernetesAuthFile:
    """Kubernetes auth: a machine identity id plus the pod's projected service-account token file."""

    method = "kubernetes-auth"
    login_path = "/v1/auth/kubernetes-auth/login"
    # kubelet rotates the projected token long before it expires; the KMS token stays valid, and
    # the next login (renewal past max TTL, expiry, a 401) reads the new file.
    relogin_on_change = False

    def __init__(self, identity_id: str, token_path: str) -> None:
        self.identity_id = identity_id
        self.token_path = token_path
        self._last: list[str] = []

    def login_body(self) -> dict[str, str]:
        jwt = _read_file(self.token_path, "service account token")
        self._last = [jwt]
        return {"identityId": self.identity_id, "jwt": jwt}

    def sensitive(self) -> list[str]:
        return list(self._last)

    def describe(self) -> str:
        return f"kubernetes-auth token {self.token_path}"


@dataclass
class _Token:
    value: str = field(repr=False)
    obtained: float  # monotonic time the request that produced it was sent
    expires_in: float
    max_deadline: float | None  # monotonic time the login session ends (accessTokenMaxTTL); None = unknown

    @property
    def expires_at(self) -> float:
        return self.obtained + self.expires_in

    @property
    def renew_at(self) -> float:
        return self.obtained + self.expires_in * RENEW_FRACTION


# `expiresIn: 0` on the Infisical API: the token never expires (its JWT has no `exp`), nothing to
# renew; a 401 still leads to a fresh login. Kept finite so logs and arithmetic stay plain numbers.
NEVER_EXPIRES = 10 * 365 * 86400.0
# A max TTL this long marks a *periodic* token: renewable forever, but within each period.
PERIODIC_MAX_TTL = 1e9


def parse_token_response(resp: Response, where: dict[str, Any], redact: list[str],
                         zero_means: float = NEVER_EXPIRES) -> tuple[str, float, float | None]:
    """(accessToken, expiresIn, accessTokenMaxTTL or None) from a login/renew answer.

    `expiresIn: 0` becomes `zero_means` seconds: "never expires" on the Infisical API, "one hour,
    then log in again" on the canonical one (its IAM token's own lifetime may be reported as 0).
    A max TTL of 0 or absent means none is known (log in afresh instead of renewing)."""
    try:
        data = resp.json()
    except ValueError:
        raise BadResponse("token response is not valid JSON", status=resp.status, redact=redact, **where) from None
    if not isinstance(data, dict):
        raise BadResponse("token response is not a JSON object", status=resp.status, redact=redact, **where)
    token = data.get("accessToken")
    if not isinstance(token, str) or not token:
        raise BadResponse("field accessToken is missing or not a non-empty string", status=resp.status, redact=redact, **where)
    if any(c in token for c in "\r\n\x00") or len(token) > 64 * 1024:
        raise BadResponse("field accessToken is not usable in a header", status=resp.status, redact=redact + [token], **where)
    expires_in = data.get("expiresIn")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in < 0 or expires_in != expires_in:
        raise BadResponse("field expiresIn is missing or not a number of seconds (0 = never expires)",
                          status=resp.status, redact=redact + [token], **where)
    max_ttl = data.get("accessTokenMaxTTL")
    if max_ttl is not None and (isinstance(max_ttl, bool) or not isinstance(max_ttl, (int, float)) or max_ttl < 0):
        raise BadResponse("field accessTokenMaxTTL is not a number of seconds", status=resp.status, redact=redact + [token], **where)
    life = float(expires_in) if expires_in > 0 else zero_means
    return token, min(life, NEVER_EXPIRES), (float(max_ttl) if max_ttl else None)


def transport_error(exc: HttpError, redact: list[str] | None = None, **where: Any) -> KmsError:
    """Map a transport failure to Unreachable (could not talk) or BadResponse (garbled answer)."""
    if isinstance(exc, (ConnectError, RequestTimeout)):
        return Unreachable(str(exc), redact=redact or [], **where)
    return BadResponse(str(exc), redact=redact or [], **where)


def token_rejected(resp: Response, blames_token: Callable[[Any], bool]) -> bool:
    """401, or a 403 whose JSON body `blames_token` (each API words that differently)."""
    if resp.status == 401:
        return True
    if resp.status != 403:
        return False
    try:
        data = resp.json()
    except ValueError:
        return False
    return blames_token(data)


def needs_fresh_login(resp: Response) -> bool:
    """401, or 403 whose body says TokenError (expired or bad token)."""
    return token_rejected(resp, lambda data: isinstance(data, dict) and data.get("error") == "TokenError")


class TokenManager:
    """Holds one access token for a host and keeps it valid. Concurrency-safe (single flight)."""

    def __init__(
        self,
        http: HttpClient,
        credentials: CredentialSource,
        *,
        host: str = "",
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.credentials = credentials
        self.host = host or http.base_url
        self.log = logger
        self.clock = clock
        self._token: _Token | None = None
        self._generation = 0  # token replaced or dropped
        self._epoch = 0  # credentials changed (invalidate() without a token)
        self._lock = asyncio.Lock()
        self._stored = asyncio.Event()  # set whenever a token is stored (a token keeper waits on it)
        # which rejections mean "log in afresh and retry once" (a backend may say it differently)
        self.needs_fresh_login: Callable[[Response], bool] = needs_fresh_login
        # counters for metrics and tests
        self.logins = 0
        self.renewals = 0
        self.login_failures = 0

    def redact(self) -> list[str]:
        """Everything that must never appear in a message: the token and the credentials."""
        out = self.credentials.sensitive()
        if self._token is not None:
            out.append(self._token.value)
        return out

    @property
    def generation(self) -> int:
        """Bumped whenever the token is replaced or dropped (for callers that cache a token)."""
        return self._generation

    def invalidate(self, token: str | None = None) -> bool:
        """Forget the token so the next call logs in afresh. True when something was dropped.

        `token=None` (credential files changed): drop whatever is current, and make a login or
        renewal now in flight discard its result (it used the old credentials). `token=T` (T was
        refused, e.g. a 401 on the event stream): drop the token only if T is still the current
        one; a token another task got meanwhile is kept, and a login in flight goes on."""
        if token is None:
            self._epoch += 1
        elif self._token is None or self._token.value != token:
            return False
        dropped = self._token is not None
        self._token = None
        self._generation += 1
        return dropped

    def _store(self, tok: _Token, epoch: int) -> bool:
        """Keep `tok` unless the credentials changed while it was being obtained."""
        if self._epoch != epoch:
            return False
        self._token = tok
        self._generation += 1
        self._stored.set()
        return True

    async def wait_stored(self, timeout: float) -> None:
        """Return when a token is stored (a login or renewal), or after `timeout` seconds."""
        self._stored.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._stored.wait()
        except TimeoutError:
            pass

    def valid_token(self) -> str | None:
        """The current token if it has not expired yet, without logging in or renewing."""
        tok = self._token
        return tok.value if tok is not None and self.clock() < tok.expires_at else None

    async def token(self) -> str:
        """A valid access token, logging in or renewing first when due."""
        tok = self._token
        if tok is not None and self.clock() < tok.renew_at:
            return tok.value
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> str:
        tok = self._token
        now = self.clock()
        if tok is None or now >= tok.expires_at:
            return await self._login()
        if now < tok.renew_at:
            return tok.value  # another task refreshed it while we waited for the lock
        try:
            if tok.max_deadline is None or now + tok.expires_in > tok.max_deadline:
                return await self._login()  # renewing would outlive the session (or cannot be bounded)
            return await self._renew(tok)
        except KmsError as exc:
            if isinstance(exc, InvalidCredentials) and exc.op == "renew":
                return await self._login()  # renew refused (past max TTL, revoked): start afresh
            if self.clock() < tok.expires_at:
                # The current token still works: use it and try again on the next call.
                self._log("warning", "kms_token_refresh_failed", **exc.to_fields())
                return tok.value
            raise

    async def _login(self) -> str:
        for _ in range(_STALE_LOGIN_TRIES):
            token, kept = await self._login_once()
            if kept:
                return token
            # the credentials changed while this login was in flight: its token is from the old ones
            self._log("info", "kms_login_discarded", method=self.credentials.method, reason="credentials changed during login")
        return token  # they keep changing: use the last one for this call, and log in again next time

    async def _login_once(self) -> tuple[str, bool]:
        started = self._epoch
        sent = self.clock()
        where = {"host": self.host, "op": "login"}
        try:
            body = self.credentials.login_body()
        except CredentialsUnavailable as exc:
            self.login_failures += 1
            raise CredentialsUnavailable(exc.detail, **where) from None
        redact = self.credentials.sensitive()
        try:
            resp = await self.http.request("POST", self.credentials.login_path, json=body)
        except HttpError as exc:
            self.login_failures += 1
            raise transport_error(exc, redact, **where) from None
        if resp.status != 200:
            self.login_failures += 1
            raise error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), redact, **where)
        token, expires_in, max_ttl = parse_token_response(
            resp, where, redact, zero_means=getattr(self.credentials, "zero_expires_in", NEVER_EXPIRES))
        self.logins += 1
        if not self._store(_Token(token, sent, expires_in, sent + max_ttl if max_ttl else None), started):
            return token, False
        self._log("info", "kms_login", method=self.credentials.method, expires_in=expires_in, max_ttl=max_ttl)
        return token, True

    async def _renew(self, tok: _Token) -> str:
        started = self._epoch
        sent = self.clock()
        where = {"host": self.host, "op": "renew"}
        redact = self.redact()
        try:
            resp = await self.http.request("POST", "/v1/auth/token/renew", json={"accessToken": tok.value})
        except HttpError as exc:
            raise transport_error(exc, redact, **where) from None
        if resp.status != 200:  # 401 / 403 TokenError come back as InvalidCredentials(op="renew")
            raise error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), redact, **where)
        token, expires_in, _ = parse_token_response(resp, where, redact)
        self.renewals += 1
        # The session's max deadline is fixed at login; a renewal never extends it.
        if not self._store(_Token(token, sent, expires_in, tok.max_deadline), started):
            return await self._login()  # invalidated while renewing: that session is the old credentials'
        self._log("info", "kms_token_renewed", expires_in=expires_in)
        return token

    def renew_wait(self, horizon: float) -> float | None:
        """Seconds until the current token is due for renewal, when the requests that normally
        renew it (one per poll, every `horizon` seconds) could miss its renewal window (the last
        third of its life): a periodic token whose period is shorter than the poll interval.
        None when there is nothing for a keeper to do: no token, a window wider than `horizon`,
        or a token that cannot be renewed within its session (the next request logs in)."""
        tok = self._token
        if tok is None or tok.expires_in - (tok.renew_at - tok.obtained) >= horizon:
            return None
        if self.clock() >= tok.expires_at or tok.max_deadline is None or tok.renew_at + tok.expires_in > tok.max_deadline:
            return None
        return max(0.0, tok.renew_at - self.clock())

    async def renew_now(self) -> bool:
        """Renew the current token if it is due and renewable; never a login from here (the sync
        loop logs in, with its lockout policy). True when a renewal succeeded."""
        async with self._lock:
            tok = self._token
            now = self.clock()
            if tok is None or now < tok.renew_at or now >= tok.expires_at or tok.max_deadline is None \
                    or now + tok.expires_in > tok.max_deadline:
                return False
            try:
                await self._renew(tok)
            except KmsError as exc:
                self._log("warning", "kms_token_refresh_failed", **exc.to_fields())
                return False
            return True

    async def authorized(self, send: Callable[[str], Awaitable[Response]]) -> Response:
        """Call `send(token)`; on 401 / 403 TokenError log in afresh and call it once more."""
        token = await self.token()
        resp = await send(token)
        if not self.needs_fresh_login(resp):
            return resp
        async with self._lock:
            self.invalidate(token)  # only if still the rejected one (no other task replaced it)
            fresh = await self._refresh_locked()
        self._log("info", "kms_token_rejected_relogin", status=resp.status)
        return await send(fresh)

    async def revoke(self) -> bool:
        """Best-effort revoke of the current token (on shutdown). True when KMS accepted it."""
        tok = self._token
        if tok is None:
            return False
        self.invalidate()
        try:
            resp = await self.http.request("POST", "/v1/auth/token/revoke", json={"accessToken": tok.value}, timeout=2.0)
        except HttpError:
            return False
        return resp.status == 200

    def _log(self, level: str, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **fields)

