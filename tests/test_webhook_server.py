"""The webhook over real HTTPS: `kms-injector webhook` as a subprocess on 127.0.0.1 (port 0),
a certificate made here with `cryptography`, aiohttp client verifying against the test CA.

Covers: every captured AdmissionReview fixture (patch applied with jsonpatch, result validated
against the Kubernetes schema, re-submission gives no patch), the 17 platform services, bad
input (413/415/400/405, never 500), /healthz /readyz /metrics, JSON log lines (uid, decision, no
annotation values), and hot reload of replaced cert files seen by new handshakes.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests import platform
from tests.agent_support import stop_process
from tests.reliability_support import make_ca, make_leaf  # certificates made here, independent of webhook/certs.py
from tests.test_review_key import replica

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "admission"
K8S_VERSION = "1.30"
MAX_BODY = 256 * 1024
LEAK_MARKER = "LEAKMARKER-7f3a9c"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def install_pair(d: Path, cert: bytes, key: bytes) -> None:
    write_atomic(d / "tls.key", key)
    write_atomic(d / "tls.crt", cert)


# --- the server under test ------------------------------------------------------------------------

class Server:
    def __init__(self, tmp: Path, cert: Path, key: Path, extra: list[str] | None = None) -> None:
        self.log_path = tmp / "webhook.log"
        self.tmp = tmp
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "injector", "webhook", "--host", "127.0.0.1", "--port", "0",
             "--tls-cert", str(cert), "--tls-key", str(key), "--max-body-bytes", str(MAX_BODY), *(extra or [])],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"),
        )
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for rec in self.records():
                if rec.get("event") == "listening":
                    return int(rec["port"])
            if self.proc.poll() is not None:
                raise AssertionError(f"webhook exited {self.proc.returncode}: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError("webhook did not start listening within 30 s")

    def records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def client_ctx(ca) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca[0].public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="module")
def server(ca, tmp_path_factory):
    d = tmp_path_factory.mktemp("webhook")
    cert, key, _ = make_leaf(ca)
    install_pair(d, cert, key)
    s = Server(d, d / "tls.crt", d / "tls.key")
    yield s
    s.stop()


def review_of(pod: dict, namespace: str = platform.NAMESPACE, api_version: str = "admission.k8s.io/v1") -> dict:
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "operation": "CREATE", "object": pod, "dryRun": False,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"}}}


async def post(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, doc: dict | bytes,
               content_type: str = "application/json") -> tuple[int, dict]:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    async with session.post(url + "/mutate", data=data, headers={"Content-Type": content_type}, ssl=ctx) as r:
        return r.status, await r.json(content_type=None)


def apply_and_validate(pod: dict, response: dict) -> dict:
    assert response.get("patchType") == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    mutated = jsonpatch.apply_patch(pod, patch)
    doc = {k: v for k, v in mutated.items() if k != "status"}
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Pod")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return mutated


# --- admissions -----------------------------------------------------------------------------------

async def test_captured_fixtures_through_https(server, client_ctx):
    seen = {}
    async with aiohttp.ClientSession() as s:
        for path in sorted(FIXTURES.glob("*.json")):
            doc = json.loads(path.read_text())
            status, body = await post(s, server.url, client_ctx, doc)
            assert status == 200, (path.name, body)
            resp = body["response"]
            assert body["apiVersion"] == doc["apiVersion"] and body["kind"] == "AdmissionReview"
            assert resp["uid"] == doc["request"]["uid"]
            seen[path.stem] = resp
            if "patch" in resp:
                mutated = apply_and_validate(doc["request"]["object"], resp)
                assert mutated["metadata"]["annotations"]["kms.hanzo.ai/status"] == "injected"
                # The apiserver's reinvocation carries the mutated pod: allowed, no patch.
                again = copy.deepcopy(doc)
                again["request"]["uid"] = str(uuid.uuid4())
                again["request"]["object"] = mutated
                status2, body2 = await post(s, server.url, client_ctx, again)
                assert status2 == 200 and body2["response"]["allowed"] is True
                assert "patch" not in body2["response"], path.name
    assert "patch" not in seen["pod-no-annotations"] and seen["pod-no-annotations"]["allowed"] is True
    assert "patch" in seen["pod-annotated-chat"] and "patch" in seen["deployment-pod-generatename-signal"]
    bad = seen["pod-bad-refresh-interval"]
    assert bad["allowed"] is False and "refresh-interval" in bad["status"]["message"]


async def test_platform_services_inject_through_server(server, client_ctx):
    assert len(platform.SERVICES) == 17
    async with aiohttp.ClientSession() as s:
        for svc in platform.SERVICES:
            template = platform.deployment(svc)["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {**copy.deepcopy(template["metadata"]), "generateName": f"{svc.name}-7d9f8c6b5-"},
                   "spec": copy.deepcopy(template["spec"])}
            status, body = await post(s, server.url, client_ctx, review_of(pod))
            assert status == 200 and body["response"]["allowed"] is True, (svc.name, body)
            mutated = apply_and_validate(pod, body["response"])
            spec = mutated["spec"]
            agent_containers = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"].startswith("kms-agent")]
            assert agent_containers, svc.name
            config = next(json.loads(e["value"]) for e in agent_containers[0]["env"] if e["name"] == "KMS_AGENT_CONFIG")
            flat = json.dumps(config)
            assert svc.project in flat and svc.path in flat, (svc.name, config)
            secret_names = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
            assert svc.auth_secret in secret_names, (svc.name, secret_names)


async def test_v1beta1_answered_in_kind(server, client_ctx):
    doc = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, server.url, client_ctx, doc)
    assert status == 200 and body["apiVersion"] == "admission.k8s.io/v1beta1"
    assert body["response"]["uid"] == doc["request"]["uid"]


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,ctype,code,needle", [
    (b"x" * (MAX_BODY + 1), "application/json", 413, "limit"),
    (b'{"kind":"AdmissionReview"}', "text/plain", 415, "application/json"),
    (b'{"kind":"AdmissionReview"}', "application/x-www-form-urlencoded", 415, "application/json"),
    (b'{"kind": "AdmissionReview", ', "application/json", 400, "not valid JSON"),
    (b"\xff\xfe garbage", "application/json", 400, "not valid JSON"),
    (b"[1, 2, 3]", "application/json", 400, "AdmissionReview object"),
    (b'"just a string"', "application/json", 400, "AdmissionReview object"),
    (b'{"apiVersion": "v1", "kind": "Pod"}', "application/json", 400, "AdmissionReview"),
    (b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {"uid": "a"}}', "application/json", 400, "apiVersion"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "application/json", 400, "request"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}', "application/json", 400, "request.uid"),
])
async def test_bad_input_is_answered_cleanly(server, client_ctx, data, ctype, code, needle):
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, server.url, client_ctx, data, ctype)
    assert status == code
    assert body["kind"] == "Status" and body["code"] == code and needle in body["message"], body


async def test_chunked_oversize_body_is_413(server, client_ctx):
    async def chunks():
        for _ in range(MAX_BODY // 8192 + 2):
            yield b" " * 8192

    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + "/mutate", data=chunks(), headers={"Content-Type": "application/json"}, ssl=client_ctx) as r:
            assert r.status == 413
            assert "limit" in (await r.json())["message"]


async def test_wrong_method_and_missing_content_type(server, client_ctx):
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/mutate", ssl=client_ctx) as r:
            assert r.status == 405 and "POST /mutate" in (await r.json())["message"]
        async with s.post(server.url + "/mutate", data=b"{}", ssl=client_ctx, skip_auto_headers=["Content-Type"]) as r:
            assert r.status == 415


async def test_non_pod_and_odd_shapes_never_500(server, client_ctx):
    base = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    variants = []
    v = copy.deepcopy(base); v["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}; variants.append(v)
    v = copy.deepcopy(base); v["request"]["object"] = "not a pod"; variants.append(v)
    v = copy.deepcopy(base); v["request"]["object"]["spec"]["containers"] = {"a": 1}; variants.append(v)
    v = copy.deepcopy(base); v["request"]["object"]["metadata"]["annotations"]["kms.hanzo.ai/path"] = ["x"]; variants.append(v)
    async with aiohttp.ClientSession() as s:
        for doc in variants:
            status, body = await post(s, server.url, client_ctx, doc)
            assert status == 200 and body["response"]["uid"] == doc["request"]["uid"]
            st = body["response"].get("status") or {}
            assert st.get("code") != 500, body


# --- probes, metrics, logs ------------------------------------------------------------------------

async def test_health_ready_metrics(server, client_ctx):
    doc = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    bad = json.loads((FIXTURES / "pod-bad-refresh-interval.json").read_text())
    async with aiohttp.ClientSession() as s:
        for d in (doc, bad):
            await post(s, server.url, client_ctx, d)
        async with s.get(server.url + "/healthz", ssl=client_ctx) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(server.url + "/readyz", ssl=client_ctx) as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        async with s.get(server.url + "/metrics", ssl=client_ctx) as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            values[k] = float(v)
    assert values['kms_injector_admissions_total{decision="injected"}'] >= 1
    assert values['kms_injector_admissions_total{decision="rejected"}'] >= 1
    assert values["kms_injector_injections_total"] >= 1 and values["kms_injector_rejections_total"] >= 1
    count = values["kms_injector_admission_duration_seconds_count"]
    assert count >= 2 and values['kms_injector_admission_duration_seconds_bucket{le="+Inf"}'] == count
    buckets = [v for k, v in values.items() if k.startswith("kms_injector_admission_duration_seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    assert values["kms_injector_ready"] == 1
    assert values["kms_injector_tls_cert_not_after_seconds"] > time.time()


async def test_log_lines_have_uid_and_decision_but_no_values(server, client_ctx):
    doc = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    ann = doc["request"]["object"]["metadata"]["annotations"]
    ann["kms.hanzo.ai/path"] = f"/{LEAK_MARKER}-path"
    ann[f"kms.hanzo.ai/template-{LEAK_MARKER}.txt"] = f"url=${{{LEAK_MARKER}}}"
    ann["kms.hanzo.ai/unknown-thing"] = f"{LEAK_MARKER}-unknown"
    bad = json.loads((FIXTURES / "pod-bad-refresh-interval.json").read_text())
    bad["request"]["object"]["metadata"]["annotations"]["kms.hanzo.ai/refresh-interval"] = f"{LEAK_MARKER}-soon"
    doc["request"]["uid"], bad["request"]["uid"] = str(uuid.uuid4()), str(uuid.uuid4())
    async with aiohttp.ClientSession() as s:
        for d in (doc, bad):
            status, _ = await post(s, server.url, client_ctx, d)
            assert status == 200
    uids = {doc["request"]["uid"], bad["request"]["uid"]}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        recs = [r for r in server.records() if r.get("event") == "admission" and r.get("uid") in uids]
        if len(recs) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(recs) >= 2, "no admission log lines for the two requests"
    for r in recs:
        assert r["decision"] in ("injected", "rejected", "skip", "already", "invalid")
        assert r["namespace"] == "hanzo" and r["pod"] and isinstance(r["latency_ms"], float)
    assert LEAK_MARKER not in server.log_path.read_text()


# --- certificate hot reload and readiness ---------------------------------------------------------

async def handshake_serial(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def http_get_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head.split(b"\r\n")[0] + b" " + await reader.readexactly(length)


async def wait_for(cond, what: str, timeout: float = 25.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await cond()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_unready_until_cert_then_hot_reload(ca, client_ctx, tmp_path):
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    srv = Server(tmp_path, tmp_path / "tls.crt", tmp_path / "tls.key")  # no files yet
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(srv.url + "/healthz", ssl=insecure) as r:
                assert r.status == 200
            async with s.get(srv.url + "/readyz", ssl=insecure) as r:
                assert r.status == 503 and "no serving certificate" in " ".join((await r.json())["reasons"])

            cert1, key1, serial1 = make_leaf(ca)
            install_pair(tmp_path, cert1, key1)

            async def ready():
                try:
                    async with s.get(srv.url + "/readyz", ssl=client_ctx) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, "ready after the cert files appeared")
            assert await handshake_serial(srv.port, client_ctx) == serial1

            # A connection made with cert 1 stays up across the reload.
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=client_ctx)
            assert b"200" in await http_get_on(reader, writer, "/healthz")

            cert2, key2, serial2 = make_leaf(ca)
            install_pair(tmp_path, cert2, key2)

            async def sees_new():
                return await handshake_serial(srv.port, client_ctx) == serial2

            await wait_for(sees_new, "a new handshake to see the replaced certificate")
            assert b"200" in await http_get_on(reader, writer, "/healthz")  # old connection still served
            writer.close()

            # A broken pair keeps the good one and logs an error.
            write_atomic(tmp_path / "tls.key", b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")

            async def logged_failure():
                return any(r.get("event") == "tls_reload_failed" for r in srv.records())

            await wait_for(logged_failure, "tls_reload_failed in the log")
            assert await handshake_serial(srv.port, client_ctx) == serial2
            async with s.get(srv.url + "/readyz", ssl=client_ctx) as r:
                assert r.status == 200
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    assert srv.proc.returncode == 0  # SIGTERM: clean shutdown


def test_invalid_settings_exit_with_a_clear_message(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("allowedHosts: 7\nnoSuchKey: true\n")
    p = subprocess.run([sys.executable, "-m", "injector", "webhook", "--settings", str(settings), "--port", "0",
                        "--tls-cert", str(tmp_path / "c"), "--tls-key", str(tmp_path / "k")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "settings" in p.stderr


def test_files_mode_requires_cert_and_key():
    p = subprocess.run([sys.executable, "-m", "injector", "webhook", "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--tls-cert" in p.stderr


# --- property: whatever arrives, the answer is well-formed and never a 500 -----------------------

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_ann_keys = st.sampled_from(["path", "inject", "mode", "format", "refresh-interval", "signal", "host", "project",
                             "env", "auth", "file-mode", "containers", "mount-path", "template-app.conf", "path-db",
                             "agent-cpu", "command", "status", "bogus"]).map(lambda k: f"kms.hanzo.ai/{k}")
_ann_values = st.one_of(st.text(max_size=30), st.sampled_from(["/chat", "true", "false", "native", "init", "5s", "SIGHUP",
                                                               "../../etc", "file:///etc/passwd", "0444", "x" * 300]))
_annotations = st.dictionaries(_ann_keys, st.one_of(_ann_values, _json), max_size=6)


@hsettings(max_examples=int(os.environ.get("KMS_FUZZ_EXAMPLES", "60")), deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(annotations=_annotations, junk=_json, where=st.sampled_from(["annotations", "spec", "object", "request-field", "none"]))
def test_fuzz_server_answers_every_review_cleanly(server, client_ctx, annotations, junk, where):
    import http.client

    doc = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    doc["request"]["uid"] = str(uuid.uuid4())
    obj = doc["request"]["object"]
    obj["metadata"]["annotations"] = annotations
    if where == "spec":
        obj["spec"]["containers"][0]["name"] = junk
    elif where == "object":
        obj["spec"] = junk
    elif where == "request-field":
        doc["request"]["dryRun"] = junk
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_ctx, timeout=20)
    try:
        conn.request("POST", "/mutate", body=json.dumps(doc), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 200, body
    resp = body["response"]
    assert resp["uid"] == doc["request"]["uid"] and isinstance(resp["allowed"], bool)
    assert (resp.get("status") or {}).get("code") != 500, resp
    if resp["allowed"] and "patch" in resp:
        patch = json.loads(base64.b64decode(resp["patch"]))
        jsonpatch.apply_patch(obj, patch)  # applies cleanly to the pod it was made for


async def test_a_bug_in_review_fails_closed_without_leaking(ca, client_ctx, tmp_path):
    """review() is pluggable (WebhookState.review) so a raising one can be served for real."""
    import io

    from aiohttp import web

    from injector.log import Logger
    from webhook.app import WebhookState, make_app
    from webhook.settings import Settings
    from webhook.tls import CertReloader

    def buggy_review(doc, settings):
        value = doc["request"]["object"]["metadata"]["annotations"]["kms.hanzo.ai/path"]
        raise KeyError(f"exploded on {value}")

    cert, key, _ = make_leaf(ca)
    install_pair(tmp_path, cert, key)
    stream = io.StringIO()
    reloader = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key", log=Logger("webhook.tls", stream=stream))
    assert reloader.load_now()
    state = WebhookState(settings=Settings(), reloader=reloader, log=Logger("webhook", stream=stream), review=buggy_review)
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        doc = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
        doc["request"]["object"]["metadata"]["annotations"]["kms.hanzo.ai/path"] = f"/{LEAK_MARKER}"
        async with aiohttp.ClientSession() as s:
            status, body = await post(s, f"https://127.0.0.1:{port}", client_ctx, doc)
            assert status == 200
            resp = body["response"]
            assert resp["allowed"] is False and resp["uid"] == doc["request"]["uid"] and "patch" not in resp
            assert resp["status"]["code"] == 500 and "internal error" in resp["status"]["message"]
            async with s.get(f"https://127.0.0.1:{port}/metrics", ssl=client_ctx) as r:
                assert 'kms_injector_admissions_total{decision="error"} 1' in await r.text()
    finally:
        await runner.cleanup()
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    err = next(r for r in logs if r["event"] == "review_failed")
    assert err["error_type"] == "KeyError" and "buggy_review" in err["where"]
    assert any(r["event"] == "admission" and r["decision"] == "error" for r in logs)
    assert LEAK_MARKER not in stream.getvalue() and LEAK_MARKER not in json.dumps(body)


async def test_replicas_share_one_review_but_keep_their_uid(server, client_ctx):
    doc = json.loads((FIXTURES / "deployment-pod-generatename-signal.json").read_text())
    answers = []
    async with aiohttp.ClientSession() as s:
        async def hits() -> float:
            async with s.get(server.url + "/metrics", ssl=client_ctx) as r:
                text = await r.text()
            return float(next(l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith('kms_injector_review_cache_total{result="hit"}')))

        before = await hits()
        for n in range(3):  # three replicas of one ReplicaSet: own uid, service-account volume, timestamps
            d = replica(doc, n)
            d["request"]["uid"] = str(uuid.uuid4())
            status, body = await post(s, server.url, client_ctx, d)
            assert status == 200 and body["response"]["uid"] == d["request"]["uid"]
            answers.append(body)
        assert await hits() - before >= 2
        # Same patch for all three; only the uid differs.
        strip = lambda b: {**b, "response": {**b["response"], "uid": ""}}  # noqa: E731
        assert strip(answers[0]) == strip(answers[1]) == strip(answers[2])
        # A pod that differs in one annotation gets its own review.
        d = copy.deepcopy(doc)
        d["request"]["uid"] = str(uuid.uuid4())
        d["request"]["object"]["metadata"]["annotations"]["kms.hanzo.ai/refresh-interval"] = "soon"
        status, body = await post(s, server.url, client_ctx, d)
        assert body["response"]["allowed"] is False and "refresh-interval" in body["response"]["status"]["message"]
