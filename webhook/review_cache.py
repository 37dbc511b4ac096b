"""The webhook's answer cache: one review() per distinct input (webhook/review_key.py)."""

from __future__ import annotations

from typing import Any


class ReviewCache:
    """Answers already given, keyed by what decides them (webhook.review_key): the pods of one
    rollout or Job differ in their generated names, service-account volume, timestamps and labels,
    none of which review() reads, so a scale-up to N pods costs one review() and N-1 lookups.

    Settings are fixed until a reload, which clears this cache (WebhookState.swap_settings).
    The key is compared exactly (no digest to trust). Internal errors are never cached. Bounded
    LRU: at most `size` entries and `max_bytes` of keys and answers together; a request, key or
    answer over `max_entry` bytes is not cached at all.
    """

    def __init__(self, size: int = 512, max_bytes: int = 16 << 20, max_entry: int = 256 << 10) -> None:
        from collections import OrderedDict

        from webhook.review_key import input_key  # noqa: PLC0415 (lazy, like review(): keeps `--help` fast)

        self._input_key = input_key

        self.size = size
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self.entries: "OrderedDict[bytes, tuple[tuple, int]]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, inp: Any, body_size: int = 0) -> bytes | None:
        """The key of a review input (webhook.review_input), or None: do not cache."""
        return self._input_key(inp, self.max_entry) if body_size <= self.max_entry else None

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def get(self, key: bytes) -> tuple | None:
        hit = self.entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return hit[0]

    def put(self, key: bytes, value: tuple, answer_size: int) -> None:
        size = len(key) + answer_size
        if size > self.max_entry or key in self.entries:
            return
        self.entries[key] = (value, size)
        self.bytes += size
        while len(self.entries) > self.size or self.bytes > self.max_bytes:
            _, (_, old) = self.entries.popitem(last=False)
            self.bytes -= old
