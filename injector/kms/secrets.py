"""PURE: validate a `GET /v3/secrets/raw` answer and merge it into {key: value}.

Merge order: imports first, in the order the server lists them, each later import overriding
earlier ones (the Infisical CLI's rule: it walks imports last to first and keeps the first value
it sees), then the folder's own secrets, which win over every import.

Validation errors name the field (`imports[0].secrets[2].secretValue`), never a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

LOCAL_ETAG_PREFIX = "local:"  # an ETag we computed ourselves; never sent to the server


class ShapeError(ValueError):
    """The response does not have the documented shape. `field` names where."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name} {problem}")
        self.field = field_name


@dataclass
class FetchResult:
    """One fetch. On not_modified, `secrets` is empty: keep what you already have."""

    not_modified: bool
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    etag: str | None = None

    def __repr__(self) -> str:  # key names only, never values
        return f"FetchResult(not_modified={self.not_modified}, keys={sorted(self.secrets)}, etag={self.etag!r})"


class HiddenValue(Exception):
    """The server hid a value (the identity may list secrets but not read their values)."""

    def __init__(self, field_name: str, key: str) -> None:
        super().__init__(field_name)
        self.field = field_name
        self.key = key


def _secret_list(items: Any, where: str) -> dict[str, str]:
    if not isinstance(items, list):
        raise ShapeError(where, "is missing or not a list")
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ShapeError(at, "is not an object")
        key = item.get("secretKey")
        if not isinstance(key, str) or not key:
            raise ShapeError(f"{at}.secretKey", "is missing or not a non-empty string")
        value = item.get("secretValue")
        if not isinstance(value, str):
            raise ShapeError(f"{at}.secretValue", "is missing or not a string")
        if item.get("secretValueHidden") is True:
            raise HiddenValue(f"{at}.secretValue", key)
        for name, types in (("version", (int,)), ("type", (str,)), ("secretPath", (str,))):
            v = item.get(name)
            if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
                raise ShapeError(f"{at}.{name}", "has the wrong type")
        out[key] = value
    return out


def parse_secrets(data: Any, include_imports: bool = True) -> dict[str, str]:
    """Validated, merged {key: value} of a list-secrets answer (see module doc for the order)."""
    if not isinstance(data, dict):
        raise ShapeError("(body)", "is not a JSON object")
    own = _secret_list(data.get("secrets"), "secrets")
    merged: dict[str, str] = {}
    imports = data.get("imports")
    if include_imports and imports is not None:
        if not isinstance(imports, list):
            raise ShapeError("imports", "is not a list")
        for i, imp in enumerate(imports):
            if not isinstance(imp, dict):
                raise ShapeError(f"imports[{i}]", "is not an object")
            merged.update(_secret_list(imp.get("secrets"), f"imports[{i}].secrets"))
    merged.update(own)
    return merged


def local_etag(secrets: dict[str, str]) -> str:
    """An ETag for servers that send none: sha256 of the canonical JSON of the merged folder.

    It is kept in memory only, to detect "unchanged"; it is never sent to the server.
    """
    import hashlib

    canonical = json.dumps(secrets, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); hashing must not fail on it.
    return LOCAL_ETAG_PREFIX + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
