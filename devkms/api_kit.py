"""What every dev KMS surface (dev, infisical.py, canonical*.py) shares: the app and request keys,
body limits, error bodies, ETag'd JSON answers, body/query/field parsing, the bearer check and the
audited wrapper of a secrets route.
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
from .profiles import Profile
from .seed import normalize_path
from .model import KmsError, Subscriber, bad_request, validation
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


def req_id() -> str:
    global _req_counter
    _req_counter += 1
    return f"req-{_req_counter:08d}"


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None,
                   canonical: bool = False) -> web.Response:
    body = ({"statusCode": status, "message": message} if canonical
            else {"reqId": req_id(), "statusCode": status, "message": message, "error": error})
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


def check_optional_fields(body: dict) -> None:
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


async def audited(request: web.Request, action: str, fn: Callable[[], Awaitable[web.Response]], *,
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


async def serve_event_stream(request: web.Request, resp: web.StreamResponse, sub: Subscriber, first: bytes,
                             pump: Callable[[], Awaitable[None]], **subscribed: Any) -> web.StreamResponse:
    """One change-event stream, either surface: `sub` is registered for the stream's life, `first`
    is sent once the headers are out, then `pump()` writes events until it returns. A client that
    goes away is the normal end of a stream, not an error."""
    state = kms(request)
    state.subscribers.append(sub)
    log.info("events_subscribed", **subscribed)
    try:
        await resp.prepare(request)
        await resp.write(first)
        await pump()
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if sub in state.subscribers:
            state.subscribers.remove(sub)
        log.info("events_closed", identity=subscribed.get("identity"), project=subscribed.get("project"))
    return resp
