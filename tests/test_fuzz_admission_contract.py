"""Fuzz targets (issue 6 item 6) that extend tests/test_mutate_properties.py (same strategies and
the same KMS_FUZZ_EXAMPLES budget: 200 in `make test`, 20,000 in `make fuzz`):

1. review() on pods whose annotations carry hostile values for EVERY annotation (wrong JSON types,
   traversal, NUL, 10 KB, URLs with credentials): every patch stays inside the contract
   (check_patch_contract), refusals are short and never echo credentials.
2. The real HTTPS server's /mutate handler on arbitrary bytes: valid reviews, reviews cut or with
   bytes flipped, random JSON, odd content types. Never a 500, never a dropped answer, always a
   JSON body; 200 answers echo the uid and their patches stay inside the contract.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from webhook.annotations import KNOWN
from webhook.mutate import review
from webhook.settings import Settings

from .reliability_support import P, WebhookProcess, assert_no_leaks, check_patch_contract
from .test_mutate_properties import SETTINGS, bodies

EXAMPLES = int(os.environ.get("KMS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
SECRET = "FUZZCRED-0b7e41"  # put into URLs as password / token: must never come back

ALL_KEYS = list(KNOWN) + ["path-db", "path-..", "path-a/b", "template-app.env", "template-../x", "template-..data",
                          "image", "agent-image", "x-unknown"]
hostile_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["..", "/..", "/chat/../iam", "\x00", "/chat\x00", "A" * 10_240, "${../../etc/passwd}", "file:///etc/passwd",
                     f"https://u:{SECRET}@kms.hanzo.ai/api", f"https://kms.hanzo.ai/api?token={SECRET}", "0777", "SIGKILL",
                     "/", "/etc", "-1", "1e999", "1Ei", "99999999999999999999", " ", "\n", "true", "false", "native"]),
    st.integers(), st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def hostile_bodies(draw):
    body = draw(bodies())
    obj = body["request"].get("object")
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        ann = obj["metadata"].get("annotations")
        ann = dict(ann) if isinstance(ann, dict) else {}
        for key in draw(st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=4, unique=True)):
            ann[P + key] = draw(hostile_values)
        obj["metadata"]["annotations"] = ann
    return body


def _check(body: dict, out: dict, s: Settings) -> str:
    resp = out["response"]
    req = body["request"]
    assert resp["uid"] == (req.get("uid") if isinstance(req.get("uid"), str) else "")
    if not resp["allowed"]:
        assert "patch" not in resp
        status = resp["status"]
        assert status["code"] in (400, 403), status
        assert 0 < len(status["message"]) < 1000 and "\x00" not in status["message"]
        return "refused"
    if "patch" in resp:
        check_patch_contract(req["object"], json.loads(base64.b64decode(resp["patch"])), s)
        return "patched"
    return "allowed"


@FUZZ
@given(body=st.one_of(hostile_bodies(), bodies()), which=st.integers(0, len(SETTINGS) - 1))
def test_fuzz_review_patches_stay_inside_the_contract(body, which):
    s = SETTINGS[which]
    result = review(body, s)
    assert result.internal_error == "", result.message
    event(_check(body, result.response, s))
    assert_no_leaks({"response": json.dumps(result.response)}, {"credential in URL": SECRET})


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    w = WebhookProcess.start(tmp_path_factory.mktemp("fuzz-webhook"), "--max-body-bytes", str(256 * 1024))
    conn = w.connection()
    yield w, [conn]
    conn.close()
    w.stop()


@st.composite
def raw_requests(draw):
    body = draw(st.one_of(hostile_bodies(), bodies()))
    data = json.dumps(body).encode()
    how = draw(st.sampled_from(["valid"] * 4 + ["cut", "flip", "random", "bytes", "huge"]))
    if how == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    elif how == "random":
        data = json.dumps(draw(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                                            lambda x: st.one_of(st.lists(x, max_size=3), st.dictionaries(st.text(max_size=6), x, max_size=3)),
                                            max_leaves=10))).encode()
    elif how == "bytes":
        data = draw(st.binary(max_size=200))
    elif how == "huge":
        data = data + b" " * (256 * 1024)
    ctype = draw(st.sampled_from(["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain", "", None]))
    event(how)
    return body, data, ctype


@FUZZ
@given(req=raw_requests())
def test_fuzz_https_handler_never_500s_and_patches_stay_inside_the_contract(webhook, req):
    w, conns = webhook
    body, data, ctype = req
    status, raw = w.post(conns[0], data, ctype)
    if status == 413:  # the server may close a connection whose body it did not read
        conns[0].close()
        conns[0] = w.connection()
    assert status in (200, 400, 413, 415), (status, raw[:300])
    out = json.loads(raw)
    event(f"http {status}")
    if status != 200:
        assert out["kind"] == "Status" and out["code"] == status and 0 < len(out["message"]) < 1000
        return
    assert out["kind"] == "AdmissionReview"
    if json.loads(data) == body:  # the body arrived intact: the answer is exactly review()'s
        _check(body, out, Settings())
    assert_no_leaks({"response": raw}, {"credential in URL": SECRET})


def test_fuzz_server_log_clean_after_the_run(webhook):
    """Runs after the fuzz target in this module: no internal errors were logged, no credentials."""
    w, _ = webhook
    lines = [json.loads(x) for x in w.log().splitlines() if x.startswith("{")]
    assert [r for r in lines if r.get("event") == "admission"], "the fuzz target sent nothing"
    assert not [r for r in lines if r.get("level") == "error"], [r for r in lines if r.get("level") == "error"][:3]
    assert_no_leaks({"webhook log": w.log()}, {"credential in URL": SECRET})
