"""Body and query validation as the Infisical servers do it (zod): a failure is one error whose
`message` is the list of zod issues, in schema order (fixtures 20, 21, 28, 32)."""

from __future__ import annotations

from typing import Any

MISSING = object()


class Issues(Exception):
    def __init__(self, issues: list[dict]) -> None:
        super().__init__("validation failed")
        self.issues = issues


def received(value: Any) -> str:
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def type_issue(path: list, expected: str, value: Any) -> dict:
    got = received(value)
    return {"code": "invalid_type", "expected": expected, "received": got, "path": path,
            "message": "Required" if got == "undefined" else f"Expected {expected}, received {got}"}


def enum_issue(path: list, options: list[str], value: Any) -> dict:
    opts = " | ".join(f"'{o}'" for o in options)
    return {"received": value, "code": "invalid_enum_value", "options": options, "path": path,
            "message": f"Invalid enum value. Expected {opts}, received '{value}'"}


def size_issue(path: list, kind: str, bound: int) -> dict:
    if kind == "too_small":
        return {"code": "too_small", "minimum": bound, "type": "array", "inclusive": True, "exact": False,
                "message": f"Array must contain at least {bound} element(s)", "path": path}
    return {"code": "too_big", "maximum": bound, "type": "array", "inclusive": True, "exact": False,
            "message": f"Array must contain at most {bound} element(s)", "path": path}


# a field spec: (name, expected type, required, nullable); expected in string|boolean|array|number|object
Spec = tuple[str, str, bool, bool]

_PY = {"string": (str,), "boolean": (bool,), "array": (list,), "number": (int, float), "object": (dict,)}


def check(body: dict, specs: list[Spec], path: list | None = None) -> list[dict]:
    """Issues for `body` against `specs`, in spec order (zod reports every failing field)."""
    out = []
    for name, expected, required, nullable in specs:
        value = body.get(name, MISSING)
        if value is MISSING:
            if required:
                out.append(type_issue([*(path or []), name], expected, value))
            continue
        if value is None:
            if not nullable:
                out.append(type_issue([*(path or []), name], expected, value))
            continue
        ok = isinstance(value, _PY[expected]) and not (expected == "number" and isinstance(value, bool))
        if not ok:
            out.append(type_issue([*(path or []), name], expected, value))
    return out


def enum_query(query: Any, names: list[str], options: list[str] | None = None) -> list[dict]:
    options = options or ["true", "false"]
    return [enum_issue([n], options, query[n]) for n in names if n in query and query[n] not in options]
