"""The agent's credential files: which they are, a digest of their content, and a watch that
reports when that content changes (kubelet swaps a Secret volume's `..data` symlink).

The digest is SHA-256 from CPython's built-in module: `hashlib` would load OpenSSL's libcrypto
for it, 3.7 MiB of resident memory in a sidecar that otherwise never needs it (measured, see
bench/README.md). The digest is never logged and never persisted as is (injector.refusals salts
it).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from injector.config import AgentConfig


def _builtin_sha256() -> Any:
    for name in ("_sha256", "_sha2"):  # CPython's own SHA-256 module: 3.11, then 3.12+
        try:
            return importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
    from hashlib import sha256  # other interpreters

    return sha256


sha256 = _builtin_sha256()

WATCH_RECHECK = 10.0  # seconds between digest re-checks when no file event arrives


def credential_files(config: AgentConfig) -> list[str]:
    if config.auth == "kubernetes":
        return [config.token_path]
    return [os.path.join(config.credentials_dir, "clientId"), os.path.join(config.credentials_dir, "clientSecret")]


def fingerprint(paths: list[str]) -> bytes:
    """A digest of the files' content (a missing file counts as a distinct content)."""
    h = sha256()
    for p in paths:
        try:
            with open(p, "rb") as fh:
                h.update(sha256(fh.read()).digest())
        except OSError:
            h.update(b"\x00missing")
    return h.digest()


def digest(data: bytes) -> bytes:
    return sha256(data).digest()


async def watch_credentials(files: list[str], last: bytes, on_change: Callable[[bytes], None],
                            recheck: float = WATCH_RECHECK) -> None:
    """Call `on_change(new_digest)` whenever the files' content differs from the previous digest.

    `last` is the digest the agent's first login read: the watch may start later, and a change
    made in between is still reported on its first pass. Watches the files' directories
    (injector.filewatch): kubelet's rename of `..data` changes the directory, never the files'
    inodes. The digest is also re-checked every `recheck` seconds, which covers a change made
    while the watch was being registered."""
    from injector.filewatch import changes

    dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in files})
    events = aiter(changes(dirs, recheck=recheck))
    while True:
        current = fingerprint(files)
        if current != last:
            last = current
            on_change(current)
        await anext(events)
