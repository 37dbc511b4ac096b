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
import base64
import hashlib
import hmac
import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from injector.log import get_logger

from .audit import AuditLog
from .profiles import Profile, get_profile
from .seed import Identity, normalize_path
from .model import EVENT_TYPES, Fault, KmsError, Subscriber, bad_request, not_found, validation
from .state import DevKms

STATE = web.AppKey("state", DevKms)
PROFILE = web.AppKey("profile", Profile)
AUDIT = web.AppKey("audit", AuditLog)
_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain string keys before
IDENTITY: Any = _RequestKey("identity", str) if _RequestKey else "identity"  # identity name (stats, audit)
LOCATION: Any = _RequestKey("location", tuple) if _RequestKey else "location"  # (project, env, path)
COUNT: Any = _RequestKey("count", int) if _RequestKey else "count"
MAX_BODY = 1 << 20  # 1 MiB request bodies; more -> 413
MAX_NAME = 500
HEARTBEAT = 15.0

log = get_logger("dev-kms")

ERROR_NAMES = {400: "BadRequest", 401: "UnauthorizedError", 403: "PermissionDenied", 404: "NotFound",
               405: "MethodNotAllowed", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
               422: "ValidationFailure", 429: "RateLimitExceeded", 500: "InternalServerError",
               502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}

_req_counter = 0


def _req_id() -> str:
    global _req_counter
    _req_counter += 1
    return f"req-{_req_counter:08d}"


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None,
                   canonical: bool = False) -> web.Response:
    body = ({"statusCode": status, "message": message} if canonical
            else {"reqId": _req_id(), "statusCode": status, "message": message, "error": error})
    return web.json_response(body, status=status, headers=headers)


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def fastify_etag(payload: bytes) -> str:
    """@fastify/etag's default: a quoted base64 SHA-1 of the body (the fixtures' ETags are exactly this)."""
    return '"' + base64.b64encode(hashlib.sha1(payload).digest()).decode() + '"'


def _real_infisical(request: web.Request) -> bool:
    return request.app[PROFILE].infisical in ("recorded", "newer") and not request.path.startswith("/api/_dev")


