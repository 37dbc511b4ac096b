"""Which KMS key names may become file names. Pure; no I/O.

The rule (ARCHITECTURE "Files on disk"): a key is skipped, with a warning that names the key and
never its value, when it is empty, `.` or `..`, contains `/`, `\\` or NUL, starts with `..`
(that prefix is reserved for the writer's own `..data` and timestamped version folders), or is
longer than 255 bytes in UTF-8 (the Linux NAME_MAX), or is not valid UTF-8 text (a lone surrogate
from JSON `\ud800` cannot be encoded as a file name).
"""

from __future__ import annotations

NAME_MAX = 255
_DISPLAY_MAX = 120


def unsafe_key_reason(key: str) -> str | None:
    """None when `key` is a safe single file name, else a short reason (never containing a value)."""
    if not isinstance(key, str):
        return "key is not a string"
    if key == "":
        return "empty name"
    if key in (".", ".."):
        return "name is . or .."
    if "\x00" in key:
        return "contains NUL"
    if "/" in key:
        return "contains /"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith(".."):
        return "starts with .. (reserved for the writer's ..data and version folders)"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no file name can hold it
        return "not valid UTF-8 text (holds a lone surrogate)"
    if size > NAME_MAX:
        return f"longer than {NAME_MAX} bytes ({size} bytes in UTF-8)"
    return None


def display_key(key: str) -> str:
    """A key name shortened for logs (a hostile key can be megabytes long)."""
    if len(key) <= _DISPLAY_MAX:
        return key
    return f"{key[:_DISPLAY_MAX]}...({len(key)} chars)"
