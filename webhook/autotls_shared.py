"""What the webhook's auto TLS (webhook/autotls.py) and the relay's (relay/autotls.py) share: the
Secret's content, parsed (type kubernetes.io/tls plus `ca.crt`/`ca.key`), and the tick loop.

Apart from webhook/autotls.py so the relay, which only reads this Secret, uses them without
importing webhook/kube.py's kubernetes-asyncio (~55 MiB of RSS).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from webhook import certs

ISSUED_AT = "kms.hanzo.ai/leaf-issued-at"


@dataclass(frozen=True)
class Material:
    """The Secret's TLS content. ca_cert is the current CA; previous_ca only during a rotation."""

    leaf: certs.KeyPair
    ca: certs.KeyPair
    previous_ca: bytes | None = None
    leaf_issued_at: dt.datetime | None = None

    def bundle(self) -> bytes:
        return certs.ca_bundle(self.ca.cert_pem, self.previous_ca)


def material_from_secret(secret: dict | None) -> Material | None:
    """Parse our Secret; None when absent or unusable (then it is made anew)."""
    if not secret:
        return None
    data = secret.get("data") or {}
    try:
        raw = {k: base64.b64decode(v) for k, v in data.items() if isinstance(v, str)}
        cas = certs.split_pem_bundle(raw.get("ca.crt", b""))
        ca = certs.KeyPair(cas[0], raw["ca.key"])
        leaf = certs.KeyPair(raw["tls.crt"], raw["tls.key"])
        if not certs.key_matches_cert(ca.cert_pem, ca.key_pem):
            return None
    except (KeyError, IndexError, ValueError):
        return None
    issued = None
    ann = ((secret.get("metadata") or {}).get("annotations") or {}).get(ISSUED_AT)
    if ann:
        try:
            issued = dt.datetime.fromisoformat(ann.replace("Z", "+00:00"))
        except ValueError:
            issued = None
    return Material(leaf=leaf, ca=ca, previous_ca=cas[1] if len(cas) > 1 else None, leaf_issued_at=issued)


async def run_every(step: Callable[[], Awaitable[None]], tick: float, stop: asyncio.Event,
                    on_error: Callable[[Exception], None]) -> None:
    """step() now, then every `tick` seconds until `stop` is set. A failed step (API down, bad
    config) goes to on_error and is retried next tick: the caller keeps serving what it has."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - CancelledError is not an Exception: it ends the loop
            on_error(exc)
        try:
            async with asyncio.timeout(tick):
                await stop.wait()
        except TimeoutError:
            pass


def write_pair(cert_dir: Path, pair: certs.KeyPair) -> None:
    """Atomically replace tls.key then tls.crt (each via rename); the reloader checks they match."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name, data, mode in (("tls.key", pair.key_pem, 0o600), ("tls.crt", pair.cert_pem, 0o644)):
        tmp = cert_dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cert_dir / name)
