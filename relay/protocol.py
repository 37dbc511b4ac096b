"""PURE: the relay's wire contract (shared with injector/relay_client.py, which restates it in
the stdlib), and validation of what a subscriber sends.

    POST /v1/watch    Authorization: Bearer <projected service-account token, audience: the relay>
                      {"folders": [{"host", "project", "env", "path"}, ...]}        (1..MAX_FOLDERS)
    -> 200 text/event-stream:
         event: subscribed   data: {"folders": [{...folder, "watched": true|false, "reason"?}], "heartbeat": s}
         event: change       data: {"folder": {...}, "marker": N}
         event: unwatched    data: {"folder": {...}, "reason": "..."}    (the agent's own polling covers it)
         `: ping` comments every HEARTBEAT seconds
    -> 400 / 401 / 403 JSON {"error", "message", ...} naming what was wrong and what is accepted.

A change marker is the folder's change counter in this relay process: it says "something changed"
and reveals nothing about any value (not even a digest prefix, which for a one-word secret could be
guessed). Agents refetch on every (re)connect, so markers need not survive a relay restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from injector.config import ConfigError, normalize_path

MAX_FOLDERS = 64  # an agent names a handful (kms.hanzo.ai/path + path-NAME); more is a mistake
MAX_BODY = 64 * 1024
HEARTBEAT = 15.0


class SubscribeError(ValueError):
    """A subscription request is malformed; the message names the field and what is accepted."""


@dataclass(frozen=True, order=True)
class Folder:
    """One watched unit: (host, project, env, path). The host is kept as given, minus a trailing /."""

    host: str
    project: str
    env: str
    path: str

    def to_json(self) -> dict[str, str]:
        return {"host": self.host, "project": self.project, "env": self.env, "path": self.path}

    def label(self) -> str:  # for logs: no host credentials ever (URLs with userinfo are refused)
        return f"{self.project}/{self.env}{self.path}"


def _slug(value: Any, where: str) -> str:
    import re

    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise SubscribeError(f"{where}: {_short(value)} is not a slug; use [A-Za-z0-9_.-], up to 64 characters")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def parse_subscription(body: bytes) -> list[Folder]:
    """The folders a subscriber asks for, de-duplicated in order. Raises SubscribeError."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SubscribeError('body is not JSON; send {"folders": [{"host", "project", "env", "path"}]}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("folders"), list):
        raise SubscribeError('body must be an object with a "folders" list of {"host", "project", "env", "path"}')
    unknown = sorted(set(doc) - {"folders"})
    if unknown:
        raise SubscribeError(f"unknown field {unknown[0]!r}; accepted: folders")
    items = doc["folders"]
    if not 1 <= len(items) <= MAX_FOLDERS:
        raise SubscribeError(f"folders has {len(items)} entries; send 1 to {MAX_FOLDERS}")
    out: dict[Folder, None] = {}
    for i, item in enumerate(items):
        where = f"folders[{i}]"
        if not isinstance(item, dict):
            raise SubscribeError(f"{where} is not an object; send {{\"host\", \"project\", \"env\", \"path\"}}")
        extra = sorted(set(item) - {"host", "project", "env", "path"})
        if extra:
            raise SubscribeError(f"{where}.{extra[0]}: unknown field; accepted: host, project, env, path")
        host = item.get("host")
        if not isinstance(host, str) or not host.startswith(("http://", "https://")) or len(host) > 512 \
                or any(c in host for c in "\r\n\x00 @"):
            raise SubscribeError(f"{where}.host: {_short(host)} is not a KMS URL such as http://kms.hanzo.svc.cluster.local/api")
        try:
            path = normalize_path(item.get("path"), f"{where}.path")  # type: ignore[arg-type]
        except ConfigError as exc:
            raise SubscribeError(str(exc)) from None
        out[Folder(host.rstrip("/"), _slug(item.get("project"), f"{where}.project"),
                   _slug(item.get("env"), f"{where}.env"), path)] = None
    return list(out)


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One text/event-stream message (data is one JSON line: no newline can split it)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


PING = b": ping\n\n"
