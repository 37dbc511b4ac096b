"""The auto-TLS Secret's content, parsed (type kubernetes.io/tls plus `ca.crt`/`ca.key`).

Apart from webhook/autotls.py so the relay (relay/autotls.py), which only reads this Secret, parses
it without importing webhook/kube.py's kubernetes-asyncio (~55 MiB of RSS).
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

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
