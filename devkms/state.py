"""The dev KMS's state: projects/environments/folders/secrets, identities, tokens, lockouts,
rate windows, request stats, injected faults and change-event subscribers.

Plain Python, no HTTP: api.py turns KmsError into the documented error bodies. Everything runs on
one event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import re
import secrets as _secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    expires: float  # monotonic
    revoked: bool = False


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

    def wants(self, event: str, env: str, path: str) -> bool:
        for reg in self.register:
            if reg.get("event") not in (event, "*"):
                continue
            cond = reg.get("conditions") or {}
            if cond.get("environmentSlug") not in (None, env):
                continue
            if cond.get("secretPath") is not None and not path_matches(cond["secretPath"], path):
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
                 rate_limit: float = 0, lockout_seconds: float = 30, lockout_attempts: int = 3,
                 events: bool = True, max_event_streams: int = 10, k8s_public_key_pem: str | None = None,
                 k8s_audience: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        s = load_seed(seed)
        if token_ttl <= 0:
            raise SeedError("token_ttl must be > 0 seconds")
        if max_ttl < 0:
            raise SeedError("max_ttl must be >= 0 seconds (0 = no max TTL)")
        self.token_ttl, self.max_ttl = token_ttl, max_ttl
        self.rate_limit, self.lockout_seconds, self.lockout_attempts = rate_limit, lockout_seconds, lockout_attempts
        self.events_enabled, self.max_event_streams = events, max_event_streams
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
                    for ss in sf.secrets:
                        folder.secrets[ss.key] = Secret(stable_id("secret", sp.id, se.slug, sf.path, ss.key),
                                                        ss.key, ss.value, ss.comment)
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
        for sub in list(self.subscribers):
            if sub.project_id == project.id and sub.wants(event, env, path):
                try:
                    sub.queue.put_nowait(msg)
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
