"""Hostile input, webhook side (issue 6 item 3): every annotation with wrong types, out-of-range
and injection-style values, image overrides, malformed AdmissionReviews, odd kinds, huge bodies,
wrong content types. Each goes through `mutate.review` AND through the real HTTPS server
(`kms-injector webhook` subprocess). Each is a clear refusal naming the annotation, or accepted
with a warning; never a 500; every patch returned is checked op by op against the contract
(tests/reliability_support.check_patch_contract); credentials put into URLs never come back."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path

import pytest

from webhook.annotations import KNOWN
from webhook.mutate import review
from webhook.settings import load_settings

from .reliability_support import P, WebhookProcess, assert_no_leaks, check_patch_contract

ALLOWED_HOST = "https://kms.hanzo.ai/api"
SETTINGS_DOC = {
    "allowed_hosts": [ALLOWED_HOST],
    "default_policy": "deny",
    "path_policies": [{"namespaces": ["hanzo"], "serviceAccounts": ["chat"], "projects": ["secrets-639-c"], "paths": ["/chat/**", "/chat"]}],
}
# Credentials an attacker (or a careless manifest) puts in annotations: never echoed anywhere.
CRED_MARKERS = {"url-password": "HOSTILEPW-91c2e7", "url-token": "HOSTILETOK-5d8a0b", "url-user": "HOSTILEUSER-33f1"}
TEN_KB = "A" * 10_240


def base_pod(annotations: dict | None = None, sa: str = "chat") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "chat-7d9f8c6b5-", "namespace": "hanzo", "labels": {"app": "chat"},
                     "annotations": {P + "path": "/chat", **(annotations or {})}},
        "spec": {
            "serviceAccountName": sa,
            "initContainers": [{"name": "migrate", "image": "ghcr.io/hanzoai/chat:1.0", "command": ["/app/migrate"],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "containers": [
                {"name": "chat", "image": "ghcr.io/hanzoai/chat:1.0", "command": ["/app/chat"],
                 "securityContext": {"runAsUser": 1000}, "ports": [{"containerPort": 8080}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "proxy", "image": "nginx:1.27"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def admission(pod: dict, kind: dict | None = None, operation: str = "CREATE", uid: str | None = None) -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()) if uid is None else uid, "kind": kind or {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "hanzo",
        "operation": operation, "object": pod, "dryRun": False}}


# -- the case table ------------------------------------------------------------------------------------
# (annotations, expectation, needle): "refuse" -> allowed false, message names `needle`;
# "warn" -> allowed, a patch inside the contract, a warning naming `needle`.

WRONG_TYPES = [7, True, None, ["x"], {"a": "b"}, 1.5]
FAMILY = ["path-db", "template-app.env"]

HOSTILE: dict[str, list[str]] = {
    "host": ["file:///etc/passwd", f"https://{CRED_MARKERS['url-user']}:{CRED_MARKERS['url-password']}@kms.hanzo.ai/api",
             f"https://kms.hanzo.ai/api?token={CRED_MARKERS['url-token']}", f"https://kms.hanzo.ai/api#{CRED_MARKERS['url-token']}",
             "http://evil.example.com/api", "http://kms.hanzo.svc.cluster.local.evil.com/api", "http://169.254.169.254/latest",
             "https://kms.hanzo.ai:0/api", "javascript:alert(1)", "gopher://kms.hanzo.ai/api", "//kms.hanzo.ai/api",
             "http://[::1/api", "", " ", "https://kms.hanzo.ai/api\r\nX-Evil: 1", TEN_KB, "https://kms.hanzo.ai/api\x00"],
    "path": ["..", "/..", "/../etc", "/chat/../iam", "/chat/..", "chat", "/chat\x00", "/chat/%2e%2e", "/$(id)",
             "/chat;rm -rf /", "/chat/\n/x", "/" + "a" * 600, TEN_KB, "/iam", "/commerce", "", "\\chat"],
    "project": ["../x", "a b", "", "\x00", TEN_KB, "$(id)", "-rf"],
    "env": ["../prod", "prod\x00", "", TEN_KB, "prod;dev"],
    "api": ["graphql", "", "AUTO\x00"],
    "auth": ["ldap", "", "universal\x00"],
    "auth-secret": ["../iam-kms-auth", "UPPER", "a/b", "", TEN_KB, "iam-kms-auth\x00"],
    "mode": ["privileged", "", "sidecar\x00", "host"],
    "refresh-interval": ["0", "1s", "4s", "-5s", "25h", "1e9", "NaN", "inf", "soon", "", "5x", TEN_KB],
    "init-timeout": ["0", "0.5s", "2h", "-1", "never"],
    "mount-path": ["/", "/etc", "/etc/ssl", "/proc/self", "/var/run/secrets/kubernetes.io/serviceaccount", "/kms/auth",
                   "/kms", "/usr/local/bin", "kms/secrets", "/kms/../etc", "/kms/./secrets", "/kms/secrets\x00", "/data/../../etc",
                   "/kms secrets", TEN_KB, "/dev/shm"],
    "containers": ["ghost", "kms-agent", "chat,ghost", ",", "", "chat\x00"],
    "format": ["xml", "../json", "", "env"],
    "file-mode": ["0777", "4755", "0000", "0111", "abc", "0o1444", "-1", "99999", "0744", ""],
    "signal": ["SIGKILL", "SIGSTOP", "9", "", "SIGHUP; rm -rf /", "SIGSEGV"],
    "command": ["'", '"unbalanced', "", "   "],
    "events": ["yes", "1", "", "TRUE\x00"],
    "inject": ["yes", "1", "maybe", TEN_KB],
    "agent-cpu": ["-1", "abc", "0", "10 m", TEN_KB],
    "agent-memory": ["1Ei", "-1Mi", "lots", "0"],
    "agent-health-port": ["80", "70000", "abc", "-1", "8080", "0"],
    "identity-id": ["a b", "../x", "", TEN_KB],
    "path-db": ["/../etc", "..", "chat", "/iam", TEN_KB, "/chat\x00"],
    "path-..": ["/chat/db"], "path-../x": ["/chat/db"], "path-..data": ["/chat/db"], "path-a/b": ["/chat/db"], "path-": ["/chat/db"],
    "template-../../etc/passwd": ["x"], "template-..data": ["x"], "template-/etc/passwd": ["x"], "template-": ["x"],
    "template-a/b": ["x"], "template-.env\x00": ["x"], "template-app.env": ["\x00", "x" * (33 * 1024)],
    "image": ["evil/agent:latest"], "agent-image": ["evil/agent:latest"], "image-pull-policy": ["Always"],
    "agent-image-pull-policy": ["Never"], "sidecar-image": ["evil/agent:latest"],
    # issue 10 and 12 additions
    "keys": ["", ",", " , ", "a/b", "a\x01b", "K\nL", TEN_KB], "keys-db": ["", "a/b"], "keys-ghost": ["A"], "keys-..": ["A"],
    "expand-references": ["yes", "", "1", "false\x00"], "allow-empty": ["yes", "", "0"],
    "organization-slug": ["a b", "../x", "", TEN_KB, "$(id)"],
    "ca-secret": ["../x", "UPPER", "", TEN_KB, "unlisted-ca"],  # the last: no policy lists it (403)
}
# Annotations that only make sense with another one set (identity-id needs kubernetes auth, ...).
CONTEXT = {"identity-id": {P + "auth": "kubernetes"}, "signal-process": {P + "signal": "SIGHUP"}, "keys-db": {P + "path-db": "/chat/db"},
           "command": {}, "signal": {}}
HOSTILE["signal-process"] = ["/bin/sh", "a b", "$(id)", "", TEN_KB, "nginx\x00"]

WARNED = [
    ({P + "frobnicate": "x"}, "frobnicate"),
    ({P + "status": "pending"}, "status"),
    ({P + "signal-process": "nginx"}, "signal-process"),
    ({P + "identity-id": "abc"}, "identity-id"),
    ({P + "auth": "kubernetes", P + "identity-id": "abc", P + "auth-secret": "x"}, "auth-secret"),
    ({P + "mode": "init", P + "signal": "SIGHUP"}, "signal"),
    ({P + "proxy": "../../etc"}, "proxy"),
    ({P + "NUL\x00key": "x"}, "NUL"),
]


def refusal_cases() -> list[tuple[str, dict, str]]:
    cases = []
    for name in list(KNOWN) + FAMILY:
        for value in WRONG_TYPES:
            ann = {**CONTEXT.get(name, {}), P + name: value}
            if name == "path" and value is None:
                ann = {P + "inject": "true", P + "path": None}
            cases.append((f"type:{name}:{type(value).__name__}", ann, P + name))
    for name, values in HOSTILE.items():
        for i, value in enumerate(values):
            cases.append((f"value:{name}:{i}", {**CONTEXT.get(name, {}), P + name: value}, P + name.split("\x00")[0]))
    return cases


CASES = refusal_cases()


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile-settings")
    f = d / "settings.yaml"
    f.write_text(json.dumps(SETTINGS_DOC))  # JSON is YAML
    return f


@pytest.fixture(scope="module")
def settings(settings_file):
    return load_settings(str(settings_file))


@pytest.fixture(scope="module")
def webhook(settings_file, tmp_path_factory):
    w = WebhookProcess.start(tmp_path_factory.mktemp("hostile-webhook"), "--settings", str(settings_file))
    yield w
    w.stop()


def check_answer(doc: dict, out: dict, settings, expect: str, needle: str) -> dict:
    """Shared verdict for review() and the server."""
    assert out["kind"] == "AdmissionReview" and out["apiVersion"] == doc["apiVersion"]
    resp = out["response"]
    assert resp["uid"] == doc["request"]["uid"]
    if expect == "refuse":
        assert resp["allowed"] is False and "patch" not in resp, resp
        status = resp["status"]
        assert status["code"] in (400, 403), status
        msg = status["message"]
        assert needle in msg, (needle, msg)
        assert 0 < len(msg) < 1000 and "\x00" not in msg and TEN_KB not in msg, msg[:200]
        assert "internal error" not in msg.lower()
    else:
        assert resp["allowed"] is True, resp
        ops = json.loads(base64.b64decode(resp["patch"]))
        check_patch_contract(doc["request"]["object"], ops, settings)
        if expect == "warn":
            assert any(needle in w for w in resp.get("warnings", [])), (needle, resp.get("warnings"))
    return resp


def test_every_hostile_annotation_is_refused_by_review(settings) -> None:
    assert len(CASES) > 250, len(CASES)
    for case_id, ann, needle in CASES:
        doc = admission(base_pod(ann))
        result = review(doc, settings)
        assert result.internal_error == "", (case_id, result.message)
        try:
            check_answer(doc, result.response, settings, "refuse", needle)
        except AssertionError as exc:
            raise AssertionError(f"case {case_id}: {exc}") from None
    sample = json.dumps([review(admission(base_pod(a)), settings).response for _, a, _ in CASES])
    assert_no_leaks({"review responses": sample}, CRED_MARKERS)


def test_warned_annotations_are_ignored_and_patches_stay_in_the_contract(settings) -> None:
    for ann, needle in WARNED:
        doc = admission(base_pod(ann))
        result = review(doc, settings)
        check_answer(doc, result.response, settings, "warn", needle)
        for w in result.response["response"]["warnings"]:
            assert len(w) < 600 and "\x00" not in w


def test_good_pods_of_every_mode_and_option_stay_in_the_contract(settings) -> None:
    variants = [
        {}, {P + "mode": "init"}, {P + "mode": "native"}, {P + "signal": "SIGHUP"}, {P + "containers": "proxy"},
        {P + "host": ALLOWED_HOST, P + "mount-path": "/run/kms", P + "format": "dotenv", P + "file-mode": "0400"},
        {P + "auth": "kubernetes", P + "identity-id": "6b1c-2f0e"}, {P + "path-db": "/chat/db", P + "template-app.env": "A=${A}"},
        {P + "command": "/bin/reload --now", P + "refresh-interval": "5s", P + "agent-cpu": "20m", P + "agent-memory": "32Mi"},
    ]
    for ann in variants:
        for pod in (base_pod(ann), _bare(base_pod(ann))):
            doc = admission(pod)
            resp = check_answer(doc, review(doc, settings).response, settings, "ok", "")
            assert "patch" in resp, ann
            mutated = _apply(pod, resp)
            again = admission(mutated)
            assert review(again, settings).response["response"] == {"uid": again["request"]["uid"], "allowed": True}


def test_policy_forbids_other_services_folders(settings) -> None:
    for sa, path, allowed in (("chat", "/chat", True), ("chat", "/iam", False), ("billing", "/chat", False), ("chat", "/chat/db", True)):
        doc = admission(base_pod({P + "path": path}, sa=sa))
        out = review(doc, settings).response
        assert out["response"]["allowed"] is allowed, (sa, path, out)
        if not allowed:
            assert out["response"]["status"]["code"] == 403 and P + "path" in out["response"]["status"]["message"]


def test_envelopes_kinds_and_operations(settings) -> None:
    pod = base_pod()
    for kind in ({"group": "apps", "version": "v1", "kind": "Deployment"}, {"group": "", "version": "v1", "kind": "Secret"},
                 {"group": "", "version": "v1", "kind": "ConfigMap"}, {"group": "evil", "version": "v1", "kind": "Pod"}, "Pod", None):
        doc = admission(pod)
        doc["request"]["kind"] = kind
        out = review(doc, settings).response["response"]
        assert out["allowed"] is True and "patch" not in out, kind
    for op in ("UPDATE", "DELETE", "CONNECT", 7):
        out = review(admission(pod, operation=op), settings).response["response"]  # type: ignore[arg-type]
        assert out["allowed"] is True and "patch" not in out, op
    for obj in (None, [], "pod", 7, {"metadata": {"annotations": {P + "path": "/chat"}}}, {"spec": []},
                {"metadata": {"annotations": {P + "path": "/chat"}}, "spec": {"containers": []}},
                {"metadata": {"annotations": {P + "path": "/chat"}}, "spec": {"containers": [{"name": 7}]}},
                {"metadata": {"annotations": [P + "path"]}, "spec": {"containers": [{"name": "a"}]}}):
        doc = admission(base_pod())
        doc["request"]["object"] = obj
        result = review(doc, settings)
        assert result.internal_error == "" and result.response["response"].get("status", {}).get("code", 200) != 500, obj
        assert "patch" not in result.response["response"]


# -- through the real HTTPS server --------------------------------------------------------------------

def test_hostile_annotations_through_https(webhook: WebhookProcess, settings) -> None:
    conn = webhook.connection()
    bodies = []
    try:
        for case_id, ann, needle in CASES:
            doc = admission(base_pod(ann))
            status, raw = webhook.post(conn, json.dumps(doc).encode())
            assert status == 200, (case_id, status, raw[:300])
            bodies.append(raw)
            try:
                check_answer(doc, json.loads(raw), settings, "refuse", needle)
            except AssertionError as exc:
                raise AssertionError(f"case {case_id}: {exc}") from None
        for ann, needle in WARNED:
            doc = admission(base_pod(ann))
            status, raw = webhook.post(conn, json.dumps(doc).encode())
            assert status == 200
            bodies.append(raw)
            check_answer(doc, json.loads(raw), settings, "warn", needle)
    finally:
        conn.close()
    status, metrics = webhook.get("/metrics")
    assert status == 200
    # The log has one admission line per request, with the decision, and no values.
    lines = [json.loads(x) for x in webhook.log().splitlines() if x.startswith("{")]
    decisions = [r["decision"] for r in lines if r.get("event") == "admission"]
    assert decisions.count("rejected") + decisions.count("invalid") >= len(CASES), decisions[-5:]
    assert "error" not in decisions
    assert TEN_KB not in webhook.log()
    assert_no_leaks({"https responses": b"".join(bodies), "webhook log": webhook.log(), "webhook metrics": metrics}, CRED_MARKERS)


def _big_review(size: int) -> bytes:
    doc = admission(base_pod({P + "template-big.txt": "x" * 100}))
    doc["request"]["object"]["metadata"]["labels"] = {"pad": "y" * size}
    return json.dumps(doc).encode()


RAW_CASES = [
    # (name, body, content type, expected HTTP status)
    ("json with charset", json.dumps(admission(base_pod())).encode(), "application/json; charset=utf-8", 200),
    ("json-patch type", b"{}", "application/json-patch+json", 415),
    ("yaml", b"kind: AdmissionReview", "application/yaml", 415),
    ("no content type", json.dumps(admission(base_pod())).encode(), None, 415),
    ("multipart", b"--x\r\n", "multipart/form-data; boundary=x", 415),
    ("empty body", b"", "application/json", 400),
    ("null", b"null", "application/json", 400),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    ("lone surrogate", b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "\\ud800"}}', "application/json", (200, 400)),
    ("NUL in json", b'{"kind": "AdmissionReview"\x00}', "application/json", 400),
    ("missing uid", json.dumps({**admission(base_pod()), "request": {k: v for k, v in admission(base_pod())["request"].items() if k != "uid"}}).encode(), "application/json", 400),
    ("empty uid", json.dumps(admission(base_pod(), uid="")).encode(), "application/json", 400),
    ("huge uid", json.dumps(admission(base_pod(), uid="u" * 100_000)).encode(), "application/json", 200),
    ("request is a list", b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": []}', "application/json", 400),
    ("response instead of request", b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "response": {"uid": "a", "allowed": true}}', "application/json", 400),
    ("just under the limit", _big_review(3 * 1024 * 1024 - 8192), "application/json", 200),
    ("over the limit", _big_review(4 * 1024 * 1024), "application/json", 413),
    ("1000 containers", json.dumps(admission({**base_pod(), "spec": {"containers": [{"name": f"c{i}", "image": "x"} for i in range(1000)]}})).encode(), "application/json", 200),
    ("duplicate keys", b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "a", "uid": "b", "kind": {"group": "", "kind": "Pod"}, "object": {}}}', "application/json", 200),
]


def test_raw_bodies_and_content_types_through_https(webhook: WebhookProcess, settings) -> None:
    conn = webhook.connection()
    try:
        for name, body, ctype, expected in RAW_CASES:
            status, raw = webhook.post(conn, body, ctype)
            assert status in (expected if isinstance(expected, tuple) else (expected,)), (name, status, raw[:300])
            out = json.loads(raw)
            if status == 200:
                resp = out["response"]
                assert resp.get("status", {}).get("code") != 500, (name, resp)
                if "patch" in resp:
                    check_patch_contract(json.loads(body)["request"]["object"], json.loads(base64.b64decode(resp["patch"])), settings)
            else:
                assert out["kind"] == "Status" and out["code"] == status and len(out["message"]) < 1000, (name, out)
            if status == 413:
                conn.close()  # the server may drop a connection whose body it refused to read
                conn = webhook.connection()
    finally:
        conn.close()
    # Still healthy after all of it.
    assert webhook.get("/healthz")[0] == 200
    lines = [json.loads(x) for x in webhook.log().splitlines() if x.startswith("{")]
    assert not [r for r in lines if r.get("level") == "error"], [r for r in lines if r.get("level") == "error"][:3]


def _bare(pod: dict) -> dict:
    """The same pod with the optional arrays/maps missing (patches must add them whole)."""
    pod = copy.deepcopy(pod)
    pod["spec"].pop("initContainers", None)
    pod["spec"].pop("volumes", None)
    for c in pod["spec"]["containers"]:
        c.pop("volumeMounts", None)
    return pod


def _apply(pod: dict, resp: dict) -> dict:
    import jsonpatch

    return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))


def test_credentials_in_any_annotation_value_are_never_echoed(settings) -> None:
    """Not only `host`: any annotation refused (or warned about) with its value shown, e.g.
    `inject: https://u:pw@...`, must hide a URL's user info and query (found by the fuzz run)."""
    urls = [f"https://{CRED_MARKERS['url-user']}:{CRED_MARKERS['url-password']}@kms.hanzo.ai/api",
            f" http://kms.hanzo.ai/api?token={CRED_MARKERS['url-token']}", f"x=https://a:{CRED_MARKERS['url-password']}@h/"]
    answers, refused = [], 0
    for key in (*KNOWN, "path", "path-db", "template-app.env"):
        for url in urls:
            for ann in ({P + key: url}, {P + "inject": "true", P + key: url}):
                result = review(admission(base_pod(ann)), settings)
                assert result.internal_error == "", (key, result.message)
                refused += not result.response["response"]["allowed"]
                answers.append(result.response)
    assert refused > len(KNOWN)  # the values really were refused with a message
    assert_no_leaks({"review responses": json.dumps(answers)}, CRED_MARKERS)
