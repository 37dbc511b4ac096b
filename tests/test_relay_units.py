"""The relay's pure parts (subscription parsing, TokenReview judging, the client's request), its
auto-TLS against the Kubernetes API stand-in, settings hot reload and a KMS outage under a live
stream."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from injector.config import AgentConfig, Source
from injector.relay_client import subscription
from relay.protocol import Folder, SubscribeError, parse_subscription, sse
from relay.tokenreview import PodIdentity, judge
from tests.agent_support import wait_for
from tests.test_autotls import NS, SECRET, FakeKube, kube, seed_secret  # noqa: F401 (fixture)
from tests.test_relay import ListLog, RelayHarness, relay_env, stop_subscribers, subscribe  # noqa: F401 (fixture)
from tests.test_relay_scale import proc_rss_kib
from webhook import certs

HOST = "http://kms.hanzo.svc.cluster.local/api"


def folder(**over: str) -> dict:
    return {"host": HOST, "project": "p", "env": "prod", "path": "/chat", **over}


def test_parse_subscription_normalises_and_deduplicates() -> None:
    got = parse_subscription(json.dumps({"folders": [folder(path="/chat/"), folder(), folder(path="/x", host=HOST + "/")]}).encode())
    assert got == [Folder(HOST, "p", "prod", "/chat"), Folder(HOST, "p", "prod", "/x")]


@pytest.mark.parametrize("body, where", [
    (b"[]", "folders"),
    (json.dumps({"folders": []}).encode(), "1 to 64"),
    (json.dumps({"folders": [folder(path="/a/../b")]}).encode(), "folders[0].path"),
    (json.dumps({"folders": [folder(project="bad slug")]}).encode(), "folders[0].project"),
    (json.dumps({"folders": [folder(host="file:///etc")]}).encode(), "folders[0].host"),
    (json.dumps({"folders": [folder(host="http://user:pw@kms/api")]}).encode(), "folders[0].host"),
    (json.dumps({"folders": [dict(folder(), key="x")]}).encode(), "folders[0].key"),
    (json.dumps({"folders": [folder()] * 65}).encode(), "1 to 64"),
])
def test_parse_subscription_names_what_is_wrong(body: bytes, where: str) -> None:
    with pytest.raises(SubscribeError) as exc:
        parse_subscription(body)
    assert where in str(exc.value)


def test_notice_frames_carry_only_the_folder_and_a_counter() -> None:
    frame = sse("change", {"folder": folder(), "marker": 3}).decode()
    assert frame.startswith("event: change\ndata: {") and frame.endswith("}\n\n") and frame.count("\n") == 3


def test_judge_token_reviews() -> None:
    ok = {"status": {"authenticated": True, "audiences": ["aud"], "user": {"username": "system:serviceaccount:ns:sa"}}}
    assert judge(ok, "aud") == PodIdentity("ns", "sa")
    assert "audience 'aud'" in judge({"status": {"authenticated": True, "audiences": ["other"],
                                                 "user": {"username": "system:serviceaccount:ns:sa"}}}, "aud")
    assert "not a service account" in judge({"status": {"authenticated": True, "audiences": ["aud"],
                                                        "user": {"username": "admin"}}}, "aud")
    refused = judge({"status": {"error": "invalid bearer token tok123"}}, "aud", token="tok123")
    assert "not accepted" in refused and "tok123" not in refused
    assert "no status" in judge({}, "aud")


def test_client_subscription_names_every_source_once() -> None:
    cfg = AgentConfig(host=HOST, project="p", env="prod", sources=[Source("/chat"), Source("/shared", "shared"), Source("/chat", "again")],
                      relay_url="https://relay:443", relay_token_path="/kms/relay/token")
    assert subscription(cfg) == {"folders": [folder(), folder(path="/shared")]}


async def test_auto_tls_issues_a_leaf_from_the_webhooks_ca(kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    from relay.autotls import RelayAutoTLS
    from relay.kubeapi import KubeTarget
    from tests.test_autotls import TOKEN

    log = ListLog()
    auto = RelayAutoTLS(namespace=NS, secret=SECRET, service="kms-injector-relay", cert_dir=tmp_path / "certs", log=log,
                        kube_target=KubeTarget(f"http://127.0.0.1:{kube.port}", token=TOKEN))
    try:
        await auto.step()
        assert auto.not_ready_reasons() and "cannot read Secret" in auto.not_ready_reasons()[0]
        assert "404 NotFound" in auto.not_ready_reasons()[0]  # the API server's Status reason
        ca = certs.generate_ca()
        seed_secret(kube, certs.generate_serving_cert(ca, certs.service_dns_names("kms-injector", NS)), ca)
        await auto.step()
        assert auto.not_ready_reasons() == []
        leaf = (tmp_path / "certs" / "tls.crt").read_bytes()
        assert certs.signed_by(leaf, ca.cert_pem)
        assert f"kms-injector-relay.{NS}.svc" in certs.dns_names_of(leaf)
        assert certs.key_matches_cert(leaf, (tmp_path / "certs" / "tls.key").read_bytes())
        await auto.step()  # nothing changed: the same leaf
        assert (tmp_path / "certs" / "tls.crt").read_bytes() == leaf
        # the webhook rotated its CA: a new leaf from the new CA
        ca2 = certs.generate_ca()
        seed_secret(kube, certs.generate_serving_cert(ca2, ["x"]), ca2, previous=ca.cert_pem)
        await auto.step()
        assert certs.signed_by((tmp_path / "certs" / "tls.crt").read_bytes(), ca2.cert_pem)
        # it only ever read the Secret: no writes to the cluster
        assert {m for m, _, _ in kube.requests} == {"GET"}
        assert all(SECRET in p for _, p, _ in kube.requests)
    finally:
        await auto.close()


async def test_the_relay_process_in_auto_mode_serves_a_leaf_from_the_secret_without_kubernetes_asyncio(
        relay_env: RelayHarness) -> None:
    """A real relay in --tls-mode auto: it GETs the webhook's Secret from the stand-in API server
    (the kubeconfig's), serves a leaf for the Service's names signed by that CA, and a subscriber
    verifying it connects. Python's own import log (-X importtime, on stderr) shows kubernetes-asyncio
    never loaded: it would cost ~55 MiB of the 10,000-subscriber budget (relay/kubeapi.py)."""
    relay = relay_env
    ca = certs.generate_ca("webhook-ca")
    leaf = certs.generate_serving_cert(ca, certs.service_dns_names("kms-injector", NS))
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    relay.kube.secrets[(NS, SECRET)] = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "101"},
        "data": {"tls.crt": b64(leaf.cert_pem), "tls.key": b64(leaf.key_pem), "ca.crt": b64(ca.cert_pem), "ca.key": b64(ca.key_pem)}}
    relay.host_name, relay.ca_pem = "localhost", ca.cert_pem.decode()  # --service localhost: "localhost" is a SAN
    relay.start("--tls-mode", "auto", "--namespace", NS, "--tls-secret", SECRET, "--service", "localhost",
                "--cert-dir", str(relay.tmp / "auto-certs"), env={"PYTHONPROFILEIMPORTTIME": "1"})
    await relay.wait_ready()
    assert relay.proc is not None
    await wait_for(lambda: relay.proc.events("relay_cert_issued"), 30, "the relay issued its leaf")
    sub = subscribe(relay, "shop", relay.kube.token_for("shop", "shop"), ("/shared",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "a subscriber verifying the webhook's CA subscribed")
        status, body = await relay.get("/readyz")
        assert status == 200, body
        served = (relay.tmp / "auto-certs" / "tls.crt").read_bytes()
        assert certs.signed_by(served, ca.cert_pem) and "localhost" in certs.dns_names_of(served)
        assert relay.kube.secret_gets >= 1 and relay.kube.reviews >= 1
        rss = proc_rss_kib(relay.proc.popen.pid)
        print(f"\nrelay RSS in auto TLS mode with one subscriber: {rss / 1024:.1f} MiB")
        imported = re.findall(r"^import time:.*\|\s*([\w.]+)\s*$", relay.proc.stderr(), re.M)
        assert "relay.kubeapi" in imported and "relay.autotls" in imported  # the import log is live
        assert not [m for m in imported if m.split(".")[0] == "kubernetes_asyncio"]
        assert rss < 70 * 1024  # test_relay_scale's bound for files mode; kubernetes-asyncio took it to ~91 MiB
    finally:
        await stop_subscribers([sub])


async def test_settings_reload_closes_streams_the_new_policy_refuses(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    sub = subscribe(relay, "shop", relay.kube.token_for("shop", "shop"), ("/restricted",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "subscribed")
        settings = relay.tmp / "settings.yaml"
        settings.write_text(settings.read_text().replace("paths: [/shared, /restricted]", "paths: [/shared]"))
        await wait_for(lambda: sub.state.refusals >= 1, 30, "the stream closed and the new subscription refused")
        assert not sub.state.healthy
        assert any("403" in r.get("error", "") for r in sub.log.records)
    finally:
        await stop_subscribers([sub])


async def test_a_kms_outage_keeps_the_streams_and_notices_resume(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    sub = subscribe(relay, "shop", relay.kube.token_for("shop", "shop"), ("/shared",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "subscribed")
        await relay.kms.stop()
        await wait_for(lambda: relay.proc is not None and relay.proc.events("folder_check_failing"), 30, "outage seen")
        assert sub.state.connected and sub.changes() == []
        relay.kms.rotate("/shared")
        await relay.kms.start()  # the same port
        await wait_for(lambda: sub.changes() == ["relay: /shared"], 30, "the change made during the outage notified")
        assert sub.state.connects == 1
        assert relay.proc.events("folder_check_recovered")
        assert len(relay.proc.events("folder_check_failing")) == 1  # logged once, not per attempt
    finally:
        await stop_subscribers([sub])


async def test_a_silent_relay_is_noticed_by_the_missing_heartbeats(relay_env: RelayHarness) -> None:
    """SIGSTOP the relay: the socket stays open but nothing arrives; after three heartbeats (2 s
    each here) the client gives up on the stream, then re-subscribes once the relay runs again."""
    import signal

    relay = relay_env
    relay.start()
    await relay.wait_ready()
    sub = subscribe(relay, "shop", relay.kube.token_for("shop", "shop"), ("/shared",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "subscribed")
        assert relay.proc is not None
        relay.proc.popen.send_signal(signal.SIGSTOP)
        try:
            await wait_for(lambda: not sub.state.connected, 30, "the silence noticed")
            assert any("no heartbeat" in r.get("error", "") for r in sub.log.records)
        finally:
            relay.proc.popen.send_signal(signal.SIGCONT)
        await wait_for(lambda: sub.state.connects >= 2 and sub.state.healthy, 30, "re-subscribed")
    finally:
        await stop_subscribers([sub])
