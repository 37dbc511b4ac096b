"""The canonical KMS API of Hanzo's Go servers (shared/kms-api.md, "The canonical API"), at the host
root, for the profiles canonical (current surface), canonical-older and canonical-nolist:

  GET  /v1/kms/health                                   {"status": "ok"}   (the route `auto` probes)
  POST /v1/kms/auth/login {clientId, clientSecret}      {accessToken (JWT, `owner` = org), expiresIn, tokenType}
  current:  GET    /v1/kms/secrets?path=&env=            {"names", "secrets": [{name, path, env, scheme}], "total"}  (not on nolist)
            GET    /v1/kms/secrets/{sub/path/}{name}?env= {"env", "name", "value"}   (root-folder secrets allowed)
            POST   /v1/kms/secrets {path, name, env, value}  upsert
            DELETE /v1/kms/secrets/{sub/path/}{name}?env=
  older:    GET    /v1/kms/orgs/{org}/secrets?prefix=&env= {"secrets": [{path, name, env, version, updatedTime}], "count", "truncated"?}
            GET    /v1/kms/orgs/{org}/secrets/{path/}{name}?env= {"secret": {"value"}, "version"}  (root: 400)
            POST   /v1/kms/orgs/{org}/secrets {path, name, env, value}; PATCH .../{name} (If-Match: version -> 409)
            DELETE /v1/kms/orgs/{org}/secrets/{path/}{name}?env=

The org is a project of the seed; the sub-path is the folder without its slashes. Go servers have
no folder imports: seeded imports are not followed here. No renew, ETag or events. Unknown paths
answer a plain-text 404, a method a route does not take a plain-text 405 (Go's ServeMux).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from . import api_kit as api
from .seed import Identity
from .model import KmsError, Project
from .state import DevKms

SEGMENT_OLDER = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME_BYTES = 253
SCHEME = "aes-256-gcm"  # opaque to clients: the page names the field, not its values


def kms(request: web.Request) -> DevKms:
    return api.kms(request)


def older(request: web.Request) -> bool:
    return request.path.startswith("/v1/kms/orgs/")


def error(status: int, message: str, headers: dict | None = None) -> KmsError:
    return KmsError(status, "", message, headers)


def render_error(request: web.Request, exc: KmsError) -> web.Response:
    body = {"message": exc.message} if older(request) else {"statusCode": exc.status, "message": exc.message}
    return web.Response(text=json.dumps(body, separators=(",", ":")), status=exc.status, content_type="application/json",
                        headers=exc.headers or None)


def plain(status: int, text: str, headers: dict | None = None) -> web.Response:
    return web.Response(text=text + "\n", status=status, content_type="text/plain", charset="utf-8", headers=headers)


async def body_of(request: web.Request, what: str) -> dict:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise error(400, f"invalid JSON body; expected {what}") from None
    except web.HTTPRequestEntityTooLarge:
        raise error(413, "request body too large") from None
    if not isinstance(body, dict):
        raise error(400, f"invalid JSON body; expected {what}")
    return body


def authenticate(request: web.Request) -> Identity:
    state = kms(request)
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    try:
        tok = state.token_real(bearer)
    except KmsError:
        raise error(401, "unauthorized" if older(request) else "invalid or expired token") from None
    ident = state.identities[tok.identity]
    request[api.IDENTITY] = ident.name
    try:
        state.check_rate(ident.name)
    except KmsError as exc:
        raise error(429, "rate limited", exc.headers) from None
    return ident


def org_project(request: web.Request, ident: Identity, url_org: str | None = None) -> Project:
    state = kms(request)
    org = state.org_of(ident)
    if url_org is not None and url_org != org:
        raise error(403, "org claim does not match URL")
    try:
        return state.project(org)
    except KmsError:
        raise error(403, "not a member of the org") from None


def env_of(request: web.Request) -> str:
    env = request.query.get("env", "")
    if not env:
        raise error(400, "env is required (?env=prod)")
    return env


def check_segments(segments: list[str], *, older_rules: bool) -> None:
    """Current: no empty, '.' or '..' segment, no control bytes, name <= 253 bytes. Older: [A-Za-z0-9._-] only."""
    for seg in segments:
        if older_rules:
            if not SEGMENT_OLDER.fullmatch(seg):
                raise error(400, "invalid path: segments may contain only A-Z a-z 0-9 . _ -")
        elif seg in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in seg):
            raise error(400, "invalid path: empty, '.' or '..' segment, or a control character")
    if segments and len(segments[-1].encode()) > MAX_NAME_BYTES:
        raise error(400, f"invalid name: at most {MAX_NAME_BYTES} bytes")


def split_rest(request: web.Request, prefix: str) -> list[str]:
    """The URL-escaped segments after `prefix`, each unescaped on its own (a %2F stays in its segment)."""
    raw = request.rel_url.raw_path[len(prefix):]
    return [unquote(s) for s in raw.split("/")]


def folder_path(sub: str) -> str:
    parts = [p for p in sub.strip("/").split("/") if p]
    return "/" + "/".join(parts)


def sub_path(folder: str) -> str:
    return folder.strip("/")


def can_read(state: DevKms, ident: Identity, project: Project, env: str, folder: str) -> bool:
    return state.can(ident, "read", project, env, folder)


def require_member(ident: Identity, project: Project) -> None:
    if not any(r.project in ("*", project.slug, project.id) for r in ident.access):
        raise error(403, "not a member of the org")


# ---- routes --------------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def healthz(request: web.Request) -> web.Response:
    return plain(200, "ok")


async def login(request: web.Request) -> web.Response:
    try:
        body = await body_of(request, "{clientId, clientSecret}")
    except KmsError:
        body = {}
    cid, csec = body.get("clientId"), body.get("clientSecret")
    if not isinstance(cid, str) or not isinstance(csec, str) or not cid or not csec:
        raise error(400, "clientId and clientSecret required")
    state = kms(request)
    ident = next((i for i in state.identities.values() if i.client_id == cid), None)
    if ident is None or not api.secrets_equal(ident.client_secret, csec):
        request[api.IDENTITY] = ident.name if ident else None
        raise error(401, "invalid credentials")
    request[api.IDENTITY] = ident.name
    return web.json_response(state.issue_real(ident, canonical=True))


async def list_current(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident)
        env_slug = env_of(request)
        raw = request.query.get("path", "")
        segs = [s for s in raw.strip("/").split("/")] if raw.strip("/") else []
        check_segments(segs + ["x"], older_rules=False)
        folder = folder_path(raw)
        request[api.LOCATION] = (project.slug, env_slug, folder)
        state = kms(request)
        require_member(ident, project)
        if not can_read(state, ident, project, env_slug, folder):
            raise error(403, f"no read access to {folder} in {env_slug}")
        env = project.environments.get(env_slug)
        rows = []
        if env is not None:
            prefix = folder.rstrip("/") + "/"
            for path, f in sorted(env.folders.items()):
                if (path == folder or path.startswith(prefix)) and can_read(state, ident, project, env_slug, path):
                    rows += [{"name": s.key, "path": sub_path(path), "env": env_slug, "scheme": SCHEME}
                             for s in sorted(f.secrets.values(), key=lambda s: s.key)]
        request[api.COUNT] = len(rows)
        return web.json_response({"names": sorted({r["name"] for r in rows}), "secrets": rows, "total": len(rows)})

    return await api.audited(request, "read", run)


def locate(request: web.Request, prefix: str, *, older_rules: bool) -> tuple[str, str]:
    segs = split_rest(request, prefix)
    if older_rules and len(segs) < 2:
        raise error(400, "path and name required")
    check_segments(segs, older_rules=older_rules)
    return "/" + "/".join(segs[:-1]), segs[-1]


async def read_current(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident)
        env_slug = env_of(request)
        folder, name = locate(request, "/v1/kms/secrets/", older_rules=False)
        request[api.LOCATION] = (project.slug, env_slug, folder)
        require_member(ident, project)
        state = kms(request)
        if not can_read(state, ident, project, env_slug, folder):
            raise error(403, f"no read access to {folder} in {env_slug}")
        s = find_secret(project, env_slug, folder, name)
        if s is None:
            raise error(404, "secret not found")
        return web.json_response({"env": env_slug, "name": name, "value": s.value})

    return await api.audited(request, "read", run, key=request.path.rsplit("/", 1)[-1][:500])


def find_secret(project: Project, env: str, folder: str, name: str):
    e = project.environments.get(env)
    f = e.folders.get(folder) if e else None
    return f.secrets.get(name) if f else None


async def upsert(request: web.Request, project: Project, ident: Identity, body: dict, *, older_rules: bool) -> Any:
    state = kms(request)
    fields = {k: body.get(k) for k in ("path", "name", "env", "value")}
    bad = [k for k in ("name", "env", "value") if not isinstance(fields[k], str) or (k != "value" and not fields[k])]
    if fields["path"] is not None and not isinstance(fields["path"], str):
        bad.append("path")
    if bad:
        raise error(400, f"invalid or missing field(s) {', '.join(bad)}; expected {{path, name, env, value}} strings")
    sub = (fields["path"] or "").strip("/")
    segs = (sub.split("/") if sub else []) + [fields["name"]]
    if older_rules and not sub:
        raise error(400, "path and name required")
    check_segments(segs, older_rules=older_rules)
    folder = folder_path(sub)
    request[api.LOCATION] = (project.slug, fields["env"], folder)
    require_member(ident, project)
    if not state.can(ident, "write", project, fields["env"], folder):
        raise error(403, f"no write access to {folder} in {fields['env']}")
    if fields["env"] not in project.environments:
        raise error(404, f"environment {fields['env'][:100]} not found")
    return state.set_secret(project.slug, fields["env"], folder, fields["name"], fields["value"])


async def write_current(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident)
        body = await body_of(request, "{path, name, env, value}")
        out = await upsert(request, project, ident, body, older_rules=False)
        return web.json_response({"env": out["environment"], "name": out["secretKey"], "path": sub_path(out["secretPath"])})

    return await api.audited(request, "write", run)


async def delete_at(request: web.Request, project: Project, ident: Identity, prefix: str, *, older_rules: bool) -> web.Response:
    env_slug = env_of(request)
    folder, name = locate(request, prefix, older_rules=older_rules)
    request[api.LOCATION] = (project.slug, env_slug, folder)
    require_member(ident, project)
    state = kms(request)
    if not state.can(ident, "write", project, env_slug, folder):
        raise error(403, f"no write access to {folder} in {env_slug}")
    if find_secret(project, env_slug, folder, name) is None:
        raise error(404, "not found" if older_rules else "secret not found")
    state.delete_secret(project.slug, env_slug, folder, name)
    return web.Response(status=204)


async def delete_current(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        return await delete_at(request, org_project(request, ident), ident, "/v1/kms/secrets/", older_rules=False)

    return await api.audited(request, "delete", run)


def add_routes(app: web.Application, surface: str) -> None:
    """surface: "current", "older" or "nolist"."""
    r = app.router
    r.add_get("/v1/kms/health", health)
    r.add_get("/healthz", healthz)
    r.add_post("/v1/kms/auth/login", login)
    if surface in ("current", "nolist"):
        if surface == "current":
            r.add_get("/v1/kms/secrets", list_current)
        r.add_post("/v1/kms/secrets", write_current)
        r.add_get("/v1/kms/secrets/{rest:.+}", read_current)
        r.add_delete("/v1/kms/secrets/{rest:.+}", delete_current)
    else:
        from .canonical_older import delete_older, list_older, patch_older, read_older, write_older

        r.add_get("/v1/kms/orgs/{org}/secrets", list_older)
        r.add_post("/v1/kms/orgs/{org}/secrets", write_older)
        r.add_get("/v1/kms/orgs/{org}/secrets/{rest:.+}", read_older)
        r.add_patch("/v1/kms/orgs/{org}/secrets/{rest:.+}", patch_older)
        r.add_delete("/v1/kms/orgs/{org}/secrets/{rest:.+}", delete_older)
