#!/usr/bin/env python3
"""Example app: reads a /kms/secrets-style folder and reloads it on SIGHUP.

    python examples/app.py [DIR]        (or env KMS_SECRETS_DIR; default /kms/secrets)

It prints the key names and a short hash of the content, never a value:

    app: loaded 4 keys [API_KEY, DATABASE_URL, ...] sha256=3f2a9c1b7d0e (start)
    app: reload #1 on SIGHUP: 4 keys [...] sha256=91bc... (changed)

It names its process `kms-demo-app` (/proc/PID/comm) so an agent can signal it by name,
as `kms.hanzo.ai/signal-process` does in a pod. SIGTERM/SIGINT exit 0.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys

PROCESS_NAME = os.environ.get("KMS_APP_NAME", "kms-demo-app")


def set_process_name(name: str) -> None:
    """prctl(PR_SET_NAME): what `ps -o comm` and /proc/PID/comm show (Linux; best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def read_folder(root: str) -> dict[str, bytes]:
    """Every visible file under root (KEY, NAME/KEY); `..data` and version dirs are skipped."""
    out: dict[str, bytes] = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return out
    for name in entries:
        if name.startswith(".."):
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path):
            for rel, data in read_folder(path).items():
                out[f"{name}/{rel}"] = data
            continue
        try:
            with open(path, "rb") as fh:
                out[name] = fh.read()
        except OSError:
            continue
    return out


def digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:12]


def describe(files: dict[str, bytes]) -> str:
    names = ", ".join(sorted(files))
    return f"{len(files)} keys [{names}] sha256={digest(files)}"


def main(argv: list[str]) -> int:
    root = argv[1] if len(argv) > 1 else os.environ.get("KMS_SECRETS_DIR", "/kms/secrets")
    set_process_name(PROCESS_NAME)
    waited = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    # Block and sigwait(): every reload happens in the main flow, no handler races.
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    files = read_folder(root)
    last = digest(files)
    print(f"app: pid={os.getpid()} reading {root}", flush=True)
    print(f"app: loaded {describe(files)} (start)", flush=True)
    reloads = 0
    while True:
        sig = signal.sigwait(waited)
        if sig != signal.SIGHUP:
            print(f"app: {signal.Signals(sig).name}, exiting after {reloads} reloads", flush=True)
            return 0
        reloads += 1
        files = read_folder(root)
        now = digest(files)
        what = "changed" if now != last else "same content"
        last = now
        print(f"app: reload #{reloads} on SIGHUP: {describe(files)} ({what})", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
