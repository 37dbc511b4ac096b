"""The Infisical project-events route as the real servers answer it: Hanzo's stub (a 500 behind a
stub schema) and upstream's SSE stream (ping heartbeat, one-hour close, periodic auth re-check).
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from .api_kit import serve_event_stream
from .infisical_kit import authenticate, body_of, invalid, kms, require_member, validate
from .model import EVENT_TYPES, KmsError, Subscriber
from .zod import MISSING, check, enum_issue, size_issue, type_issue

MAX_REGISTRATIONS = 10


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

    async def pump() -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + state.event_max_seconds
        next_ping = loop.time() + state.event_heartbeat
        next_auth = loop.time() + state.event_auth_recheck
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
            got, item = await sub.next_message(max(0.0, min(end, next_ping, next_auth) - now))
            if got:
                event, msg = item
                await resp.write(f"id: {int(time.time() * 1000)}\nevent: {event}\n"
                                 f"data: {json.dumps(msg, separators=(',', ':'))}\n\n".encode())
            elif loop.time() >= next_ping:
                next_ping = loop.time() + state.event_heartbeat
                await resp.write(b"event: ping\n\n")

    # the ping goes out once the stream is registered: events from here on are delivered
    return await serve_event_stream(request, resp, sub, b"event: ping\n\n", pump,
                                    identity=ident.name, project=project.slug, registrations=len(register))
