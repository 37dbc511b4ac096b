"""Audit trail: one JSON line per secret read (and write): who read which folder, from where,
with what outcome. Never a value, a token or a client secret."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .model import iso_now


class AuditLog:
    def __init__(self, path: str | Path | None = None, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path else None
        self._stream = stream
        self._file: TextIO | None = None
        self.lines = 0

    def _out(self) -> TextIO:
        if self.path is not None:
            if self._file is None:
                self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # line-buffered
            return self._file
        return self._stream or sys.stderr

    def write(self, action: str, *, identity: str | None, project: str | None, environment: str | None,
              path: str | None, client: str | None, status: int, user_agent: str | None = None, **extra: Any) -> None:
        # user_agent: the agent names its pod there (kms-injector-agent/V (pod=NS/NAME)), as KMS records it
        record = {"ts": iso_now(), "component": "dev-kms", "event": "audit", "action": action, "identity": identity,
                  "project": project, "environment": environment, "path": path, "client": client,
                  "user_agent": user_agent, "status": status, **extra}
        try:
            out = self._out()
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            out.flush()
            self.lines += 1
        except (OSError, ValueError):  # an audit sink failing must not take the dev server down
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
