"""The dev KMS's middleware: injected faults (status, delay, body), errors in the shape of the
modelled server, its own 404/405 answers, request stats.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from aiohttp import web

from .model import KmsError
from .api_kit import ERROR_NAMES, IDENTITY, MAX_BODY, PROFILE, error_response, fastify_json, kms, log, req_id


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
        body: dict[str, Any] = {"reqId": req_id()} if profile.infisical == "newer" else {}
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