def fastify_json(request: web.Request, body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer as fastify sends it: compact, UTF-8, ETag on every response; a GET whose
    If-None-Match matches gets 304 with an empty body, still carrying ETag and Content-Type."""
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    etag = fastify_etag(payload)
    out = {**(headers or {}), "ETag": etag, "Content-Type": "application/json; charset=utf-8"}
    inm = request.headers.get("If-None-Match")
    if status == 200 and request.method == "GET" and inm and _etag_matches(inm, etag):
        return web.Response(status=304, headers=out)
    return web.Response(body=payload, status=status, headers=out)


def etag_of(payload: bytes) -> str:
    return '"' + hashlib.sha256(payload).hexdigest()[:32] + '"'


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == etag:
            return True
    return False


def ok(request: web.Request, body: dict) -> web.Response:
    """200 with an ETag; a GET whose If-None-Match matches gets 304 with an empty body."""
    if _real_infisical(request):
        return fastify_json(request, body, 200)
    payload = json.dumps(body, separators=(",", ":")).encode()
    etag = etag_of(payload)
    inm = request.headers.get("If-None-Match")
    if request.method == "GET" and inm and _etag_matches(inm, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=payload, status=200, content_type="application/json", headers={"ETag": etag})


# ---- input parsing ---------------------------------------------------------------------------

async def read_json(request: web.Request) -> dict:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise KmsError(413, "PayloadTooLarge", f"Request body too large; the limit is {MAX_BODY} bytes") from None
    if not raw.strip():
        raise validation("Request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Malformed JSON body: {getattr(exc, 'msg', 'not UTF-8')}") from None
    if not isinstance(body, dict):
        raise validation(f"Request body must be a JSON object, got {type(body).__name__ if body is not None else 'null'}")
    return body


def opt_str(body: dict, name: str, *, max_len: int | None = None) -> str | None:
    """An optional string field: absent or JSON null -> None; any other non-string -> 422."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise validation(f"Field '{name}' must be a string, got {_jtype(value)}")
    if max_len is not None and len(value) > max_len:
        raise validation(f"Field '{name}' is too long ({len(value)} characters; at most {max_len})")
    return value


def req_str(body: dict, name: str, **kw: Any) -> str:
    value = opt_str(body, name, **kw)
    if not value:
        raise validation(f"Field '{name}' is required and must be a non-empty string")
    return value


def _jtype(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(type(v), "null")


def q_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    v = raw.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise bad_request(f"Query parameter '{name}' must be 'true' or 'false', got {raw[:40]!r}")


def parse_path(raw: str | None, where: str) -> str:
    if raw is None or raw == "":
        return "/"
    if len(raw) > 1000:
        raise bad_request(f"{where} is too long (at most 1000 characters)")
    if not raw.startswith("/"):
        raise bad_request(f"{where} must start with '/', e.g. /chat; got {raw[:80]!r}")
    try:
        return normalize_path(raw)
    except ValueError as exc:
        raise bad_request(f"{where}: {exc}") from None


def secret_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if len(name) > MAX_NAME:
        raise validation(f"Secret name too long ({len(name)} characters; at most {MAX_NAME})")
    return name


def read_query(request: web.Request) -> tuple[str, str, str]:
    q = request.query
    project = q.get("workspaceSlug") or q.get("workspaceId") or q.get("projectSlug")
    env = q.get("environment")
    if not project or not env:
        raise bad_request("Missing project id or environment: pass workspaceSlug (or workspaceId) and environment")
    version = q.get("version")
    if version not in (None, "") and not version.lstrip("-").isdigit():
        raise bad_request(f"Query parameter 'version' must be an integer, got {version[:40]!r}")
    return project, env, parse_path(q.get("secretPath"), "secretPath")


def body_location(body: dict) -> tuple[str, str, str]:
    project = (opt_str(body, "workspaceId") or opt_str(body, "workspaceSlug") or opt_str(body, "projectSlug")
               or opt_str(body, "projectId"))
    env = opt_str(body, "environment")
    if not project or not env:
        raise bad_request("Missing project id or environment: the body needs workspaceId (or workspaceSlug/projectSlug) and environment")
    return project, env, parse_path(opt_str(body, "secretPath"), "secretPath")


def _check_optional_fields(body: dict) -> None:
    """Fields clients send that we ignore: accept absent or null, refuse wrong types clearly."""
    for name in ("secretComment", "secretReminderNote", "newSecretName", "type"):
        opt_str(body, name)
    for name in ("skipMultilineEncoding",):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise validation(f"Field '{name}' must be a boolean, got {_jtype(body[name])}")
    for name in ("secretReminderRepeatDays",):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise validation(f"Field '{name}' must be a number, got {_jtype(v)}")
    for name in ("tagIds", "secretMetadata"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise validation(f"Field '{name}' must be an array, got {_jtype(body[name])}")
    t = body.get("type")
    if t is not None and t not in ("shared", "personal"):
        raise validation(f"Field 'type' must be 'shared' or 'personal', got {t[:40]!r}")


# ---- helpers ---------------------------------------------------------------------------------

def kms(request: web.Request) -> DevKms:
    return request.app[STATE]


def client_addr(request: web.Request) -> str | None:
    return request.remote


def authenticate(request: web.Request):
    state = kms(request)
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    ident = state.authenticate(bearer)
    request[IDENTITY] = ident.name
    state.check_rate(ident.name)
    return ident


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

async def _audited(request: web.Request, action: str, fn: Callable[[], Awaitable[web.Response]], *,
                   key: str | None = None) -> web.Response:
    status = 500
    loc: tuple[str | None, str | None, str | None] = (None, None, None)
    try:
        if request.method == "GET":
            try:
                loc = (request.query.get("workspaceSlug") or request.query.get("workspaceId"),
                       request.query.get("environment"), request.query.get("secretPath") or "/")
            except Exception:  # noqa: BLE001 - audit must not fail the request
                pass
        resp = await fn()
        status = resp.status
        loc = request.get(LOCATION, loc)
        return resp
    except KmsError as exc:
        status = exc.status
        loc = request.get(LOCATION, loc)
        raise
    finally:
        extra = {"key": key} if key is not None else {}
        if request.get(COUNT) is not None:
            extra["count"] = request[COUNT]
        loc = tuple(x[:300] if isinstance(x, str) else x for x in loc)
        request.app[AUDIT].write(action, identity=request.get(IDENTITY), project=loc[0], environment=loc[1],
                                 path=loc[2], client=client_addr(request), status=status,
                                 user_agent=request.headers.get("User-Agent", "")[:300] or None, **extra)


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

    return await _audited(request, "read", run)


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

    return await _audited(request, "read", run, key=name[:MAX_NAME])


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
        _check_optional_fields(body)
        value = opt_str(body, "secretValue")
        if value is None:
            raise validation("Field 'secretValue' is required and must be a string")
        return ok(request, kms(request).create_secret(ident, project, env, path, name, value, opt_str(body, "secretComment")))

    return await _audited(request, "create", run, key=name[:MAX_NAME])


async def update_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, body, (project, env, path) = await _write_prologue(request)
        _check_optional_fields(body)
        new_name = opt_str(body, "newSecretName", max_len=MAX_NAME)
        return ok(request, kms(request).update_secret(
            ident, project, env, path, name, value=opt_str(body, "secretValue"),
            comment=opt_str(body, "secretComment"), new_name=new_name or None))

    return await _audited(request, "update", run, key=name[:MAX_NAME])


async def delete_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]

    async def run() -> web.Response:
        ident, body, (project, env, path) = await _write_prologue(request)
        return ok(request, kms(request).delete_secret_as(ident, project, env, path, name))

    return await _audited(request, "delete", run, key=name[:MAX_NAME])


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
    state.subscribers.append(sub)
    log.info("events_subscribed", identity=ident.name, project=project.slug, register=register)
    try:
        await resp.prepare(request)
        await resp.write(b": connected\n\n")
        n = 0
        while not sub.closed.is_set():
            get = asyncio.ensure_future(sub.queue.get())
            closed = asyncio.ensure_future(sub.closed.wait())
            done, pending = await asyncio.wait({get, closed}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if get in done:
                n += 1
                await resp.write(f"id: {n}\nevent: message\ndata: {json.dumps(get.result(), separators=(',', ':'))}\n\n".encode())
            elif not done:
                await resp.write(b": ping\n\n")
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if sub in state.subscribers:
            state.subscribers.remove(sub)
        log.info("events_closed", identity=ident.name, project=project.slug)
    return resp


# ---- test hooks ------------------------------------------------------------------------------

async def dev_stats(request: web.Request) -> web.Response:
    return web.json_response(kms(request).stats())


async def dev_stats_reset(request: web.Request) -> web.Response:
    kms(request).reset_stats()
    return web.json_response({"message": "stats reset"})


def parse_fault(body: dict) -> Fault:
    allowed = {"status", "delay", "body", "count", "path", "retryAfter"}
    unknown = set(body) - allowed
    if unknown:
        raise validation(f"Unknown fault field(s) {sorted(unknown)}; accepted: {', '.join(sorted(allowed))}")

    def num(name: str, kind: type, lo: float, hi: float) -> Any:
        v = body.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise validation(f"Fault field '{name}' must be a{'n integer' if kind is int else ' number'}")
        if not lo <= v <= hi:
            raise validation(f"Fault field '{name}' must be between {lo} and {hi}")
        return kind(v)

    mode = body.get("body")
    if mode is not None and mode not in ("truncate", "invalid_json", "wrong_types"):
        raise validation("Fault field 'body' must be one of truncate, invalid_json, wrong_types")
    f = Fault(status=num("status", int, 200, 599), delay=num("delay", float, 0, 300) or 0.0, body=mode,
              count=num("count", int, 1, 10**9), path=opt_str(body, "path"), retry_after=num("retryAfter", int, 0, 86400))
    if f.status is None and not f.delay and f.body is None:
        raise validation("A fault needs at least one of status, delay, body")
    return f


async def dev_add_fault(request: web.Request) -> web.Response:
    f = parse_fault(await read_json(request))
    kms(request).add_fault(f)
    return web.json_response({"faults": [x.public() for x in kms(request).faults]})


async def dev_list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [x.public() for x in kms(request).faults]})


async def dev_clear_faults(request: web.Request) -> web.Response:
    kms(request).clear_faults()
    return web.json_response({"faults": []})


async def dev_drop_events(request: web.Request) -> web.Response:
    return web.json_response({"dropped": kms(request).drop_event_streams()})


async def dev_expire_tokens(request: web.Request) -> web.Response:
    raw = await request.read()
    ident = None
    if raw.strip():
        ident = opt_str(await read_json(request), "identity")
    return web.json_response({"expired": kms(request).expire_tokens(ident)})


async def dev_put_secret(request: web.Request) -> web.Response:
    body = await read_json(request)
    value = opt_str(body, "value")
    if value is None:
        raise validation("Field 'value' is required and must be a string")
    secret = kms(request).set_secret(req_str(body, "project"), req_str(body, "environment"),
                                     parse_path(opt_str(body, "path"), "path"), req_str(body, "key", max_len=MAX_NAME), value)
    return web.json_response({"key": secret["secretKey"], "path": secret["secretPath"], "version": secret["version"]})


async def dev_delete_secret(request: web.Request) -> web.Response:
    body = await read_json(request)
    secret = kms(request).delete_secret(req_str(body, "project"), req_str(body, "environment"),
                                        parse_path(opt_str(body, "path"), "path"), req_str(body, "key", max_len=MAX_NAME))
    return web.json_response({"key": secret["secretKey"], "path": secret["secretPath"]})


# ---- middleware ------------------------------------------------------------------------------

def _wrong_types(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return {"unexpected": "object"}
    if isinstance(value, dict):
        return ["unexpected", "array"]
    return 0


async def _apply_body_fault(request: web.Request, resp: web.StreamResponse, mode: str) -> web.StreamResponse:
    if not isinstance(resp, web.Response) or resp.body is None or resp.status == 304:
        return resp
    payload = bytes(resp.body)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-type")}
    if mode == "invalid_json":
        return web.Response(status=resp.status, body=b'{"secrets": [{"id": "oops" <html>502</html>',
                            content_type="application/json", headers=headers)
    if mode == "wrong_types":
        try:
            data = json.loads(payload)
        except ValueError:
            return resp
        if isinstance(data, dict):
            data = {k: _wrong_types(v) for k, v in data.items()}
        return web.Response(status=resp.status, body=json.dumps(data).encode(), content_type="application/json", headers=headers)
    # truncate: promise the whole body, send half, cut the connection
    out = web.StreamResponse(status=resp.status, headers=headers)
    out.content_type = "application/json"
    out.content_length = len(payload)
    await out.prepare(request)
    await out.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.close()
    return out


def _route_label(request: web.Request) -> str:
    try:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else "unmatched"
    except AttributeError:
        canonical = "unmatched"
    return f"{request.method} {canonical.removeprefix('/api')}"


def render_error(request: web.Request, exc: KmsError) -> web.Response:
    """An error in the shape of the server the profile models (and of the route's surface)."""
    profile = request.app[PROFILE]
    path = request.path
    if path.startswith("/api/_dev") or profile.infisical == "dev" and not profile.canonical:
        return error_response(exc.status, exc.error, exc.message, exc.headers, path.startswith("/api/v1/kms/"))
    if profile.canonical == "legacy" and path.startswith("/api/v1/kms/"):
        return error_response(exc.status, exc.error, exc.message, exc.headers, True)
    if profile.infisical in ("recorded", "newer"):
        body: dict[str, Any] = {"reqId": _req_id()} if profile.infisical == "newer" else {}
        body.update(statusCode=exc.status, message=exc.message, error=exc.error or ERROR_NAMES.get(exc.status, "Error"))
        return fastify_json(request, body, exc.status, exc.headers)
    if profile.canonical in ("current", "older", "nolist"):
        from .canonical import render_error as canonical_error

        return canonical_error(request, exc)
    return error_response(exc.status, exc.error, exc.message, exc.headers, False)


def route_missing(request: web.Request, exc: web.HTTPException) -> web.Response:
    """No route (or not this method): fastify's own 404 on the Infisical servers, Go's plain-text
    404/405 on the canonical ones, the dev model's error body otherwise."""
    profile = request.app[PROFILE]
    if not request.path.startswith("/api/_dev") and exc.status in (404, 405):
        if profile.infisical in ("recorded", "newer"):
            return fastify_json(request, {"message": f"Route {request.method}:{request.raw_path[:500]} not found",
                                          "error": "Not Found", "statusCode": 404}, 404)
        if profile.infisical is None and profile.canonical in ("current", "older", "nolist"):
            from .canonical import plain

            if exc.status == 405:
                allow = exc.headers.get("Allow")
                return plain(405, "Method Not Allowed", {"Allow": allow} if allow else None)
            return plain(404, "404 page not found")
    msg = {404: f"Route {request.method} {request.path[:200]} not found",
           405: f"Method {request.method} not allowed on {request.path[:200]}",
           413: f"Request body too large; the limit is {MAX_BODY} bytes"}.get(exc.status, exc.reason)
    return render_error(request, KmsError(exc.status, ERROR_NAMES.get(exc.status, "Error"), msg))


@web.middleware
async def api_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    state = kms(request)
    dev = request.path.startswith("/api/_dev")
    status = 500
    try:
        fault = None if dev else state.take_fault(request.path.removeprefix("/api"))
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None and fault.status != 200:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                resp = render_error(request, KmsError(fault.status, ERROR_NAMES.get(fault.status, "Error"),
                                                      f"Injected fault: status {fault.status}", headers))
                status = resp.status
                return resp
        try:
            resp = await handler(request)
        except KmsError as exc:
            resp = render_error(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = route_missing(request, exc)
        if fault is not None and fault.body:
            resp = await _apply_body_fault(request, resp, fault.body)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = 499
        raise
    except Exception as exc:  # noqa: BLE001 - a bug, not bad input; say so without leaking
        log.error("internal_error", route=_route_label(request), error=type(exc).__name__)
        status = 500
        return render_error(request, KmsError(500, "InternalServerError", f"Internal error ({type(exc).__name__})"))
    finally:
        if not dev:
            state.record(_route_label(request), request.get(IDENTITY), status)


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
