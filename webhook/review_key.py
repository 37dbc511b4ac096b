"""The answer cache's key: the exact encoding of the review's input (webhook/review_input.py).

review() decides from that same input only, so requests with equal keys get equal answers but for
the uid, by construction. Every field of the input is encoded (a field added later is keyed too).
Only inputs worth caching get a key: envelope refusals, skipped kinds and operations, pods without
`kms.hanzo.ai/*` annotations (answered in a few µs) and odd shapes get None.
"""

from __future__ import annotations

from operator import attrgetter

import orjson

from webhook.review_input import ReviewInput, review_input

_fields = attrgetter(*ReviewInput.__slots__)  # every field, in order, as a tuple


def input_key(inp: ReviewInput, max_size: int) -> bytes | None:
    if inp.problem or inp.skip or not inp.ours or not inp.exact:
        return None
    try:
        raw = orjson.dumps(_fields(inp))
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits: just don't cache
        return None
    return raw if len(raw) <= max_size else None


def review_key(doc: dict, max_size: int) -> bytes | None:
    """Bytes equal for two requests only when review() gives them the same answer but for the uid.
    None: do not cache."""
    return input_key(review_input(doc), max_size)
