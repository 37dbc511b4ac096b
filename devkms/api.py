"""HTTP routes of the dev KMS (aiohttp), following shared/kms-api.md. All under the `/api` prefix.

API:
  POST   /api/v1/auth/universal-auth/login        {clientId, clientSecret}
  POST   /api/v1/auth/token/renew                 {accessToken}
  POST   /api/v1/auth/token/revoke                {accessToken}
  POST   /api/v1/auth/kubernetes-auth/login       {identityId, jwt}
  GET    /api/v3/secrets/raw                      ?workspaceSlug|workspaceId&environment&secretPath&recursive&include_imports&expandSecretReferences
  GET    /api/v3/secrets/raw/{name}               same query
  POST|PATCH|DELETE /api/v3/secrets/raw/{name}    JSON body
  POST   /api/v1/events/subscribe/project-events  {projectId, register:[...]} -> text/event-stream

Test hooks (always in-process; in the CLI only with --test-hooks), under /api/_dev:
  GET    /api/_dev/stats     {"total", "routes": {"GET /v3/secrets/raw": n}, "identities": {name: n},
                              "identityRoutes": {name: {route: n}}, "statuses": {"200": n}, "elapsed", ...}
  DELETE /api/_dev/stats     reset the counters
  POST   /api/_dev/faults    add a fault: {"status": 500, "count": 3, "delay": 0.5,
                              "body": "truncate"|"invalid_json"|"wrong_types", "path": "/v3/secrets",
                              "retryAfter": 2}. Every field optional; no count = until cleared.
                              First matching fault applies to each API request (never to /_dev).
                              status -> that status with an error body; delay -> sleep first;
                              truncate -> Content-Length says N bytes, half are sent, connection cut;
                              invalid_json -> 200 whose body is not JSON; wrong_types -> 200 whose
                              top-level fields have the wrong JSON types.
  GET    /api/_dev/faults    list active faults
  DELETE /api/_dev/faults    clear all faults
  POST   /api/_dev/events/drop   close every open event stream
  POST   /api/_dev/tokens/expire {"identity": name?}  expire tokens now (all, or one identity's)
  PUT    /api/_dev/secrets   {"project", "environment", "path", "key", "value"}: create or update
                              (version bump, change events), creating the folder; any --api mode
  DELETE /api/_dev/secrets   {"project", "environment", "path", "key"}

That is the `dev` profile. Other profiles (profiles.py) serve the routes of the real server they
model: infisical.py (infisical-recorded, hanzo-node, infisical-events) and canonical.py (canonical,
canonical-older, canonical-nolist); the test hooks are served in every profile. With api="canonical"
(dev profile) only the legacy routes in canonical_legacy.py are served.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .audit import AuditLog
from .profiles import get_profile
from .seed import Identity
from .model import EVENT_TYPES, KmsError, Subscriber, not_found, validation
from .state import DevKms
from .api_kit import (
    AUDIT, COUNT, HEARTBEAT, IDENTITY, LOCATION, MAX_BODY, MAX_NAME, PROFILE, STATE, audited, authenticate,
    body_location, check_optional_fields, client_addr, kms, log, ok, opt_str, q_bool, read_json, read_query, req_str,
    secret_name,
)
from .dev_hooks import (
    dev_add_fault, dev_clear_faults, dev_delete_secret, dev_drop_events, dev_expire_tokens, dev_list_faults,
    dev_put_secret, dev_stats, dev_stats_reset,
)
from .middleware import api_middleware
from .api_kit import serve_event_stream

# ---- auth routes -----------------------------------------------------------------------------

async def login(request: web.Request) -> web.Response:
    body = await read_json(request)
    client_id = req_str(body, "clientId", max_len=1000)
    client_secret = req_str(body, "clientSecret", max_len=1000)
    state = kms(request)
    try:
        ident, out = state.login(client_id, client_secret)
    except KmsError as exc:
        request[IDENTITY] = getattr(exc, "identity", None)
        log.info("login_failed", identity=request[IDENTITY], client=client_addr(request), status=exc.status)
        raise
    request[IDENTITY] = ident.name
    log.info("login", identity=ident.name, client=client_addr(request), method="universal-auth")
    return ok(request, out)


async def renew(request: web.Request) -> web.Response:
    body = await read_json(request)
    ident, out = kms(request).renew(req_str(body, "accessToken", max_len=4096))
    request[IDENTITY] = ident.name
    return ok(request, out)


async def revoke(request: web.Request) -> web.Response:
    body = await read_json(request)
    ident = kms(request).revoke(req_str(body, "accessToken", max_len=4096))
    request[IDENTITY] = ident.name
    return ok(request, {"message": "Successfully revoked access token"})


async def k8s_login(request: web.Request) -> web.Response:
    from .k8s_auth import JwtError, subject_allowed, verify_rs256

    body = await read_json(request)
    identity_id = req_str(body, "identityId", max_len=1000)
    jwt = req_str(body, "jwt", max_len=64 * 1024)
    state = kms(request)
    ident = next((i for i in state.identities.values() if identity_id in (i.id, i.name)), None)
    if ident is None:
        raise KmsError(401, "UnauthorizedError", f"No identity with id '{identity_id}'")
    request[IDENTITY] = ident.name
    if ident.kubernetes is None:
        raise KmsError(401, "UnauthorizedError", f"Identity '{ident.name}' has no kubernetes auth configured")
    if not state.k8s_public_key_pem:
        raise KmsError(401, "UnauthorizedError",
                       "Kubernetes auth is not configured on this dev server (--k8s-jwt-public-key or seed kubernetes.publicKey)")
    state.check_lockout(ident)
    try:
        claims = verify_rs256(jwt, state.k8s_public_key_pem, audience=ident.kubernetes.audience or state.k8s_audience)
    except JwtError as exc:
        raise KmsError(401, "UnauthorizedError", f"Kubernetes auth failed for identity '{ident.name}': {exc}") from None
    if not subject_allowed(claims, ident.kubernetes.service_accounts):
        raise KmsError(401, "UnauthorizedError",
                       f"Kubernetes auth failed for identity '{ident.name}': service account {str(claims.get('sub'))[:200]!r} is not allowed")
    log.info("login", identity=ident.name, client=client_addr(request), method="kubernetes-auth")
    return ok(request, state.login_identity(ident))


# ---- secrets routes --------------------------------------------------------------------------


async def list_secrets(request: web.Request) -> web.Response:
    async def run() -> web.Response:
        ident = authenticate(request)
        project, env, path = read_query(request)
        request[LOCATION] = (project, env, path)
        out = kms(request).list_secrets(
            ident, project, env, path, recursive=q_bool(request, "recursive", False),
            include_imports=q_bool(request, "include_imports", False),
            expand=q_bool(request, "expandSecretReferences", False),
            view_value=q_bool(request, "viewSecretValue", True))
        request[COUNT] = len(out["secrets"]) + sum(len(i["secrets"]) for i in out.get("imports", []))
        return ok(request, out)

    return await audited(request, "read", run)


async def get_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident = authenticate(request)
        project, env, path = read_query(request)
        request[LOCATION] = (project, env, path)
        secret_name(request)
        out = kms(request).get_secret(
            ident, project, env, path, name, include_imports=q_bool(request, "include_imports", True),
            expand=q_bool(request, "expandSecretReferences", False), view_value=q_bool(request, "viewSecretValue", True))
        return ok(request, out)

    return await audited(request, "read", run, key=name[:MAX_NAME])


async def _write_prologue(request: web.Request) -> tuple[Identity, dict, tuple[str, str, str]]:
    """What every secret write does first, in this order: authenticate, check the name, read the
    JSON body, and record its (project, env, path) for the audit line."""
    ident = authenticate(request)
    secret_name(request)
    body = await read_json(request)
    location = body_location(body)
    request[LOCATION] = location
    return ident, body, location


async def create_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, body, (project, env, path) = await _write_prologue(request)
        check_optional_fields(body)
        value = opt_str(body, "secretValue")
        if value is None:
            raise validation("Field 'secretValue' is required and must be a string")
        return ok(request, kms(request).create_secret(ident, project, env, path, name, value, opt_str(body, "secretComment")))

    return await audited(request, "create", run, key=name[:MAX_NAME])


async def update_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, body, (project, env, path) = await _write_prologue(request)
        check_optional_fields(body)
        new_name = opt_str(body, "newSecretName", max_len=MAX_NAME)
        return ok(request, kms(request).update_secret(
            ident, project, env, path, name, value=opt_str(body, "secretValue"),
            comment=opt_str(body, "secretComment"), new_name=new_name or None))

    return await audited(request, "update", run, key=name[:MAX_NAME])


async def delete_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, body, (project, env, path) = await _write_prologue(request)
        return ok(request, kms(request).delete_secret_as(ident, project, env, path, name))

    return await audited(request, "delete", run, key=name[:MAX_NAME])


# ---- change events ---------------------------------------------------------------------------

def _parse_register(body: dict) -> list[dict]:
    reg = body.get("register")
    if not isinstance(reg, list) or not reg:
        raise validation(f"Field 'register' must be a non-empty array of {{event, conditions}}; accepted events: {', '.join(EVENT_TYPES)}")
    out = []
    for i, item in enumerate(reg[:100]):
        if not isinstance(item, dict):
            raise validation(f"register[{i}] must be an object {{event, conditions}}")
        event = item.get("event")
        if event not in EVENT_TYPES:
            raise validation(f"register[{i}].event must be one of {', '.join(EVENT_TYPES)}")
        cond = item.get("conditions")
        if cond is None:
            cond = {}
        if not isinstance(cond, dict):
            raise validation(f"register[{i}].conditions must be an object {{secretPath, environmentSlug}}")
        for k in ("secretPath", "environmentSlug"):
            if cond.get(k) is not None and not isinstance(cond[k], str):
                raise validation(f"register[{i}].conditions.{k} must be a string")
        out.append({"event": event, "conditions": {k: cond.get(k) for k in ("secretPath", "environmentSlug")}})
    return out


async def subscribe_events(request: web.Request) -> web.StreamResponse:
    state = kms(request)
    if not state.events_enabled:
        raise not_found("Change events are disabled on this server; poll instead")
    ident = authenticate(request)
    body = await read_json(request)
    project = state.project(req_str(body, "projectId", max_len=1000))
    register = _parse_register(body)
    if not any(r.project in ("*", project.slug, project.id) and r.read for r in ident.access):
        raise KmsError(403, "PermissionDenied", f"Identity '{ident.name}' has no read access to project '{project.slug}'")
    open_streams = sum(1 for s in state.subscribers if s.identity == ident.name)
    if open_streams >= state.max_event_streams:
        raise KmsError(429, "RateLimitExceeded",
                       f"Identity '{ident.name}' already has {open_streams} open event streams (limit {state.max_event_streams})",
                       {"Retry-After": "5"})
    sub = Subscriber(ident.name, project.id, register, asyncio.Queue(maxsize=10000))
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                    "X-Accel-Buffering": "no"})

    async def pump() -> None:
        n = 0
        while not sub.closed.is_set():
            got, msg = await sub.next_message(HEARTBEAT)
            if got:
                n += 1
                await resp.write(f"id: {n}\nevent: message\ndata: {json.dumps(msg, separators=(',', ':'))}\n\n".encode())
            elif not sub.closed.is_set():
                await resp.write(b": ping\n\n")

    return await serve_event_stream(request, resp, sub, b": connected\n\n", pump,
                                    identity=ident.name, project=project.slug, register=register)


def build_app(state: DevKms, *, test_hooks: bool = True, audit: AuditLog | None = None,
              client_max_size: int = MAX_BODY, api: str | None = None) -> web.Application:
    """Routes of state.profile (see profiles.py). api: the legacy switch for the dev profile:
    "infisical" (default), "canonical" (only the legacy canonical routes) or "both"."""
    profile = get_profile(state.profile, api=api)
    app = web.Application(middlewares=[api_middleware], client_max_size=client_max_size)
    app[STATE] = state
    app[PROFILE] = profile
    app[AUDIT] = audit or AuditLog()
    r = app.router
    if profile.infisical == "dev":
        from .infisical import status as infisical_status

        r.add_get("/api/status", infisical_status)
        r.add_post("/api/v1/auth/universal-auth/login", login)
        r.add_post("/api/v1/auth/token/renew", renew)
        r.add_post("/api/v1/auth/token/revoke", revoke)
        r.add_post("/api/v1/auth/kubernetes-auth/login", k8s_login)
        r.add_get("/api/v3/secrets/raw", list_secrets)
        r.add_get("/api/v3/secrets/raw/{name}", get_secret)
        r.add_post("/api/v3/secrets/raw/{name}", create_secret)
        r.add_patch("/api/v3/secrets/raw/{name}", update_secret)
        r.add_delete("/api/v3/secrets/raw/{name}", delete_secret)
        r.add_post("/api/v1/events/subscribe/project-events", subscribe_events)
    elif profile.infisical in ("recorded", "newer"):
        from .infisical import add_routes as add_infisical

        add_infisical(app, profile.events if state.events_enabled else "absent")
    if profile.canonical == "legacy":
        from .canonical_legacy import add_routes as add_legacy

        add_legacy(app)
    elif profile.canonical:
        from .canonical import add_routes as add_canonical

        add_canonical(app, profile.canonical)
    if test_hooks:
        r.add_get("/api/_dev/stats", dev_stats)
        r.add_delete("/api/_dev/stats", dev_stats_reset)
        r.add_post("/api/_dev/faults", dev_add_fault)
        r.add_get("/api/_dev/faults", dev_list_faults)
        r.add_delete("/api/_dev/faults", dev_clear_faults)
        r.add_post("/api/_dev/events/drop", dev_drop_events)
        r.add_post("/api/_dev/tokens/expire", dev_expire_tokens)
        r.add_put("/api/_dev/secrets", dev_put_secret)
        r.add_delete("/api/_dev/secrets", dev_delete_secret)

    async def on_shutdown(app: web.Application) -> None:
        state.drop_event_streams()  # let open streams end so shutdown does not wait on them

    app.on_shutdown.append(on_shutdown)
    return app
