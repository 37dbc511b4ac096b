"""The dev KMS's data: projects/environments/folders/secrets, tokens, injected faults, event
subscribers, the API error type and the folder-path glob. Plain dataclasses, no behaviour beyond
matching.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .seed import Import

EVENT_TYPES = ("secret:create", "secret:update", "secret:delete", "secret:import-mutation")


class KmsError(Exception):
    """An API error: status, Infisical error name, message (never a value, token or secret)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


def bad_request(msg: str) -> KmsError:
    return KmsError(400, "BadRequest", msg)


def validation(msg: str) -> KmsError:
    return KmsError(422, "ValidationFailure", msg)


def not_found(msg: str) -> KmsError:
    return KmsError(404, "NotFound", msg)


def iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


@dataclass
class Secret:
    id: str
    key: str
    value: str
    comment: str = ""
    version: int = 1
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""

    def __post_init__(self) -> None:
        self.updated_at = self.updated_at or self.created_at


@dataclass
class Folder:
    id: str
    path: str
    secrets: dict[str, Secret] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)


@dataclass
class Environment:
    slug: str
    name: str
    id: str
    folders: dict[str, Folder] = field(default_factory=dict)


@dataclass
class Project:
    slug: str
    id: str
    name: str
    environments: dict[str, Environment] = field(default_factory=dict)


@dataclass
class Token:
    value: str
    identity: str  # identity name
    created: float  # monotonic: start of the max-TTL window
    expires: float  # monotonic (math.inf: never, expiresIn 0)
    revoked: bool = False  # real profiles: revoked, or deleted by the server (TTL passed)
    jwt_exp: float | None = None  # real profiles: monotonic time of the JWT's own exp (the max TTL)


@dataclass
class Fault:
    """An injected fault (test hook). Applies to API routes (never /_dev), first match wins.

    status: answer this status with an error body instead of handling the request
    delay: sleep this many seconds first (combined with the others)
    body: "truncate" (cut the connection mid-body), "invalid_json", "wrong_types"
    count: how many requests it applies to; None = until cleared
    path: only requests whose path (after /api) starts with this
    retry_after: Retry-After header for status faults (e.g. 429/503)
    """

    status: int | None = None
    delay: float = 0.0
    body: str | None = None
    count: int | None = None
    path: str | None = None
    retry_after: int | None = None

    def public(self) -> dict:
        return {"status": self.status, "delay": self.delay, "body": self.body, "count": self.count,
                "path": self.path, "retryAfter": self.retry_after}


@dataclass
class Subscriber:
    identity: str
    project_id: str
    register: list[dict]  # [{"event": ..., "conditions": {"secretPath": glob, "environmentSlug": ...}}]
    queue: asyncio.Queue
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: bool = False  # upstream framing; secretPath is a prefix (startsWith), not a glob

    def wants(self, event: str, env: str, path: str) -> bool:
        for reg in self.register:
            if reg.get("event") not in (event, "*"):
                continue
            cond = reg.get("conditions") or {}
            if cond.get("environmentSlug") not in (None, env):
                continue
            want = cond.get("secretPath")
            if want is not None and not (path.startswith(want) if self.upstream else path_matches(want, path)):
                continue
            return True
        return False

    async def next_message(self, timeout: float) -> tuple[bool, Any]:
        """The next queued message within `timeout` seconds: (True, message), or (False, None) when
        the wait ended without one (timed out, or the stream was closed)."""
        get = asyncio.ensure_future(self.queue.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, pending = await asyncio.wait({get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        return (True, get.result()) if get in done else (False, None)


_glob_cache: dict[str, re.Pattern] = {}


def _compile_glob(glob: str) -> re.Pattern:
    g = glob if glob == "/" else glob.rstrip("/")
    tail = ""
    if g.endswith("/**"):
        g, tail = g[:-3], "(/.*)?"
        if not g:  # "/**": every folder, including "/"
            return re.compile("/.*")
    out, i = [], 0
    while i < len(g):
        if g.startswith("**", i):
            out.append(".*")
            i += 2
        elif g[i] == "*":
            out.append("[^/]*")
            i += 1
        elif g[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(g[i]))
            i += 1
    return re.compile("".join(out) + tail)


def path_matches(glob: str, path: str) -> bool:
    """Folder-path glob: `*` one segment, `**` any depth; `/x/**` also matches `/x`; trailing slash ignored."""
    rx = _glob_cache.get(glob)
    if rx is None:
        rx = _glob_cache[glob] = _compile_glob(glob)
    return rx.fullmatch(path) is not None

