"""The Infisical-compatible API as the real servers answer it (profiles infisical-recorded,
hanzo-node, infisical-events): the statuses, messages, secret shapes and framing of
shared/kms-api.md and tests/fixtures/kms/. The `dev` profile's handlers are in api.py.

Differences by flavour (Profile.infisical): "recorded" (upstream, Oct 2024) answers validation
failures 401, has no reqId, refuses JSON null in optional write fields, wants workspaceId (a real
id) on writes and ignores viewSecretValue; "newer" answers 422, adds reqId, accepts nulls and
slugs on writes, and hides values on viewSecretValue=false.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from injector.log import get_logger

from . import api_kit as api
from .model import KmsError
from .state import DevKms
from .zod import MISSING, check, enum_issue
from .infisical_events import events_stub, events_upstream
from .infisical_kit import (
    authenticate, authorised_read, body_of, invalid, kms, project_for_read, require, secret_json, validate,
)

log = get_logger("dev-kms")


# ---- routes --------------------------------------------------------------------------------

async def status(request: web.Request) -> web.Response:
    """GET /api/status: what Infisical serves there (the route `auto` detection uses)."""
    return api.ok(request, {"date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "message": "Ok",
                               "emailConfigured": False, "inviteOnlySignup": False, "redisConfigured": True,
                               "secretScanningConfigured": False, "samlDefaultOrgSlug": None,
                               "auditLogStorageDisabled": False})


async def login(request: web.Request) -> web.Response:
    body = await body_of(request)
    validate(request, body, [("clientId", "string", True, False), ("clientSecret", "string", True, False),
                             ("organizationSlug", "string", False, False)])
    state = kms(request)
    try:
        ident, out = state.login_real(body["clientId"], body["clientSecret"])
    except KmsError as exc:
        request[api.IDENTITY] = getattr(exc, "identity", None)
        log.info("login_failed", identity=request[api.IDENTITY], client=request.remote, status=exc.status)
        raise
    request[api.IDENTITY] = ident.name
    log.info("login", identity=ident.name, client=request.remote, method="universal-auth")
    return api.ok(request, out)


async def renew(request: web.Request) -> web.Response:
    body = await body_of(request)
    validate(request, body, [("accessToken", "string", True, False)])
    ident, out = kms(request).renew_real(body["accessToken"])
    request[api.IDENTITY] = ident.name
    return api.ok(request, out)


async def revoke(request: web.Request) -> web.Response:
    body = await body_of(request)
    validate(request, body, [("accessToken", "string", True, False)])
    ident = kms(request).revoke_real(body["accessToken"])
    request[api.IDENTITY] = ident.name
    return api.ok(request, {"message": "Successfully revoked access token"})


async def k8s_login(request: web.Request) -> web.Response:
    """The dev server verifies the service-account JWT itself (RS256, configured key) where the
    real one asks the cluster's TokenReview; the answers are the real ones (fixtures 24)."""
    from .k8s_auth import JwtError, subject_allowed, verify_rs256

    body = await body_of(request)
    validate(request, body, [("identityId", "string", True, False), ("jwt", "string", True, False),
                             ("organizationSlug", "string", False, False)])
    state = kms(request)
    ident = next((i for i in state.identities.values() if body["identityId"] in (i.id, i.name)), None)
    if ident is None or ident.kubernetes is None or not state.k8s_public_key_pem:
        raise KmsError(404, "NotFound", "Kubernetes auth method not found for identity, did you configure Kubernetes auth?")
    request[api.IDENTITY] = ident.name
    try:
        claims = verify_rs256(body["jwt"], state.k8s_public_key_pem, audience=ident.kubernetes.audience or state.k8s_audience)
    except JwtError:
        raise KmsError(401, "KubernetesTokenReviewError", "invalid bearer token") from None
    if not subject_allowed(claims, ident.kubernetes.service_accounts):
        raise KmsError(401, "UnauthorizedError", "Access denied: K8s namespace not allowed.")
    log.info("login", identity=ident.name, client=request.remote, method="kubernetes-auth")
    return api.ok(request, state.issue_real(ident))


