"""webhook.review_key: the answer cache's key. Two properties:
- sound: requests with equal keys get the same answer from review() but for the uid, whatever
  else differs between them (hypothesis edits any field of any request);
- useful: the pods of one rollout, as kube-apiserver sends them (own service-account volume,
  managedFields time, labels, userInfo), share one key, so a scale-up reviews once."""

from __future__ import annotations

import copy
import dataclasses
import json
import string
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from webhook.mutate import decide, review
from webhook.review_input import ReviewInput, review_input
from webhook.review_key import input_key, review_key
from webhook.app import _envelope_error
from webhook.settings import Settings

from .test_mutate_properties import FUZZ, SETTINGS, bodies, junk

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
MAX = 256 << 10


def _answer(doc: dict, settings: Settings) -> tuple:
    r = review(copy.deepcopy(doc), settings)
    response = {**r.response, "response": {**r.response["response"], "uid": ""}}
    return response, r.decision, r.namespace, len(r.warnings or ())


def replica(doc: dict, n: int) -> dict:
    """Another pod of the same ReplicaSet, as the apiserver would send it."""
    d = copy.deepcopy(doc)
    req = d["request"]
    req["uid"] = f"0000-{n}"
    req["userInfo"] = {"username": f"system:serviceaccount:kube-system:replicaset-controller-{n}"}
    pod = req["object"]
    meta = pod["metadata"]
    meta.setdefault("labels", {})["pod-template-hash"] = f"h{n}"
    meta.setdefault("annotations", {})[f"example.com/completion-index-{n}"] = str(n)
    for mf in meta.get("managedFields") or []:
        mf["time"] = f"2026-11-28T19:28:{n % 60:02d}Z"
    suffix = "".join(string.ascii_lowercase[(n * 7 + i) % 26] for i in range(5))
    for v in pod["spec"].get("volumes") or []:
        if v["name"].startswith("kube-api-access-"):
            v["name"] = "kube-api-access-" + suffix
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        for m in c.get("volumeMounts") or []:
            if m["name"].startswith("kube-api-access-"):
                m["name"] = "kube-api-access-" + suffix
    return d


def test_the_pods_of_a_rollout_share_one_key_and_one_answer() -> None:
    for f in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(f.read_text())
        key = review_key(doc, MAX)
        if not any(k.startswith("kms.hanzo.ai/") for k in doc["request"]["object"]["metadata"].get("annotations") or {}):
            assert key is None, f"{f.name}: a pod without our annotations is not worth a key"
            continue
        assert key is not None, f.name
        assert any(v["name"].startswith("kube-api-access-") for v in doc["request"]["object"]["spec"]["volumes"]), f.name
        for n in range(1, 4):
            other = replica(doc, n)
            assert review_key(other, MAX) == key, f"{f.name}: replica {n} got its own key"
            assert _answer(other, Settings()) == _answer(doc, Settings()), f.name


def test_what_review_reads_changes_the_key() -> None:
    doc = json.loads((FIXTURES / "deployment-pod-generatename-signal.json").read_text())
    key = review_key(doc, MAX)

    def edited(edit) -> bytes | None:
        d = copy.deepcopy(doc)
        edit(d["request"], d["request"]["object"]["metadata"], d["request"]["object"]["spec"])
        return review_key(d, MAX)

    edits = {
        "a kms annotation": lambda r, m, s: m["annotations"].update({"kms.hanzo.ai/signal": "SIGUSR1"}),
        "the image": lambda r, m, s: s["containers"][0].update(image="other:2"),
        "a mount path": lambda r, m, s: s["containers"][0]["volumeMounts"][0].update(mountPath="/kms/secrets"),
        "a volume named like ours": lambda r, m, s: s["volumes"][0].update(name="kms-secrets"),
        "the service account": lambda r, m, s: s.update(serviceAccountName="other"),
        "the namespace": lambda r, m, s: r.update(namespace="other"),
        "hostPID": lambda r, m, s: s.update(hostPID=True),
        "the operation": lambda r, m, s: r.update(operation="UPDATE"),
    }
    for what, edit in edits.items():
        assert edited(edit) != key, f"changing {what} kept the key"


def _paths(node: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON document (the root excluded)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(at + (k,))
        out.extend(_paths(v, at + (k,)))
    return out


@given(body=bodies(), which=st.integers(0, len(SETTINGS) - 1), data=st.data())
@FUZZ
def test_fuzz_equal_keys_mean_equal_answers(body, which, data) -> None:
    if _envelope_error(body) is not None or review_key(body, MAX) is None:
        return
    other = copy.deepcopy(body)
    for _ in range(data.draw(st.integers(1, 3))):  # edit, replace or delete anything but the envelope
        paths = [p for p in _paths(other) if len(p) > 2 and p[:2] != ("request", "uid")]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = other
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(st.one_of(junk, st.sampled_from(
                ["", "kms-secrets", "kube-api-access-zz9x2", "kms.hanzo.ai/path", "/kms/secrets", "/chat"])))
    other["request"]["uid"] = "another-uid"
    if review_key(other, MAX) == review_key(body, MAX):
        settings = SETTINGS[which]
        assert _answer(other, settings) == _answer(body, settings)


# -- sound by construction: one input decides and keys (issue 13 item 4) -----------------------------
def _strip(r) -> tuple:
    response = {**r.response, "response": {**r.response["response"], "uid": ""}}
    return response, r.decision, r.message, list(r.warnings or ())


@given(body=bodies(), which=st.integers(0, len(SETTINGS) - 1))
@FUZZ
def test_fuzz_review_decides_from_the_review_input_alone(body, which) -> None:
    settings = SETTINGS[which]
    inp = review_input(copy.deepcopy(body))
    assert _strip(review(copy.deepcopy(body), settings)) == _strip(decide(inp, settings))


def test_every_field_of_the_input_is_in_the_key() -> None:
    doc = json.loads((FIXTURES / "deployment-pod-generatename-signal.json").read_text())
    inp = review_input(doc)
    key = input_key(inp, MAX)
    assert key is not None and key == review_key(doc, MAX)
    changed = {"api_version": "admission.k8s.io/v1beta1", "namespace": "other", "uid_ok": False,
               "pod": {**inp.pod, "spec": {**inp.pod["spec"], "hostPID": True}}}
    for name in ReviewInput.__slots__:
        if name in changed:
            other = input_key(dataclasses.replace(inp, **{name: changed[name]}), MAX)
            assert other is not None and other != key, name
    # Inputs that are not worth (or not safe for) a key get none.
    for edit in ({"problem": "x"}, {"skip": "operation"}, {"ours": False}, {"exact": False}):
        assert input_key(dataclasses.replace(inp, **edit), MAX) is None, edit
