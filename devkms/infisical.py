"""The Infisical-compatible API as the real servers answer it (profiles infisical-recorded,
hanzo-node, infisical-events): the statuses, messages, secret shapes and framing of
shared/kms-api.md and tests/fixtures/kms/. The `dev` profile's handlers are in api.py.

Differences by flavour (Profile.infisical): "recorded" (upstream, Oct 2024) answers validation
failures 401, has no reqId, refuses JSON null in optional write fields, wants workspaceId (a real
id) on writes and ignores viewSecretValue; "newer" answers 422, adds reqId, accepts nulls and
slugs on writes, and hides values on viewSecretValue=false.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from injector.log import get_logger

from . import api_kit as api
from .seed import Identity
from .model import EVENT_TYPES, KmsError, Project, Secret, Subscriber
from .state import DevKms
from .zod import MISSING, Issues, check, enum_query, enum_issue, size_issue, type_issue

log = get_logger("dev-kms")
HIDDEN = "<hidden-by-infisical>"
MAX_REGISTRATIONS = 10


def kms(request: web.Request) -> DevKms:
    return api.kms(request)


def invalid(request: web.Request, issues: list[dict]) -> KmsError:
    return KmsError(kms(request).profile.validation_status, "ValidationFailure", issues)  # type: ignore[arg-type]


async def body_of(request: web.Request) -> dict:
    """The JSON body, as fastify parses it: empty or malformed JSON is a 400; a non-object is a
    validation failure."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise KmsError(413, "PayloadTooLarge", f"Request body is too large (the limit is {api.MAX_BODY} bytes)") from None
    if not raw.strip():
        raise KmsError(400, "BadRequest", "Body cannot be empty when content-type is set to 'application/json'")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KmsError(400, "BadRequest", "Body is not valid JSON but content-type is set to 'application/json'") from None
    if not isinstance(body, dict):
        raise invalid(request, [type_issue([], "object", body)])
    return body


def validate(request: web.Request, body: dict, specs: list) -> None:
    issues = check(body, specs)
    if issues:
        raise invalid(request, issues)


def authenticate(request: web.Request) -> Identity:
    state = kms(request)
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    ident = state.authenticate_real(bearer)
    request[api.IDENTITY] = ident.name
    check_rate(state, ident.name)
    return ident


def check_rate(state: DevKms, identity: str) -> None:
    """The dev limiter (per identity per second), answered as the profile's server answers it:
    older servers turn the 429 into a 500 "Something went wrong" that keeps Retry-After."""
    try:
        state.check_rate(identity)
    except KmsError as exc:
        wait = exc.headers.get("Retry-After", "1")
        if state.profile.infisical == "recorded":
            raise KmsError(500, "InternalServerError", "Something went wrong", {"Retry-After": wait}) from None
        raise KmsError(429, "RateLimitExceeded", f"Rate limit exceeded. Please try again in {wait} seconds",
                       {"Retry-After": wait}) from None


# ---- shapes --------------------------------------------------------------------------------

def secret_json(state: DevKms, project: Project, env: str, path: str, s: Secret, kind: str, *, view: bool = True,
                value: str | None = None) -> dict:
    """kind: "list" (adds secretPath, tags), "import" (workspace "", no reminder, dates, path, tags),
    "single" (adds tags), "single-import" and "write" (neither)."""
    newer = state.profile.infisical == "newer"
    out: dict[str, Any] = {"id": s.id, "_id": s.id, "workspace": "" if kind == "import" else project.id,
                           "environment": env, "version": s.version, "type": "shared", "secretKey": s.key,
                           "secretValue": (s.value if value is None else value) if view else HIDDEN}
    if newer:
        out["secretValueHidden"] = not view
    out["secretComment"] = s.comment
    if kind != "import":
        out["secretReminderNote"] = None
        out["secretReminderRepeatDays"] = None
    out["skipMultilineEncoding"] = False
    out["metadata"] = None
    if newer:
        out["secretMetadata"] = []
    if kind != "import":
        out["createdAt"], out["updatedAt"] = s.created_at, s.updated_at
    if kind == "list":
        out["secretPath"] = path
    if kind in ("list", "single"):
        out["tags"] = []
    return out


# ---- lookups -------------------------------------------------------------------------------

