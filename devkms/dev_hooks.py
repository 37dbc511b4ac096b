"""The dev KMS's test hooks under /api/_dev (stats, faults, dropped streams, expired tokens,
secrets put/delete without auth); served in-process always, by the CLI only with --test-hooks.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .model import Fault, validation
from .api_kit import MAX_NAME, kms, opt_str, parse_path, read_json, req_str


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
