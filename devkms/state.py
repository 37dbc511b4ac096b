"""The dev KMS's state: projects/environments/folders/secrets, identities, tokens, lockouts,
rate windows, request stats, injected faults and change-event subscribers.

Plain Python, no HTTP: api.py turns KmsError into the documented error bodies. Everything runs on
one event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import json
import math
import re
import secrets as _secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .profiles import Profile, get_profile
from .seed import Identity, Import, Seed, SeedError, load_seed, normalize_path, stable_id

EVENT_TYPES = ("secret:create", "secret:update", "secret:delete", "secret:import-mutation")


class KmsError(Exception):
    """An API error: status, Infisical error name, message (never a value, token or secret)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


def bad_request(msg: str) -> KmsError:
    return KmsError(400, "BadRequest", msg)


def validation(msg: str) -> KmsError:
    return KmsError(422, "ValidationFailure", msg)


def not_found(msg: str) -> KmsError:
    return KmsError(404, "NotFound", msg)


def iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


@dataclass
class Secret:
    id: str
    key: str
    value: str
    comment: str = ""
    version: int = 1
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""

    def __post_init__(self) -> None:
        self.updated_at = self.updated_at or self.created_at


@dataclass
class Folder:
    id: str
    path: str
    secrets: dict[str, Secret] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)


@dataclass
class Environment:
    slug: str
    name: str
    id: str
    folders: dict[str, Folder] = field(default_factory=dict)


@dataclass
class Project:
    slug: str
    id: str
    name: str
    environments: dict[str, Environment] = field(default_factory=dict)


@dataclass
class Token:
    value: str
    identity: str  # identity name
    created: float  # monotonic: start of the max-TTL window
    expires: float  # monotonic (math.inf: never, expiresIn 0)
    revoked: bool = False  # real profiles: revoked, or deleted by the server (TTL passed)
    jwt_exp: float | None = None  # real profiles: monotonic time of the JWT's own exp (the max TTL)


@dataclass
class Fault:
    """An injected fault (test hook). Applies to API routes (never /_dev), first match wins.

    status: answer this status with an error body instead of handling the request
    delay: sleep this many seconds first (combined with the others)
    body: "truncate" (cut the connection mid-body), "invalid_json", "wrong_types"
    count: how many requests it applies to; None = until cleared
    path: only requests whose path (after /api) starts with this
    retry_after: Retry-After header for status faults (e.g. 429/503)
    """

    status: int | None = None
    delay: float = 0.0
    body: str | None = None
    count: int | None = None
    path: str | None = None
    retry_after: int | None = None

    def public(self) -> dict:
        return {"status": self.status, "delay": self.delay, "body": self.body, "count": self.count,
                "path": self.path, "retryAfter": self.retry_after}


@dataclass
class Subscriber:
    identity: str
    project_id: str
    register: list[dict]  # [{"event": ..., "conditions": {"secretPath": glob, "environmentSlug": ...}}]
    queue: asyncio.Queue
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: bool = False  # upstream framing; secretPath is a prefix (startsWith), not a glob

    def wants(self, event: str, env: str, path: str) -> bool:
        for reg in self.register:
            if reg.get("event") not in (event, "*"):
                continue
            cond = reg.get("conditions") or {}
            if cond.get("environmentSlug") not in (None, env):
                continue
            want = cond.get("secretPath")
            if want is not None and not (path.startswith(want) if self.upstream else path_matches(want, path)):
                continue
            return True
        return False


_glob_cache: dict[str, re.Pattern] = {}


def _compile_glob(glob: str) -> re.Pattern:
    g = glob if glob == "/" else glob.rstrip("/")
    tail = ""
    if g.endswith("/**"):
        g, tail = g[:-3], "(/.*)?"
        if not g:  # "/**": every folder, including "/"
            return re.compile("/.*")
    out, i = [], 0
    while i < len(g):
        if g.startswith("**", i):
            out.append(".*")
            i += 2
        elif g[i] == "*":
            out.append("[^/]*")
            i += 1
        elif g[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(g[i]))
            i += 1
    return re.compile("".join(out) + tail)


def path_matches(glob: str, path: str) -> bool:
    """Folder-path glob: `*` one segment, `**` any depth; `/x/**` also matches `/x`; trailing slash ignored."""
    rx = _glob_cache.get(glob)
    if rx is None:
        rx = _glob_cache[glob] = _compile_glob(glob)
    return rx.fullmatch(path) is not None


