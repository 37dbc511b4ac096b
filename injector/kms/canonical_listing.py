"""PURE: how the canonical KMS API names things and lists them: folder sub-paths, the names each
surface cannot address, a route that is missing (not a JSON "not found"), and the folder's own
entries from either surface's recursive listing. The client is injector.kms.canonical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from injector.kms.errors import BadResponse, ListUnavailable
from injector.kms.http import Response

CURRENT, OLDER = "current", "older"
KEYS_ANNOTATION = "kms.hanzo.ai/keys"
_OLDER_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def sub_path(path: str) -> str:
    """The folder path without its leading and trailing '/': '/a/b' -> 'a/b', '/' -> ''."""
    return "/".join(p for p in path.split("/") if p)


def unaddressable(name: str, surface: str) -> str | None:
    """Why the server cannot address key `name` on `surface` (None: it can)."""
    if not name or name in (".", ".."):
        return "the server refuses an empty, '.' or '..' segment"
    if "/" in name:
        return "a '/' in a name would address another folder"
    if surface == OLDER:
        if not _OLDER_SEGMENT.fullmatch(name):
            return "the older canonical API takes only [A-Za-z0-9._-] in a name"
        return None
    if CONTROL_CHARS.search(name):
        return "the server refuses control characters in a name"
    try:
        if len(name.encode("utf-8")) > 253:
            return "the server takes names of at most 253 bytes"
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    return None


def route_missing(resp: Response) -> bool:
    if resp.status == 405:
        return True
    if resp.status != 404:
        return False
    try:
        data = resp.json()
    except ValueError:
        return True  # Go's mux: "404 page not found" as text
    return not (isinstance(data, dict) and isinstance(data.get("message"), str))


@dataclass
class Entry:
    name: str
    version: Any = None  # older surface only



def folder_of(entry_path: Any) -> str | None:
    if not isinstance(entry_path, str):
        return None
    return "/" + sub_path(entry_path)


def current_entries(data: Any, path: str, where: dict[str, Any]) -> list[Entry]:
    """The folder's own names from a current-surface listing (recursive: filter by `path`)."""
    if not isinstance(data, dict):
        raise BadResponse("listing is not a JSON object", status=200, **where)
    want = "/" + sub_path(path)
    items = data.get("secrets")
    if isinstance(items, list) and all(isinstance(i, dict) for i in items) and (items or not data.get("names")):
        out = []
        for item in items:
            name = item.get("name")
            if not isinstance(name, str):
                continue  # malformed row: nothing we could read by
            folder = folder_of(item.get("path"))
            if folder is None or folder == want:
                out.append(Entry(name))
        return out
    names = data.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadResponse("field names is missing or not a list of strings (and no secrets list)", status=200, **where)
    return [Entry(n) for n in names]


def older_entries(data: Any, path: str, where: dict[str, Any]) -> list[Entry]:
    """The folder's own names and versions from an older-surface listing (recursive, by prefix)."""
    if not isinstance(data, dict) or not isinstance(data.get("secrets"), list):
        raise BadResponse("field secrets is missing or not a list", status=200, **where)
    if data.get("truncated") is True:
        # Keys missing from a cut listing would be deleted from the mount: refuse, keep the files.
        raise ListUnavailable(f"the listing was cut at {len(data['secrets'])} rows (the server's cap); name the keys "
                              f"in the annotation {KEYS_ANNOTATION} (comma list)", status=200, **where)
    want = "/" + sub_path(path)
    out = []
    for item in data["secrets"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        if folder_of(item.get("path")) not in (want, None):
            continue
        version = item.get("version")
        if isinstance(version, bool) or not isinstance(version, (int, str)):
            version = None  # no usable change signal for this row: it is read every poll
        out.append(Entry(item["name"], version))
    return out
