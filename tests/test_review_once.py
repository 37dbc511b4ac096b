"""The server extracts a review's input once and hands it to the cache key and to review()
(issue 13, performance): review() given that input answers exactly as review() alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from webhook.mutate import review
from webhook.review_input import review_input
from webhook.review_cache import ReviewCache

from .test_mutate_properties import FUZZ, SETTINGS, bodies

FIXTURES = Path(__file__).parent / "fixtures" / "admission"


def _all(r) -> tuple:
    return r.response, r.decision, r.uid, r.namespace, r.pod, list(r.warnings or ()), r.message, r.internal_error


def test_review_with_the_input_answers_as_review_alone_on_the_fixtures() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        for settings in SETTINGS:
            alone = review(copy.deepcopy(doc), settings)
            body = copy.deepcopy(doc)
            given_input = review(body, settings, review_input(body))
            assert _all(given_input) == _all(alone), path.name


@given(body=bodies(), which=st.integers(0, len(SETTINGS) - 1))
@FUZZ
def test_fuzz_review_with_the_input_answers_as_review_alone(body, which) -> None:
    settings = SETTINGS[which]
    alone = review(copy.deepcopy(body), settings)
    b = copy.deepcopy(body)
    assert _all(review(b, settings, review_input(b))) == _all(alone)


def test_the_cache_keys_the_same_input_review_gets() -> None:
    doc = json.loads((FIXTURES / "deployment-pod-generatename-signal.json").read_text())
    cache = ReviewCache()
    inp = review_input(doc)
    key = cache.key(inp, 1000)
    assert key is not None and cache.key(review_input(copy.deepcopy(doc)), 1000) == key
    assert cache.key(inp, cache.max_entry + 1) is None  # a body over the entry limit is never keyed