class DevKms:
    """All dev KMS state. Build with DevKms(seed) where seed is a dict, a YAML path or a Seed."""

    def __init__(self, seed: "str | Path | dict | Seed", *, token_ttl: float = 7200, max_ttl: float = 2592000,
                 rate_limit: float = 0, lockout_seconds: float | None = None, lockout_attempts: int = 3,
                 events: bool = True, max_event_streams: int | None = None, k8s_public_key_pem: str | None = None,
                 k8s_audience: str | None = None, clock: Callable[[], float] = time.monotonic,
                 profile: "str | Profile" = "dev", lockout_window: float | None = None,
                 events_on_plan: bool = True, events_permitted: bool = True, event_heartbeat: float = 15.0,
                 event_max_seconds: float = 3600.0, event_auth_recheck: float = 60.0, list_cap: int = 10000) -> None:
        s = load_seed(seed)
        self.profile = get_profile(profile, events=None if events else False)
        if token_ttl <= 0:
            raise SeedError("token_ttl must be > 0 seconds")
        if max_ttl < 0:
            raise SeedError("max_ttl must be >= 0 seconds (0 = no max TTL)")
        self.token_ttl, self.max_ttl = token_ttl, max_ttl
        if lockout_seconds is None:
            lockout_seconds = self.profile.lockout_seconds
        self.rate_limit, self.lockout_seconds, self.lockout_attempts = rate_limit, lockout_seconds, lockout_attempts
        self.lockout_window = lockout_window if lockout_window is not None else self.profile.lockout_window
        self.failure_times: dict[str, deque] = {}  # real lockout: failure times within the window
        self.events_enabled = events and self.profile.events != "absent"
        if max_event_streams is None:
            max_event_streams = 5 if self.profile.events == "upstream" else 10
        self.max_event_streams = max_event_streams
        # upstream events switches (tests): plan gate (400), permission (403), heartbeat, one-hour close, auth re-check
        self.events_on_plan, self.events_permitted = events_on_plan, events_permitted
        self.event_heartbeat, self.event_max_seconds, self.event_auth_recheck = event_heartbeat, event_max_seconds, event_auth_recheck
        self.list_cap = list_cap  # canonical-older: rows per list before `truncated`
        self._jwt_key = _secrets.token_bytes(32)
        self.k8s_public_key_pem = k8s_public_key_pem or s.k8s_public_key_pem
        self.k8s_audience = k8s_audience or s.k8s_audience
        self.clock = clock
        self.identities: dict[str, Identity] = {i.name: i for i in s.identities}
        self.projects: dict[str, Project] = {}
        self.tokens: dict[str, Token] = {}
        self.failed_logins: dict[str, int] = {}  # identity name -> consecutive failures
        self.locked_until: dict[str, float] = {}
        self.rate_windows: dict[str, deque] = {}
        self.faults: list[Fault] = []
        self.subscribers: list[Subscriber] = []
        self.reset_stats()
        for sp in s.projects:
            p = Project(sp.slug, sp.id, sp.name)
            for se in sp.environments:
                env = Environment(se.slug, se.name, stable_id("env", sp.id, se.slug))
                p.environments[se.slug] = env
                self._ensure_folder(p, env, "/")
                for sf in se.folders:
                    folder = self._ensure_folder(p, env, sf.path)
                    folder.imports.extend(sf.imports)
                    if sf.id:
                        folder.id = sf.id
                    for ss in sf.secrets:
                        sec = Secret(ss.id or stable_id("secret", sp.id, se.slug, sf.path, ss.key), ss.key, ss.value,
                                     ss.comment, ss.version)
                        if ss.created_at:
                            sec.created_at = sec.updated_at = ss.created_at
                        if ss.updated_at:
                            sec.updated_at = ss.updated_at
                        folder.secrets[ss.key] = sec
            if p.slug in self.projects:
                raise SeedError(f"projects: duplicate slug {p.slug!r}")
            self.projects[p.slug] = p

    # ---- lookups -----------------------------------------------------------------------------

    def _ensure_folder(self, project: Project, env: Environment, path: str) -> Folder:
        path = normalize_path(path)
        parts = [p for p in path.split("/") if p]
        folder = None
        for depth in range(len(parts) + 1):
            sub = "/" + "/".join(parts[:depth])
            folder = env.folders.get(sub)
            if folder is None:
                folder = env.folders[sub] = Folder(stable_id("folder", project.id, env.slug, sub), sub)
        assert folder is not None
        return folder

    def project(self, ref: str) -> Project:
        """By slug or id."""
        p = self.projects.get(ref)
        if p is None:
            p = next((x for x in self.projects.values() if x.id == ref), None)
        if p is None:
            raise not_found(f"Project '{ref}' not found (use its slug or id)")
        return p

    def environment(self, project: Project, env: str) -> Environment:
        e = project.environments.get(env)
        if e is None:
            raise not_found(f"Environment '{env}' not found in project '{project.slug}'; "
                            f"it has: {', '.join(sorted(project.environments)) or 'none'}")
        return e

    def folder(self, project: Project, env: Environment, path: str) -> Folder:
        f = env.folders.get(path)
        if f is None:
            raise not_found(f"Folder '{path}' not found in project '{project.slug}' environment '{env.slug}'")
        return f

    def identity(self, name: str) -> Identity:
        return self.identities[name]

    def credentials(self, name: str) -> tuple[str, str]:
        """(clientId, clientSecret) of a seeded identity, for tests."""
        i = self.identities[name]
        return i.client_id, i.client_secret

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

    # ---- permissions -------------------------------------------------------------------------

    def can(self, ident: Identity, action: str, project: Project, env: str, path: str) -> bool:
        for rule in ident.access:
            if rule.project not in ("*", project.slug, project.id):
                continue
            if not (rule.read if action == "read" else rule.write):
                continue
            if not any(fnmatch.fnmatchcase(env, g) for g in rule.environments):
                continue
            if any(path_matches(g, path) for g in rule.paths):
                return True
        return False

    def require(self, ident: Identity, action: str, project: Project, env: str, path: str) -> None:
        if not self.can(ident, action, project, env, path):
            raise KmsError(403, "PermissionDenied",
                           f"Identity '{ident.name}' has no {action} access to project '{project.slug}' "
                           f"environment '{env}' path '{path}'")

    # ---- secrets -----------------------------------------------------------------------------

    def secret_json(self, project: Project, env: str, path: str, s: Secret, view_value: bool = True,
                    value: str | None = None) -> dict:
        return {"id": s.id, "_id": s.id, "workspace": project.id, "environment": env, "version": s.version,
                "type": "shared", "secretKey": s.key,
                "secretValue": (s.value if value is None else value) if view_value else "<hidden-by-kms>",
                "secretComment": s.comment, "secretPath": path, "secretValueHidden": not view_value,
                "tags": [], "secretMetadata": [], "createdAt": s.created_at, "updatedAt": s.updated_at}

    def list_secrets(self, ident: Identity, project_ref: str, env_slug: str, path: str, *, recursive: bool = False,
                     include_imports: bool = False, expand: bool = False, view_value: bool = True) -> dict:
        project = self.project(project_ref)
        self.require(ident, "read", project, env_slug, path)
        env = self.environment(project, env_slug)
        folder = self.folder(project, env, path)
        folders = [folder]
        if recursive:
            prefix = path.rstrip("/") + "/"
            folders += [f for p, f in sorted(env.folders.items())
                        if p.startswith(prefix) and p != path and self.can(ident, "read", project, env.slug, p)]
        out = []
        for f in folders:
            for s in sorted(f.secrets.values(), key=lambda s: s.key):
                value = self._expand(ident, project, env, f, s.value) if expand else None
                out.append(self.secret_json(project, env.slug, f.path, s, view_value, value))
        body: dict[str, Any] = {"secrets": out}
        if include_imports:
            body["imports"] = []
            for imp in folder.imports:
                ienv = project.environments.get(imp.environment)
                ifolder = ienv.folders.get(imp.path) if ienv else None
                if ifolder is None or not self.can(ident, "read", project, imp.environment, imp.path):
                    continue  # a dangling or unreadable import is skipped, as the real server does
                body["imports"].append({
                    "secretPath": imp.path, "environment": imp.environment, "folderId": ifolder.id,
                    "secrets": [self.secret_json(project, imp.environment, imp.path, s, view_value,
                                                 self._expand(ident, project, ienv, ifolder, s.value) if expand else None)
                                for s in sorted(ifolder.secrets.values(), key=lambda s: s.key)]})
        return body

    def get_secret(self, ident: Identity, project_ref: str, env_slug: str, path: str, name: str, *,
                   include_imports: bool = True, expand: bool = False, view_value: bool = True) -> dict:
        project = self.project(project_ref)
        self.require(ident, "read", project, env_slug, path)
        env = self.environment(project, env_slug)
        folder = self.folder(project, env, path)
        s, where, fenv = folder.secrets.get(name), folder, env
        if s is None and include_imports:  # the folder's own value wins; then imports in order
            for imp in folder.imports:
                ienv = project.environments.get(imp.environment)
                ifolder = ienv.folders.get(imp.path) if ienv else None
                if ifolder and name in ifolder.secrets and self.can(ident, "read", project, imp.environment, imp.path):
                    s, where, fenv = ifolder.secrets[name], ifolder, ienv
                    break
        if s is None:
            raise not_found(f"Secret '{name}' not found in project '{project.slug}' environment '{env.slug}' path '{path}'")
        value = self._expand(ident, project, fenv, where, s.value) if expand else None
        return {"secret": self.secret_json(project, fenv.slug, where.path, s, view_value, value)}

    _REF = re.compile(r"\$\{([^}]+)\}")

    def _expand(self, ident: Identity, project: Project, env: Environment, folder: Folder, value: str, depth: int = 0) -> str:
        """Infisical-style references: ${KEY} (same folder, then its imports), ${env.KEY}, ${env.a.b.KEY}.
        Unresolvable or unreadable references are left as written."""
        if depth > 5 or "${" not in value:
            return value

        def resolve(m: re.Match) -> str:
            parts = m.group(1).split(".")
            if len(parts) == 1:
                cands = [(env, folder)]
                for imp in folder.imports:
                    ie = project.environments.get(imp.environment)
                    cands.append((ie, ie.folders.get(imp.path) if ie else None))
            else:
                e = project.environments.get(parts[0])
                cands = [(e, e.folders.get("/" + "/".join(parts[1:-1])) if e else None)]
            for e, f in cands:
                if e and f and parts[-1] in f.secrets and self.can(ident, "read", project, e.slug, f.path):
                    return self._expand(ident, project, e, f, f.secrets[parts[-1]].value, depth + 1)
            return m.group(0)

        return self._REF.sub(resolve, value)

    def create_secret(self, ident: Identity | None, project_ref: str, env_slug: str, path: str, name: str,
                      value: str, comment: str | None = None) -> dict:
        project = self.project(project_ref)
        if ident is not None:
            self.require(ident, "write", project, env_slug, path)
        env = self.environment(project, env_slug)
        folder = self.folder(project, env, path) if ident is not None else self._ensure_folder(project, env, path)
        if name in folder.secrets:
            raise bad_request(f"Secret '{name}' already exists in project '{project.slug}' environment '{env.slug}' path '{path}'")
        s = folder.secrets[name] = Secret(str(uuid.uuid4()), name, value, comment or "")
        self.emit(project, env.slug, folder.path, name, "secret:create")
        return {"secret": self.secret_json(project, env.slug, folder.path, s)}

    def update_secret(self, ident: Identity | None, project_ref: str, env_slug: str, path: str, name: str, *,
                      value: str | None = None, comment: str | None = None, new_name: str | None = None) -> dict:
        project = self.project(project_ref)
        if ident is not None:
            self.require(ident, "write", project, env_slug, path)
        env = self.environment(project, env_slug)
        folder = self.folder(project, env, path)
        s = folder.secrets.get(name)
        if s is None:
            raise not_found(f"Secret '{name}' not found in project '{project.slug}' environment '{env.slug}' path '{path}'")
        if new_name and new_name != name:
            if new_name in folder.secrets:
                raise bad_request(f"Secret '{new_name}' already exists in project '{project.slug}' environment '{env.slug}' path '{path}'")
            del folder.secrets[name]
            s.key = new_name
            folder.secrets[new_name] = s
            self.emit(project, env.slug, folder.path, name, "secret:delete")
        if value is not None:
            s.value = value
        if comment is not None:
            s.comment = comment
        s.version += 1
        s.updated_at = iso_now()
        self.emit(project, env.slug, folder.path, s.key, "secret:create" if new_name and new_name != name else "secret:update")
        return {"secret": self.secret_json(project, env.slug, folder.path, s)}

    def delete_secret_as(self, ident: Identity | None, project_ref: str, env_slug: str, path: str, name: str) -> dict:
        project = self.project(project_ref)
        if ident is not None:
            self.require(ident, "write", project, env_slug, path)
        env = self.environment(project, env_slug)
        folder = self.folder(project, env, path)
        s = folder.secrets.pop(name, None)
        if s is None:
            raise not_found(f"Secret '{name}' not found in project '{project.slug}' environment '{env.slug}' path '{path}'")
        self.emit(project, env.slug, folder.path, name, "secret:delete")
        return {"secret": self.secret_json(project, env.slug, folder.path, s)}

    # ---- in-process helpers (tests, demo): no auth, create folders on demand -------------------

    def set_secret(self, project: str, env: str, path: str, key: str, value: str) -> dict:
        """Create or update (bumping version) a secret, creating the folder if needed."""
        p = self.project(project)
        e = self.environment(p, env)
        f = self._ensure_folder(p, e, normalize_path(path))
        if key in f.secrets:
            return self.update_secret(None, p.slug, env, f.path, key, value=value)["secret"]
        return self.create_secret(None, p.slug, env, f.path, key, value)["secret"]

    def delete_secret(self, project: str, env: str, path: str, key: str) -> dict:
        return self.delete_secret_as(None, project, env, normalize_path(path), key)["secret"]

    def get_value(self, project: str, env: str, path: str, key: str) -> str:
        p = self.project(project)
        return self.folder(p, self.environment(p, env), normalize_path(path)).secrets[key].value

    # ---- change events -----------------------------------------------------------------------

    def emit(self, project: Project, env: str, path: str, key: str, event: str) -> None:
        self._publish(project, event, env, path, key)
        # folders importing the changed folder see an import mutation
        for e in project.environments.values():
            for f in e.folders.values():
                if any(i.environment == env and i.path == path for i in f.imports):
                    self._publish(project, "secret:import-mutation", e.slug, f.path, key)

    def _publish(self, project: Project, event: str, env: str, path: str, key: str) -> None:
        if not self.subscribers:
            return
        msg = {"projectType": "secret-manager",
               "data": {"eventType": event, "payload": [{"environment": env, "secretPath": path, "secretKey": key}]}}
        # upstream: {"type", "data": {"eventType", "payload"}}; an import mutation's payload is an object
        payload: Any = ({"environment": env, "secretPath": path} if event == "secret:import-mutation"
                        else [{"environment": env, "secretPath": path, "secretKeys": key}])
        upstream = {"type": "secret-manager", "data": {"eventType": event, "payload": payload}}
        for sub in list(self.subscribers):
            if sub.project_id == project.id and sub.wants(event, env, path):
                try:
                    sub.queue.put_nowait((event, upstream) if sub.upstream else msg)
                except asyncio.QueueFull:  # a stuck reader loses events, not the server
                    pass

    def drop_event_streams(self) -> int:
        """Test helper: close every open event stream (clients must reconnect)."""
        n = 0
        for sub in list(self.subscribers):
            sub.closed.set()
            n += 1
        return n

    # ---- stats and faults (test hooks) -------------------------------------------------------

    def reset_stats(self) -> None:
        self.stat_routes: Counter = Counter()
        self.stat_identities: Counter = Counter()
        self.stat_identity_routes: dict[str, Counter] = {}
        self.stat_statuses: Counter = Counter()
        self.stat_total = 0
        self.stat_since = time.time()

    def record(self, route: str, identity: str | None, status: int) -> None:
        self.stat_total += 1
        self.stat_routes[route] += 1
        self.stat_statuses[str(status)] += 1
        if identity:
            self.stat_identities[identity] += 1
            self.stat_identity_routes.setdefault(identity, Counter())[route] += 1

    def stats(self) -> dict:
        return {"total": self.stat_total, "since": self.stat_since, "elapsed": time.time() - self.stat_since,
                "routes": dict(self.stat_routes), "identities": dict(self.stat_identities),
                "identityRoutes": {k: dict(v) for k, v in self.stat_identity_routes.items()},
                "statuses": dict(self.stat_statuses),
                "eventStreams": Counter(s.identity for s in self.subscribers)}

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, path: str) -> Fault | None:
        for f in self.faults:
            if f.path and not path.startswith(f.path):
                continue
            if f.count is not None:
                f.count -= 1
                if f.count <= 0:
                    self.faults.remove(f)
            return f
        return None


def _secs(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 3)
