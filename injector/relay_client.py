"""The agent's side of the change relay (`kms-injector relay`): one SSE stream over HTTPS that says
when one of this pod's folders changed. Stdlib only (it runs inside the agent).

    state = RelayClientState()
    await relay_trigger(config, agent.wake, log, state)     # runs until cancelled

It POSTs {"folders": [{host, project, env, path} per config.sources]} to `config.relay_url`/v1/watch,
trusting only `config.relay_ca` (PEM text) and proving the pod with the projected token read from
`config.relay_token_path` at every connect (kubelet rotates it). Then:
  - "subscribed": wake("relay: subscribed") -- the agent refetches on every (re)connect, so a change
    made while no stream was open is not missed;
  - "change": wake("relay: <path>") after a random delay in [0, state.spread] (500 replicas of one
    service must not hit KMS in the same millisecond; each still reads with its own identity);
  - "unwatched": that folder is the agent's own polling's job (state.healthy turns false).
A dropped, refused or silent stream (no heartbeat for 3 heartbeats) reconnects with capped
exponential backoff and full jitter, honouring Retry-After; state changes are logged once, not
every attempt. `state.healthy` says whether the agent may stretch its safety-net poll by
config.relay_poll_factor (`state.poll_factor(config)`); counters feed the agent's metrics.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from injector.backoff import Backoff

WATCH_PATH = "/v1/watch"
DEFAULT_HEARTBEAT = 15.0
MAX_LINE = 256 * 1024
CONNECT_TIMEOUT = 10.0
REFUSED_BACKOFF_FLOOR = 30.0  # a 401/403 will not fix itself in a second: no storm of retries


@dataclass
class RelayClientState:
    """Knobs, live state and counters (for the agent's metrics and poll stretching)."""

    spread: float = 1.0  # max random delay before a wake on a notice
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0))
    connected: bool = False
    watched: dict[str, bool] = field(default_factory=dict)  # folder path -> watched by the relay
    connects: int = 0
    notices: int = 0
    wakes: int = 0
    failures: int = 0
    refusals: int = 0
    last_error: str = ""
    last_marker: dict[str, int] = field(default_factory=dict)
    on_health: Callable[[], Any] | None = None  # called when `healthy` flips (the agent re-plans its sleep)
    _pending: set[str] = field(default_factory=set, repr=False)
    _was_healthy: bool = field(default=False, repr=False)

    @property
    def healthy(self) -> bool:
        """Connected, and every folder is watched by the relay: the poll may be stretched."""
        return self.connected and bool(self.watched) and all(self.watched.values())

    def poll_factor(self, config: Any) -> float:
        return float(config.relay_poll_factor) if self.healthy else 1.0

    def _health_check(self) -> None:
        if self.healthy != self._was_healthy:
            self._was_healthy = self.healthy
            if self.on_health is not None:
                self.on_health()


