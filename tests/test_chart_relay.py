"""The chart's relay (charts/kms-injector/templates/relay-*.yaml), rendered and linted with real
Helm in every TLS mode, validated against the Kubernetes schemas, and its rendered command line
and TLS material run by the real `kms-injector relay`. Helpers are tests/test_chart.py's."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from tests.test_chart import (wait_ready, CHART, HANZO_VALUES, K8S_VERSION, NAMESPACE, RELEASE, _check_cert_manager_shape, _flag,
                              _free_port, _https, _render)

RELAY = f"{RELEASE}-relay"
ON = {"relay": {"enabled": True}}
SCENARIOS: dict[str, dict[str, Any]] = {
    "auto": {**ON, "tls": {"mode": "auto"}},
    "certManager": {**ON, "tls": {"mode": "certManager"}},
    "certManager-issuer": {**ON, "tls": {"mode": "certManager", "certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "internal-ca"}}}},
    "helm": {**ON, "tls": {"mode": "helm"}},
    "hanzo": yaml.safe_load(HANZO_VALUES.read_text()),
    "tuned": {"relay": {"enabled": True, "replicaCount": 3, "pollInterval": "5s", "readValues": False, "events": False,
                        "audience": "relay.example", "identitySecret": "other-identity", "extraArgs": ["--heartbeat", "20"],
                        "podDisruptionBudget": {"enabled": False}}},
}


def everything(values: dict[str, Any]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path, text in _render(json.dumps(values, sort_keys=True), RELEASE, NAMESPACE):
        if not path.endswith("NOTES.txt"):
            objs.extend(o for o in yaml.safe_load_all(text) if o)
    return objs


def relay_objs(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in everything(values) if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, (kind, [o["metadata"]["name"] for o in found])
    return found[0]


def relay_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_off_by_default_and_on_in_the_hanzo_example() -> None:
    assert relay_objs({}) == []
    assert yaml.safe_load((CHART / "values.yaml").read_text())["relay"]["enabled"] is False
    assert one(relay_objs(SCENARIOS["hanzo"]), "Deployment")["metadata"]["name"] == RELAY


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_relay_manifest_validates(scenario: str) -> None:
    objs = relay_objs(SCENARIOS[scenario])
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= {o["kind"] for o in objs}
    for obj in objs:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            _check_cert_manager_shape(obj)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values, where", [
    ({"relay": {"enabled": True, "pollIntervall": "2s"}}, "pollIntervall"),
    ({"relay": {"pollInterval": "soon"}}, "/relay/pollInterval"),
    ({"relay": {"readValues": "no"}}, "/relay/readValues"),
    ({"relay": {"identitySecret": "Not_A_Secret"}}, "/relay/identitySecret"),
    ({"relay": {"audience": "two words"}}, "/relay/audience"),
])
def test_schema_rejects_relay_typos_and_bad_values(values: dict[str, Any], where: str) -> None:
    with helm_python.Chart.load(CHART) as c, pytest.raises(Exception) as exc:
        c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where.strip("/").split("/")[-1] in str(exc.value), str(exc.value)


def test_deployment_is_ha_hardened_and_apart_from_the_webhook() -> None:
    objs = everything(SCENARIOS["auto"])
    relay = [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"]
    deploy = one(relay, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = relay_container(relay)
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "relay"
    assert one(relay, "Service")["spec"]["selector"] == selector
    assert one(relay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert one(relay, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    webhook_svc = next(o for o in objs if o["kind"] == "Service" and o not in relay)
    assert webhook_svc["spec"]["selector"]["app.kubernetes.io/component"] == "webhook"  # never routes to a relay pod
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and pod["securityContext"]["runAsNonRoot"] is True
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS")
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["command"] == ["kms-injector", "relay"]
    assert pod["serviceAccountName"] == RELAY and pod["automountServiceAccountToken"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["identity"]["secret"]["secretName"] == "kms-relay-auth"
    assert {i["key"] for i in volumes["identity"]["secret"]["items"]} == {"clientId", "clientSecret"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/kms/auth"]["readOnly"] is True and mounts["/etc/kms-relay"]["readOnly"] is True
    # the webhook's settings (path policies): the very same ConfigMap
    cm = next(s["configMap"] for s in volumes["config"]["projected"]["sources"] if "configMap" in s)
    assert cm["name"] == one([o for o in objs if o not in relay], "ConfigMap")["metadata"]["name"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == selector


def test_rbac_is_tokenreviews_and_in_auto_mode_one_secret_read() -> None:
    objs = relay_objs(SCENARIOS["auto"])
    assert one(objs, "ClusterRole")["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                                                  "verbs": ["create"]}]
    assert one(objs, "Role")["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{RELEASE}-tls"],
                                           "verbs": ["get"]}]
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        assert one(objs, kind)["subjects"] == [{"kind": "ServiceAccount", "name": RELAY, "namespace": NAMESPACE}]
    args = relay_container(objs)["args"]
    assert _flag(args, "--tls-mode") == "auto" and _flag(args, "--tls-secret") == f"{RELEASE}-tls"
    assert _flag(args, "--service") == one(objs, "Service")["metadata"]["name"]
    for mode in ("helm", "certManager"):
        files = relay_objs(SCENARIOS[mode])
        assert "Role" not in {o["kind"] for o in files}
        args = relay_container(files)["args"]
        assert _flag(args, "--tls-mode") == "files" and _flag(args, "--tls-cert") == "/etc/kms-relay/tls/tls.crt"


def test_values_reach_the_command_line() -> None:
    objs = relay_objs(SCENARIOS["tuned"])
    deploy = one(objs, "Deployment")
    args = relay_container(objs)["args"]
    assert deploy["spec"]["replicas"] == 3
    assert (_flag(args, "--poll-interval"), _flag(args, "--read-values"), _flag(args, "--events")) == ("5s", "false", "false")
    assert _flag(args, "--audience") == "relay.example" and args[-2:] == ["--heartbeat", "20"]
    assert "PodDisruptionBudget" not in {o["kind"] for o in objs}
    ident = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "identity")
    assert ident["secret"]["secretName"] == "other-identity"


def test_cert_manager_mode_issues_from_the_webhooks_issuer() -> None:
    objs = everything(SCENARIOS["certManager"])
    certs_ = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Certificate"}
    relay_cert, webhook_cert = certs_[f"{RELAY}-tls"], certs_[f"{RELEASE}-tls"]
    assert relay_cert["spec"]["issuerRef"] == webhook_cert["spec"]["issuerRef"]
    assert f"{RELAY}.{NAMESPACE}.svc" in relay_cert["spec"]["dnsNames"]
    other = relay_objs(SCENARIOS["certManager-issuer"])
    assert one(other, "Certificate")["spec"]["issuerRef"]["name"] == "internal-ca"


def _relay_args_ok(args: list[str]) -> Any:
    from relay.server import parse_args

    return parse_args(args)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_args_are_accepted_by_the_relay_command_line(scenario: str) -> None:
    c = relay_container(relay_objs(SCENARIOS[scenario]))
    assert c["command"] == ["kms-injector", "relay"]
    ns = _relay_args_ok(c["args"])
    assert ns.settings == "/etc/kms-relay/settings.yaml" and ns.credentials_dir == "/kms/auth"
    help_text = subprocess.run([str(Path(sys.executable).parent / "kms-injector"), "relay", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for flag in (a for a in c["args"] if a.startswith("--")):
        assert f"  {flag} " in help_text or f"  {flag}\n" in help_text, flag


def test_rendered_relay_runs_with_the_rendered_tls_and_settings(tmp_path: Path) -> None:
    """helm TLS mode + the Hanzo example: the relay's args, its Secret and the settings ConfigMap
    exactly as rendered; readiness over TLS verified by the Secret's ca.crt and the Service's DNS name."""
    values = {**SCENARIOS["hanzo"], "tls": {"mode": "helm"}, "relay": {**SCENARIOS["hanzo"]["relay"], "shutdownDelaySeconds": 0}}
    objs = everything(values)
    relay = [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"]
    c, secret = relay_container(relay), one(relay, "Secret")
    cm = one([o for o in objs if o not in relay], "ConfigMap")
    etc, auth = tmp_path / "etc", tmp_path / "auth"
    (etc / "tls").mkdir(parents=True)
    auth.mkdir()
    (etc / "settings.yaml").write_text(cm["data"]["settings.yaml"])
    for key in ("tls.crt", "tls.key"):
        (etc / "tls" / key).write_bytes(base64.b64decode(secret["data"][key]))
    (auth / "clientId").write_text("relay-id")
    (auth / "clientSecret").write_text("relay-secret")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert leaf.issuer == x509.load_pem_x509_certificate(ca.read_bytes()).subject
    port = _free_port()
    args = [a.replace("/etc/kms-relay", str(etc)).replace("/kms/auth", str(auth)) for a in c["args"]]
    args[args.index("--port") + 1] = str(port)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kms-injector"), "relay", *args, "--host", "127.0.0.1"],
                            env={**os.environ, "POD_NAMESPACE": NAMESPACE}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server_name = f"{one(relay, 'Service')['metadata']['name']}.{NAMESPACE}.svc"
    try:
        wait_ready(proc, port, ca, server_name, c["readinessProbe"]["httpGet"]["path"])
        # a subscription without a token is refused with a clear message (no Kubernetes API needed)
        status, body = _https(port, ca, server_name, "POST", "/v1/watch", b"{}")
        assert status == 401 and "Bearer" in json.loads(body)["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
