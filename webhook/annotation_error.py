"""The refusal of an annotation, and how a value is shown in it (escaped, cut, never a credential)."""

from __future__ import annotations

import json
import re

PREFIX = "kms.hanzo.ai/"


class AnnotationError(ValueError):
    """A refused annotation. `code` is the HTTP-like status for the admission answer:
    400 for a malformed value, 403 for a value the cluster policy forbids."""

    def __init__(self, annotation: str, value: object, accepted: str, code: int = 400, message: str = "") -> None:
        self.annotation = annotation
        self.value = value
        self.accepted = accepted
        self.code = code
        shown = "" if value is None else show(value) + " "
        super().__init__(message or f"{show_key(annotation)}: {shown}is not accepted; {accepted}")


def show(value: object, limit: int = 64) -> str:
    """A value for a message: JSON-escaped (NUL, newlines visible), truncated with its length."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if "://" in value:  # any annotation may be handed a URL with a password or token in it
        value = _redact_url(value)
    if len(value) <= limit:
        return json.dumps(value)
    return json.dumps(value[:limit])[:-1] + f'..." ({len(value)} characters)'


_URL_USERINFO = re.compile(r"://\S*@")
_URL_QUERY = re.compile(r"([?#])\S*")


def _redact_url(value: str) -> str:
    """`x https://u:pw@h/p?t=1` -> `x https://***@h/p?***`: user info up to the last @ of the word
    (a careless password may hold a /), then query and fragment."""
    return _URL_QUERY.sub(r"\1***", _URL_USERINFO.sub("://***@", value))


def redact_userinfo(host: str) -> str:
    """Never echo a password or token put in a URL: `https://user:pw@h/?t=x` -> `https://***@h/?***`."""
    host = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", host)
    return re.sub(r"([?#]).*$", r"\1***", host)  # a query may carry a token too


def show_key(key: str) -> str:
    return key if len(key) <= 100 and key.isprintable() else show(key, 80)
