"""PURE: the change-event wire format of `POST /v1/events/subscribe/project-events`
(shared/kms-api.md, "Change events"): SSE framing, the registrations we send, matching an event to
our folders, and what a refused subscribe means. No I/O; the loop is injector.kms.events, and
the relay (relay/events.py) reuses these rules. Stdlib only (this runs inside the agent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from injector.kms.errors import KmsError, error_from_response

SUBSCRIBE_PATH = "/v1/events/subscribe/project-events"
EVENT_TYPES = ("secret:create", "secret:update", "secret:delete", "secret:import-mutation")
MAX_REGISTRATIONS = 10  # the server's limit per subscription
UNAVAILABLE_STATUSES = (400, 403, 404, 405, 422, 501)


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
    """The `register` list (1 to MAX_REGISTRATIONS): every event type for each folder while that
    fits (two folders), else for the folders' common prefix (the server matches by prefix; we
    filter exactly in match_event)."""
    folders = list(dict.fromkeys(norm_path(p) for p in paths)) or ["/"]
    if len(folders) * len(EVENT_TYPES) > MAX_REGISTRATIONS:
        folders = [common_prefix(folders)]
    return [{"event": event, "conditions": {"secretPath": path, "environmentSlug": env}}
            for path in folders for event in EVENT_TYPES]


def common_prefix(paths: list[str]) -> str:
    """The longest folder path every one of `paths` is in ('/' at worst)."""
    split = [[p for p in path.split("/") if p] for path in paths]
    out: list[str] = []
    for parts in zip(*split):
        if any(p != parts[0] for p in parts):
            break
        out.append(parts[0])
    return "/" + "/".join(out)


def norm_path(path: str) -> str:
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
    wanted = {norm_path(p) for p in paths}
    if not items:
        return ChangeEvent("change", event_type)
    for item in items:
        if not isinstance(item, dict):
            continue
        ev_env = item.get("environment") or item.get("environmentSlug")
        if isinstance(ev_env, str) and ev_env and ev_env != env:
            continue
        ev_path = item.get("secretPath")
        if event_type != "secret:import-mutation" and isinstance(ev_path, str) and norm_path(ev_path) not in wanted:
            continue
        keys = tuple(k for i in items if isinstance(i, dict) for k in _keys_of(i))
        return ChangeEvent("change", event_type, env, norm_path(ev_path) if isinstance(ev_path, str) else "", keys)
    return None


def _keys_of(item: dict[str, Any]) -> list[str]:
    """Key names in a payload item: `secretKeys` (the real servers: a string, or a list) or `secretKey`."""
    value = item.get("secretKeys", item.get("secretKey"))
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)][:100]
    return []


def classify_refusal(status: int, body: bytes, retry_after: str | None = None, redact: Iterable[str] = (),
                     **where: Any) -> tuple[str, KmsError]:
    """PURE: what a non-200 answer to subscribe means: ("relogin" | "unavailable" | "retry", error).

    "unavailable": the statuses in UNAVAILABLE_STATUSES (plan, permission, no route, stub schema);
    "relogin": 401 or 403 TokenError; "retry": the rest (429, 5xx: the caller counts them)."""
    err = error_from_response(status, body, retry_after, list(redact), **where)
    if status == 401 or (status == 403 and err.error_code == "TokenError"):
        return "relogin", err
    if status in UNAVAILABLE_STATUSES:
        said = ": ".join(x for x in (err.error_code, err.kms_message) if x)
        err.detail = f"{SUBSCRIBE_PATH} answered {status}" + (f" ({said})" if said else "")
        return "unavailable", err
    return "retry", err
