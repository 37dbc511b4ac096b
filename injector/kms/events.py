"""KMS change events: subscribe to the project event stream and report matching changes.

    sub = EventSubscriber(client, "secrets-639-c", "prod", ["/chat"], logger=log)
    await sub.run(on_change)   # returns only when the server has no event stream (404)

`POST /v1/events/subscribe/project-events` (shared/kms-api.md, "Change events") answers a
`text/event-stream`. For every folder we register secret:create/update/delete/import-mutation with
conditions {secretPath: <folder, exact>, environmentSlug: env}; the server filters, and we check
again here (a server may ignore conditions). `on_change(event)` is called for each matching event,
and with a `resync` event after every connect: changes made while no stream was open (including
between the agent's first sync and its first subscription) would otherwise only be seen at the
next poll. A resync with nothing changed costs one 304.

Failures never end the subscription: 429 (honouring Retry-After), a dropped stream, a silent
stream (no data, not even a heartbeat, for `idle_timeout`), 5xx, network errors -> reconnect with
capped exponential backoff and full jitter. 401 / 403 TokenError -> a fresh login, then reconnect.
404 -> the server has no event stream: `run` logs `events_unsupported` and returns, and the agent
keeps polling. Stdlib only (this runs inside the agent).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from injector.backoff import Backoff
from injector.kms.errors import BadResponse, KmsError, NotFound, error_from_response
from injector.kms.http import HttpError

SUBSCRIBE_PATH = "/v1/events/subscribe/project-events"
EVENT_TYPES = ("secret:create", "secret:update", "secret:delete", "secret:import-mutation")
IDLE_TIMEOUT = 75.0  # the dev KMS sends a heartbeat every 15 s; silence this long = a dead stream
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
HEALTHY_AFTER = 10.0  # a stream that stayed up this long resets the backoff


# -- pure: SSE framing ---------------------------------------------------------------------------

@dataclass
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


class SseParser:
    """Incremental text/event-stream parser (WHATWG rules). Feed it lines without line endings;
    it returns a message at each blank line that ends one. Comments (`: ping`) are skipped;
    multi-line `data:` fields are joined with newlines; a `retry:` field is kept in `retry_ms`."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> SseMessage | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            msg = SseMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return msg
        if line.startswith(":"):
            return None  # comment / heartbeat
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


# -- pure: what we subscribe to and what matches ---------------------------------------------------

@dataclass(frozen=True)
class ChangeEvent:
    """One matching change. kind: "change" (KMS said so) or "resync" (stream (re)connected)."""

    kind: str
    event_type: str = ""
    environment: str = ""
    secret_path: str = ""
    keys: tuple[str, ...] = field(default=(), repr=False)  # names only; never values


def registrations(env: str, paths: Iterable[str]) -> list[dict[str, Any]]:
    """The `register` list: every event type, for each folder exactly (no glob: only our folders)."""
    out = []
    for path in dict.fromkeys(_norm(p) for p in paths):
        for event in EVENT_TYPES:
            out.append({"event": event, "conditions": {"secretPath": path, "environmentSlug": env}})
    return out


def _norm(path: str) -> str:
    parts = [p for p in str(path).split("/") if p]
    return "/" + "/".join(parts)


def match_event(data: Any, env: str, paths: Iterable[str]) -> ChangeEvent | None:
    """A ChangeEvent when an event payload concerns one of our folders in our env, else None.

    Lenient where it is safe to be: a fetch is cheap and a missed change is not. An event of a
    known type whose payload lacks environment/path counts as a match; an import mutation counts
    whatever folder it names (the changed folder may be the imported one, not ours)."""
    if not isinstance(data, dict):
        return None
    inner = data.get("data") if isinstance(data.get("data"), dict) else data
    event_type = inner.get("eventType") or inner.get("event")
    if event_type not in EVENT_TYPES:
        return None
    payload = inner.get("payload")
    items = payload if isinstance(payload, list) else [payload] if isinstance(payload, dict) else []
    wanted = {_norm(p) for p in paths}
    if not items:
        return ChangeEvent("change", event_type)
    for item in items:
        if not isinstance(item, dict):
            continue
        ev_env = item.get("environment") or item.get("environmentSlug")
        if isinstance(ev_env, str) and ev_env and ev_env != env:
            continue
        ev_path = item.get("secretPath")
        if event_type != "secret:import-mutation" and isinstance(ev_path, str) and _norm(ev_path) not in wanted:
            continue
        keys = tuple(i.get("secretKey") for i in items if isinstance(i, dict) and isinstance(i.get("secretKey"), str))
        return ChangeEvent("change", event_type, env, _norm(ev_path) if isinstance(ev_path, str) else "", keys)
    return None


# -- I/O: the subscription loop ------------------------------------------------------------------

class _Unsupported(Exception):
    pass


class _Relogin(Exception):
    pass


