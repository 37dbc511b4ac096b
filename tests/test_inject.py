"""`kms-injector inject` as a real subprocess: the 17 Hanzo services, every workload kind, the
same mutation as the webhook, refusals that name the document."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import yaml

from injector.config import AgentConfig
from webhook.mutate import review
from webhook.settings import Settings

from . import platform
from .podcheck import apply_patch, check_pod_spec, decode_patch, validate_object, validate_pod

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "kms-injector")
FIXTURES = Path(__file__).parent / "fixtures" / "admission"
P = "kms.hanzo.ai/"


def inject(stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "inject", *args, "-f", "-"], input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT)


def dump(docs) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def agent_config(container: dict) -> AgentConfig:
    return AgentConfig.from_json(next(e["value"] for e in container["env"] if e["name"] == "KMS_AGENT_CONFIG"))


def check_service(dep: dict, svc: platform.Service) -> None:
    validate_object(dep)
    tpl = dep["spec"]["template"]
    check_pod_spec(tpl["spec"])
    assert tpl["metadata"]["annotations"][P + "status"] == "injected"
    inits = tpl["spec"]["initContainers"]
    assert inits[0]["name"] == "kms-agent-init"
    names = [c["name"] for c in tpl["spec"]["containers"]]
    assert names == [svc.name, "kms-agent"]
    for agent in (inits[0], tpl["spec"]["containers"][1]):
        cfg = agent_config(agent)
        assert (cfg.project, [s.path for s in cfg.sources]) == (svc.project, [svc.path])
        assert cfg.host == "http://kms.hanzo.svc.cluster.local/api" and cfg.env == "prod"
    vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
    assert vols["kms-auth"]["secret"]["secretName"] == svc.auth_secret


def test_platform_example_file_is_the_inventory():
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / "platform.yaml").read_text()) if d]
    assert docs == platform.manifests()
    assert len([d for d in docs if d["kind"] == "Deployment"]) == 17


def test_the_17_hanzo_services_inject_and_validate():
    out = inject((ROOT / "examples" / "platform.yaml").read_text())
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert len(docs) == 34
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert sorted(deployments) == sorted(s.name for s in platform.SERVICES)
    for svc in platform.SERVICES:
        check_service(deployments[svc.name], svc)
    iam = deployments["iam"]["spec"]["template"]
    assert agent_config(iam["spec"]["containers"][1]).project == "hanzo-iam"
    assert {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}["chat"] == platform.service_account(platform.SERVICES[0])
    # the output is already marked: injecting it again changes nothing
    again = inject(out.stdout)
    assert again.returncode == 0 and list(yaml.safe_load_all(again.stdout)) == docs


def test_platform_path_policies_confine_each_service(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(platform.settings_dict()))
    out = inject(dump(platform.manifests()), "--settings", str(settings))
    assert out.returncode == 0, out.stderr
    assert len([d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "Deployment"]) == 17
    # chat asking for IAM's project is refused, naming the document and the annotation
    sneaky = platform.deployment(platform.SERVICES[0])
    sneaky["spec"]["template"]["metadata"]["annotations"].update({P + "project": "hanzo-iam", P + "path": "/"})
    bad = inject(dump([platform.service_account(platform.SERVICES[0]), sneaky]), "--settings", str(settings))
    assert bad.returncode == 1 and bad.stdout == ""
    assert "document 2 (Deployment hanzo/chat): kms.hanzo.ai/path:" in bad.stderr and "outside the path policy" in bad.stderr


def test_every_workload_kind_and_list_and_passthrough():
    tpl = {"metadata": {"labels": {"app": "w"}, "annotations": {P + "path": "/crawl"}},
           "spec": {"containers": [{"name": "w", "image": "ghcr.io/hanzoai/crawl:1", "command": ["/usr/bin/crawl"]}]}}
    sel = {"matchLabels": {"app": "w"}}
    job_tpl = copy.deepcopy(tpl)
    job_tpl["spec"]["restartPolicy"] = "Never"
    job_tpl["metadata"]["annotations"][P + "mode"] = "init"
    docs = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w", **copy.deepcopy(tpl["metadata"])}, "spec": copy.deepcopy(tpl["spec"])},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "w"}, "spec": {"selector": sel, "serviceName": "w", "template": copy.deepcopy(tpl)}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "w"}, "spec": {"selector": sel, "template": copy.deepcopy(tpl)}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "w"}, "spec": {"selector": sel, "template": copy.deepcopy(tpl)}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "w"}, "spec": {"template": copy.deepcopy(job_tpl)}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "w"}, "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": copy.deepcopy(job_tpl)}}}},
        {"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"selector": sel, "template": copy.deepcopy(tpl)}}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "plain"}, "spec": {"selector": sel, "template": {"metadata": {"labels": {"app": "w"}}, "spec": tpl["spec"]}}},
    ]
    out = inject(dump(docs), "--namespace", "hanzo")
    assert out.returncode == 0, out.stderr
    res = list(yaml.safe_load_all(out.stdout))
    pod_specs = [res[0]["spec"]] + [d["spec"]["template"]["spec"] for d in res[1:5]] + \
        [res[5]["spec"]["jobTemplate"]["spec"]["template"]["spec"], res[6]["items"][0]["spec"]["template"]["spec"]]
    for obj in res[:6]:
        validate_object(obj)
    validate_object(res[6]["items"][0])
    for spec in pod_specs:
        check_pod_spec(spec)
        assert spec["initContainers"][0]["name"] == "kms-agent-init"
    assert [c["name"] for c in res[4]["spec"]["template"]["spec"]["containers"]] == ["w"]  # Job: init mode, no sidecar
    assert res[7] == docs[7] and res[8] == docs[8]  # ConfigMap and an unannotated Deployment pass through


def test_inject_output_equals_the_webhook_patch():
    body = json.loads((FIXTURES / "pod-annotated-chat.json").read_text())
    pod = body["request"]["object"]
    result = review(body, Settings())
    expected = apply_patch(pod, decode_patch(result.response["response"]))
    validate_pod(expected)
    out = inject(json.dumps(pod))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == expected


def test_refusals_and_bad_input_exit_1_naming_the_problem(tmp_path):
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "hanzo", "annotations": {P + "path": "/chat", P + "refresh-interval": "soon"}},
           "spec": {"containers": [{"name": "x", "image": "x"}]}}
    out = inject(dump([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, bad]))
    assert out.returncode == 1 and out.stdout == ""
    assert 'document 2 (Pod hanzo/x): kms.hanzo.ai/refresh-interval: "soon" is not accepted' in out.stderr
    assert inject("a: [unclosed").returncode == 1
    settings = tmp_path / "s.yaml"
    settings.write_text("refresh_interval: soon\n")
    out = inject(dump([bad]), "--settings", str(settings))
    assert out.returncode == 1 and "settings refresh_interval:" in out.stderr
    warn = copy.deepcopy(bad)
    warn["metadata"]["annotations"] = {P + "path": "/chat", P + "colour": "blue"}
    out = inject(dump([warn]))
    assert out.returncode == 0 and "warning: document 1 (Pod hanzo/x): kms.hanzo.ai/colour: unknown annotation" in out.stderr


def test_job_left_in_sidecar_mode_is_injected_with_a_warning_on_stderr():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "backfill"}, "spec": {"template": {
        "metadata": {"annotations": {P + "path": "/crawl"}},
        "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "w", "image": "ghcr.io/hanzoai/crawl:1"}]}}}}
    out = inject(dump([job]), "--namespace", "hanzo")
    assert out.returncode == 0, out.stderr
    validate_object(yaml.safe_load(out.stdout))
    assert "document 1 (Job backfill): kms.hanzo.ai/mode: sidecar in a pod with restartPolicy OnFailure" in out.stderr
    assert "mode: native" in out.stderr
