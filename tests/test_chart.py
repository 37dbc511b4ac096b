"""The Helm chart, rendered and linted with real Helm (helm-python-sdk binds Helm's Go library).

Every rendered manifest is validated against the Kubernetes OpenAPI schemas of the newest version
kubernetes-validate ships; the settings ConfigMap is loaded by the webhook's own settings loader.
No cluster: `lookup` returns nothing offline, so the helm-mode "reuse the existing Secret" branch
is exercised only in a real install (see README, "Install in a cluster").
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import json
import os
import signal
import socket
import ssl
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
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from webhook import settings as settings_mod

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kms-injector"
HANZO_VALUES = ROOT / "examples" / "values-hanzo.yaml"
K8S_VERSION = kubernetes_validate.latest_version()

RELEASE = "kms-injector"
NAMESPACE = "kms-injector"

HANZO_SERVICES = [
    "chat", "console", "analytics", "commerce", "flow", "rag", "search", "pricing", "vector",
    "bootnode", "studio", "bot-hub", "app", "crawl", "auto", "lux-chat",
]

TOGGLES: dict[str, Any] = {
    "fullnameOverride": "kmsi",
    "replicaCount": 3,
    "image": {"repository": "registry.example/kmsi", "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
    "agentImage": {"repository": "registry.example/kmsi-agent", "tag": "9.9.9"},
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "podAntiAffinity": "hard",
    "topologySpreadConstraints": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
    "podAnnotations": {"prometheus.io/scrape": "true"},
    "extraArgs": ["--review-cache", "1024"],
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "webhook": {
        "failurePolicy": "Ignore",
        "onlyAnnotatedPods": False,
        "excludeNamespaces": ["monitoring", "kube-system"],
        "namespaceSelectorExpressions": [{"key": "tenant", "operator": "Exists"}],
        "objectSelector": {"matchExpressions": [{"key": "kms.hanzo.ai/skip", "operator": "DoesNotExist"}]},
        "matchConditions": [{"name": "not-dry-run-only", "expression": "object.metadata.name != 'skip-me'"}],
    },
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "auto": {"tls": {"mode": "auto"}},
    "certManager": {"tls": {"mode": "certManager"}},
    "certManager-issuer": {"tls": {"mode": "certManager", "certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "internal-ca"}}}},
    "helm": {"tls": {"mode": "helm", "helm": {"validityDays": 365}}},
    "hanzo": yaml.safe_load(HANZO_VALUES.read_text()),
    "toggles": TOGGLES,
    "toggles-helm": {**TOGGLES, "tls": {"mode": "helm"}},
}


# -- rendering helpers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chart():
    with helm_python.Chart.load(CHART) as c:
        yield c


@functools.lru_cache(maxsize=None)
def _render(values_json: str, name: str, namespace: str) -> tuple[tuple[str, str], ...]:
    with helm_python.Chart.load(CHART) as c:
        out = c.render(json.loads(values_json), name=name, namespace=namespace, is_install=True)
    return tuple(sorted(out.items()))


def render(values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """All rendered objects (NOTES.txt excluded), in template order."""
    objs: list[dict[str, Any]] = []
    for path, text in _render(json.dumps(values or {}, sort_keys=True), name, namespace):
        if path.endswith("NOTES.txt"):
            continue
        # The relay's objects (component: relay) are tests/test_chart_relay.py's subject.
        objs.extend(o for o in yaml.safe_load_all(text)
                    if o and o.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") != "relay")
    return objs


def notes(values: dict[str, Any] | None = None) -> str:
    out = dict(_render(json.dumps(values or {}, sort_keys=True), RELEASE, NAMESPACE))
    return out[f"{CHART.name}/templates/NOTES.txt"]


def only(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def settings_of(objs: list[dict[str, Any]], tmp_path: Path) -> settings_mod.Settings:
    """The rendered settings.yaml, written to a file and loaded the way the webhook loads it."""
    path = tmp_path / "settings.yaml"
    path.write_text(only(objs, "ConfigMap")["data"]["settings.yaml"])
    return settings_mod.load_settings(str(path))


def _check_cert_manager_shape(obj: dict[str, Any]) -> None:
    # kubernetes-validate ships only the built-in API schemas, not cert-manager's CRDs, so these
    # kinds are checked here by hand, minimally: the fields cert-manager requires to act on them.
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] in ("Issuer", "Certificate"), obj["kind"]
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    if obj["kind"] == "Issuer":
        assert len([k for k in ("selfSigned", "ca", "acme", "vault", "venafi") if k in spec]) == 1, spec
        if "ca" in spec:
            assert spec["ca"]["secretName"]
    else:
        assert spec["secretName"]
        assert spec["issuerRef"]["name"] and spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
        assert spec.get("isCA") or spec["dnsNames"], "a serving certificate needs dnsNames"
        for key in ("duration", "renewBefore"):
            if key in spec:
                assert str(spec[key]).endswith(("h", "m", "s")), spec[key]


# -- lint and schema ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert report["messages"] == [], report  # not even info-level findings
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_validates_against_kubernetes_schemas(scenario: str) -> None:
    objs = render(SCENARIOS[scenario])
    assert "Deployment" in kinds(objs) and "MutatingWebhookConfiguration" in kinds(objs)
    for obj in objs:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            _check_cert_manager_shape(obj)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_validates_against_a_current_kubernetes() -> None:
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30)


def test_a_broken_manifest_would_fail_validation() -> None:
    # Guard against a validator that accepts anything: the same Deployment with a typo is refused.
    deploy = only(render(), "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values, where", [
    ({"replicas": 3}, "replicas"),
    ({"tls": {"mode": "Auto"}}, "/tls/mode"),
    ({"tls": {"mode": "auto", "certManger": {}}}, "certManger"),
    ({"webhook": {"failurePolicy": "fail"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 60}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"excludeNamespaces": ["Not_A_Namespace"]}}, "/webhook/excludeNamespaces/0"),
    ({"settings": {"alowed_hosts": []}}, "alowed_hosts"),
    ({"settings": {"agent": {"imagePullPolicy": "Always"}}}, "imagePullPolicy"),
    ({"settings": {"path_policies": [{"namespaces": ["a"], "paths": ["/a"]}]}}, "projects"),
    ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
    ({"image": {"repository": "x", "digest": "latest"}}, "/image/digest"),
    ({"containerPort": 443}, "/containerPort"),
])
def test_schema_rejects_typos_and_bad_values(chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.validate_schema(values)
    assert where in str(err.value)
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_is_valid_and_accepts_the_shipped_values() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    for values in (yaml.safe_load((CHART / "values.yaml").read_text()), SCENARIOS["hanzo"]):
        jsonschema.Draft7Validator(schema).validate(values)


def test_schema_settings_keys_follow_webhook_settings() -> None:
    # The schema refuses unknown settings keys; it must accept exactly what webhook/settings.py reads.
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert set(schema["properties"]) == fields(settings_mod.Settings)
    assert set(schema["properties"]["agent"]["properties"]) == fields(settings_mod.AgentSettings)
    assert set(schema["properties"]["kubernetes_auth"]["properties"]) == fields(settings_mod.KubernetesAuthSettings)
    assert set(schema["properties"]["path_policies"]["items"]["properties"]) == fields(settings_mod.PathPolicy)
    assert schema["additionalProperties"] is False


# -- settings ConfigMap -----------------------------------------------------------------------------
def test_default_settings_load_with_the_required_defaults(tmp_path: Path) -> None:
    s = settings_of(render(), tmp_path)
    assert s.host == "http://kms.hanzo.svc.cluster.local/api"
    assert s.project == "secrets-639-c"
    assert s.env == "prod"
    assert s.host_allowed("http://kms.hanzo.svc.cluster.local/api")
    assert not s.host_allowed("http://evil.example/api")
    assert s.agent.image == "ghcr.io/hanzoai/kms-injector-agent:0.1.0"
    assert s.agent.resources.memory_limit == "64Mi"
    assert s.secrets_size_limit == "16Mi"
    # kube-system and the release namespace are always excluded, on top of the configured ones.
    assert {"kube-system", NAMESPACE, "kube-public", "kube-node-lease"} <= set(s.excluded_namespaces)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_settings_load_in_every_scenario(scenario: str, tmp_path: Path) -> None:
    s = settings_of(render(SCENARIOS[scenario]), tmp_path)
    assert "kube-system" in s.excluded_namespaces and NAMESPACE in s.excluded_namespaces


def test_agent_image_comes_from_values_and_settings_override_it(tmp_path: Path) -> None:
    assert settings_of(render(TOGGLES), tmp_path).agent.image == "registry.example/kmsi-agent:9.9.9"
    pinned = {"agentImage": {"repository": "r.example/agent", "digest": "sha256:" + "b" * 64}}
    assert settings_of(render(pinned), tmp_path).agent.image == "r.example/agent@sha256:" + "b" * 64
    explicit = {"settings": {"agent": {"image": "mirror.example/agent:1.2.3"}}}
    assert settings_of(render(explicit), tmp_path).agent.image == "mirror.example/agent:1.2.3"


def test_settings_change_rolls_the_pods() -> None:
    a = only(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
    b = only(render({"settings": {"env": "staging"}}), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
    assert a != b


# -- the Hanzo platform example ----------------------------------------------------------------------
def test_hanzo_example_isolates_every_service_and_iam(tmp_path: Path) -> None:
    s = settings_of(render(SCENARIOS["hanzo"]), tmp_path)
    assert len(s.path_policies) == 17
    assert s.default_policy == "deny"
    for svc in HANZO_SERVICES:
        assert s.check_path("hanzo", svc, "secrets-639-c", f"/{svc}") is None, svc
        assert s.check_path("hanzo", svc, "secrets-639-c", f"/{svc}/nested") is None, svc
        for other in HANZO_SERVICES:
            if other != svc:
                assert s.check_path("hanzo", svc, "secrets-639-c", f"/{other}") is not None, (svc, other)
        assert s.check_path("hanzo", svc, "secrets-639-c", "/") is not None, svc
        assert s.check_path("hanzo", svc, "secrets-639-c", "/iam") is not None, svc
        assert s.check_path("hanzo", svc, "hanzo-iam", "/") is not None, svc
    # IAM: its own project only.
    assert s.check_path("hanzo", "iam", "hanzo-iam", "/") is None
    assert s.check_path("hanzo", "iam", "secrets-639-c", "/chat") is not None
    # Pods not covered by a policy (other service accounts, other namespaces) get nothing.
    assert s.check_path("hanzo", "default", "secrets-639-c", "/chat") is not None
    assert s.check_path("other", "chat", "secrets-639-c", "/chat") is not None
    # Auth Secrets: IAM's identity is protected; each service may mount only its own.
    assert s.protected_auth_secrets == ("iam-kms-auth",)
    assert s.check_auth_secret("hanzo", "iam", "iam-kms-auth") is None
    assert s.check_auth_secret("hanzo", "iam", "universal-auth-credentials") is not None
    for svc in HANZO_SERVICES:
        assert s.check_auth_secret("hanzo", svc, "universal-auth-credentials") is None, svc
        assert s.check_auth_secret("hanzo", svc, "iam-kms-auth") is not None, svc
    assert s.check_auth_secret("hanzo", "default", "iam-kms-auth") is not None


def test_hanzo_example_keeps_the_chart_defaults_it_does_not_override(tmp_path: Path) -> None:
    s = settings_of(render(SCENARIOS["hanzo"]), tmp_path)
    assert s.agent.resources.memory_request == "24Mi"  # merged from the chart's values.yaml
    assert s.auth_secret == "universal-auth-credentials"
    assert (s.host, s.project, s.env) == ("http://kms.hanzo.svc.cluster.local/api", "secrets-639-c", "prod")


def test_ca_bundle_and_organization_slug_reach_the_settings(tmp_path: Path) -> None:
    s = settings_of(render(), tmp_path)
    assert s.ca_bundle == settings_mod.CABundle() and s.organization_slug == ""  # off by default
    values = {"settings": {"host": "https://kms.internal.example/api", "organization_slug": "hanzo",
                           "ca_bundle": {"config_map": "kms-ca", "key": "bundle.pem"},
                           "path_policies": [{"namespaces": ["hanzo"], "projects": ["*"], "paths": ["/**"], "ca_secrets": ["team-ca"]}]}}
    s = settings_of(render(values), tmp_path)
    assert s.ca_bundle == settings_mod.CABundle(config_map="kms-ca", key="bundle.pem") and s.organization_slug == "hanzo"
    assert s.check_ca_secret("hanzo", "chat", "team-ca") is None and s.check_ca_secret("hanzo", "chat", "other") is not None


@pytest.mark.parametrize("ca_bundle,where", [
    ({"config_map": "a", "secret": "b"}, "ca_bundle"),
    ({"key": "a/b"}, "key"),
    ({"configmap": "a"}, "configmap"),
])
def test_schema_refuses_a_bad_ca_bundle(chart, ca_bundle: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.validate_schema({"settings": {"ca_bundle": ca_bundle}})
    assert where in str(err.value)


# -- Deployment ---------------------------------------------------------------------------------------
def test_deployment_is_ha_and_hardened() -> None:
    objs = render()
    deploy = only(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(objs)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    # Spread across nodes: a preferred anti-affinity and a topology spread constraint on hostname.
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname" and term["labelSelector"]["matchLabels"] == selector
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"]["matchLabels"] == selector
    # Security context.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # Probes on the HTTPS port.
    port = c["ports"][0]
    assert port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS"), probe
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # A writable in-memory cert dir; everything else read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert volumes[mounts["/var/run/kms-injector/certs"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["/etc/kms-injector"]["readOnly"] is True
    assert c["image"] == "ghcr.io/hanzoai/kms-injector-webhook:0.1.0"


def test_pdb_keeps_one_replica() -> None:
    objs = render()
    pdb = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == only(objs, "Deployment")["spec"]["selector"]
    assert "PodDisruptionBudget" not in kinds(render(TOGGLES))


def test_toggles_reach_the_pod_spec() -> None:
    objs = render(TOGGLES)
    deploy = only(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(objs)
    assert deploy["metadata"]["name"] == "kmsi" and deploy["spec"]["replicas"] == 3
    assert c["image"] == "registry.example/kmsi@sha256:" + "a" * 64
    assert pod["serviceAccountName"] == "existing-sa"
    assert "ServiceAccount" not in kinds(objs)
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert "nodeAffinity" in pod["affinity"]  # user affinity merged with ours
    assert "topologySpreadConstraints" not in pod
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["args"][-2:] == ["--review-cache", "1024"]
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    # auto mode with an existing SA: RBAC binds that SA.
    assert only(objs, "RoleBinding")["subjects"][0]["name"] == "existing-sa"


# -- TLS modes ----------------------------------------------------------------------------------------
def _flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def test_auto_mode_args_rbac_and_token() -> None:
    objs = render({"tls": {"mode": "auto"}})
    args = container(objs)["args"]
    mwc = only(objs, "MutatingWebhookConfiguration")
    svc = only(objs, "Service")
    assert _flag(args, "--settings") == "/etc/kms-injector/settings.yaml"
    assert _flag(args, "--tls-mode") == "auto"
    assert _flag(args, "--webhook-config") == mwc["metadata"]["name"]
    assert _flag(args, "--service") == svc["metadata"]["name"]
    assert _flag(args, "--namespace") == NAMESPACE
    assert _flag(args, "--cert-dir") == "/var/run/kms-injector/certs"
    assert _flag(args, "--port") == "8443"
    assert "--tls-cert" not in args and "--tls-key" not in args
    secret, lease = _flag(args, "--tls-secret"), _flag(args, "--lease")

    role = only(objs, "Role")
    by_resource: dict[str, list[dict[str, Any]]] = {}
    for rule in role["rules"]:
        assert len(rule["resources"]) == 1
        by_resource.setdefault(rule["resources"][0], []).append(rule)
    assert set(by_resource) == {"secrets", "leases"}
    for resource, name in (("secrets", secret), ("leases", lease)):
        named = [r for r in by_resource[resource] if r.get("resourceNames")]
        unnamed = [r for r in by_resource[resource] if not r.get("resourceNames")]
        assert len(named) == 1 and named[0]["resourceNames"] == [name]
        assert sorted(named[0]["verbs"]) == ["get", "update"]
        # create cannot be name-scoped; it must be the only verb granted without resourceNames.
        assert len(unnamed) == 1 and unnamed[0]["verbs"] == ["create"]
    cluster_role = only(objs, "ClusterRole")
    assert cluster_role["rules"] == [{
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [mwc["metadata"]["name"]],
        "verbs": ["get", "patch"],
    }]
    sa = only(objs, "ServiceAccount")["metadata"]["name"]
    for binding, role_obj in (("RoleBinding", role), ("ClusterRoleBinding", cluster_role)):
        b = only(objs, binding)
        assert b["roleRef"]["name"] == role_obj["metadata"]["name"]
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]  # the webhook patches it
    assert not [o for o in objs if o["kind"] == "Secret"]  # the webhook creates it


@pytest.mark.parametrize("mode", ["certManager", "helm"])
def test_files_modes_need_no_rbac_and_no_token(mode: str) -> None:
    objs = render({"tls": {"mode": mode}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(objs))
    pod = only(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    args = container(objs)["args"]
    assert _flag(args, "--tls-mode") == "files"
    assert _flag(args, "--tls-cert") == "/etc/kms-injector/tls/tls.crt"
    assert _flag(args, "--tls-key") == "/etc/kms-injector/tls/tls.key"
    assert "--tls-secret" not in args and "--lease" not in args
    sources = next(v for v in pod["volumes"] if v["name"] == "config")["projected"]["sources"]
    secret = next(s["secret"] for s in sources if "secret" in s)
    assert secret["name"] == f"{RELEASE}-tls"
    assert {i["path"] for i in secret["items"]} == {"tls/tls.crt", "tls/tls.key"}


def test_helm_mode_generates_a_ca_and_a_matching_serving_certificate() -> None:
    objs = render(SCENARIOS["helm"])
    secret = only(objs, "Secret")
    mwc = only(objs, "MutatingWebhookConfiguration")
    assert secret["type"] == "kubernetes.io/tls"
    ca_b64 = secret["data"]["ca.crt"]
    assert mwc["webhooks"][0]["clientConfig"]["caBundle"] == ca_b64  # same CA, same render
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_b64))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    key = load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), password=None)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.issuer == ca.subject
    pub = ca.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), leaf.signature_hash_algorithm)
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    svc = only(objs, "Service")["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in sans and f"{svc}.{NAMESPACE}.svc.cluster.local" in sans
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=364) <= lifetime <= dt.timedelta(days=366)
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)


def test_cert_manager_mode_builds_a_ca_chain_and_injects_it() -> None:
    objs = render(SCENARIOS["certManager"])
    mwc = only(objs, "MutatingWebhookConfiguration")
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    certs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Certificate"}
    serving = certs[f"{RELEASE}-tls"]
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-tls"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    assert serving["spec"]["secretName"] == f"{RELEASE}-tls"
    svc = only(objs, "Service")["metadata"]["name"]
    assert f"{svc}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    # serving <- CA issuer <- CA certificate <- self-signed issuer
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    ca_cert = next(c for c in certs.values() if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"])
    assert ca_cert["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]
    assert not [o for o in objs if o["kind"] == "Secret"]


def test_cert_manager_mode_with_an_existing_issuer() -> None:
    objs = render(SCENARIOS["certManager-issuer"])
    assert "Issuer" not in kinds(objs)
    cert = only(objs, "Certificate")
    assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "internal-ca"}


# -- MutatingWebhookConfiguration ---------------------------------------------------------------------
def _excluded(webhook: dict[str, Any]) -> list[str]:
    exprs = [e for e in webhook["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"]
    assert len(exprs) == 1 and exprs[0]["operator"] == "NotIn"
    return exprs[0]["values"]


def test_webhook_configuration_defaults() -> None:
    objs = render()
    (wh,) = only(objs, "MutatingWebhookConfiguration")["webhooks"]
    svc = only(objs, "Service")
    assert wh["admissionReviewVersions"] == ["v1"]
    assert wh["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}]
    assert wh["sideEffects"] == "NoneOnDryRun"
    assert wh["timeoutSeconds"] == 10
    assert wh["reinvocationPolicy"] == "IfNeeded"
    assert wh["failurePolicy"] == "Fail"
    ref = wh["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"], ref["path"], ref["port"]) == (svc["metadata"]["name"], NAMESPACE, "/mutate", 443)
    (port,) = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "https")  # -> containerPort 8443
    assert svc["spec"]["selector"] == only(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert sorted(_excluded(wh)) == sorted(["kube-system", NAMESPACE])
    assert {"key": "kms.hanzo.ai/injection", "operator": "NotIn", "values": ["disabled"]} in wh["namespaceSelector"]["matchExpressions"]
    (cond,) = wh["matchConditions"]
    assert "kms.hanzo.ai/" in cond["expression"]
    assert "objectSelector" not in wh


@pytest.mark.parametrize("name, namespace, extra", [
    ("kms-injector", "kms-injector", []),
    ("kmsi", "platform-system", ["monitoring"]),
    ("x", "security", ["kube-system", "security"]),
])
def test_namespace_selector_always_excludes_kube_system_and_release_namespace(name: str, namespace: str, extra: list[str]) -> None:
    values = {"webhook": {"excludeNamespaces": extra}}
    objs = render(values, name=name, namespace=namespace)
    (wh,) = only(objs, "MutatingWebhookConfiguration")["webhooks"]
    values_ = _excluded(wh)
    assert "kube-system" in values_ and namespace in values_
    assert set(extra) <= set(values_)
    assert len(values_) == len(set(values_))
    assert wh["clientConfig"]["service"]["namespace"] == namespace


def test_webhook_options_from_values() -> None:
    (wh,) = only(render(TOGGLES), "MutatingWebhookConfiguration")["webhooks"]
    assert wh["failurePolicy"] == "Ignore"
    assert wh["matchConditions"] == TOGGLES["webhook"]["matchConditions"]  # built-in one turned off
    assert wh["objectSelector"] == TOGGLES["webhook"]["objectSelector"]
    assert {"key": "tenant", "operator": "Exists"} in wh["namespaceSelector"]["matchExpressions"]
    assert set(_excluded(wh)) == {"kube-system", NAMESPACE, "monitoring"}
    both = render({"webhook": {"matchConditions": [{"name": "extra", "expression": "true"}]}})
    (wh,) = only(both, "MutatingWebhookConfiguration")["webhooks"]
    assert [c["name"] for c in wh["matchConditions"]] == ["has-kms-annotations", "extra"]


def test_notes_show_how_to_annotate_a_first_pod() -> None:
    text = notes()
    assert "kms.hanzo.ai/inject: \"true\"" in text and "kms.hanzo.ai/path:" in text
    assert "universal-auth-credentials" in text and "/kms/secrets" in text
    assert text.startswith("kms-injector ")


def test_notes_follow_the_configured_mount_path() -> None:
    text = notes({"settings": {"mount_path": "/run/app-secrets"}})
    assert "under /run/app-secrets/ (e.g. /run/app-secrets/DATABASE_URL)" in text and "-- ls /run/app-secrets" in text
    assert "/kms/secrets" not in text


# -- the rendered pod spec against the real webhook --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, ca: Path, server_name: str, path: str, timeout: float = 30) -> None:
    """Poll a rendered server's readiness probe over TLS until it answers 200 (or the process dies)."""
    deadline, status = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        try:
            status, _ = _https(port, ca, server_name, "GET", path)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"readiness probe never passed (last status {status})")


