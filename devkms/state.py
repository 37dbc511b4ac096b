"""The dev KMS's state (DevKms): the seeded projects and identities, permissions, secret reads and
writes, change-event fan-out, request stats and injected faults. Logins and tokens are the
TokenAuth mixin (tokens.py); the dataclasses are model.py.

Plain Python, no HTTP: api.py turns KmsError into the documented error bodies. Everything runs on
one event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import secrets as _secrets
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

from .profiles import Profile, get_profile
from .model import (EVENT_TYPES, Environment, Fault, Folder, KmsError, Project, Secret, Subscriber, Token, bad_request,
                    iso_now, not_found, path_matches, validation)
from .seed import Identity, Seed, SeedError, load_seed, normalize_path, stable_id
from .tokens import TokenAuth

# Public names other modules and tests import from here (they live in model.py).
__all__ = ["EVENT_TYPES", "DevKms", "Environment", "Fault", "Folder", "KmsError", "Project", "Secret", "Subscriber",
           "Token", "bad_request", "iso_now", "not_found", "path_matches", "validation"]


class DevKms(TokenAuth):
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
