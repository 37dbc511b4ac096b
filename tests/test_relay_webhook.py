"""The webhook's side of the change relay (issue 11 point 4): the `relay` settings block, what a
mutated pod gets (AgentConfig relay fields, the projected relay token in the refreshing agent
only), its hot reload (a CA file appearing clears the answer cache), and the chart's relay block
in every TLS mode, loaded by the webhook's own settings loader.

Mutated pods are applied with an independent RFC 6902 library and validated against the
Kubernetes schemas (tests/podcheck.py); the reload runs a real `kms-injector webhook`; the chart is
rendered by real Helm and its relay Secret verified by the agent's own TLS context."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector import relay_client
from injector.config import AgentConfig
from webhook import certs
from webhook.mutate import review
from webhook.settings import RELAY_TOKEN_PATH, Settings, SettingsError, load_settings, settings_from_dict

from tests.test_relay import AUDIENCE, SETTINGS, ListLog, RelayHarness, relay_env  # noqa: F401 (fixture)

from .podcheck import apply_patch, decode_patch, validate_pod
from .test_settings_reload import metric, poll, write_configmap

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
P = "kms.hanzo.ai/"
URL = "https://kms-injector-relay.kms-injector.svc:443"
_CA = certs.generate_ca("test-relay-ca")
CA_PEM, CA_KEY = _CA.cert_pem.decode(), _CA.key_pem.decode()
RELAY = {"url": URL, "ca": CA_PEM, "audience": "relay.test", "pollFactor": 4}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def mutated(body: dict, settings: Settings) -> dict:
    result = review(body, settings)
    assert result.internal_error == "" and result.decision == "injected", result.message
    pod = apply_patch(body["request"]["object"], decode_patch(result.response["response"]))
    validate_pod(pod)
    return pod


def patch_of(body: dict, settings: Settings) -> list[dict]:
    return decode_patch(review(body, settings).response["response"])


def agents(pod: dict) -> dict[str, dict]:
    spec = pod["spec"]
    return {c["name"]: c for c in (spec.get("initContainers") or []) + spec["containers"] if c["name"].startswith("kms-agent")}


def config_of(container: dict) -> AgentConfig:
    env = {e["name"]: e for e in container["env"]}
    return AgentConfig.from_json(env["KMS_AGENT_CONFIG"]["value"])  # validates as the agent does


def mounts_of(pod: dict, volume: str) -> dict[str, dict]:
    spec = pod["spec"]
    return {c["name"]: m for c in (spec.get("initContainers") or []) + spec["containers"]
            for m in c.get("volumeMounts") or [] if m["name"] == volume}


def in_namespace(body: dict, ns: str) -> dict:
    body = copy.deepcopy(body)
    body["request"]["namespace"] = ns
    body["request"]["object"]["metadata"]["namespace"] = ns
    return body


# -- settings -----------------------------------------------------------------------------------------
def test_relay_block_in_camel_and_snake_case() -> None:
    camel = settings_from_dict({"relay": {"url": URL, "ca": CA_PEM, "audience": "a.example", "pollFactor": 3,
                                          "expirationSeconds": 900, "namespaces": ["hanzo"]}})
    snake = settings_from_dict({"relay": {"url": URL, "ca": CA_PEM, "audience": "a.example", "poll_factor": 3,
                                          "expiration_seconds": 900, "namespaces": "hanzo"}})
    assert camel == snake and camel.relay.active and camel.relay.applies_to("hanzo") and not camel.relay.applies_to("other")
    assert (camel.relay.poll_factor, camel.relay.expiration_seconds) == (3.0, 900)
    off = Settings()
    assert off.relay.url == "" and not off.relay.active and not off.relay.applies_to("hanzo")
    assert off.relay.audience == "kms-relay.hanzo.ai" and off.relay.poll_factor == 10.0


@pytest.mark.parametrize("relay, field, says", [
    ({"url": "http://relay.ns.svc"}, "relay.url", "https://"),
    ({"url": "https://user:pw@relay.ns.svc"}, "relay.url", "https://"),
    ({"url": URL, "audience": "two words"}, "relay.audience", "audience"),
    ({"url": URL, "pollFactor": 0}, "relay.poll_factor", "1 to 100"),
    ({"url": URL, "pollFactor": 101}, "relay.poll_factor", "1 to 100"),
    ({"url": URL, "pollFactor": "ten"}, "relay.poll_factor", "number"),
    ({"url": URL, "pollFactor": True}, "relay.poll_factor", "number"),
    ({"url": URL, "expirationSeconds": 300}, "relay.expiration_seconds", "600"),
    ({"url": URL, "namespaces": []}, "relay.namespaces", "at least one"),
    ({"url": URL, "namespaces": ["Not_A_Namespace"]}, "relay.namespaces[0]", "namespace"),
    ({"url": URL, "ca": "not a pem"}, "relay.ca", "PEM"),
    ({"url": URL, "ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "relay.ca", "PEM"),
    ({"url": URL, "ca": CA_PEM * 200}, "relay.ca", "at most"),
    ({"url": URL, "ca": CA_PEM + CA_KEY}, "relay.ca", "private key"),
    ({"url": URL, "ca": CA_PEM, "caFile": "/etc/ca.crt"}, "relay.ca", "not both"),
    ({"url": URL, "urll": URL}, "relay.urll", "accepted: "),
    ({"url": URL, "problem": "x"}, "relay.problem", "set by the webhook"),
    ({"url": [URL]}, "relay.url", "string"),
    ({"url": URL, "ca": CA_PEM.replace("A", "\u00e9", 1)}, "relay.ca", "PEM"),
])
def test_bad_relay_settings_are_refused_naming_the_field(relay: dict, field: str, says: str) -> None:
    with pytest.raises(SettingsError) as exc:
        settings_from_dict({"relay": relay})
    assert exc.value.field == field, str(exc.value)
    assert says in exc.value.detail, str(exc.value)
    assert CA_PEM[40:80] not in str(exc.value) and CA_KEY[40:80] not in str(exc.value)  # the bundle is not quoted back


def test_ca_file_is_read_relative_to_the_settings_file_and_a_missing_one_turns_the_relay_off(tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump({"relay": {"url": URL, "caFile": "relay-ca.crt"}}))
    missing = load_settings(str(tmp_path / "settings.yaml"))
    assert missing.relay.ca_file == str(tmp_path / "relay-ca.crt") and not missing.relay.active
    assert "relay-ca.crt" in missing.relay.problem and "cannot read" in missing.relay.problem
    (tmp_path / "relay-ca.crt").write_text("")
    assert "empty" in load_settings(str(tmp_path / "settings.yaml")).relay.problem
    (tmp_path / "relay-ca.crt").write_text(CA_PEM)
    s = load_settings(str(tmp_path / "settings.yaml"))
    assert s.relay.active and s.relay.ca == CA_PEM and s.relay.problem == ""
    (tmp_path / "relay-ca.crt").write_text("garbage\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(str(tmp_path / "settings.yaml"))
    assert exc.value.field == "relay.ca_file"


# -- mutated pods ---------------------------------------------------------------------------------------
def test_sidecar_pod_gets_the_relay_config_and_the_token_in_the_sidecar_only() -> None:
    s = settings_from_dict({"relay": RELAY})
    pod = mutated(load("pod-annotated-chat.json"), s)
    a = agents(pod)
    cfg = config_of(a["kms-agent"])
    assert (cfg.relay_url, cfg.relay_ca, cfg.relay_token_path, cfg.relay_poll_factor) == (URL, CA_PEM, RELAY_TOKEN_PATH, 4.0)
    init = config_of(a["kms-agent-init"])  # fetches once and exits: no relay, no token, no PEM
    assert (init.relay_url, init.relay_ca, init.relay_token_path) == ("", "", "")
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == "kms-relay-token"]
    assert vol["projected"]["sources"] == [{"serviceAccountToken": {"audience": "relay.test", "expirationSeconds": 600, "path": "token"}}]
    mounts = mounts_of(pod, "kms-relay-token")
    assert set(mounts) == {"kms-agent"}, mounts  # not the app, not the init container
    assert mounts["kms-agent"]["readOnly"] is True
    assert os.path.join(mounts["kms-agent"]["mountPath"], vol["projected"]["sources"][0]["serviceAccountToken"]["path"]) == cfg.relay_token_path
    assert CA_PEM not in json.dumps(a["kms-agent-init"])


def test_native_pod_gets_the_relay_in_its_restartable_agent() -> None:
    pod = mutated(load("pod-mode-native.json"), settings_from_dict({"relay": RELAY}))
    a = agents(pod)
    assert set(a) == {"kms-agent"} and a["kms-agent"]["restartPolicy"] == "Always"
    cfg = config_of(a["kms-agent"])
    assert cfg.relay_url == URL and cfg.relay_ca == CA_PEM
    assert set(mounts_of(pod, "kms-relay-token")) == {"kms-agent"}


def test_kubernetes_auth_pod_gets_both_tokens_apart() -> None:
    body = load("pod-annotated-chat.json")
    body["request"]["object"]["metadata"]["annotations"].update({P + "auth": "kubernetes", P + "identity-id": "id-123"})
    pod = mutated(body, settings_from_dict({"relay": RELAY}))
    auds = {v["name"]: v["projected"]["sources"][0]["serviceAccountToken"]["audience"]
            for v in pod["spec"]["volumes"] if "projected" in v and v["name"].startswith("kms-")}
    assert auds == {"kms-sa-token": "kms.hanzo.ai", "kms-relay-token": "relay.test"}
    cfg = config_of(agents(pod)["kms-agent"])
    assert cfg.token_path != cfg.relay_token_path and cfg.relay_url == URL


@pytest.mark.parametrize("name", ["pod-annotated-chat.json", "pod-mode-native.json", "job-pod-mode-init.json"])
def test_pods_the_relay_does_not_cover_are_unchanged(name: str) -> None:
    """Outside relay.namespaces, with the relay configured but its CA file unreadable, and in init
    mode (no refreshing agent): byte for byte the patch of settings without a relay."""
    body = load(name)
    plain = patch_of(body, Settings())
    elsewhere = settings_from_dict({"relay": {**RELAY, "namespaces": ["other"]}})
    pending = settings_from_dict({"relay": {"url": URL, "caFile": "/nonexistent/relay-ca.crt"}})
    assert patch_of(body, elsewhere) == plain
    assert patch_of(body, pending) == plain
    if name == "job-pod-mode-init.json":
        assert patch_of(body, settings_from_dict({"relay": RELAY})) == plain
    else:  # the namespace listed: it is relayed
        listed = settings_from_dict({"relay": {**RELAY, "namespaces": ["other", body["request"]["namespace"]]}})
        assert patch_of(body, listed) != plain
        assert patch_of(in_namespace(body, "other"), elsewhere) != patch_of(in_namespace(body, "other"), Settings())


def test_a_pod_volume_named_like_the_relay_token_is_refused() -> None:
    body = load("pod-annotated-chat.json")
    body["request"]["object"]["spec"]["volumes"].append({"name": "kms-relay-token", "emptyDir": {}})
    result = review(body, settings_from_dict({"relay": RELAY}))
    assert result.decision == "rejected" and "kms-relay-token" in result.message and "reserves" in result.message


def test_the_ca_is_encoded_once_per_settings_load() -> None:
    """The relay fields are one dict made at settings load; every relayed pod merges the same one."""
    s = settings_from_dict({"relay": RELAY})
    assert s.relay.config_fields is s.relay.config_fields
    assert s.relay.config_fields["relay_ca"] is s.relay.ca


# -- hot reload through the real webhook -----------------------------------------------------------------
def test_the_relay_ca_appearing_is_a_settings_reload_and_clears_the_answer_cache(tmp_path: Path) -> None:
    """The chart's auto TLS mode: settings name relay-ca.crt before the webhook made its CA Secret.
    The same request is answered without the relay (twice: the second from the cache), then, once
    the CA file appears in the volume, with it. A settings edit while the CA is missing still reloads."""
    from .reliability_support import WebhookProcess

    cm = tmp_path / "etc-kms-injector"
    settings = {"relay": {"url": URL, "caFile": "relay-ca.crt", "pollFactor": 7}}
    write_configmap(cm, {"settings.yaml": yaml.safe_dump(settings)})
    w = WebhookProcess.start(tmp_path, "--settings", str(cm / "settings.yaml"))
    conn = w.connection()
    review_body = load("pod-annotated-chat.json")
    review_body["request"]["namespace"] = review_body["request"]["object"]["metadata"]["namespace"] = "apps"
    raw = json.dumps(review_body).encode()

    def sidecar_config() -> AgentConfig:
        status, body = w.post(conn, raw)
        assert status == 200, body[:300]
        pod = apply_patch(review_body["request"]["object"], decode_patch(json.loads(body)["response"]))
        return config_of(agents(pod)["kms-agent"])

    try:
        for _ in range(2):
            assert sidecar_config().relay_url == ""
        text = w.get("/metrics")[1]
        assert metric(text, 'kms_injector_review_cache_total{result="hit"}') >= 1
        assert any('"relay_not_injected"' in line and "relay-ca.crt" in line for line in w.log().splitlines())
        # A settings edit while the CA file is missing is still noticed.
        write_configmap(cm, {"settings.yaml": yaml.safe_dump({**settings, "env": "staging"})})
        poll(lambda: metric(w.get("/metrics")[1], "kms_injector_settings_generation") == 2, "the settings edit")
        # kubelet adds the Secret's key to the projected volume: the same request now gets the relay.
        write_configmap(cm, {"settings.yaml": yaml.safe_dump({**settings, "env": "staging"}), "relay-ca.crt": CA_PEM})
        cfg = poll(lambda: (c := sidecar_config()).relay_url and c, "the relay CA to be served")
        assert (cfg.relay_url, cfg.relay_ca, cfg.relay_poll_factor, cfg.env) == (URL, CA_PEM, 7.0, "staging")
        assert metric(w.get("/metrics")[1], "kms_injector_settings_generation") == 3
        assert CA_PEM[40:80] not in w.log()  # the PEM is not logged
    finally:
        conn.close()
        w.stop()
    assert "Traceback" not in w.log()


# -- the chart, in every TLS mode ------------------------------------------------------------------------
def _chart_settings(mode: str, tmp_path: Path, ca_pem: str | None) -> tuple[Settings, list[dict[str, Any]], str]:
    """Render with the relay on; lay out the webhook's projected config volume as kubelet would
    (settings.yaml + relay-ca.crt from the Secret key the Deployment names); load it as the webhook does."""
    from .test_chart_relay import everything

    objs = everything({"relay": {"enabled": True}, "tls": {"mode": mode}})
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook")
    deploys = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in objs if o["kind"] == "Deployment"}
    names = set()
    for component, deploy in deploys.items():
        spec = deploy["spec"]["template"]["spec"]
        sources = next(v for v in spec["volumes"] if v["name"] == "config")["projected"]["sources"]
        (src,) = [s["secret"] for s in sources if "secret" in s and any(i["path"] == "relay-ca.crt" for i in s["secret"]["items"])]
        assert src["items"] == [{"key": "ca.crt", "path": "relay-ca.crt"}] and src["optional"] is True, (component, src)
        names.add(src["name"])
    assert len(names) == 1, names  # the webhook and the relay see the same CA
    (secret_name,) = names
    files = {"settings.yaml": cm["data"]["settings.yaml"]}
    if ca_pem is not None:
        files["relay-ca.crt"] = ca_pem
    write_configmap(tmp_path / "etc-kms-injector", files)
    return load_settings(str(tmp_path / "etc-kms-injector" / "settings.yaml")), objs, secret_name


@pytest.mark.parametrize("mode, secret", [("auto", "kms-injector-tls"), ("helm", "kms-injector-relay-tls"),
                                          ("certManager", "kms-injector-relay-tls")])
def test_chart_relay_settings_load_in_every_tls_mode(mode: str, secret: str, tmp_path: Path) -> None:
    ca = certs.generate_ca("kms-injector-ca").cert_pem.decode()
    s, objs, secret_name = _chart_settings(mode, tmp_path, ca)
    assert secret_name == secret
    relay_deploy = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kms-injector-relay")
    args = relay_deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "kms-injector-relay")
    assert s.relay.url == f"https://{svc['metadata']['name']}.kms-injector.svc:{svc['spec']['ports'][0]['port']}" == URL
    assert s.relay.audience == args[args.index("--audience") + 1]
    assert s.relay.ca == ca and s.relay.poll_factor == 10.0 and s.relay.active
    pod = mutated(load("pod-annotated-chat.json"), s)
    cfg = config_of(agents(pod)["kms-agent"])
    assert (cfg.relay_url, cfg.relay_ca) == (URL, ca)
    # Before kubelet has the key (auto: the webhook has not made its Secret yet): loads, no relay.
    pending, _, _ = _chart_settings(mode, tmp_path / "pending", None)
    assert pending.relay.url == URL and not pending.relay.active


def test_chart_without_the_relay_adds_no_relay_and_settings_may_name_one(tmp_path: Path) -> None:
    from .test_chart import render, settings_of

    objs = render({})
    assert not settings_of(objs, tmp_path).relay.url
    spec = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "relay-ca.crt" not in json.dumps(spec)
    external = settings_of(render({"settings": {"relay": {"url": "https://relay.example:8443", "ca": CA_PEM,
                                                          "namespaces": ["hanzo"]}}}), tmp_path)
    assert external.relay.url == "https://relay.example:8443" and external.relay.applies_to("hanzo")
    # relay.enabled keeps what settings set (namespaces) and fills in the rest; pollFactor reaches it.
    both = settings_of(render({"relay": {"enabled": True, "pollFactor": 20}, "settings": {"relay": {"namespaces": ["hanzo"]}}}), tmp_path)
    assert (both.relay.url, both.relay.namespaces, both.relay.poll_factor) == (URL, ("hanzo",), 20.0)


def test_schema_relay_settings_keys_follow_webhook_settings() -> None:
    import dataclasses

    from webhook.settings import RelaySettings

    from .test_chart import CHART

    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]["settings"]["properties"]["relay"]
    assert set(props["properties"]) == {f.name for f in dataclasses.fields(RelaySettings)} - {"problem"}
    assert props["additionalProperties"] is False


def test_helm_mode_agent_config_verifies_the_rendered_relay(tmp_path: Path) -> None:
    """helm TLS mode end to end: the rendered relay (its args, its Secret, the settings ConfigMap)
    runs; the AgentConfig the webhook writes for a pod, loaded from the same render, gives the
    agent's own TLS context (injector.relay_client.ssl_context) that verifies it by the URL's name."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    from .test_chart import _free_port
    from .test_chart_relay import everything, one

    values = {"tls": {"mode": "helm"}, "relay": {"enabled": True, "shutdownDelaySeconds": 0}}
    objs = everything(values)
    relay = [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"]
    secret = one(relay, "Secret")
    cm = one([o for o in objs if o not in relay], "ConfigMap")
    etc, auth = tmp_path / "etc", tmp_path / "auth"
    write_configmap(etc, {"settings.yaml": cm["data"]["settings.yaml"], "relay-ca.crt": base64.b64decode(secret["data"]["ca.crt"]).decode()})
    (etc / "tls").mkdir()
    for key in ("tls.crt", "tls.key"):
        (etc / "tls" / key).write_bytes(base64.b64decode(secret["data"][key]))
    auth.mkdir()
    (auth / "clientId").write_text("relay-id")
    (auth / "clientSecret").write_text("relay-secret")
    cfg = config_of(agents(mutated(load("pod-annotated-chat.json"), load_settings(str(etc / "settings.yaml"))))["kms-agent"])
    assert cfg.relay_url == URL
    c = one(relay, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    port = _free_port()
    args = [a.replace("/etc/kms-relay", str(etc)).replace("/kms/auth", str(auth)) for a in c["args"]]
    args[args.index("--port") + 1] = str(port)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kms-injector"), "relay", *args, "--host", "127.0.0.1"],
                            env={**os.environ, "POD_NAMESPACE": "kms-injector"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx = relay_client.ssl_context(cfg)
    name = urlsplit(cfg.relay_url).hostname

    def handshake() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
                return tls.version() is not None
        except ConnectionRefusedError:
            return False

    try:
        deadline = time.monotonic() + 30
        while not handshake():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the relay never listened"
            time.sleep(0.1)
        # And a relay certificate from another CA is refused by that context (not any TLS will do).
        other = ssl.create_default_context(cadata=CA_PEM)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError):
            other.wrap_socket(raw, server_hostname=name)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_host_network_pod_is_warned_that_it_cannot_resolve_the_relay() -> None:
    body = load("pod-annotated-chat.json")
    body["request"]["object"]["spec"]["hostNetwork"] = True
    relayed = review(body, settings_from_dict({"relay": RELAY}))
    assert relayed.decision == "injected"
    assert any("change relay kms-injector-relay.kms-injector.svc" in w and "ClusterFirstWithHostNet" in w for w in relayed.warnings), relayed.warnings
    assert not any("change relay" in w for w in review(body, Settings()).warnings)
    body["request"]["object"]["spec"]["dnsPolicy"] = "ClusterFirstWithHostNet"
    assert not any("change relay" in w for w in review(body, settings_from_dict({"relay": RELAY})).warnings)


@pytest.mark.parametrize("values, where", [
    ({"relay": {"enabled": True, "pollFactor": 0}}, "pollFactor"),
    ({"relay": {"enabled": True, "pollFactor": "10"}}, "pollFactor"),
    ({"settings": {"relay": {"urll": URL}}}, "urll"),
    ({"settings": {"relay": {"url": "http://relay.example"}}}, "url"),
    ({"settings": {"relay": {"pollFactor": 5}}}, "pollFactor"),  # settings keys are snake_case in values
    ({"settings": {"relay": {"ca": "x", "ca_file": "relay-ca.crt"}}}, "relay"),
])
def test_chart_schema_refuses_bad_relay_values(values: dict, where: str) -> None:
    import helm_python

    from .test_chart import CHART, NAMESPACE, RELEASE

    with helm_python.Chart.load(CHART) as c, pytest.raises(Exception) as exc:
        c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where in str(exc.value), str(exc.value)


# -- end to end: the AgentConfig the webhook writes subscribes to the real relay -------------------------
async def test_the_webhooks_agent_config_subscribes_to_the_real_relay_and_gets_the_rotation(relay_env: RelayHarness) -> None:
    """One settings file for both processes (its relay block naming the relay, its CA as a file
    next to it): the webhook mutates a pod of `chat`; the sidecar's AgentConfig, with the projected
    token where kubelet would put it, drives the agent's relay client (injector.relay_client) against
    the real `kms-injector relay` (TokenReview by the stand-in API server); a rotation of the pod's
    folder wakes it. A pod of `shop` (not in relay.namespaces) gets no relay at all."""
    from injector.relay_client import RelayClientState, relay_trigger

    relay = relay_env
    (relay.tmp / "relay-ca.crt").write_text(relay.ca_pem)
    text = SETTINGS.format(host=relay.kms.base_url) + yaml.safe_dump(
        {"relay": {"url": relay.url, "caFile": "relay-ca.crt", "audience": AUDIENCE, "namespaces": ["chat"]}})
    (relay.tmp / "settings.yaml").write_text(text)
    settings = load_settings(str(relay.tmp / "settings.yaml"))
    assert settings.relay.active and settings.relay.ca == relay.ca_pem
    relay.start()
    await relay.wait_ready()

    def pod_review(ns: str, sa: str, path: str) -> dict:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": f"{sa}-", "namespace": ns,
                                                              "annotations": {P + "inject": "true", P + "path": path}},
               "spec": {"serviceAccountName": sa, "containers": [{"name": sa, "image": f"ghcr.io/example/{sa}:1"}]}}
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "7c0a4b0e-0000-4000-8000-000000000001", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": ns, "operation": "CREATE",
            "object": pod}}

    shop = mutated(pod_review("shop", "shop", "/shared"), settings)
    assert config_of(agents(shop)["kms-agent"]).relay_url == "" and "kms-relay-token" not in json.dumps(shop)

    pod = mutated(pod_review("chat", "chat", "/app"), settings)
    cfg = config_of(agents(pod)["kms-agent"])
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == "kms-relay-token"]
    assert vol["projected"]["sources"][0]["serviceAccountToken"]["audience"] == AUDIENCE
    assert cfg.relay_url == relay.url and cfg.relay_token_path == RELAY_TOKEN_PATH
    token_file = relay.tmp / "projected" / "token"  # kubelet's projection of kms-relay-token, here
    token_file.parent.mkdir()
    token_file.write_text(relay.kube.token_for("chat", "chat"))
    cfg.relay_token_path = str(token_file)
    state, log, wakes = RelayClientState(spread=0.0), ListLog(), []
    task = asyncio.create_task(relay_trigger(cfg, wakes.append, log, state))
    try:
        await wait_until(lambda: state.healthy, "the sidecar's relay stream subscribed and watched")
        assert wakes == ["relay: subscribed"] and cfg.relay_poll_factor == 10.0
        relay.kms.rotate("/app")
        await wait_until(lambda: "relay: /app" in wakes, "the rotation of /app to wake the agent")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.05)


def test_notes_say_the_relay_is_on_and_where() -> None:
    from .test_chart import _render

    on = dict(_render(json.dumps({"relay": {"enabled": True}}), "kms-injector", "kms-injector"))["kms-injector/templates/NOTES.txt"]
    off = dict(_render(json.dumps({}), "kms-injector", "kms-injector"))["kms-injector/templates/NOTES.txt"]
    assert URL in on and "kms-relay-auth" in on and "relay_not_injected" in on
    assert "Change relay" not in off
