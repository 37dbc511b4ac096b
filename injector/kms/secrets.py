"""PURE: validate a `GET /v3/secrets/raw` answer and merge it into {key: value}.

Merge order: imports first, in the order the server lists them, each later import overriding
earlier ones (the Infisical CLI's rule: it walks imports last to first and keeps the first value
it sees), then the folder's own secrets, which win over every import.

Validation errors name the field (`imports[0].secrets[2].secretValue`), never a value. One
malformed entry is skipped (reported with its key, never its value); the rest is delivered.
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


@dataclass
class Skipped:
    """An entry left out because it is malformed. `key` is its name when it has a usable one."""

    where: str  # e.g. "imports[0].secrets[2]"
    key: str
    problem: str


@dataclass
class ParsedFolder:
    """A validated list-secrets answer: the merged folder plus what had to be left out."""

    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    skipped: list[Skipped] = field(default_factory=list)
    # No entry at all, in the folder or any import: the server's answer for a path that does not
    # exist (Infisical answers 200 with empty lists), or a truly empty folder.
    empty: bool = True
    project_id: str = ""  # the project's id as the server named it (`workspace`), "" if not seen


_TYPED = (("version", (int,)), ("type", (str,)), ("secretPath", (str,)), ("workspace", (str,)))


def _secret_list(items: Any, where: str, out: dict[str, str], parsed: ParsedFolder) -> None:
    if not isinstance(items, list):
        raise ShapeError(where, "is missing or not a list")
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        parsed.empty = False
        if not isinstance(item, dict):
            parsed.skipped.append(Skipped(at, "", "is not an object"))
            continue
        key = item.get("secretKey")
        if not isinstance(key, str) or not key:
            parsed.skipped.append(Skipped(at, key if isinstance(key, str) else "", "has no secretKey (missing, empty or not a string)"))
            continue
        value = item.get("secretValue")
        if not isinstance(value, str):
            parsed.skipped.append(Skipped(at, key, "secretValue is missing or not a string"))
            continue
        if item.get("secretValueHidden") is True:
            raise HiddenValue(f"{at}.secretValue", key)
        bad = [name for name, types in _TYPED
               if (v := item.get(name)) is not None and (not isinstance(v, types) or isinstance(v, bool))]
        if bad:
            parsed.skipped.append(Skipped(at, key, f"{bad[0]} has the wrong type"))
            continue
        ws = item.get("workspace")
        if not parsed.project_id and isinstance(ws, str) and 0 < len(ws) <= 200 and not any(c in ws for c in "\r\n\x00"):
            parsed.project_id = ws
        out[key] = value


def parse_folder(data: Any, include_imports: bool = True) -> ParsedFolder:
    """Validated, merged folder of a list-secrets answer (see module doc for the order).

    One malformed entry (empty secretKey, wrong types) is left out and reported in `skipped`;
    the rest is delivered. A body that is not the documented shape raises ShapeError."""
    if not isinstance(data, dict):
        raise ShapeError("(body)", "is not a JSON object")
    parsed = ParsedFolder()
    own: dict[str, str] = {}
    _secret_list(data.get("secrets"), "secrets", own, parsed)
    merged: dict[str, str] = {}
    imports = data.get("imports")
    if include_imports and imports is not None:
        if not isinstance(imports, list):
            raise ShapeError("imports", "is not a list")
        for i, imp in enumerate(imports):
            parsed.empty = False  # an import is configured: the folder exists
            if not isinstance(imp, dict):
                parsed.skipped.append(Skipped(f"imports[{i}]", "", "is not an object"))
                continue
            _secret_list(imp.get("secrets"), f"imports[{i}].secrets", merged, parsed)
    merged.update(own)
    parsed.secrets = merged
    return parsed


def parse_secrets(data: Any, include_imports: bool = True) -> dict[str, str]:
    """Validated, merged {key: value} of a list-secrets answer (malformed entries left out)."""
    return parse_folder(data, include_imports).secrets


def parse_secret(data: Any) -> tuple[str, str]:
    """(key, value) of a single-secret answer (`GET|POST|PATCH|DELETE /v3/secrets/raw/{name}`)."""
    if not isinstance(data, dict) or not isinstance(data.get("secret"), dict):
        raise ShapeError("secret", "is missing or not an object")
    parsed = ParsedFolder()
    out: dict[str, str] = {}
    _secret_list([data["secret"]], "secret", out, parsed)
    if parsed.skipped:
        raise ShapeError(parsed.skipped[0].where, parsed.skipped[0].problem)
    ((key, value),) = out.items()
    return key, value


def local_etag(secrets: dict[str, str]) -> str:
    """An ETag for servers that send none: sha256 of the canonical JSON of the merged folder.

    It is kept in memory only, to detect "unchanged"; it is never sent to the server.
    """
    import hashlib

    canonical = json.dumps(secrets, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); hashing must not fail on it.
    return LOCAL_ETAG_PREFIX + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
