"""Kubernetes auth for the dev KMS: verify a service-account JWT (RS256) against a configured
public key, its audience, expiry and (optionally) the identity's allowed service accounts.

The real KMS asks the cluster's TokenReview API; the dev server checks the signature itself so
tests can mint tokens with their own key pair. Error messages name the failed check, never the token.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import time
from typing import Any


class JwtError(ValueError):
    pass


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, TypeError):
        raise JwtError("the JWT is not valid base64url") from None


def verify_rs256(token: str, public_key_pem: str, *, audience: str | None, now: float | None = None,
                 leeway: float = 5.0) -> dict[str, Any]:
    """Claims of a valid token; JwtError naming the failed check otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("the JWT must have three dot-separated parts")
    try:
        header = json.loads(_b64(parts[0]))
        claims = json.loads(_b64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise JwtError("the JWT header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("the JWT header and payload must be JSON objects")
    if header.get("alg") != "RS256":
        raise JwtError(f"unsupported JWT alg {header.get('alg')!r}; accepted: RS256")
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise JwtError("the configured kubernetes public key is not a valid PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise JwtError("the configured kubernetes public key is not an RSA key")
    try:
        key.verify(_b64(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise JwtError("the JWT signature does not verify against the configured public key") from None
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise JwtError("the JWT has no numeric exp claim")
    if now > exp + leeway:
        raise JwtError("the JWT has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and now + leeway < nbf:
        raise JwtError("the JWT is not valid yet (nbf)")
    if audience is not None:
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if audience not in auds:
            raise JwtError(f"the JWT audience does not include {audience!r}")
    return claims


def subject_allowed(claims: dict[str, Any], allowed: list[str]) -> bool:
    """`allowed` holds "namespace:name" globs; empty = any service account."""
    if not allowed:
        return True
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith("system:serviceaccount:"):
        return False
    ns_name = sub[len("system:serviceaccount:"):]
    return any(fnmatch.fnmatchcase(ns_name, a) for a in allowed)