def project_for_read(state: DevKms, workspace_id: str | None, slug: str | None) -> Project:
    if workspace_id:
        p = next((x for x in state.projects.values() if x.id == workspace_id), None)
        if p is None:
            raise KmsError(404, "NotFound", "Project not found during bot lookup. Are you sure you are using the correct project ID?")
        return p
    p = state.projects.get(slug or "")
    if p is None:
        if state.profile.unknown_project_status == 500:
            raise KmsError(500, "Failed to find project by slug", "Something went wrong")
        raise KmsError(404, "NotFound", f"Project with slug '{str(slug)[:200]}' not found")
    return p


def require_member(ident: Identity, project: Project) -> None:
    if not any(r.project in ("*", project.slug, project.id) for r in ident.access):
        raise KmsError(403, "Identity is not a member of the specified project", "You are not allowed to access this resource")


def require(state: DevKms, ident: Identity, action: str, project: Project, env: str, path: str) -> None:
    require_member(ident, project)
    if not state.can(ident, "read" if action == "read" else "write", project, env, path):
        raise KmsError(403, "PermissionDenied", f"You are not allowed to {action} on secrets")


def read_query(request: web.Request, v4: bool = False) -> tuple[Project, str, str, dict[str, bool]]:
    """v3 (`workspaceSlug`/`workspaceId`, include_imports and expandSecretReferences default false)
    or v4 (`projectId` only, includeImports and expandSecretReferences default true)."""
    state = kms(request)
    q = request.query
    names = ["recursive", "includeImports" if v4 else "include_imports", "expandSecretReferences"]
    if state.profile.infisical == "newer":
        names.append("viewSecretValue")
    issues = enum_query(q, names)
    if v4 and not q.get("projectId"):
        issues.insert(0, type_issue(["projectId"], "string", MISSING))
    if issues:
        raise invalid(request, issues)
    workspace_id, slug, env = (q.get("projectId"), None, q.get("environment")) if v4 else \
        (q.get("workspaceId"), q.get("workspaceSlug"), q.get("environment"))
    if not (workspace_id or slug) or not env:
        raise KmsError(400, "BadRequest", "Missing workspace id or environment")
    path = q.get("secretPath") or "/"
    try:
        path = api.parse_path(path, "secretPath")
    except KmsError as exc:  # the real servers refuse such a path in validation
        raise invalid(request, [{"code": "custom", "message": exc.message, "path": ["secretPath"]}]) from None
    defaults = {"includeImports": v4, "expandSecretReferences": v4, "viewSecretValue": True}
    flags = {n: q[n] == "true" if n in q else defaults.get(n, False) for n in names}
    flags.setdefault("viewSecretValue", True)
    if v4:
        flags["include_imports"] = flags.pop("includeImports")
    return project_for_read(state, workspace_id, slug), env, path, flags


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
        ident = authenticate(request)
        project, env_slug, path, flags = read_query(request, v4)
        request[api.LOCATION] = (project.slug, env_slug, path)
        state = kms(request)
        require(state, ident, "read", project, env_slug, path)
        view = flags["viewSecretValue"] or not state.profile.view_secret_value
        env = project.environments.get(env_slug)
        folder = env.folders.get(path) if env else None
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
        ident = authenticate(request)
        project, env_slug, path, flags = read_query(request)
        request[api.LOCATION] = (project.slug, env_slug, path)
        state = kms(request)
        require(state, ident, "read", project, env_slug, path)
        view = flags["viewSecretValue"] or not state.profile.view_secret_value
        env = project.environments.get(env_slug)
        folder = env.folders.get(path) if env else None
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


# ---- change events -------------------------------------------------------------------------

async def events_stub(request: web.Request) -> web.Response:
    """Hanzo's fork: the route exists, its body schema is a stub ({eventType, environmentId?}) and
    the service behind it is not wired: the upstream body gets 422, a stub-shaped one a 500."""
    authenticate(request)
    body = await body_of(request)
    validate(request, body, [("eventType", "string", True, False), ("environmentId", "string", False, False)])
    raise KmsError(500, "InternalServerError", "Something went wrong")


