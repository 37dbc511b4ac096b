"""Refused credentials, remembered across restarts of the pod's agents (issue 12 item 9).

KMS locks an identity after 3 wrong logins in a row, for every pod sharing it. An agent tries the
same credentials at most twice (injector.backoff.AUTH_MAX_TRIES); kept only in memory, that count
restarted with every CrashLoopBackOff of the init container, and the sidecar spent two more. So
the count lives in a dotfile on the pod's memory volume, which the init container and the sidecar
share and which dies with the pod:

    <mount_path>/..kms-rejected    {"v": 1, "salt": hex, "digest": hex, "refusals": n, "at": unix time}

`digest` is SHA-256(salt + digest of the credential files): never the secret, and not a value an
app reading the volume could test guesses against without the salt being fresh per record. The
name starts with `..`, so the writer never links it as a key (it skips `..` names) and its repair
never removes it (it removes only `..data_tmp`, `..link_tmp` and version folders).
"""

from __future__ import annotations

import json
import os
import time

from injector.credentials import digest

FILE_NAME = "..kms-rejected"
_TMP_SUFFIX = ".tmp"


class RefusalMemory:
    """How often the current credentials were refused in a row, persisted in `directory`."""

    def __init__(self, directory: str, clock=time.time) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self.clock = clock
        self._record: dict | None = None
        self._loaded = False

    def _load(self) -> dict | None:
        if not self._loaded:
            self._loaded = True
            try:
                with open(self.path, encoding="utf-8") as fh:
                    data = json.load(fh)
                if isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("refusals"), int):
                    self._record = data
            except (OSError, ValueError):
                self._record = None
        return self._record

    def _matches(self, record: dict | None, fp: bytes) -> bool:
        if record is None:
            return False
        try:
            salt = bytes.fromhex(record["salt"])
        except (KeyError, TypeError, ValueError):
            return False
        return digest(salt + fp).hex() == record.get("digest")

    def recorded(self) -> bool:
        """True when some credentials' refusals are on record (read from the file once)."""
        return self._load() is not None

    def refusals(self, fp: bytes) -> tuple[int, float]:
        """(refusals in a row, unix time of the last one) for credentials with fingerprint `fp`."""
        record = self._load()
        if not self._matches(record, fp):
            return 0, 0.0
        assert record is not None
        at = record.get("at")
        return int(record["refusals"]), float(at) if isinstance(at, (int, float)) else 0.0

    def record(self, fp: bytes) -> int:
        """One more refusal of `fp`; returns the count. Persisted before returning (best effort:
        a read-only or missing volume leaves the count in memory only)."""
        count = self.refusals(fp)[0] + 1
        salt = os.urandom(16)
        self._record = {"v": 1, "salt": salt.hex(), "digest": digest(salt + fp).hex(), "refusals": count, "at": self.clock()}
        self._loaded = True
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            tmp = self.path + _TMP_SUFFIX
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(self._record).encode())
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError:
            pass
        return count

    def clear(self) -> None:
        """The credentials worked: forget every refusal (a no-op when nothing is recorded)."""
        if self._load() is None:
            return
        self._record = None
        try:
            os.unlink(self.path)
        except OSError:
            pass
