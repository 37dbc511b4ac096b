"""Structured JSON-line logs on stderr: the one logger of the agent and the webhook.

One line per event: {"ts": ..., "level": ..., "component": ..., "event": ..., **fields}.
Callers pass key names, paths, statuses, never secret values, tokens or client secrets. Stdlib
only: this sits on the agent's start-up path. A program with a faster JSON encoder passes it as
`encode` (the webhook passes orjson's); the stdlib encoder is the fallback for what it refuses.

Hot path (the webhook's one line per admission): the timestamp's seconds are formatted once per
second, and `info_soon` queues the line and writes every line queued during one event-loop
iteration with a single write(2) right after it (one syscall per admission was the largest single
cost of the handler under load). Order is kept: any other log call writes the queue first, and
an exit flushes it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

Encoder = Callable[[dict[str, Any]], bytes]  # a record -> one line, b"\n" included


def json_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()


class _Sink:
    """Where lines go, shared by a logger and its `bind` children so their order holds."""

    __slots__ = ("stream", "pending", "atexit")

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream  # None: sys.stderr at write time (tests swap it)
        self.pending: list[bytes] = []
        self.atexit = False

    def flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending.clear()
        stream = self.stream or sys.stderr
        try:
            buf = getattr(stream, "buffer", None)
            if buf is not None:
                stream.flush()  # whatever was printed to the text layer goes first
                buf.write(data)
                buf.flush()
            else:
                stream.write(data.decode())
                stream.flush()
        except (OSError, ValueError):  # closed pipe: logging must never take the process down
            pass


class Logger:
    _sec = -1
    _prefix = ""

    def __init__(self, component: str, stream: TextIO | None = None, level: str = "info", *,
                 encode: Encoder | None = None, **context: Any) -> None:
        self.component = component
        self.threshold = LEVELS.get(level, 20)
        self.context = context
        self.encode = encode or json_line
        self._sink = _Sink(stream)

    @property
    def stream(self) -> TextIO | None:
        return self._sink.stream

    def bind(self, **context: Any) -> "Logger":
        """The same logger with more context fields on every line."""
        return self._child(self.component, {**self.context, **context})

    def named(self, component: str) -> "Logger":
        """Another component's logger writing through this one's queue, so lines keep their order."""
        return self._child(component, dict(self.context))

    def _child(self, component: str, context: dict[str, Any]) -> "Logger":
        child = Logger(component, encode=self.encode, **context)
        child.threshold = self.threshold
        child._sink = self._sink
        return child

    def log(self, level: str, event: str, **fields: Any) -> None:
        line = self._line(level, event, fields)
        if line:
            self._sink.pending.append(line)
            self._sink.flush()

    def info_soon(self, event: str, **fields: Any) -> None:
        """`info`, written together with the other lines of this event-loop iteration."""
        line = self._line("info", event, fields)
        if not line:
            return
        sink = self._sink
        sink.pending.append(line)
        if len(sink.pending) == 1:
            import asyncio  # noqa: PLC0415 (already loaded wherever a loop runs)

            try:
                asyncio.get_running_loop().call_soon(sink.flush)
            except RuntimeError:  # no loop: nothing would flush later
                return sink.flush()
            if not sink.atexit:
                import atexit  # noqa: PLC0415

                atexit.register(sink.flush)
                sink.atexit = True

    def flush(self) -> None:
        self._sink.flush()

    def _line(self, level: str, event: str, fields: dict[str, Any]) -> bytes:
        """The encoded line; b"" when below the level."""
        if LEVELS[level] < self.threshold:
            return b""
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._sec, self._prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        record = {"ts": f"{self._prefix}.{int(t % 1 * 1000):03d}Z", "level": level, "component": self.component,
                  "event": event, **self.context, **fields}
        if self.encode is not json_line:
            try:
                return self.encode(record)
            except (TypeError, ValueError):  # e.g. orjson and an int beyond 64 bits: the stdlib copes
                pass
        try:
            return json_line(record)
        except (TypeError, ValueError):  # e.g. a circular structure: say so rather than crash
            return json_line({k: record[k] for k in ("ts", "level", "component", "event")} | {"log_error": "unencodable fields"})

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def get_logger(component: str, *, encode: Encoder | None = None, **context: Any) -> Logger:
    import os

    return Logger(component, level=os.environ.get("KMS_LOG_LEVEL", "info").lower(), encode=encode, **context)
