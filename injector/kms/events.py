"""KMS change events: subscribe to the project event stream and report matching changes.

    sub = EventSubscriber(client, "secrets-639-c", "prod", ["/chat"], logger=log)
    await sub.run(on_change)   # runs until cancelled; polling goes on regardless

`POST /v1/events/subscribe/project-events` (shared/kms-api.md, "Change events") answers a
`text/event-stream` where the server has it. The body names the project by its id (never the
slug: learnt from the fetched secrets' `workspace`; until one is known nothing is subscribed) and
1 to 10 registrations of secret:create/update/delete/import-mutation with conditions
{secretPath, environmentSlug}. `secretPath` is a prefix match on the server, so up to two folders
get four registrations each, and more folders share one set on their common prefix; we filter
exactly here. Events come as `event: secret:update` + `data: {"type": "secret-manager", "data":
{"eventType", "payload": [{"environment", "secretPath", "secretKeys"}]}}`; `event: ping` (no
data) every 15 s keeps the stream alive; the server closes each stream after an hour.
`on_change(event)` is called for each matching event, and with a `resync` event after every
connect (events are not stored: what happened while no stream was open is caught by one fetch).

What a refusal means (SubscribePolicy holds the numbers):
- 400 (plan), 403 (permission), 404 (no route), 405, 422 (Hanzo's fork: a stub schema), 501, and
  `server_error_limit` 5xx in a row: events are not available here. Logged once
  (`events_unsupported`, with the reason), then polling only, and one probe every
  `unavailable_retry` seconds (minutes, jittered).
- 429 (at most 5 streams per project and identity): wait at least `rate_limited_floor`.
- 401 / 403 TokenError: only the refused token is dropped (`client.invalidate(token)`); after
  `relogin_limit` refused tokens in a row, events count as not available.
- a dropped or silent stream, network errors: reconnect with capped backoff and full jitter.
Against a server that always refuses, the loop is bounded: see `attempts_per_hour`.
The wire format (SSE framing, registrations, matching, refusals) is event_protocol.py.
Stdlib only (this runs inside the agent).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from injector.backoff import Backoff
from injector.kms.errors import BadResponse, KmsError, RateLimited, ServerError
from injector.kms.event_protocol import (
    EVENT_TYPES, MAX_REGISTRATIONS, SUBSCRIBE_PATH, UNAVAILABLE_STATUSES, ChangeEvent, SseParser, classify_refusal,
    match_event, norm_path, registrations,
)
from injector.kms.http import HttpError

IDLE_TIMEOUT = 75.0  # servers send `event: ping` every 15 s; silence this long = a dead stream
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
HEALTHY_AFTER = 10.0  # a stream that stayed up this long resets the backoff
ROTATED_AFTER = 50 * 60.0  # a stream closed after this long is the server's one-hour close, not a fault

# Protocol names other modules import from here (they live in event_protocol.py; the relay uses them).
__all__ = ["EVENT_TYPES", "MAX_REGISTRATIONS", "SUBSCRIBE_PATH", "UNAVAILABLE_STATUSES", "ChangeEvent", "EventSubscriber",
           "SseParser", "SubscribePolicy", "classify_refusal", "match_event", "registrations"]


@dataclass(frozen=True)
class SubscribePolicy:
    """How often the subscriber may ask. Defaults suit a fleet; tests shrink them."""

    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP
    unavailable_retry: float = 900.0  # probe a server without events again after ~15 min
    rate_limited_floor: float = 300.0  # 429: too many streams for this project and identity
    server_error_limit: int = 3  # 5xx in a row on subscribe before events count as not available
    relogin_limit: int = 3  # refused tokens in a row before events count as not available
    healthy_after: float = HEALTHY_AFTER
    jitter: float = 0.2  # +-20% on the long waits, so a fleet does not probe in step
    project_id_wait: float = 5.0  # how often to look for a learnt project id (no requests)

    def attempts_per_hour(self) -> float:
        """Upper bound of subscribe requests per hour against a server that always refuses: a
        round is at most max(server_error_limit, relogin_limit) attempts (seconds of backoff),
        then one unavailable_retry wait at its shortest (jitter's low end); a 429 waits at least
        rate_limited_floor (low end) each time. Defaults: 5/h for 4xx, 15/h for 5xx, 401 or 429."""
        per_round = max(self.server_error_limit, self.relogin_limit, 1)
        low = 1 - self.jitter
        return max(per_round * 3600.0 / (self.unavailable_retry * low), 3600.0 / (self.rate_limited_floor * low))


# -- I/O: the subscription loop ------------------------------------------------------------------

class _Unsupported(Exception):
    pass


class _Relogin(Exception):
    def __init__(self, token: str) -> None:
        super().__init__("access token refused by the event stream")
        self.token = token


class EventSubscriber:
    """Keeps one event stream open for a project/env/folders and reports matching changes."""

    def __init__(
        self,
        client: Any,  # KmsClient: .http, .tokens, .host, .known_project_id(), .invalidate(token)
        project: str,
        env: str,
        paths: list[str],
        *,
        logger: Any = None,
        on_need_login: Callable[[], Any] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        backoff: Backoff | None = None,
        policy: SubscribePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Any = None,
    ) -> None:
        self.client = client
        self.project = project
        self.env = env
        self.paths = [norm_path(p) for p in paths]
        self.log = logger
        # With an owner (the agent) that logs in on its own schedule, the subscriber never logs in
        # itself: it waits for a valid token, and asks the owner (once per rejected token) to
        # fetch now. So wrong credentials cost no extra logins (KMS locks an identity after 3).
        self.on_need_login = on_need_login
        self.idle_timeout = idle_timeout
        self.policy = policy or SubscribePolicy()
        self.backoff = backoff or Backoff(base=self.policy.backoff_base, cap=self.policy.backoff_cap)
        self.clock = clock
        if rng is None:
            import random

            rng = random.Random()
        self.rng = rng
        # for metrics and tests
        self.attempts = 0  # subscribe requests sent
        self.connects = 0
        self.events = 0
        self.failures = 0
        self.connected = False
        self.unsupported = False
        self.unsupported_reason = ""
        self._failing = False
        self._opened_at: float | None = None
        self._server_errors = 0
        self._refused_tokens = 0

    def _where(self) -> dict[str, Any]:
        return {"host": self.client.host, "project": self.project, "env": self.env,
                "path": ",".join(self.paths), "op": "subscribe-events"}

    def _project_id(self) -> str | None:
        known = getattr(self.client, "known_project_id", None)
        return known(self.project) if known is not None else self.project

    def _body(self, project_id: str) -> dict[str, Any]:
        return {"projectId": project_id, "register": registrations(self.env, self.paths)}

    def _jittered(self, seconds: float) -> float:
        j = self.policy.jitter
        return seconds * self.rng.uniform(1 - j, 1 + j)

    async def _wait_for_project_id(self) -> str:
        """The real project id (the server refuses a slug); learnt by the agent's fetches."""
        pid = self._project_id()
        if pid:
            return pid
        self._log("info", "events_waiting", reason="the project id is not known yet (no fetched secret named its workspace)",
                  action="polling; subscribing once a fetch names it")
        while not pid:
            await asyncio.sleep(self.policy.project_id_wait)
            pid = self._project_id()
        return pid

    async def run(self, on_change: Callable[[ChangeEvent], Any]) -> None:
        """Subscribe until cancelled. Never returns on refusals: it waits (see SubscribePolicy)."""
        relogged = False
        while True:
            self._opened_at = None
            pid = await self._wait_for_project_id()
            try:
                await self._stream(on_change, pid)
                raise ConnectionResetError("the server closed the event stream")
            except asyncio.CancelledError:
                raise
            except _Unsupported as exc:
                await self._unavailable(str(exc))
                continue
            except _Relogin as exc:
                self._refused_tokens += 1
                self.client.invalidate(exc.token)  # only the refused token: a fresher one stays
                if self.on_need_login is not None:
                    self.on_need_login()
                if self._refused_tokens >= self.policy.relogin_limit:
                    await self._unavailable(f"the event stream refused {self._refused_tokens} access tokens in a row (401 or 403 TokenError)")
                    continue
                if not relogged:  # one immediate retry with a fresh token; then back off
                    relogged = True
                    continue
                err: BaseException = KmsError("access token rejected by the event stream", **self._where())
            except RateLimited as exc:
                err = exc
            except ServerError as exc:
                self._server_errors += 1
                if self._server_errors >= self.policy.server_error_limit:
                    await self._unavailable(f"{self._server_errors} server errors in a row on subscribe ({exc.status})")
                    continue
                err = exc
            except (KmsError, HttpError, OSError) as exc:
                err = exc
            self.connected = False
            rotated = False
            if self._opened_at is not None:
                relogged = False
                lasted = self.clock() - self._opened_at
                if lasted >= self.policy.healthy_after:
                    self.backoff.reset()
                rotated = lasted >= ROTATED_AFTER
            floor = float(getattr(err, "retry_after", 0.0) or 0.0)
            if isinstance(err, RateLimited):
                floor = max(floor, self._jittered(self.policy.rate_limited_floor))
            delay = self.backoff.next_delay(floor=floor)
            self.failures += 1
            if rotated:  # the server's hourly close: reconnect, nothing to warn about
                self._log("info", "events_stream_closed", lasted_seconds=round(self.clock() - (self._opened_at or 0)),
                          retry_in=round(delay, 2))
            else:
                self._note_failure(err, delay)
            await asyncio.sleep(delay)

    async def _unavailable(self, reason: str) -> None:
        """Events are not available here: say so once, then probe again rarely."""
        self.connected = False
        delay = self._jittered(self.policy.unavailable_retry)
        if not self.unsupported or reason != self.unsupported_reason:
            self._log("info", "events_unsupported", reason=reason[:300], action="polling only",
                      probe_again_in=round(delay))
        self.unsupported, self.unsupported_reason = True, reason
        self._server_errors = 0
        self._refused_tokens = 0
        self.backoff.reset()
        await asyncio.sleep(delay)

    async def _stream(self, on_change: Callable[[ChangeEvent], Any], project_id: str) -> None:
        """One connection: open, report resync, read events until the stream ends (or fails)."""
        token = await self._token()
        headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache", "Accept": "text/event-stream"}
        self.attempts += 1
        async with self.client.http.stream("POST", SUBSCRIBE_PATH, json=self._body(project_id), headers=headers) as resp:
            if resp.status != 200:
                await self._refuse(resp, token)
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype.lower():
                raise BadResponse(f"event stream answered with Content-Type {ctype[:60]!r}, not text/event-stream",
                                  status=200, **self._where())
            self._opened_at = self.clock()
            self.connects += 1
            self.connected = True
            self._server_errors = 0
            self._refused_tokens = 0
            if self._failing or self.connects == 1 or self.unsupported:
                self._log("info", "events_connected", project=self.project, env=self.env, paths=self.paths,
                          after_failures=self.failures)
            self._failing = False
            self.unsupported, self.unsupported_reason = False, ""
            # Also on the first connect: a change made between the agent's first sync and this
            # subscription would otherwise wait for the next poll. Costs one 304 per start.
            on_change(ChangeEvent("resync"))
            parser = SseParser()
            async for line in resp.lines(idle_timeout=self.idle_timeout):
                msg = parser.feed(line)
                if msg is None or not msg.data:
                    continue  # `event: ping` carries no data: liveness only
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

    async def _refuse(self, resp: Any, token: str) -> None:
        try:
            body = await resp.read(max_body=64 * 1024, timeout=5.0)
        except HttpError:
            body = b""
        redact = self.client.tokens.redact() + [token]
        kind, err = classify_refusal(resp.status, body, resp.headers.get("retry-after"), redact, **self._where())
        if kind == "relogin":
            raise _Relogin(token)
        if kind == "unavailable":
            raise _Unsupported(str(err.detail))
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
