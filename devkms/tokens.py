"""The dev KMS's logins and tokens (dev and real-server profiles), lockouts and rate windows: a
mixin of DevKms, which owns the fields it uses (tokens, failed_logins, locked_until, ...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets as _secrets
import time
import uuid
from collections import deque

from .model import KmsError, Token
from .seed import Identity


class TokenAuth:
    """Login, renew, revoke and the lockout/rate policy, over DevKms's state."""

    # ---- auth --------------------------------------------------------------------------------

    def _issue(self, ident: Identity) -> dict:
        now = self.clock()
        tok = Token(_secrets.token_urlsafe(32), ident.name, now, now + self._ttl_now(now, now))
        self.tokens[tok.value] = tok
        return self._token_body(tok, now)

    def _ttl_now(self, created: float, now: float) -> float:
        ttl = self.token_ttl
        if self.max_ttl:
            ttl = min(ttl, max(0.0, created + self.max_ttl - now))
        return ttl

    def _token_body(self, tok: Token, now: float) -> dict:
        return {"accessToken": tok.value, "expiresIn": _secs(tok.expires - now),
                "accessTokenMaxTTL": _secs(self.max_ttl), "tokenType": "Bearer"}

    def login(self, client_id: str, client_secret: str) -> tuple[Identity | None, dict]:
        """Universal auth. Returns (identity, body); raises KmsError 401 (with the identity, if known, in .identity)."""
        ident = next((i for i in self.identities.values() if i.client_id == client_id), None)
        if ident is None:
            raise KmsError(401, "UnauthorizedError", "Invalid credentials: no identity with this clientId")
        self.check_lockout(ident)
        if not _secrets.compare_digest(ident.client_secret.encode(), client_secret.encode()):
            n = self.failed_logins.get(ident.name, 0) + 1
            self.failed_logins[ident.name] = n
            if n >= self.lockout_attempts:
                self.failed_logins[ident.name] = 0
                self.locked_until[ident.name] = self.clock() + self.lockout_seconds
                err = KmsError(401, "UnauthorizedError",
                               f"Invalid credentials. Identity '{ident.name}' is now locked out for "
                               f"{_secs(self.lockout_seconds)} seconds after {n} failed login attempts in a row")
            else:
                err = KmsError(401, "UnauthorizedError", f"Invalid credentials for identity '{ident.name}' (clientSecret does not match)")
            err.identity = ident.name  # type: ignore[attr-defined]
            raise err
        self.failed_logins[ident.name] = 0
        return ident, self._issue(ident)

    def check_lockout(self, ident: Identity) -> None:
        until = self.locked_until.get(ident.name)
        if until is not None:
            left = until - self.clock()
            if left > 0:
                raise KmsError(401, "UnauthorizedError",
                               f"Identity '{ident.name}' is locked out after {self.lockout_attempts} failed login "
                               f"attempts; try again in {_secs(left)} seconds", {"Retry-After": str(max(1, math.ceil(left)))})
            del self.locked_until[ident.name]

    def login_identity(self, ident: Identity) -> dict:
        """Issue a token for an already-verified identity (kubernetes auth)."""
        return self._issue(ident)

    def _token(self, value: str) -> Token:
        tok = self.tokens.get(value)
        if tok is None or tok.revoked:
            raise KmsError(403, "TokenError", "Invalid or revoked token. Please re-authenticate.")
        now = self.clock()
        if now >= tok.expires or (self.max_ttl and now >= tok.created + self.max_ttl):
            raise KmsError(403, "TokenError", "Your token has expired. Please re-authenticate.")
        return tok

    def authenticate(self, bearer: str | None) -> Identity:
        if not bearer:
            raise KmsError(401, "UnauthorizedError", "Token missing")
        tok = self._token(bearer)
        ident = self.identities.get(tok.identity)
        if ident is None:  # identity removed from state
            raise KmsError(403, "TokenError", "Invalid or revoked token. Please re-authenticate.")
        return ident

    def renew(self, value: str) -> tuple[Identity, dict]:
        tok = self._token(value)
        now = self.clock()
        if self.max_ttl and (now - tok.created) + self.token_ttl > self.max_ttl:
            raise KmsError(401, "UnauthorizedError", "Failed to renew access token: max TTL reached; log in again")
        tok.expires = now + self.token_ttl
        return self.identities[tok.identity], self._token_body(tok, now)

    def revoke(self, value: str) -> Identity:
        tok = self.tokens.get(value)
        if tok is None or tok.revoked:
            raise KmsError(403, "TokenError", "Invalid or revoked token")
        tok.revoked = True
        return self.identities[tok.identity]

    def expire_tokens(self, identity: str | None = None) -> int:
        """Test helper: make tokens (of one identity, or all) expire now."""
        n = 0
        now = self.clock()
        for tok in self.tokens.values():
            if identity is None or tok.identity == identity:
                tok.expires = now - 1
                n += 1
        return n

    # ---- auth as the real servers do it (profiles other than dev) -----------------------------

    def ttls(self, ident: Identity) -> tuple[float, float, bool]:
        """(ttl, max_ttl, periodic) of an identity's tokens: its own settings, else the server's."""
        if ident.token_period:
            return ident.token_period, 0.0, True
        ttl = self.token_ttl if ident.token_ttl is None else ident.token_ttl
        return ttl, self.max_ttl if ident.token_max_ttl is None else ident.token_max_ttl, False

    def _jwt(self, claims: dict) -> str:
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        body = b64(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(self._jwt_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(sig)}"

    def _jwt_ok(self, token: str) -> bool:
        parts = token.split(".")
        if len(parts) != 3:
            return False
        want = hmac.new(self._jwt_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            got = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(want, got)

    def org_of(self, ident: Identity) -> str:
        """Canonical API: the org an identity's token names (`owner`): its seed `org`, else the
        first project its access rules name, else the first project."""
        if ident.org:
            return ident.org
        for rule in ident.access:
            if rule.project != "*":
                return self.project(rule.project).slug if self._has_project(rule.project) else rule.project
        return next(iter(self.projects), "")

    def _has_project(self, ref: str) -> bool:
        return ref in self.projects or any(p.id == ref for p in self.projects.values())

    def issue_real(self, ident: Identity, *, canonical: bool = False) -> dict:
        now, wall = self.clock(), int(time.time())
        ttl, max_ttl, periodic = self.ttls(ident)
        if canonical:
            claims = {"owner": self.org_of(ident), "name": ident.name, "sub": ident.id, "iat": wall}
            if ttl:
                claims["exp"] = wall + int(math.ceil(ttl))
        else:
            claims = {"identityId": ident.id, "identityAccessTokenId": str(uuid.uuid4()),
                      "authTokenType": "identityAccessToken", "iat": wall}
            if max_ttl and ttl:  # expiresIn 0: a JWT without exp, never expires
                claims["exp"] = wall + int(math.ceil(max_ttl))
        tok = Token(self._jwt(claims), ident.name, now, now + ttl if ttl else math.inf,
                    jwt_exp=now + max_ttl if (max_ttl and ttl and not canonical) else None)
        self.tokens[tok.value] = tok
        if canonical:
            return {"accessToken": tok.value, "expiresIn": _secs(ttl), "tokenType": "Bearer"}
        return {"accessToken": tok.value, "expiresIn": _secs(ttl),
                "accessTokenMaxTTL": 1000000000 if periodic else _secs(max_ttl), "tokenType": "Bearer"}

    def login_real(self, client_id: str, client_secret: str) -> tuple[Identity, dict]:
        """Universal auth as the Infisical servers answer it: unknown clientId 404, wrong secret 401
        "Invalid credentials", and (where the profile has it) the lockout of newer servers."""
        ident = next((i for i in self.identities.values() if i.client_id == client_id), None)
        if ident is None:
            raise KmsError(404, "NotFound", "No identity with specified client ID was found")
        now = self.clock()
        if self.profile.lockout:
            until = self.locked_until.get(ident.name)
            if until is not None and until > now:
                err = KmsError(401, "UnauthorizedError", "This identity auth method is temporarily locked, please try again later")
                err.identity = ident.name  # type: ignore[attr-defined]
                raise err
            self.locked_until.pop(ident.name, None)
        if not _secrets.compare_digest(ident.client_secret.encode(), client_secret.encode()):
            if self.profile.lockout:
                times = self.failure_times.setdefault(ident.name, deque())
                times.append(now)
                window = self.lockout_window or math.inf
                while times and times[0] <= now - window:
                    times.popleft()
                if len(times) >= self.lockout_attempts:
                    times.clear()
                    self.locked_until[ident.name] = now + self.lockout_seconds
            err = KmsError(401, "UnauthorizedError", "Invalid credentials")
            err.identity = ident.name  # type: ignore[attr-defined]
            raise err
        self.failure_times.pop(ident.name, None)
        return ident, self.issue_real(ident)

    def token_real(self, bearer: str | None) -> Token:
        """A live token, or the error the recorded server gives: 401 Token missing, 403 TokenError
        (malformed / JWT expired), 401 "No identity access token found" (revoked or deleted), 401
        TTL expiration (and the server deletes the token)."""
        if not bearer:
            raise KmsError(401, "UnauthorizedError", "Token missing")
        if not self._jwt_ok(bearer):
            raise KmsError(403, "TokenError", "The provided access token is malformed. Please use a valid token or "
                                              "generate a new one and try again.")
        tok = self.tokens.get(bearer)
        now = self.clock()
        if tok is not None and tok.jwt_exp is not None and now >= tok.jwt_exp:
            raise KmsError(403, "TokenError", "Your token has expired. Please re-authenticate.")
        if tok is None or tok.revoked or tok.identity not in self.identities:
            raise KmsError(401, "UnauthorizedError", "No identity access token found")
        if now >= tok.expires:
            tok.revoked = True
            raise KmsError(401, "UnauthorizedError", "Failed to renew MI access token due to TTL expiration")
        return tok

    def authenticate_real(self, bearer: str | None) -> Identity:
        return self.identities[self.token_real(bearer).identity]

    def renew_real(self, value: str) -> tuple[Identity, dict]:
        tok = self.token_real(value)
        ident = self.identities[tok.identity]
        ttl, max_ttl, periodic = self.ttls(ident)
        now = self.clock()
        if max_ttl:
            end = tok.created + max_ttl
            if now > end:
                tok.revoked = True
                raise KmsError(401, "UnauthorizedError", "Failed to renew MI access token due to Max TTL expiration")
            if now + ttl > end:
                tok.revoked = True
                raise KmsError(401, "UnauthorizedError", "Failed to renew MI access token past its Max TTL expiration")
        tok.expires = now + ttl if ttl else math.inf
        return ident, {"accessToken": tok.value, "expiresIn": _secs(ttl),
                       "accessTokenMaxTTL": 1000000000 if periodic else _secs(max_ttl), "tokenType": "Bearer"}

    def revoke_real(self, value: str) -> Identity:
        tok = self.token_real(value)
        tok.revoked = True
        return self.identities[tok.identity]

    # ---- rate limit --------------------------------------------------------------------------

    def check_rate(self, identity: str) -> None:
        if not self.rate_limit or self.rate_limit <= 0:
            return
        now = self.clock()
        win = self.rate_windows.setdefault(identity, deque())
        while win and win[0] <= now - 1.0:
            win.popleft()
        if len(win) >= self.rate_limit:
            wait = max(1, int(win[0] + 1.0 - now + 0.999))
            raise KmsError(429, "RateLimitExceeded",
                           f"Rate limit exceeded for identity '{identity}' ({_secs(self.rate_limit)} requests per second); "
                           f"retry after {wait} s", {"Retry-After": str(wait)})
        win.append(now)


def _secs(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 3)
