"""The canonical-older surface of Hanzo's Go KMS (/v1/kms/orgs/{org}/secrets: list with prefix and
cap, read, upsert, PATCH with If-Match, delete); the shared rules and the current surface are in
canonical.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import api_kit as api
from .canonical import (
    authenticate, body_of, can_read, delete_at, env_of, error, find_secret, kms, locate,
    org_project, require_member, sub_path, upsert,
)


def _older_prefix(request: web.Request) -> str:
    return f"/v1/kms/orgs/{request.rel_url.raw_path.split('/')[4]}/secrets/"


async def list_older(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident, request.match_info["org"])
        env_slug = env_of(request)
        prefix = request.query.get("prefix", "").strip("/")
        request[api.LOCATION] = (project.slug, env_slug, "/" + prefix)
        require_member(ident, project)
        state = kms(request)
        env = project.environments.get(env_slug)
        rows = []
        if env is not None:
            for path, f in sorted(env.folders.items()):
                sub = sub_path(path)
                if sub.startswith(prefix) and can_read(state, ident, project, env_slug, path):
                    rows += [{"path": sub, "name": s.key, "env": env_slug, "version": s.version, "updatedTime": s.updated_at}
                             for s in sorted(f.secrets.values(), key=lambda s: s.key)]
        out: dict[str, Any] = {"secrets": rows[:state.list_cap], "count": min(len(rows), state.list_cap)}
        if len(rows) > state.list_cap:
            out["truncated"] = True
        request[api.COUNT] = out["count"]
        return web.json_response(out)

    return await api.audited(request, "read", run)


async def read_older(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident, request.match_info["org"])
        env_slug = env_of(request)
        folder, name = locate(request, _older_prefix(request), older_rules=True)
        request[api.LOCATION] = (project.slug, env_slug, folder)
        require_member(ident, project)
        if not can_read(kms(request), ident, project, env_slug, folder):
            raise error(403, "forbidden")
        s = find_secret(project, env_slug, folder, name)
        if s is None:
            raise error(404, "not found")
        return web.json_response({"secret": {"value": s.value}, "version": s.version})

    return await api.audited(request, "read", run, key=request.path.rsplit("/", 1)[-1][:500])


async def write_older(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident, request.match_info["org"])
        body = await body_of(request, "{path, name, env, value}")
        out = await upsert(request, project, ident, body, older_rules=True)
        return web.json_response({"path": sub_path(out["secretPath"]), "name": out["secretKey"], "env": out["environment"],
                                  "version": out["version"]})

    return await api.audited(request, "write", run)


async def patch_older(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident, request.match_info["org"])
        env_slug = env_of(request)
        folder, name = locate(request, _older_prefix(request), older_rules=True)
        body = await body_of(request, "{value}")
        if not isinstance(body.get("value"), str):
            raise error(400, "value required")
        request[api.LOCATION] = (project.slug, env_slug, folder)
        require_member(ident, project)
        state = kms(request)
        if not state.can(ident, "write", project, env_slug, folder):
            raise error(403, "forbidden")
        s = find_secret(project, env_slug, folder, name)
        if s is None:
            raise error(404, "not found")
        match = request.headers.get("If-Match")
        if match is not None and match.strip().strip('"') != str(s.version):
            raise error(409, f"version conflict: the secret is at version {s.version}")
        out = state.set_secret(project.slug, env_slug, folder, name, body["value"])
        return web.json_response({"version": out["version"]})

    return await api.audited(request, "update", run)


async def delete_older(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = authenticate(request)
        project = org_project(request, ident, request.match_info["org"])
        return await delete_at(request, project, ident, _older_prefix(request), older_rules=True)

    return await api.audited(request, "delete", run)