def _registrations(request: web.Request, body: dict) -> list[dict]:
    issues = check(body, [("projectId", "string", True, False), ("register", "array", True, False)])
    reg = body.get("register")
    if isinstance(reg, list):
        if not reg:
            issues.append(size_issue(["register"], "too_small", 1))
        elif len(reg) > MAX_REGISTRATIONS:
            issues.append(size_issue(["register"], "too_big", MAX_REGISTRATIONS))
        for i, item in enumerate(reg[:MAX_REGISTRATIONS + 1]):
            if not isinstance(item, dict):
                issues.append(type_issue(["register", i], "object", item))
                continue
            if item.get("event") not in EVENT_TYPES:
                if isinstance(item.get("event"), str):
                    issues.append(enum_issue(["register", i, "event"], list(EVENT_TYPES), item["event"]))
                else:
                    issues.append(type_issue(["register", i, "event"], "string", item.get("event", MISSING)))
            cond = item.get("conditions", MISSING)
            if cond is MISSING:
                continue
            if not isinstance(cond, dict):
                issues.append(type_issue(["register", i, "conditions"], "object", cond))
                continue
            issues += check(cond, [("secretPath", "string", False, False), ("environmentSlug", "string", False, False)],
                            ["register", i, "conditions"])
    if issues:
        raise invalid(request, issues)
    return [{"event": r["event"], "conditions": {k: (r.get("conditions") or {}).get(k) for k in ("secretPath", "environmentSlug")}}
            for r in reg]


async def events_upstream(request: web.Request) -> web.StreamResponse:
    """Upstream's project-events stream: `id: <ms>`, `event: <name>`, `data: {type, data}`;
    `event: ping` every heartbeat; closed after event_max_seconds; auth re-checked periodically."""
    state = kms(request)
    ident = authenticate(request)
    bearer = request.headers.get("Authorization", "")[7:].strip()
    body = await body_of(request)
    register = _registrations(request, body)
    project = next((p for p in state.projects.values() if p.id == body["projectId"]), None)
    if project is None:
        raise KmsError(404, "NotFound", f"Project with ID '{body['projectId'][:200]}' not found")
    require_member(ident, project)
    if not state.events_on_plan:
        raise KmsError(400, "BadRequest", "Failed to subscribe to project events: event subscriptions are not "
                                          "available on your current plan. Upgrade your plan to use them.")
    if not state.events_permitted or not any(r.project in ("*", project.slug, project.id) and r.read for r in ident.access):
        raise KmsError(403, "PermissionDenied", "You are not allowed to subscribe on secret-events")
    mine = sum(1 for s in state.subscribers if s.identity == ident.name and s.project_id == project.id)
    if mine >= state.max_event_streams:
        raise KmsError(429, "RateLimitExceeded",
                       f"Too many active event streams for this project and identity (at most {state.max_event_streams})")
    sub = Subscriber(ident.name, project.id, register, asyncio.Queue(maxsize=10000), upstream=True)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                    "Connection": "keep-alive", "X-Accel-Buffering": "no"})
    state.subscribers.append(sub)
    log.info("events_subscribed", identity=ident.name, project=project.slug, registrations=len(register))
    loop = asyncio.get_running_loop()
    end = loop.time() + state.event_max_seconds
    next_ping = loop.time() + state.event_heartbeat
    next_auth = loop.time() + state.event_auth_recheck
    try:
        await resp.prepare(request)
        await resp.write(b"event: ping\n\n")  # the stream is registered: events from here on are delivered
        while not sub.closed.is_set():
            now = loop.time()
            if now >= end:
                break
            if now >= next_auth:
                next_auth = now + state.event_auth_recheck
                try:
                    state.token_real(bearer)
                except KmsError:
                    break
            get = asyncio.ensure_future(sub.queue.get())
            closed = asyncio.ensure_future(sub.closed.wait())
            wait = max(0.0, min(end, next_ping, next_auth) - now)
            done, pending = await asyncio.wait({get, closed}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if get in done:
                event, msg = get.result()
                await resp.write(f"id: {int(time.time() * 1000)}\nevent: {event}\n"
                                 f"data: {json.dumps(msg, separators=(',', ':'))}\n\n".encode())
            elif loop.time() >= next_ping:
                next_ping = loop.time() + state.event_heartbeat
                await resp.write(b"event: ping\n\n")
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if sub in state.subscribers:
            state.subscribers.remove(sub)
        log.info("events_closed", identity=ident.name, project=project.slug)
    return resp


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