async def list_secrets(request: web.Request) -> web.Response:
    v4 = request.path.startswith("/api/v4/")

    async def run() -> web.Response:
        ident, state, project, env_slug, path, flags, view, env, folder = authorised_read(request, v4)
        body: dict[str, Any] = {"secrets": []}
        if flags["include_imports"]:
            body["imports"] = []
        if env is None or folder is None:  # a missing folder or env is a 200 with empty lists
            request[api.COUNT] = 0
            return api.ok(request, body)
        folders = [folder]
        if flags["recursive"]:
            prefix = path.rstrip("/") + "/"
            folders += [f for p, f in env.folders.items()
                        if p.startswith(prefix) and p != path and state.can(ident, "read", project, env.slug, p)]
        rows = []
        for f in folders:
            for s in f.secrets.values():
                value = state._expand(ident, project, env, f, s.value) if flags["expandSecretReferences"] else None
                rows.append(secret_json(state, project, env.slug, f.path, s, "list", view=view, value=value))
        body["secrets"] = sorted(rows, key=lambda r: r["id"])
        if flags["include_imports"]:
            for imp in folder.imports:
                ienv = project.environments.get(imp.environment)
                ifolder = ienv.folders.get(imp.path) if ienv else None
                if ienv is None or ifolder is None or not state.can(ident, "read", project, imp.environment, imp.path):
                    continue
                rows = [secret_json(state, project, imp.environment, imp.path, s, "import", view=view,
                                    value=state._expand(ident, project, ienv, ifolder, s.value)
                                    if flags["expandSecretReferences"] else None)
                        for s in ifolder.secrets.values()]
                body["imports"].append({"secretPath": imp.path, "environment": imp.environment, "folderId": ifolder.id,
                                        "secrets": sorted(rows, key=lambda r: r["id"])})
        request[api.COUNT] = len(body["secrets"]) + sum(len(i["secrets"]) for i in body.get("imports", []))
        return api.ok(request, body)

    return await api.audited(request, "read", run)


async def get_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, state, project, env_slug, path, flags, view, env, folder = authorised_read(request)
        if env is None or folder is None:
            raise KmsError(404, "NotFound", "Secret not found")
        s, where, fenv, kind = folder.secrets.get(name), folder, env, "single"
        if s is None and flags["include_imports"]:
            for imp in folder.imports:
                ienv = project.environments.get(imp.environment)
                ifolder = ienv.folders.get(imp.path) if ienv else None
                if ienv and ifolder and name in ifolder.secrets and state.can(ident, "read", project, imp.environment, imp.path):
                    s, where, fenv, kind = ifolder.secrets[name], ifolder, ienv, "single-import"
                    break
        if s is None:
            raise KmsError(404, "NotFound", "Secret not found")
        value = state._expand(ident, project, fenv, where, s.value) if flags["expandSecretReferences"] else None
        return api.ok(request, {"secret": secret_json(state, project, fenv.slug, where.path, s, kind, view=view, value=value)})

    return await api.audited(request, "read", run, key=name[:api.MAX_NAME])


def _write_specs(state: DevKms, action: str) -> list:
    recorded = state.profile.infisical == "recorded"
    nullable = not recorded  # the recorded server refuses JSON null in these (fixture 21)
    specs = [("workspaceId", "string", recorded, False)]
    if not recorded:
        specs += [("workspaceSlug", "string", False, True), ("projectSlug", "string", False, True)]
    specs += [("environment", "string", True, False), ("secretPath", "string", False, False)]
    if action == "create":
        specs += [("secretValue", "string", True, False), ("secretComment", "string", False, nullable),
                  ("skipMultilineEncoding", "boolean", False, nullable), ("tagIds", "array", False, nullable)]
    elif action == "update":
        specs += [("secretValue", "string", False, False), ("skipMultilineEncoding", "boolean", False, nullable),
                  ("tagIds", "array", False, nullable)]
    specs += [("type", "string", False, False)]
    if action != "delete":
        specs += [("secretReminderNote", "string", False, True), ("secretReminderRepeatDays", "number", False, True)]
    if action == "update":
        specs += [("newSecretName", "string", False, nullable), ("secretComment", "string", False, nullable)]
    return specs


