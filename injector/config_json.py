"""THE config JSON: how an AgentConfig dict is encoded (compact, sorted keys, ASCII) by
AgentConfig.to_json and by the webhook for every agent container, with the stdlib's encoder or,
where its bytes are the stdlib's, a faster one the webhook passes in (orjson). Not on the agent's
start-up path: the agent decodes its config, it never encodes one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from injector.config import AgentConfig

_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(AgentConfig) if f.type == "float")
_stdlib_encode: Any = None  # json.JSONEncoder(...).encode, made at the first use
FastDumps = Any  # Callable[[dict], bytes]: sorted keys, compact, UTF-8 (orjson.dumps with OPT_SORT_KEYS)


def dict_to_json(data: dict[str, Any], fast: FastDumps | None = None) -> str:
    """THE config JSON (compact, sorted keys, ASCII): AgentConfig.to_json's encoding, and the
    webhook's for every agent container. One encoding, produced by the stdlib's encoder, or by
    `fast` (the webhook passes orjson's sorted-keys dumps: several times faster; the agent, which
    imports only the standard library, never does) wherever its bytes are the stdlib's: this
    function decides where, so no caller has to mirror the rule (tests/test_config_encoder.py)."""
    if fast is not None and _orjson_safe(data):
        out = _fast_or_none(fast, data)
        if out is not None:
            return out
    return dict_to_json_stdlib(data)


def config_to_json(data: dict[str, Any], fast: FastDumps | None = None) -> str:
    """dict_to_json for a dict of AgentConfig.to_dict()'s shape (the webhook's hot path: two per
    pod): the same bytes, with a cheaper guard. validate() leaves strings only in the nested
    containers (sources, templates, command), so only the float fields need a look."""
    if fast is not None:
        for name in _FLOAT_FIELDS:
            v = data.get(name, 1.0)
            if type(v) is float and not (1e-4 <= abs(v) < 1e16 or v == 0.0):
                break
        else:
            out = _fast_or_none(fast, data)
            if out is not None:
                return out
    return dict_to_json_stdlib(data)


def dict_to_json_stdlib(data: dict[str, Any]) -> str:
    global _stdlib_encode
    if _stdlib_encode is None:
        import json  # lazily: not every agent start needs an encoder

        _stdlib_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
    return _stdlib_encode(data)


def _fast_or_none(fast: FastDumps, data: dict[str, Any]) -> str | None:
    try:
        out = fast(data)
    except (TypeError, ValueError):  # e.g. integers beyond 64 bits, which the stdlib writes
        return None
    # The stdlib escapes non-ASCII text and DEL as \uXXXX; orjson writes them raw.
    return out.decode("ascii") if out.isascii() and b"\x7f" not in out else None


_SCALARS = frozenset({str, int, bool, type(None)})


def _orjson_safe(data: Any) -> bool:
    """orjson writes what the stdlib writes, except: floats outside [1e-4, 1e16) (the two spell
    exponents differently) and non-finite ones (orjson writes null); non-ASCII and DEL text (the
    stdlib escapes it) is caught on the output, types orjson refuses by its TypeError. Anything
    but plain JSON types (subclasses, tuples) goes to the stdlib. Hot in the webhook: a config's
    containers hold strings, so one level is walked inline and deeper ones by recursion."""
    for v in data.values() if type(data) is dict else data:
        t = type(v)
        if t is float:
            if not (1e-4 <= abs(v) < 1e16 or v == 0.0):
                return False
        elif t is dict or t is list:
            for x in v.values() if t is dict else v:
                tx = type(x)
                if tx is str:
                    continue
                if tx is float:
                    if not (1e-4 <= abs(x) < 1e16 or x == 0.0):
                        return False
                elif tx is dict or tx is list:
                    if not _orjson_safe(x):
                        return False
                elif tx not in _SCALARS:
                    return False
        elif t not in _SCALARS:
            return False
    return True