class EventSubscriber:
    """Keeps one event stream open for a project/env/folders and reports matching changes."""

    def __init__(
        self,
        client: Any,  # KmsClient: .http (HttpClient), .tokens (TokenManager), .host, .project_id()
        project: str,
        env: str,
        paths: list[str],
        *,
        logger: Any = None,
        on_need_login: Callable[[], Any] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.project = project
        self.env = env
        self.paths = [_norm(p) for p in paths]
        self.log = logger
        # With an owner (the agent) that logs in on its own schedule, the subscriber never logs in
        # itself: it waits for a valid token, and asks the owner (once per rejected token) to
        # fetch now. So wrong credentials cost no extra logins (KMS locks an identity after 3).
        self.on_need_login = on_need_login
        self.idle_timeout = idle_timeout
        self.backoff = backoff or Backoff(base=BACKOFF_BASE, cap=BACKOFF_CAP)
        self.clock = clock
        # for metrics and tests
        self.connects = 0
        self.events = 0
        self.failures = 0
        self.connected = False
        self.unsupported = False
        self._failing = False
        self._opened_at: float | None = None

    def _where(self) -> dict[str, Any]:
        return {"host": self.client.host, "project": self.project, "env": self.env,
                "path": ",".join(self.paths), "op": "subscribe-events"}

    def _body(self) -> dict[str, Any]:
        # The real KMS wants the project id; the secrets answers name it (`workspace`), so use it
        # once a fetch has seen it. Before that (and on the dev KMS) the slug works.
        project_id = getattr(self.client, "project_id", lambda p: p)(self.project)
        return {"projectId": project_id, "register": registrations(self.env, self.paths)}

    async def run(self, on_change: Callable[[ChangeEvent], Any]) -> None:
        """Subscribe until cancelled; returns only if the server has no event stream (404)."""
        relogged = False
        while True:
            self._opened_at = None
            try:
                await self._stream(on_change)
                raise ConnectionResetError("the server closed the event stream")
            except asyncio.CancelledError:
                raise
            except _Unsupported as exc:
                self.unsupported = True
                self._log("info", "events_unsupported", reason=str(exc), action="polling only")
                return
            except _Relogin:
                self.client.tokens.invalidate()
                if self.on_need_login is not None:
                    self.on_need_login()
                if not relogged:  # one immediate retry with a fresh login; then back off
                    relogged = True
                    continue
                err: BaseException = KmsError("access token rejected by the event stream", **self._where())
            except (KmsError, HttpError, OSError) as exc:
                err = exc
            self.connected = False
            if self._opened_at is not None:
                relogged = False
                if self.clock() - self._opened_at >= HEALTHY_AFTER:
                    self.backoff.reset()
            floor = float(getattr(err, "retry_after", 0.0) or 0.0)
            delay = self.backoff.next_delay(floor=floor)
            self.failures += 1
            self._note_failure(err, delay)
            await asyncio.sleep(delay)

    async def _stream(self, on_change: Callable[[ChangeEvent], Any]) -> None:
        """One connection: open, report resync, read events until the stream ends (or fails)."""
        token = await self._token()
        headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}
        async with self.client.http.stream("POST", SUBSCRIBE_PATH, json=self._body(), headers=headers) as resp:
            if resp.status != 200:
                await self._refuse(resp)
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype.lower():
                raise BadResponse(f"event stream answered with Content-Type {ctype[:60]!r}, not text/event-stream",
                                  status=200, **self._where())
            self._opened_at = self.clock()
            self.connects += 1
            self.connected = True
            if self._failing or self.connects == 1:
                self._log("info", "events_connected", project=self.project, env=self.env, paths=self.paths,
                          after_failures=self.failures)
            self._failing = False
            # Also on the first connect: a change made between the agent's first sync and this
            # subscription would otherwise wait for the next poll. Costs one 304 per start.
            on_change(ChangeEvent("resync"))
            parser = SseParser()
            async for line in resp.lines(idle_timeout=self.idle_timeout):
                msg = parser.feed(line)
                if msg is None or not msg.data:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    self._log("debug", "event_not_json", sse_event=msg.event[:40])
                    continue
                ev = match_event(data, self.env, self.paths)
                if ev is not None:
                    self.events += 1
                    on_change(ev)

    async def _token(self) -> str:
        tokens = self.client.tokens
        if self.on_need_login is None:
            return await tokens.token()  # standalone: log in (or renew) as needed
        step = 0.05
        while tokens.valid_token() is None:  # no requests while we wait: the owner logs in
            await asyncio.sleep(step)
            step = min(1.0, step * 2)
        return await tokens.token()  # valid: at most a renewal, never a login with no token

    async def _refuse(self, resp: Any) -> None:
        try:
            body = await resp.read(max_body=64 * 1024, timeout=5.0)
        except HttpError:
            body = b""
        if resp.status == 404:
            raise _Unsupported(f"{SUBSCRIBE_PATH} answered 404")
        redact = self.client.tokens.redact()
        err = error_from_response(resp.status, body, resp.headers.get("retry-after"), redact, **self._where())
        if resp.status == 401 or (resp.status == 403 and err.error_code == "TokenError"):
            raise _Relogin()
        if isinstance(err, NotFound):  # pragma: no cover - 404 handled above; keep types honest
            raise _Unsupported(str(err))
        raise err

    def _note_failure(self, err: BaseException, delay: float) -> None:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not self._failing:
            self._failing = True
            self._log("warning", "events_disconnected", error=text, retry_in=round(delay, 2), action="keep polling")
        else:
            self._log("debug", "events_reconnect_failed", error=text, retry_in=round(delay, 2))

    def _log(self, level: str, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **fields)
