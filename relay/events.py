"""One KMS change-event stream per (host, project, env) the relay watches, whatever the number of
folders and subscribers: an event makes the project's watched folders check at once (the check, not the
event, decides whether a notice goes out, so a spurious or lost event costs nothing but a 304).

It registers every event type for the environment with no path condition (upstream treats
`secretPath` as a prefix and allows only 10 registrations; leaving it out covers every folder with
four). While connected, the folders of the project poll only every `safety_interval`. A server
without working events (404 on older servers, 400 "not on your current plan", 422 from Hanzo's
fork, the canonical API) is left alone for UNSUPPORTED_RETRY seconds: polling only. The SSE parsing
and payload rules are injector.kms.events' (SseParser); the relay reuses them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from injector.backoff import Backoff
from injector.kms.events import EVENT_TYPES, SUBSCRIBE_PATH, SseParser

IDLE_TIMEOUT = 75.0
UNSUPPORTED_RETRY = 600.0
# 403: the identity lacks secret-events rights (or the plan has none): logging in again would not
# help, and every login costs (KMS locks an identity after failed ones). Polling covers it.
UNSUPPORTED_STATUSES = (400, 403, 404, 405, 422, 501)


class ProjectStream:
    def __init__(self, watcher: Any, host: str, project: str, env: str, *, log: Any) -> None:
        self.watcher = watcher
        self.host, self.project, self.env = host, project, env
        self.log = log
        self.connected = False
        self.unsupported = False
        self.connects = 0
        self.events = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"events {self.project}/{self.env}")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.connected = False

    def _where(self) -> dict[str, str]:
        return {"host": self.host, "project": self.project, "env": self.env}

    async def _run(self) -> None:
        backoff = Backoff(base=1.0, cap=60.0)
        client = self.watcher.client(self.host)
        failing = False
        while True:
            try:
                api = await client.resolve_api()
            except asyncio.CancelledError:
                raise
            except Exception:  # the folder checks report KMS trouble; retry quietly
                await asyncio.sleep(backoff.next_delay())
                continue
            if api == "canonical":
                self._unsupported("the canonical KMS API has no event stream")
                return
            try:
                status = await self._stream(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # dropped, silent, refused: back off, the polls go on
                status = type(exc).__name__
            was_connected, self.connected = self.connected, False
            if isinstance(status, int) and status in UNSUPPORTED_STATUSES:
                self._unsupported(f"{SUBSCRIBE_PATH} answered {status}")
                await asyncio.sleep(UNSUPPORTED_RETRY)
                self.unsupported = False
                continue
            if status == 401:
                client.tokens.invalidate()
            if was_connected:
                backoff.reset()
                self._kick_all()  # events are not stored: check what may have changed meanwhile
            delay = backoff.next_delay()
            if not failing:
                failing = True
                self.log.warning("events_disconnected", **self._where(), reason=str(status), retry_in=round(delay, 2),
                                 action="polling every poll interval")
            await asyncio.sleep(delay)
            if self.connected:
                failing = False

    async def _stream(self, client: Any) -> int | str:
        token = await client.tokens.token()
        body = {"projectId": client.project_id(self.project),
                "register": [{"event": e, "conditions": {"environmentSlug": self.env}} for e in EVENT_TYPES]}
        headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}
        async with client.http.stream("POST", SUBSCRIBE_PATH, json=body, headers=headers) as resp:
            if resp.status != 200:
                return resp.status
            if "text/event-stream" not in resp.headers.get("content-type", "").lower():
                return "not an event stream"
            self.connected = True
            self.connects += 1
            self.log.info("events_connected", **self._where(), folders=len(self.watcher.folders_of(self.host, self.project, self.env)))
            self._kick_all()  # a change between the last check and this connect
            parser = SseParser()
            async for line in resp.lines(idle_timeout=IDLE_TIMEOUT):
                msg = parser.feed(line)
                if msg is None or not msg.data:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                self.events += 1
                self._route(data)
        return "the server closed the event stream"

    def _route(self, data: Any) -> None:
        """Any change event of our env kicks every watched folder of the project: a folder may
        import the one that changed, and an unchanged folder's check is a 304."""
        inner = data.get("data") if isinstance(data, dict) and isinstance(data.get("data"), dict) else data
        if not isinstance(inner, dict) or (inner.get("eventType") or inner.get("event")) not in EVENT_TYPES:
            return
        payload = inner.get("payload")
        items = payload if isinstance(payload, list) else [payload] if isinstance(payload, dict) else []
        envs = {i.get("environment") for i in items if isinstance(i, dict) and isinstance(i.get("environment"), str)}
        if envs and self.env not in envs:
            return
        self._kick_all()

    def _kick_all(self) -> None:
        for fw in self.watcher.folders_of(self.host, self.project, self.env):
            fw.kick.set()

    def _unsupported(self, reason: str) -> None:
        self.unsupported = True
        self.log.info("events_unsupported", **self._where(), reason=reason, action="polling only")