class RelayRefused(Exception):
    def __init__(self, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.retry_after = retry_after


def subscription(config: Any) -> dict[str, Any]:
    """PURE: the body naming this pod's folders."""
    folders = [{"host": config.host, "project": config.project, "env": config.env, "path": s.path} for s in config.sources]
    return {"folders": list({json.dumps(f, sort_keys=True): f for f in folders}.values())}


def ssl_context(config: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=config.relay_ca) if config.relay_ca else ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def relay_trigger(config: Any, wake: Callable[[str], Any], log: Any, state: RelayClientState) -> None:
    """Subscribe until cancelled (see the module doc). Never raises for relay trouble."""
    if not config.relay_url:
        return
    ctx = ssl_context(config)
    failing = False
    while True:
        opened_at = None
        try:
            async for event, data in _stream(config, ctx, state):
                if event == "subscribed":
                    opened_at = time.monotonic()
                    state.connected = True
                    state.connects += 1
                    state.watched = {f.get("path", ""): bool(f.get("watched")) for f in data.get("folders", [])
                                     if isinstance(f, dict)}
                    unwatched = sorted(p for p, w in state.watched.items() if not w)
                    if failing or state.connects == 1:
                        log.info("relay_connected", url=config.relay_url, folders=len(state.watched),
                                 unwatched=unwatched, after_failures=state.failures)
                    failing = False
                    state._health_check()
                    state.wakes += 1
                    wake("relay: subscribed")
                elif event == "change":
                    folder = data.get("folder") if isinstance(data.get("folder"), dict) else {}
                    path = str(folder.get("path", ""))[:512]
                    state.notices += 1
                    if isinstance(data.get("marker"), int):
                        state.last_marker[path] = data["marker"]
                    _schedule_wake(path, wake, state)
                elif event == "unwatched":
                    folder = data.get("folder") if isinstance(data.get("folder"), dict) else {}
                    path = str(folder.get("path", ""))[:512]
                    state.watched[path] = False
                    state._health_check()
                    log.info("relay_folder_unwatched", path=path, reason=str(data.get("reason", ""))[:300],
                             action="normal polling for it")
            raise ConnectionResetError("the relay closed the stream")
        except asyncio.CancelledError:
            state.connected = False
            state._health_check()
            raise
        except Exception as exc:  # noqa: BLE001 - every failure: back off and reconnect
            state.connected = False
            state._health_check()
            state.failures += 1
            if opened_at is not None and time.monotonic() - opened_at >= 10.0:
                state.backoff.reset()
            floor = 0.0
            if isinstance(exc, RelayRefused):
                floor = exc.retry_after
                if exc.status in (400, 401, 403):
                    state.refusals += 1
                    floor = max(floor, REFUSED_BACKOFF_FLOOR)
            delay = state.backoff.next_delay(floor=floor)
            text = _text(exc)
            if not failing or text != state.last_error:
                failing = True
                log.warning("relay_disconnected", url=config.relay_url, error=text, retry_in=round(delay, 2),
                            action="normal polling until it is back")
            state.last_error = text
            await asyncio.sleep(delay)


def _schedule_wake(path: str, wake: Callable[[str], Any], state: RelayClientState) -> None:
    if path in state._pending:  # a wake for this folder is already on its way
        return
    state._pending.add(path)
    delay = random.uniform(0.0, state.spread) if state.spread > 0 else 0.0

    def fire() -> None:
        state._pending.discard(path)
        state.wakes += 1
        wake(f"relay: {path}")

    asyncio.get_running_loop().call_later(delay, fire)


def _text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


async def _stream(config: Any, ctx: ssl.SSLContext, state: RelayClientState):
    """Yield (event, data) from one connection; raises when it ends or fails."""
    url = urlsplit(config.relay_url)
    host, port = url.hostname or "", url.port or 443
    base = url.path.rstrip("/")
    with open(config.relay_token_path, encoding="utf-8") as fh:
        token = fh.read().strip()
    body = json.dumps(subscription(config), separators=(",", ":")).encode()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host, limit=MAX_LINE)
    except TimeoutError:
        raise ConnectionError(f"connecting to {host}:{port} timed out") from None
    except ssl.SSLCertVerificationError as exc:
        raise ConnectionError(f"TLS verification of {host}:{port} failed: {exc.verify_message}") from None
    try:
        host_header = host if port == 443 else f"{host}:{port}"
        head = (f"POST {base}{WATCH_PATH} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: kms-injector-agent\r\n"
                f"Accept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            status, headers = await _read_head(reader)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status != 200:
            text = await _read_error(reader, headers, chunked)
            raise RelayRefused(status, text, _retry_after(headers.get("retry-after")))
        idle = DEFAULT_HEARTBEAT * 3
        event, data_lines = "", []
        async for line in _lines(reader, chunked, lambda: idle):
            if line == "":
                if data_lines:
                    try:
                        data = json.loads("\n".join(data_lines))
                    except ValueError:
                        data = None
                    if isinstance(data, dict):
                        if event == "subscribed" and isinstance(data.get("heartbeat"), (int, float)) and data["heartbeat"] > 0:
                            idle = float(data["heartbeat"]) * 3
                        yield event or "message", data
                event, data_lines = "", []
            elif line.startswith(":"):
                continue  # heartbeat
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data_lines.append(value)
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError("the relay answered something that is not HTTP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_error(reader: asyncio.StreamReader, headers: dict[str, str], chunked: bool) -> str:
    try:
        async with asyncio.timeout(5.0):
            if "content-length" in headers and headers["content-length"].isdigit():
                raw = await reader.readexactly(min(int(headers["content-length"]), 64 * 1024))
            else:
                raw = await reader.read(64 * 1024)
        doc = json.loads(raw)
        msg = doc.get("message", "") if isinstance(doc, dict) else ""
        policy = doc.get("policy") if isinstance(doc, dict) else None
        return (str(msg) + (f" ({policy})" if policy else ""))[:500] or "refused"
    except (ValueError, OSError, TimeoutError, asyncio.IncompleteReadError):
        return "refused"


def _retry_after(value: str | None) -> float:
    try:
        return min(300.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


async def _lines(reader: asyncio.StreamReader, chunked: bool, idle: Callable[[], float]):
    """Body lines (decoded, line ending removed), de-chunking if needed; raises on silence."""
    buf = b""
    while True:
        try:
            async with asyncio.timeout(idle()):
                if chunked:
                    size_line = await reader.readuntil(b"\n")
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
        except TimeoutError:
            raise ConnectionError(f"no heartbeat from the relay for {idle():g}s") from None
        except asyncio.IncompleteReadError:
            raise ConnectionError("the relay stream was cut") from None
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if len(buf) > MAX_LINE:
            raise ConnectionError("relay stream line too long")
