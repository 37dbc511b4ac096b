"""Structured JSON-line logs on stderr.

One line per event: {"ts": ..., "level": ..., "component": ..., "event": ..., **fields}.
Callers pass key names, paths, statuses, never secret values, tokens or client secrets. Stdlib
only: this sits on the agent's start-up path.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, component: str, stream: TextIO | None = None, level: str = "info", **context: Any) -> None:
        self.component = component
        self.stream = stream
        self.threshold = LEVELS.get(level, 20)
        self.context = context

    def bind(self, **context: Any) -> "Logger":
        child = Logger(self.component, self.stream, **{**self.context, **context})
        child.threshold = self.threshold
        return child

    def log(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        t = time.time()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
            "level": level,
            "component": self.component,
            "event": event,
            **self.context,
            **fields,
        }
        stream = self.stream or sys.stderr
        try:
            stream.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
            stream.flush()
        except (OSError, ValueError):  # closed pipe: logging must never take the process down
            pass

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def get_logger(component: str, **context: Any) -> Logger:
    import os

    return Logger(component, level=os.environ.get("KMS_LOG_LEVEL", "info").lower(), **context)