def _https(port: int, ca: Path, server_name: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request the way kube-apiserver makes it: TLS verified against the caBundle, by DNS name."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        tls.sendall(head.encode() + body)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    status = int(data.split(b" ", 2)[1])
    header_end = data.index(b"\r\n\r\n") + 4
    return status, data[header_end:]


def test_rendered_pod_spec_runs_the_real_webhook_with_the_rendered_tls_and_settings(tmp_path: Path) -> None:
    # helm TLS mode + the Hanzo example: the container args, the Secret and the ConfigMap exactly as
    # rendered, with /etc/kms-injector moved under tmp_path and a free port instead of 8443.
    objs = render({**SCENARIOS["hanzo"], "tls": {"mode": "helm"}, "shutdownDelaySeconds": 0})
    c, secret = container(objs), only(objs, "Secret")
    mount = tmp_path / "etc"
    (mount / "tls").mkdir(parents=True)
    (mount / "settings.yaml").write_text(only(objs, "ConfigMap")["data"]["settings.yaml"])
    for key in ("tls.crt", "tls.key"):
        (mount / "tls" / key).write_bytes(base64.b64decode(secret["data"][key]))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(only(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]))
    port = _free_port()
    args = [a.replace("/etc/kms-injector", str(mount)) for a in c["args"]]
    args[args.index("--port") + 1] = str(port)
    env = {**os.environ, "POD_NAME": "kms-injector-0", "POD_NAMESPACE": NAMESPACE, "PYTHONDONTWRITEBYTECODE": "1"}
    exe = Path(sys.executable).parent / "kms-injector"
    proc = subprocess.Popen([str(exe), "webhook", *args, "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    svc = only(objs, "Service")["metadata"]["name"]
    server_name = f"{svc}.{NAMESPACE}.svc"
    try:
        wait_ready(proc, port, ca, server_name, c["readinessProbe"]["httpGet"]["path"])
        assert _https(port, ca, server_name, "GET", c["livenessProbe"]["httpGet"]["path"])[0] == 200

        review = json.loads((ROOT / "tests" / "fixtures" / "admission" / "pod-annotated-chat.json").read_text())
        mutate_path = only(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]["path"]
        # The chat pod runs as `default` here: the platform's deny-by-default policy refuses it...
        status, body = _https(port, ca, server_name, "POST", mutate_path, json.dumps(review).encode())
        answer = json.loads(body)["response"]
        assert status == 200 and answer["uid"] == review["request"]["uid"]
        assert answer["allowed"] is False and "/chat" in answer["status"]["message"]
        # ...and admits it, with a patch, once it runs as its own service account.
        review["request"]["object"]["spec"]["serviceAccountName"] = "chat"
        status, body = _https(port, ca, server_name, "POST", mutate_path, json.dumps(review).encode())
        answer = json.loads(body)["response"]
        assert status == 200 and answer["allowed"] is True and answer.get("patch")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the rendered command line is one `kms-injector webhook` accepts ------------------------------------
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_args_are_accepted_by_the_webhook_command_line(scenario: str, capsys) -> None:
    """Dockerfile.webhook's ENTRYPOINT is `kms-injector webhook`; the chart's args follow it. A flag
    the argparse does not know makes every replica exit at start (CrashLoopBackOff, webhook down)."""
    from webhook.server import parse_args

    assert 'ENTRYPOINT ["kms-injector", "webhook"]' in (ROOT / "Dockerfile.webhook").read_text()
    args = container(render(SCENARIOS[scenario]))["args"]
    try:
        ns = parse_args(args)
    except SystemExit:
        pytest.fail(f"kms-injector webhook refuses the chart's args {args}: {capsys.readouterr().err.strip()}")
    assert ns.settings == "/etc/kms-injector/settings.yaml" and ns.port == 8443
    mode = (SCENARIOS[scenario].get("tls") or {}).get("mode", "auto")
    assert ns.tls_mode == ("auto" if mode == "auto" else "files")
    # Every flag is spelled as `kms-injector webhook --help` prints it.
    help_text = subprocess.run([str(Path(sys.executable).parent / "kms-injector"), "webhook", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert f"  {flag} " in help_text or f"  {flag}\n" in help_text or f", {flag} " in help_text, flag
