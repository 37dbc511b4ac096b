"""Watching KMS folders for the relay: each (host, project, env, path) that at least one subscriber
wants is checked once, from the cheapest source the server offers, and a change is fanned out.

Sources, cheapest first:
  1. the project's change-event stream (relay/events.py), one per (host, project, env) however many
     folders and pods: an event makes the named folders check at once; while the stream is up the
     poll below only runs every `safety_interval` (events are not stored: a drop is caught by it);
  2. a poll every `poll_interval` (default 2 s) with `If-None-Match` and `viewSecretValue=false`:
     an unchanged folder is a 304 and no value is ever asked for;
  3. where values come back anyway (older Infisical servers ignore viewSecretValue) or a change can
     only be seen by reading values (the canonical API), only a sha256 of the answer is kept; the
     body is dropped at once and never logged, stored or forwarded. With `read_values=False` such
     folders are not watched: subscribers are told so and keep their own polling.

A folder's first check sets its baseline (no notice); later differences bump its change counter
(the marker subscribers see) and write one frame, encoded once, to each subscriber's connection. A folder nobody watches
any more is dropped with its task. KMS failures back off and are logged on state changes only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from injector.backoff import Backoff
from injector.log import Logger
from relay.protocol import Folder, sse

SECRETS_PATH = "/v3/secrets/raw"
SAFETY_INTERVAL = 30.0  # poll interval while an event stream covers the folder
UNWATCHED_RETRY = 60.0  # how often a folder the relay may not read is tried again
CHECK_CONCURRENCY = 8  # KMS requests in flight per host


class Subscriber:
    """One open stream. Frames are written straight to its connection (relay/https_server.Conn:
    `write(bytes)`, `close()`); until `release` sends the "subscribed" frame they are held, so a
    change found meanwhile follows it instead of preceding it."""

    __slots__ = ("conn", "held", "namespace", "service_account", "folders", "closed")

    def __init__(self, namespace: str, service_account: str, folders: list[Folder], conn: Any = None) -> None:
        self.conn = conn
        self.held: list[bytes] | None = []
        self.namespace = namespace
        self.service_account = service_account
        self.folders = folders
        self.closed = False

    def push(self, frame: bytes | None) -> None:
        """A frame for this subscriber; None closes its stream (settings change, shutdown)."""
        if self.closed or self.conn is None:
            return
        if frame is None:
            self.conn.close()
        elif self.held is not None:
            self.held.append(frame)
        else:
            self.conn.write(frame)

    def release(self, first: bytes) -> None:
        held, self.held = self.held or [], None
        if self.conn is not None and not self.closed:
            self.conn.write(first + b"".join(held))


@dataclass
class FolderWatch:
    folder: Folder
    subscribers: set[Subscriber] = field(default_factory=set)
    marker: int = 0
    etag: str | None = None  # the server's ETag, or "sha256:..." of an answer (never the answer)
    watched: bool = True
    reason: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the baseline is set (or unwatched)
    kick: asyncio.Event = field(default_factory=asyncio.Event)  # an event says: check now
    failing: bool = False
    task: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.folder.to_json(), "watched": self.watched}
        if not self.watched:
            out["reason"] = self.reason
        return out


class NotWatchable(Exception):
    """This folder cannot be watched without reading values (and read_values is off), or the relay's
    identity may not read it. The message says which, for the subscriber."""


@dataclass
class WatchStats:
    polls: dict[str, int] = field(default_factory=lambda: {"not_modified": 0, "unchanged": 0, "changed": 0, "error": 0})
    notices: int = 0  # frames queued to subscribers
    changes: int = 0  # folder changes detected
    value_answers: int = 0  # answers that carried values (digested, dropped)


class Watcher:
    def __init__(self, *, credentials: Any, api: str = "auto", poll_interval: float = 2.0,
                 safety_interval: float = SAFETY_INTERVAL, read_values: bool = True, events: bool = True,
                 log: Logger, request_timeout: float = 10.0, ca_file: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.credentials = credentials
        self.api = api
        self.poll_interval = poll_interval
        self.safety_interval = max(safety_interval, poll_interval)
        self.read_values = read_values
        self.events_enabled = events
        self.log = log
        self.request_timeout = request_timeout
        self.ca_file = ca_file
        self.folders: dict[Folder, FolderWatch] = {}
        self.clients: dict[str, Any] = {}
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.streams: dict[tuple[str, str, str], Any] = {}  # (host, project, env) -> ProjectStream
        self.stats = WatchStats()
        self.subscribers = 0

    # -- subscriptions ------------------------------------------------------------------------
    def add(self, sub: Subscriber) -> list[FolderWatch]:
        self.subscribers += 1
        out = []
        # each subscriber names its folders with its own parsed strings: keep the watched ones'
        # (10,000 subscribers of one folder then share one Folder, not 10,000 equal copies)
        sub.folders = [self.folders[f].folder if f in self.folders else f for f in sub.folders]
        for folder in sub.folders:
            fw = self.folders.get(folder)
            if fw is None:
                fw = self.folders[folder] = FolderWatch(folder)
                fw.task = asyncio.create_task(self._run(fw), name=f"watch {folder.label()}")
                self.log.info("folder_watched", folder=folder.label(), host=folder.host)
                self._ensure_stream(folder)
            fw.subscribers.add(sub)
            out.append(fw)
        return out

    def remove(self, sub: Subscriber) -> None:
        if sub.closed:
            return
        sub.closed = True
        self.subscribers -= 1
        for folder in sub.folders:
            fw = self.folders.get(folder)
            if fw is None:
                continue
            fw.subscribers.discard(sub)
            if not fw.subscribers:
                del self.folders[folder]
                if fw.task is not None:
                    fw.task.cancel()
                self.log.info("folder_dropped", folder=folder.label(), reason="no subscriber left")
                self._maybe_stop_stream(folder)

    def folders_of(self, host: str, project: str, env: str) -> list[FolderWatch]:
        return [fw for f, fw in self.folders.items() if (f.host, f.project, f.env) == (host, project, env)]

    # -- fan-out ------------------------------------------------------------------------------
    def _notify(self, fw: FolderWatch, event: str, data: dict[str, Any]) -> None:
        """One encode, then a tight loop of synchronous writes: no task or queue per subscriber. A
        subscriber closed by a failed write leaves the set later (call_soon), not during this loop."""
        frame = sse(event, data)
        push = Subscriber.push
        for sub in fw.subscribers:
            push(sub, frame)
        self.stats.notices += len(fw.subscribers)

    def _changed(self, fw: FolderWatch) -> None:
        fw.marker += 1
        self.stats.changes += 1
        self.log.info("folder_changed", folder=fw.folder.label(), marker=fw.marker, subscribers=len(fw.subscribers))
        self._notify(fw, "change", {"folder": fw.folder.to_json(), "marker": fw.marker})

    # -- the per-folder loop ------------------------------------------------------------------
    async def _run(self, fw: FolderWatch) -> None:
        backoff = Backoff(base=1.0, cap=60.0)
        first = True
        while True:
            try:
                digest = await self._check(fw)
            except asyncio.CancelledError:
                raise
            except NotWatchable as exc:
                was = fw.watched
                fw.watched, fw.reason = False, str(exc)
                fw.etag = None
                if was:
                    self.log.warning("folder_unwatched", folder=fw.folder.label(), reason=fw.reason,
                                     action="subscribers keep their own polling")
                    if not first:
                        self._notify(fw, "unwatched", {"folder": fw.folder.to_json(), "reason": fw.reason})
                fw.ready.set()
                first = False
                await self._sleep(fw, UNWATCHED_RETRY)
                continue
            except Exception as exc:  # KMS down, 5xx, bad answer: keep the baseline, back off
                self.stats.polls["error"] += 1
                delay = backoff.next_delay(floor=float(getattr(exc, "retry_after", 0.0) or 0.0))
                if not fw.failing:
                    fw.failing = True
                    self.log.warning("folder_check_failing", folder=fw.folder.label(), error=_error_text(exc),
                                     retry_in=round(delay, 2))
                if first:  # do not hold the subscriber's "subscribed" for an outage
                    fw.ready.set()
                await self._sleep(fw, max(delay, self.poll_interval))
                continue
            backoff.reset()
            if fw.failing:
                fw.failing = False
                self.log.info("folder_check_recovered", folder=fw.folder.label())
            if not fw.watched:  # readable again: a change may have been missed meanwhile
                fw.watched, fw.reason = True, ""
                self.log.info("folder_watched_again", folder=fw.folder.label())
                fw.etag = digest
                self._changed(fw)
            elif digest is not None and fw.etag is not None and digest != fw.etag:
                fw.etag = digest
                self._changed(fw)
            elif digest is not None:
                fw.etag = digest
            fw.ready.set()
            if first:
                first = False
                # spread the folders' polls over the interval instead of one burst per tick
                await self._sleep(fw, random.uniform(0, self._interval(fw)))
                continue
            await self._sleep(fw, self._interval(fw))

    def _interval(self, fw: FolderWatch) -> float:
        f = fw.folder
        stream = self.streams.get((f.host, f.project, f.env))
        return self.safety_interval if stream is not None and stream.connected else self.poll_interval

    async def _sleep(self, fw: FolderWatch, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await fw.kick.wait()
        except TimeoutError:
            pass
        fw.kick.clear()

    # -- one check ----------------------------------------------------------------------------
    def client(self, host: str) -> Any:
        c = self.clients.get(host)
        if c is None:
            from injector.kms.client import KmsClient  # noqa: PLC0415

            c = self.clients[host] = KmsClient(host, self.credentials, timeout=self.request_timeout, logger=self.log,
                                               ca_file=self.ca_file, api=self.api)
            self._sems[host] = asyncio.Semaphore(CHECK_CONCURRENCY)
        return c

    async def _check(self, fw: FolderWatch) -> str | None:
        """The folder's current ETag or digest; None when unchanged (a 304)."""
        f = fw.folder
        client = self.client(f.host)
        async with self._sems[f.host]:
            api = await client.resolve_api()
            if api == "canonical":
                return await self._check_canonical(client, fw)
            return await self._check_infisical(client, fw)

    async def _check_infisical(self, client: Any, fw: FolderWatch) -> str | None:
        from injector.kms.auth import transport_error  # noqa: PLC0415
        from injector.kms.errors import PermissionDenied, error_from_response  # noqa: PLC0415
        from injector.kms.http import HttpError  # noqa: PLC0415

        f = fw.folder
        where = {"host": f.host, "project": f.project, "env": f.env, "path": f.path, "op": "relay-check"}
        # viewSecretValue=false: newer servers hide values and need only "describe" rights. The
        # imports are included so that a change in an imported folder changes this answer too.
        params = {"workspaceSlug": f.project, "environment": f.env, "secretPath": f.path,
                  "include_imports": "true", "viewSecretValue": "false"}
        headers = {"If-None-Match": fw.etag} if fw.etag and not fw.etag.startswith("sha256:") else {}

        async def send(token: str) -> Any:
            client.requests += 1
            return await client.http.request("GET", SECRETS_PATH, params=params,
                                             headers={**headers, "Authorization": f"Bearer {token}"})

        try:
            resp = await client.tokens.authorized(send)
        except HttpError as exc:
            raise transport_error(exc, client.tokens.redact(), **where) from None
        if resp.status == 304:
            self.stats.polls["not_modified"] += 1
            return None
        if resp.status != 200:
            err = error_from_response(resp.status, resp.body, resp.headers.get("retry-after"), client.tokens.redact(), **where)
            if isinstance(err, PermissionDenied):
                raise NotWatchable(f"the relay's own identity may not read this folder ({resp.status}); "
                                   "grant it read (or describe) on it") from None
            raise err
        server_etag = resp.headers.get("etag") or ""
        body = resp.body
        del resp
        if _has_values(body):
            self.stats.value_answers += 1
            if not self.read_values:
                raise NotWatchable("this KMS sent secret values although the relay asked for none "
                                   "(viewSecretValue=false), and relay.readValues is false; the agent's own "
                                   "polling covers this folder")
        if server_etag and _header_safe(server_etag):
            digest = server_etag
        else:  # no ETag: a digest of the answer; the answer itself goes now
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        del body
        self.stats.polls["changed" if fw.etag is not None and digest != fw.etag else "unchanged"] += 1
        return digest

    async def _check_canonical(self, client: Any, fw: FolderWatch) -> str | None:
        """The canonical API has no change signal without values: a read of the folder, digested."""
        if not self.read_values:
            raise NotWatchable("this KMS (canonical API) shows a change only in the values, and relay.readValues "
                               "is false; the agent's own polling covers this folder")
        from injector.kms.errors import PermissionDenied  # noqa: PLC0415

        f = fw.folder
        try:
            result = await client.fetch(f.project, f.env, f.path, etag=None)
        except PermissionDenied:
            raise NotWatchable("the relay's own identity may not read this folder; grant it read on it") from None
        self.stats.value_answers += 1
        digest = "sha256:" + hashlib.sha256((result.etag or "").encode()).hexdigest()
        result.secrets.clear()  # values dropped at once; only the digest stays
        self.stats.polls["changed" if digest != fw.etag else "unchanged"] += 1
        return digest

    # -- event streams (relay/events.py) ------------------------------------------------------
    def _ensure_stream(self, folder: Folder) -> None:
        if not self.events_enabled:
            return
        key = (folder.host, folder.project, folder.env)
        if key in self.streams:
            return
        from relay.events import ProjectStream  # noqa: PLC0415

        stream = ProjectStream(self, *key, log=self.log)
        self.streams[key] = stream
        stream.start()

    def _maybe_stop_stream(self, folder: Folder) -> None:
        key = (folder.host, folder.project, folder.env)
        if key in self.streams and not self.folders_of(*key):
            self.streams.pop(key).stop()

    async def close(self) -> None:
        tasks = [fw.task for fw in self.folders.values() if fw.task is not None]
        for s in self.streams.values():
            s.stop()
            if s.task is not None:
                tasks.append(s.task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self.clients.values():
            await c.close()


def _has_values(body: bytes) -> bool:
    """True when a list answer carries any secret value (the server ignored viewSecretValue=false).
    Looks only at `secretValueHidden`; the parsed document is dropped before this returns."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    items = list(doc.get("secrets") or []) if isinstance(doc, dict) else []
    for imp in (doc.get("imports") or []) if isinstance(doc, dict) else []:
        if isinstance(imp, dict):
            items += list(imp.get("secrets") or [])
    return any(isinstance(s, dict) and s.get("secretValueHidden") is not True and s.get("secretValue") for s in items)


def _header_safe(value: str) -> bool:
    return len(value) <= 512 and not any(c in value for c in "\r\n\x00")


def _error_text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
