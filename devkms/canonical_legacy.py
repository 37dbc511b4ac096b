"""The dev model's OLD canonical routes, served by `--api canonical|both` on the `dev` profile
(kept so existing clients and tests keep working; they match no real server: the real surfaces
are in canonical.py, profiles canonical / canonical-older / canonical-nolist):

  POST /api/v1/kms/auth/login {clientId, clientSecret} -> {accessToken, expiresIn, tokenType}
  GET  /api/v1/kms/orgs/{org}/secrets?path=/chat&env=prod   -> {"names": [...]}
  GET  /api/v1/kms/orgs/{org}/secrets/{path...}/{name}?env=prod -> {"secret": {"value": "..."}}

`org` is the project (slug or id). Names include the folder's imports, and a get falls back to
them (the folder's own value wins), so both backends yield the same files. No ETag, no renew, no
events; errors are {"statusCode", "message"}.
"""

from __future__ import annotations

from aiohttp import web

from . import api_kit as api
from .model import KmsError, bad_request


async def login(request: web.Request) -> web.Response:
    body = await api.read_json(request)
    client_id = api.req_str(body, "clientId", max_len=1000)
    client_secret = api.req_str(body, "clientSecret", max_len=1000)
    try:
        ident, out = api.kms(request).login(client_id, client_secret)
    except KmsError as exc:
        request[api.IDENTITY] = getattr(exc, "identity", None)
        raise
    request[api.IDENTITY] = ident.name
    return web.json_response({"accessToken": out["accessToken"], "expiresIn": out["expiresIn"], "tokenType": "Bearer"})


def _env(request: web.Request) -> str:
    env = request.query.get("env") or request.query.get("environment")
    if not env:
        raise bad_request("Missing env: pass ?env=prod")
    return env


async def list_names(request: web.Request) -> web.Response:

    async def run() -> web.Response:
        ident = api.authenticate(request)
        org, env = request.match_info["org"], _env(request)
        path = api.parse_path(request.query.get("path"), "path")
        request[api.LOCATION] = (org, env, path)
        out = api.kms(request).list_secrets(ident, org, env, path, include_imports=True)
        names = {s["secretKey"] for s in out["secrets"]} | {s["secretKey"] for i in out["imports"] for s in i["secrets"]}
        request[api.COUNT] = len(names)
        return web.json_response({"names": sorted(names)})

    return await api.audited(request, "read", run)


async def get_value(request: web.Request) -> web.Response:
    rest = request.match_info["rest"]
    folder, _, name = rest.rstrip("/").rpartition("/")

    async def run() -> web.Response:
        ident = api.authenticate(request)
        org, env = request.match_info["org"], _env(request)
        if not name:
            raise bad_request("Missing secret name: GET /v1/kms/orgs/{org}/secrets/{path...}/{name}?env=prod")
        path = api.parse_path("/" + folder, "path")
        request[api.LOCATION] = (org, env, path)
        out = api.kms(request).get_secret(ident, org, env, path, name, include_imports=True)
        return web.json_response({"secret": {"value": out["secret"]["secretValue"]}})

    return await api.audited(request, "read", run, key=name[:500])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/kms/auth/login", login)
    r.add_get("/api/v1/kms/orgs/{org}/secrets", list_names)
    r.add_get("/api/v1/kms/orgs/{org}/secrets/{rest:.+}", get_value)
