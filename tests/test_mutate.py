"""The pure admission core against real AdmissionReview requests from kube-apiserver v1.28.7.

Every patch is applied with an independent RFC 6902 library (jsonpatch) to the original pod and
the result validated against the Kubernetes schema (kubernetes-validate, strict) plus the
cross-field rules kube-apiserver enforces (tests/podcheck.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from injector.config import AgentConfig
from webhook.mutate import review
from webhook.settings import Settings, settings_from_dict

from .podcheck import apply_patch, decode_patch, validate_pod

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
ALL = sorted(p.name for p in FIXTURES.glob("*.json"))
S = Settings()
P = "kms.hanzo.ai/"
EXPECTED = {
    "deployment-pod-generatename-signal.json": "injected",
    "job-pod-mode-init.json": "injected",
    "pod-annotated-chat.json": "injected",
    "pod-bad-refresh-interval.json": "rejected",
    "pod-dry-run.json": "injected",
    "pod-mode-native.json": "injected",
    "pod-no-annotations.json": "skip",
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def run(body: dict, settings: Settings = S):
    result = review(body, settings)
    assert result.internal_error == ""
    assert result.response["kind"] == "AdmissionReview"
    assert result.response["apiVersion"] == body.get("apiVersion", "admission.k8s.io/v1")
    return result


def mutated(body: dict, settings: Settings = S) -> tuple[dict, object]:
    result = run(body, settings)
    assert result.decision == "injected", result.message
    pod = apply_patch(body["request"]["object"], decode_patch(result.response["response"]))
    validate_pod(pod)
    return pod, result


def containers(pod: dict, key: str = "containers") -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"].get(key) or []}


def agent_config(container: dict) -> AgentConfig:
    env = {e["name"]: e for e in container["env"]}
    return AgentConfig.from_json(env["KMS_AGENT_CONFIG"]["value"])


def with_pod(body: dict, edit) -> dict:
    body = copy.deepcopy(body)
    edit(body["request"]["object"])
    return body


# -- every captured request ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_every_fixture_gives_a_valid_answer_and_reinvocation_gives_no_patch(name):
    assert set(ALL) == set(EXPECTED), "a new fixture needs an expected decision"
    body = load(name)
    result = run(body)
    resp = result.response["response"]
    assert resp["uid"] == body["request"]["uid"] == result.uid
    assert result.decision == EXPECTED[name] and result.namespace == "hanzo"
    if result.decision == "injected":
        assert resp["allowed"] is True and resp["patchType"] == "JSONPatch"
        pod = apply_patch(body["request"]["object"], decode_patch(resp))
        validate_pod(pod)
        assert pod["metadata"]["annotations"][P + "status"] == "injected"
        again = with_pod(body, lambda p: p.update(pod))
        second = run(again)
        assert second.decision == "already" and second.response["response"] == {"uid": body["request"]["uid"], "allowed": True}
    elif result.decision == "skip":
        assert resp == {"uid": body["request"]["uid"], "allowed": True}
    else:
        assert resp["allowed"] is False and "patch" not in resp


def test_chat_pod_gets_init_first_sidecar_volumes_and_hardened_agents():
    body = load("pod-annotated-chat.json")
    pod, result = mutated(body)
    inits, apps = pod["spec"]["initContainers"], containers(pod)
    assert [c["name"] for c in inits] == ["kms-agent-init"]
    assert list(apps) == ["chat", "kms-agent"]
    init, side = inits[0], apps["kms-agent"]
    assert init["args"] == ["agent", "--mode", "init"] and side["args"] == ["agent", "--mode", "sidecar"]
    assert init["image"] == side["image"] == S.agent.image
    icfg, scfg = agent_config(init), agent_config(side)
    assert icfg.mode == "init" and icfg.health_port == 0
    assert scfg.mode == "sidecar" and scfg.health_port == S.agent.health_port and scfg.sources[0].path == "/chat"
    assert side["livenessProbe"]["httpGet"]["port"] == S.agent.health_port
    env = {e["name"]: e for e in side["env"]}
    assert env["KMS_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["KMS_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for agent in (init, side):
        sc = agent["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["name"]: m for m in agent["volumeMounts"]}
        assert mounts["kms-secrets"]["mountPath"] == "/kms-agent/secrets" and not mounts["kms-secrets"].get("readOnly")
        assert mounts["kms-auth"] == {"name": "kms-auth", "mountPath": "/kms/auth", "readOnly": True}
        assert agent["resources"] == {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}}
    app_mounts = {m["name"]: m for m in apps["chat"]["volumeMounts"]}
    assert app_mounts["kms-secrets"] == {"name": "kms-secrets", "mountPath": "/kms/secrets", "readOnly": True}
    assert "kms-auth" not in app_mounts
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["kms-secrets"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
    assert vols["kms-auth"]["secret"]["secretName"] == "universal-auth-credentials"
    assert "shareProcessNamespace" not in pod["spec"]
    ops = decode_patch(result.response["response"])
    assert {"op": "add", "path": "/metadata/annotations/kms.hanzo.ai~1status", "value": "injected"} in ops  # RFC 6901


def test_generate_name_pod_with_signal_shares_pid_namespace_and_gets_cap_kill():
    body = load("deployment-pod-generatename-signal.json")
    del body["request"]["object"]["metadata"]["namespace"]  # the request's namespace is what counts
    pod, result = mutated(body)
    assert result.pod == "commerce-599d9b967f-" and result.namespace == "hanzo"
    assert pod["spec"]["shareProcessNamespace"] is True
    side = containers(pod)["kms-agent"]
    cfg = agent_config(side)
    assert cfg.signal == "SIGHUP" and cfg.signal_process == "commerce"
    assert side["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    assert any("CAP_KILL" in w for w in result.response["response"]["warnings"])


def test_signal_with_run_as_user_runs_the_agent_as_that_uid_without_capabilities():
    body = with_pod(load("deployment-pod-generatename-signal.json"),
                    lambda p: p["spec"].update(securityContext={"runAsUser": 1000, "fsGroup": 2000}))
    pod, result = mutated(body)
    side = containers(pod)["kms-agent"]
    assert side["securityContext"]["runAsUser"] == 1000 and side["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent_config(side).file_mode == 0o440  # fsGroup set
    assert "warnings" not in result.response["response"]


def test_job_init_mode_has_only_an_init_container():
    pod, _ = mutated(load("job-pod-mode-init.json"))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["kms-agent-init"]
    assert "kms-agent" not in containers(pod)
    assert agent_config(pod["spec"]["initContainers"][0]).mode == "init"


def test_native_mode_is_one_restartable_init_container_with_a_startup_probe():
    pod, _ = mutated(load("pod-mode-native.json"))
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["kms-agent"] and "kms-agent" not in containers(pod)
    native = inits[0]
    assert native["restartPolicy"] == "Always" and native["args"] == ["agent", "--mode", "sidecar"]
    probe = native["startupProbe"]["httpGet"]
    assert probe == {"path": "/readyz", "port": S.agent.health_port} == {"path": "/readyz", "port": agent_config(native).health_port}


def test_bad_refresh_interval_is_refused_naming_it():
    result = run(load("pod-bad-refresh-interval.json"))
    resp = result.response["response"]
    assert result.decision == "rejected" and resp["allowed"] is False
    msg = resp["status"]["message"]
    assert msg.startswith("kms.hanzo.ai/refresh-interval: \"soon\" is not accepted") and "30s" in msg
    assert resp["status"]["code"] == 400 and result.message == msg


def test_dry_run_answers_exactly_like_a_real_run():
    body = load("pod-dry-run.json")
    assert body["request"]["dryRun"] is True
    wet = copy.deepcopy(body)
    wet["request"]["dryRun"] = False
    assert run(body).response == run(wet).response
    mutated(body)


def test_v1beta1_is_answered_in_v1beta1():
    body = load("pod-annotated-chat.json")
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    result = run(body)
    assert result.response["apiVersion"] == "admission.k8s.io/v1beta1" and result.decision == "injected"


def test_missing_arrays_are_added_whole_and_app_init_containers_follow_ours():
    def bare(p):
        for c in p["spec"]["containers"]:
            c.pop("volumeMounts", None)
        p["spec"].pop("volumes", None)
        p["spec"]["initContainers"] = [{"name": "migrate", "image": "ghcr.io/hanzoai/chat:1.0", "command": ["migrate"]}]
    pod, result = mutated(with_pod(load("pod-annotated-chat.json"), bare))
    ops = decode_patch(result.response["response"])
    paths = [o["path"] for o in ops]
    assert "/spec/volumes" in paths and "/spec/containers/0/volumeMounts" in paths
    assert "/spec/initContainers/0/volumeMounts" in paths and paths.index("/spec/initContainers/0/volumeMounts") < paths.index("/spec/initContainers/0")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["kms-agent-init", "migrate"]
    assert pod["spec"]["initContainers"][1]["volumeMounts"] == [{"name": "kms-secrets", "mountPath": "/kms/secrets", "readOnly": True}]


def test_containers_annotation_selects_mounts():
    def two(p):
        p["metadata"]["annotations"][P + "containers"] = "chat"
        p["spec"]["containers"].append({"name": "proxy", "image": "envoyproxy/envoy:v1.30"})
    pod, _ = mutated(with_pod(load("pod-annotated-chat.json"), two))
    assert "volumeMounts" not in containers(pod)["proxy"]
    assert any(m["name"] == "kms-secrets" for m in containers(pod)["chat"]["volumeMounts"])


def test_kubernetes_auth_mounts_a_projected_token_only_into_agents():
    def k8s(p):
        p["metadata"]["annotations"].update({P + "auth": "kubernetes", P + "identity-id": "1f2e3d4c-chat"})
    pod, _ = mutated(with_pod(load("pod-annotated-chat.json"), k8s))
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "kms-auth" not in vols
    token = vols["kms-sa-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "kms.hanzo.ai", "expirationSeconds": 600, "path": "token"}
    side = containers(pod)["kms-agent"]
    cfg = agent_config(side)
    assert (cfg.auth, cfg.identity_id, cfg.token_path) == ("kubernetes", "1f2e3d4c-chat", "/kms/sa/token")
    assert {"name": "kms-sa-token", "mountPath": "/kms/sa", "readOnly": True} in side["volumeMounts"]
    for c in containers(pod)["chat"]["volumeMounts"]:
        assert c["name"] != "kms-sa-token"


def test_resources_from_annotations():
    pod, _ = mutated(with_pod(load("pod-annotated-chat.json"), lambda p: p["metadata"]["annotations"].update(
        {P + "agent-cpu": "50m", P + "agent-memory": "48Mi"})))
    assert containers(pod)["kms-agent"]["resources"] == {"requests": {"cpu": "50m", "memory": "48Mi"}, "limits": {"memory": "64Mi"}}


def test_config_env_holds_no_values_and_no_credentials():
    pod, _ = mutated(load("pod-annotated-chat.json"))
    raw = json.loads({e["name"]: e for e in containers(pod)["kms-agent"]["env"]}["KMS_AGENT_CONFIG"]["value"])
    assert not {"clientSecret", "client_secret", "token", "secrets", "values"} & set(raw)


# -- refusals and skips -------------------------------------------------------------------------------
def test_unknown_annotations_become_warnings():
    result = run(with_pod(load("pod-annotated-chat.json"), lambda p: p["metadata"]["annotations"].update({P + "colour": "blue"})))
    assert result.decision == "injected"
    assert result.response["response"]["warnings"] == ["kms.hanzo.ai/colour: unknown annotation, ignored (see docs/annotations.md)"]


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["spec"]["containers"].append({"name": "kms-agent", "image": "x"}), "container named 'kms-agent'"),
    (lambda p: p["spec"]["volumes"].append({"name": "kms-secrets", "emptyDir": {}}), "volume named 'kms-secrets'"),
    (lambda p: p["spec"]["containers"][0]["volumeMounts"].append({"name": "kube-api-access-6qsgl", "mountPath": "/kms/secrets"}), "already mounts"),
    (lambda p: p["metadata"]["annotations"].update({P + "image": "evil/miner"}), "cluster operator"),
    (lambda p: p["metadata"]["annotations"].update({P + "host": "https://evil.example.com/api"}), "allowed hosts"),
])
def test_conflicts_and_hostile_annotations_are_rejected(edit, needle):
    result = run(with_pod(load("pod-annotated-chat.json"), edit))
    resp = result.response["response"]
    assert result.decision == "rejected" and resp["allowed"] is False and needle in resp["status"]["message"]


def test_excluded_namespace_is_skipped_with_a_warning():
    body = load("pod-annotated-chat.json")
    body["request"]["namespace"] = "kube-system"
    result = run(body)
    assert result.decision == "skip" and "patch" not in result.response["response"]
    assert "excluded" in result.response["response"]["warnings"][0]


def test_path_policy_refusal_reaches_the_user():
    s = settings_from_dict({"path_policies": [{"namespaces": ["hanzo"], "projects": ["secrets-639-c"], "paths": ["/commerce/**"]}]})
    result = run(load("pod-annotated-chat.json"), s)
    assert result.decision == "rejected" and result.response["response"]["status"]["code"] == 403
    assert "outside the path policy" in result.message


@pytest.mark.parametrize("body,decision,allowed", [
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "invalid", False),
    ([1, 2], "invalid", False),
    ({"kind": "AdmissionReview", "request": {"kind": {"group": "", "kind": "Pod"}}}, "invalid", False),
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "apps", "kind": "Deployment"}, "object": {}}}, "skip", True),
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "", "kind": "Pod"}, "operation": "UPDATE"}}, "skip", True),
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "", "kind": "Pod"}, "object": "pod"}}, "invalid", False),
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "", "kind": "Pod"},
      "object": {"metadata": {"annotations": {P + "path": "/x"}}, "spec": {"containers": "nope"}}}}, "invalid", False),
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "", "kind": "Pod"},
      "object": {"metadata": {"annotations": {P + "path": "/x"}}}}}, "invalid", False),
    # A volume name that is no string (found by the cache-key property test): no internal error.
    ({"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"group": "", "kind": "Pod"}, "object": {
      "metadata": {"annotations": {P + "path": "/x"}}, "spec": {"containers": [{"name": "a"}], "volumes": [{"name": ["x"]}]}}}},
     "injected", True),
])
def test_malformed_requests_get_clean_answers(body, decision, allowed):
    result = review(body, S)
    assert result.internal_error == "" and result.decision == decision
    resp = result.response["response"]
    assert resp["allowed"] is allowed and isinstance(resp["uid"], str)
    if not allowed:
        assert resp["status"]["message"]
    if isinstance(body, dict) and isinstance(body.get("request"), dict) and "uid" in body["request"]:
        assert resp["uid"] == "u1"


# -- pod-level shapes kube-apiserver judges (found in the webhook bug hunt) ---------------------------
def test_host_pid_with_signal_is_refused_clearly_and_without_signal_injects():
    # kube-apiserver refuses shareProcessNamespace together with hostPID, and in the host's PID
    # namespace a signal by process name could hit other pods' processes on the node.
    def host_pid(p):
        p["spec"]["hostPID"] = True
    result = run(with_pod(load("deployment-pod-generatename-signal.json"), host_pid))
    resp = result.response["response"]
    assert result.decision == "rejected" and resp["allowed"] is False and "patch" not in resp
    msg = resp["status"]["message"]
    assert msg.startswith(P + "signal:") and "hostPID" in msg and P + "command" in msg
    pod, _ = mutated(with_pod(load("pod-annotated-chat.json"), host_pid))  # no signal: fine
    assert pod["spec"]["hostPID"] is True and "shareProcessNamespace" not in pod["spec"]


def test_share_process_namespace_false_is_turned_on_for_signal():
    body = with_pod(load("deployment-pod-generatename-signal.json"), lambda p: p["spec"].update(shareProcessNamespace=False))
    pod, _ = mutated(body)
    assert pod["spec"]["shareProcessNamespace"] is True


def test_windows_pod_is_refused_with_a_clear_message():
    # The agent image and its security context (seccomp, runAsUser, capabilities...) are Linux-only;
    # kube-apiserver would refuse the patched pod with a message about fields the user never wrote.
    body = with_pod(load("pod-annotated-chat.json"), lambda p: p["spec"].update(os={"name": "windows"}))
    result = run(body)
    resp = result.response["response"]
    assert result.decision == "rejected" and resp["allowed"] is False and "patch" not in resp
    assert "windows" in result.message and "Linux" in result.message and "spec.os.name" in result.message
    pod, _ = mutated(with_pod(load("pod-annotated-chat.json"), lambda p: p["spec"].update(os={"name": "linux"})))
    assert pod["spec"]["os"] == {"name": "linux"}
    bad = run(with_pod(load("pod-annotated-chat.json"), lambda p: p["spec"].update(os="windows")))
    assert bad.decision == "invalid" and "spec.os" in bad.message


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_sidecar_mode_in_a_pod_that_runs_to_completion_warns(policy):
    # A classic sidecar never exits, so a Job's pod never completes: say so, recommend native/init.
    body = with_pod(load("pod-annotated-chat.json"), lambda p: p["spec"].update(restartPolicy=policy))
    pod, result = mutated(body)
    warnings = result.response["response"]["warnings"]
    assert any(f"restartPolicy {policy}" in w and "native" in w and "init" in w and w.startswith(P + "mode:")
               for w in warnings), warnings
    for mode in ("native", "init"):
        quiet = run(with_pod(body, lambda p: p["metadata"]["annotations"].update({P + "mode": mode})))
        assert not any("restartPolicy" in w for w in quiet.response["response"].get("warnings", []))


def test_always_restarting_pod_in_sidecar_mode_gets_no_restart_policy_warning():
    body = with_pod(load("pod-annotated-chat.json"), lambda p: p["spec"].update(restartPolicy="Always"))
    _, result = mutated(body)
    assert not any("restartPolicy" in w for w in result.response["response"].get("warnings", []))


@pytest.mark.parametrize("mode", ["sidecar", "native"])
def test_host_network_pod_warns_that_the_health_port_is_on_the_node(mode):
    def host_net(p):
        p["spec"]["hostNetwork"] = True
        p["metadata"]["annotations"][P + "mode"] = mode
    pod, result = mutated(with_pod(load("pod-annotated-chat.json"), host_net))
    port = S.agent.health_port
    warnings = result.response["response"]["warnings"]
    assert any("hostNetwork" in w and str(port) in w and P + "agent-health-port" in w for w in warnings), warnings
    init = run(with_pod(load("pod-annotated-chat.json"), lambda p: (host_net(p), p["metadata"]["annotations"].update({P + "mode": "init"}))))
    assert not any("health port" in w for w in init.response["response"].get("warnings", []))  # no server in init mode


@pytest.mark.parametrize("mode", ["sidecar", "init"])
def test_host_network_pod_without_cluster_dns_warns_that_the_in_cluster_kms_host_will_not_resolve(mode):
    # Kubernetes: a hostNetwork pod with dnsPolicy ClusterFirst (the default) uses the node's
    # resolv.conf, so the agent cannot resolve kms.hanzo.svc.cluster.local.
    def host_net(p, dns=None):
        p["spec"]["hostNetwork"] = True
        p["metadata"]["annotations"][P + "mode"] = mode
        if dns:
            p["spec"]["dnsPolicy"] = dns
    _, result = mutated(with_pod(load("pod-annotated-chat.json"), host_net))
    warnings = result.response["response"]["warnings"]
    assert any("dnsPolicy: ClusterFirstWithHostNet" in w and "kms.hanzo.svc.cluster.local" in w for w in warnings), warnings
    _, fixed = mutated(with_pod(load("pod-annotated-chat.json"), lambda p: host_net(p, "ClusterFirstWithHostNet")))
    assert not any("dnsPolicy" in w for w in fixed.response["response"].get("warnings", []))
    external = settings_from_dict({"host": "https://kms.hanzo.ai/api"})
    _, ext = mutated(with_pod(load("pod-annotated-chat.json"), host_net), external)
    assert not any("dnsPolicy" in w for w in ext.response["response"].get("warnings", []))