async def _write(request: web.Request, action: str) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident = authenticate(request)
        state = kms(request)
        body = await body_of(request)
        issues = check(body, _write_specs(state, action))
        if body.get("type") not in (None, MISSING, "shared", "personal") and isinstance(body.get("type"), str):
            issues.append(enum_issue(["type"], ["shared", "personal"], body["type"]))
        if len(name) > api.MAX_NAME:
            issues.append({"code": "too_big", "maximum": api.MAX_NAME, "type": "string", "inclusive": True, "exact": False,
                           "message": f"String must contain at most {api.MAX_NAME} character(s)", "path": ["secretName"]})
        if issues:
            raise invalid(request, issues)
        ref_id = body.get("workspaceId")
        slug = body.get("workspaceSlug") or body.get("projectSlug")
        if not ref_id and not slug:
            raise KmsError(400, "BadRequest", "Missing workspace id or environment")
        project = project_for_read(state, ref_id, slug)
        env_slug = body["environment"]
        try:
            path = api.parse_path(body.get("secretPath") or "/", "secretPath")
        except KmsError as exc:
            raise invalid(request, [{"code": "custom", "message": exc.message, "path": ["secretPath"]}]) from None
        request[api.LOCATION] = (project.slug, env_slug, path)
        require(state, ident, {"create": "create", "update": "edit", "delete": "delete"}[action], project, env_slug, path)
        env = project.environments.get(env_slug)
        if env is None:
            raise KmsError(404, "NotFound", f"Environment with slug '{env_slug[:100]}' in project with ID {project.id} not found")
        folder = env.folders.get(path)
        if folder is None:
            raise KmsError(404, "NotFound", f"Folder with path '{path}' in environment with slug '{env_slug[:100]}' not found")
        if action == "create":
            if name in folder.secrets:
                raise KmsError(400, "BadRequest", "Secret already exist")
            state.create_secret(None, project.slug, env.slug, path, name, body["secretValue"], body.get("secretComment"))
            s = folder.secrets[name]
        elif action == "update":
            if name not in folder.secrets:
                raise KmsError(404, "NotFound", "Secret not found")
            new_name = body.get("newSecretName") or None
            if new_name and new_name != name and new_name in folder.secrets:
                raise KmsError(400, "BadRequest", "Secret with the new name already exist")
            state.update_secret(None, project.slug, env.slug, path, name, value=body.get("secretValue"),
                                comment=body.get("secretComment"), new_name=new_name)
            s = folder.secrets[new_name or name]
        else:
            s = folder.secrets.get(name)
            if s is None:
                raise KmsError(404, "NotFound", "Secret not found")
            state.delete_secret_as(None, project.slug, env.slug, path, name)
        return api.ok(request, {"secret": secret_json(state, project, env.slug, path, s, "write")})

    return await api.audited(request, action, run, key=name[:api.MAX_NAME])


async def create_secret(request: web.Request) -> web.Response:
    return await _write(request, "create")


async def update_secret(request: web.Request) -> web.Response:
    return await _write(request, "update")


async def delete_secret(request: web.Request) -> web.Response:
    return await _write(request, "delete")


def add_routes(app: web.Application, events: str) -> None:
    r = app.router
    r.add_get("/api/status", status)
    r.add_post("/api/v1/auth/universal-auth/login", login)
    r.add_post("/api/v1/auth/token/renew", renew)
    r.add_post("/api/v1/auth/token/revoke", revoke)
    r.add_post("/api/v1/auth/kubernetes-auth/login", k8s_login)
    r.add_get("/api/v3/secrets/raw", list_secrets)
    r.add_get("/api/v3/secrets/raw/{name}", get_secret)
    if app[api.PROFILE].infisical == "newer":  # newer servers: v4 (projectId; imports and references on by default)
        r.add_get("/api/v4/secrets", list_secrets)
    r.add_post("/api/v3/secrets/raw/{name}", create_secret)
    r.add_patch("/api/v3/secrets/raw/{name}", update_secret)
    r.add_delete("/api/v3/secrets/raw/{name}", delete_secret)
    if events == "stub":
        r.add_post("/api/v1/events/subscribe/project-events", events_stub)
    elif events == "upstream":
        r.add_post("/api/v1/events/subscribe/project-events", events_upstream)

