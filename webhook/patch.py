"""A tiny RFC 6902 applier for the ops mutate.py emits (`add`, `replace`), used by `inject`.

Pure and dependency-free: the webhook itself never applies patches (kube-apiserver does); the
offline `inject` command needs to, to print what the apiserver would store.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    pass


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer {pointer!r} must start with /")
    # RFC 6901: unescape ~1 before ~0.
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(token: str, length: int, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > length or (i == length and not allow_end):
        raise PatchError(f"index {i} is out of range (length {length})")
    return i


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Return a patched deep copy of `doc`; the input is never modified."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if kind not in ("add", "replace") or not isinstance(path, str) or "value" not in op:
            raise PatchError(f"unsupported operation {op.get('op')!r} at {path!r}; only add and replace")
        tokens = _tokens(path)
        value = copy.deepcopy(op["value"])
        if not tokens:
            out = value
            continue
        parent: Any = out
        for t in tokens[:-1]:
            if isinstance(parent, list):
                parent = parent[_index(t, len(parent), allow_end=False)]
            elif isinstance(parent, dict) and t in parent:
                parent = parent[t]
            else:
                raise PatchError(f"{path}: {t!r} does not exist")
        last = tokens[-1]
        if isinstance(parent, list):
            if kind == "add":
                parent.insert(_index(last, len(parent), allow_end=True), value)
            else:
                parent[_index(last, len(parent), allow_end=False)] = value
        elif isinstance(parent, dict):
            if kind == "replace" and last not in parent:
                raise PatchError(f"{path}: cannot replace a missing member")
            parent[last] = value
        else:
            raise PatchError(f"{path}: parent is not an object or array")
    return out
