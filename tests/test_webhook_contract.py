"""The webhook sides of issues 10, 12 and 13, through the pure core against real AdmissionReviews
(patches applied with jsonpatch and validated strictly, as in test_mutate.py):

- issue 13 item 6: one annotation table; the docs and README tables are generated from it;
- issue 12 item 3: the init container notifies nobody; items 4, 5 and 10 (exact image-override
  names, the agents' fixed mount path, the CA bundle and the plain-http warning);
- issue 10: keys, keys-NAME, expand-references, allow-empty, organization-slug.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from injector.config import AgentConfig, Source
from webhook import annotation_docs
from webhook.annotation_table import TABLE
from webhook.annotations import AGENT_MOUNT_PATH, KNOWN, AnnotationError, ContainerFacts, PodFacts, parse
from webhook.mutate import review
from webhook.settings import Settings, SettingsError, settings_from_dict

from .podcheck import apply_patch, decode_patch, validate_pod

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "admission"
P = "kms.hanzo.ai/"
POD = PodFacts(namespace="hanzo", service_account="chat",
               containers=(ContainerFacts("chat", command0="chat-server", image="ghcr.io/hanzoai/chat:1.0"),))
S = Settings()


def body_with(annotations: dict[str, str], fixture: str = "deployment-pod-generatename-signal.json") -> dict:
    body = json.loads((FIXTURES / fixture).read_text())
    body["request"]["object"]["metadata"]["annotations"] = annotations
    return body


def injected(annotations: dict[str, str], settings: Settings = S, fixture: str = "deployment-pod-generatename-signal.json"):
    body = body_with(annotations, fixture)
    result = review(body, settings)
    assert result.decision == "injected", result.message
    pod = apply_patch(copy.deepcopy(body["request"]["object"]), decode_patch(result.response["response"]))
    validate_pod(pod)
    return pod, result


def agents(pod: dict) -> dict[str, dict]:
    spec = pod["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"] if c["name"].startswith("kms-agent")}


def config_of(container: dict) -> AgentConfig:
    return AgentConfig.from_json(next(e["value"] for e in container["env"] if e["name"] == "KMS_AGENT_CONFIG"))


def refused(annotations: dict, settings: Settings = S, pod: PodFacts = POD) -> AnnotationError:
    with pytest.raises(AnnotationError) as err:
        parse(annotations, settings, pod)
    return err.value


# -- issue 13 item 6: one table, generated docs ---------------------------------------------------------
def test_the_docs_and_readme_tables_are_the_generated_ones():
    assert annotation_docs.drifted() == [], "run: python -m webhook.annotation_docs"
    assert annotation_docs.main(["--check"]) == 0


def test_a_drifted_table_is_detected_and_regenerated(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in annotation_docs.TARGETS:
        shutil.copy(ROOT / name, tmp_path / name)
    docs = tmp_path / "docs" / "annotations.md"
    text = docs.read_text()
    docs.write_text(text.replace("| `kms.hanzo.ai/mode` |", "| `kms.hanzo.ai/mode` | `init` |", 1))
    assert annotation_docs.drifted(tmp_path) == ["docs/annotations.md"]
    prose = "A paragraph someone wrote by hand, outside the markers.\n"
    docs.write_text(docs.read_text() + prose)
    for name, make in annotation_docs.TARGETS.items():
        path = tmp_path / name
        path.write_text(annotation_docs.splice(path.read_text(), make(), name))
    assert annotation_docs.drifted(tmp_path) == [] and docs.read_text().endswith(prose)


def test_every_row_is_in_the_docs_and_every_known_annotation_has_a_row():
    docs = (ROOT / "docs" / "annotations.md").read_text()
    for row in TABLE:
        assert f"| `{P}{row.name}` |" in docs
        assert row.meaning and row.accepted
    assert {"keys", "expand-references", "allow-empty", "organization-slug", "ca-secret"} <= set(KNOWN)


# -- issue 12 item 3: the init container never notifies -------------------------------------------------
@pytest.mark.parametrize("notify", [{P + "signal": "SIGHUP"}, {P + "command": "/bin/reload --graceful"}])
def test_the_init_container_carries_no_signal_and_no_command(notify):
    pod, _ = injected({P + "path": "/chat", **notify})
    init, side = config_of(agents(pod)["kms-agent-init"]), config_of(agents(pod)["kms-agent"])
    assert (init.signal, init.signal_process, init.command, init.mode, init.health_port) == ("", "", [], "init", 0)
    assert side.signal == (notify.get(P + "signal") or "") and side.command == (["/bin/reload", "--graceful"] if P + "command" in notify else [])
    if P + "signal" in notify:
        assert side.signal_process == "commerce"
    native, _ = injected({P + "path": "/chat", P + "mode": "native", **notify})
    cfg = config_of(agents(native)["kms-agent"])  # the native agent refreshes, so it notifies
    assert cfg.signal == side.signal and cfg.command == side.command


# -- issue 12 item 4: only the exact image-override names -----------------------------------------------
def test_annotations_that_merely_contain_image_are_accepted():
    pod, result = injected({P + "path": "/chat", P + "path-images": "/chat/images",
                            P + "template-imagemagick.conf": "key=${DATABASE_URL}\n"})
    cfg = config_of(agents(pod)["kms-agent"])
    assert Source("/chat/images", "images") in cfg.sources and "imagemagick.conf" in cfg.templates
    assert not result.warnings


@pytest.mark.parametrize("name", ["image", "agent-image", "init-image", "sidecar-image", "Image-Override", "agent-image-pull-policy"])
def test_image_override_names_are_refused(name):
    err = refused({P + "path": "/chat", P + name: "evil/miner:1"})
    assert err.code == 403 and err.annotation == P + name and "cluster operator" in str(err)


# -- issue 12 item 5: one fixed internal mount path for the agents ---------------------------------------
@pytest.mark.parametrize("mode", ["sidecar", "native", "init"])
def test_mount_path_opt_leaves_the_agents_at_their_own_path(mode):
    pod, _ = injected({P + "path": "/chat", P + "mount-path": "/opt", P + "mode": mode})
    spec = pod["spec"]
    for name, c in agents(pod).items():
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["kms-secrets"] == AGENT_MOUNT_PATH and "/opt" not in mounts.values(), name
        assert config_of(c).mount_path == AGENT_MOUNT_PATH
    app = next(c for c in spec["containers"] if c["name"] == "commerce")
    assert {"name": "kms-secrets", "mountPath": "/opt", "readOnly": True} in app["volumeMounts"]


# -- issue 12 item 10: CA bundle, plain-http warning ------------------------------------------------------
HTTPS = "https://kms.hanzo.ai/api"


def test_the_settings_ca_bundle_is_mounted_into_the_agents_only():
    s = settings_from_dict({"host": HTTPS, "caBundle": {"configMap": "kms-ca", "key": "bundle.pem"}})
    pod, _ = injected({P + "path": "/chat"}, s)
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "kms-ca")
    assert vol["configMap"]["name"] == "kms-ca" and vol["configMap"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    for c in agents(pod).values():
        assert {"name": "kms-ca", "mountPath": "/kms-agent/ca", "readOnly": True} in c["volumeMounts"]
        assert config_of(c).ca_file == "/kms-agent/ca/ca.crt"
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        if not c["name"].startswith("kms-agent"):
            assert all(m["name"] != "kms-ca" for m in c.get("volumeMounts") or []), c["name"]
    # A Secret works the same; a plain-http host needs no CA, so the pod waits for no volume.
    s2 = settings_from_dict({"host": HTTPS, "caBundle": {"secret": "kms-ca-secret"}})
    pod2, _ = injected({P + "path": "/chat"}, s2)
    assert next(v for v in pod2["spec"]["volumes"] if v["name"] == "kms-ca")["secret"]["secretName"] == "kms-ca-secret"
    plain, _ = injected({P + "path": "/chat"}, settings_from_dict({"caBundle": {"configMap": "kms-ca"}}))
    assert all(v["name"] != "kms-ca" for v in plain["spec"]["volumes"])
    assert config_of(agents(plain)["kms-agent"]).ca_file == ""


def test_a_pod_ca_secret_needs_a_policy_that_lists_it():
    s = settings_from_dict({"host": HTTPS, "path_policies": [
        {"namespaces": ["hanzo"], "projects": ["*"], "paths": ["/**"], "caSecrets": ["internal-ca", "team-*"]}]})
    pod, _ = injected({P + "path": "/chat", P + "ca-secret": "team-ca"}, s)
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "kms-ca")
    assert vol["secret"] == {"secretName": "team-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}], "defaultMode": 0o444}
    result = review(body_with({P + "path": "/chat", P + "ca-secret": "other-ca"}), s)
    status = result.response["response"]["status"]
    assert result.decision == "rejected" and status["code"] == 403
    assert status["message"].startswith(P + 'ca-secret: "other-ca" is not accepted; ') and "internal-ca, team-*" in status["message"]
    err = refused({P + "path": "/chat", P + "ca-secret": "any-ca"}, settings_from_dict({"host": HTTPS}))
    assert err.code == 403 and "none is listed" in str(err)
    assert refused({P + "path": "/chat", P + "ca-secret": "Bad_Name"}).code == 400


@pytest.mark.parametrize("text,field", [
    ("caBundle: {configMap: a, secret: b}", "ca_bundle"),
    ("caBundle: {configMap: Bad_Name}", "ca_bundle.config_map"),
    ("caBundle: {key: 'a/b'}", "ca_bundle.key"),
    ("caBundle: {colour: blue}", "ca_bundle.colour"),
    ("organizationSlug: 'bad slug'", "organization_slug"),
    ("path_policies: [{namespaces: [a], projects: [p], paths: [/a], caSecrets: [Bad]}]", "path_policies[0].ca_secrets[0]"),
])
def test_bad_ca_and_organization_settings_name_the_field(text, field):
    import yaml

    with pytest.raises(SettingsError) as err:
        settings_from_dict(yaml.safe_load(text))
    assert err.value.field == field


@pytest.mark.parametrize("host,warned", [
    ("http://kms.hanzo.svc.cluster.local/api", False), ("http://kms.hanzo.svc/api", False), ("http://kms:8080/api", False),
    ("http://kms.example.com/api", True), ("http://10.0.0.7/api", True), ("https://kms.example.com/api", False),
])
def test_plain_http_to_a_host_outside_the_cluster_is_warned(host, warned):
    p = parse({P + "path": "/chat", P + "host": host}, Settings(allowed_hosts=(host,)), POD)
    warnings = [w for w in p.warnings if w.startswith(P + "host:") and "plain http" in w]
    assert bool(warnings) is warned, p.warnings
    # The settings' own host is checked too: every pod of such a cluster hears about it.
    assert bool([w for w in parse({P + "path": "/chat"}, Settings(host=host), POD).warnings if "plain http" in w]) is warned


# -- issue 10: the annotations of the real servers -------------------------------------------------------
def test_keys_expand_references_allow_empty_and_organization_slug_reach_the_config():
    pod, _ = injected({P + "path": "/chat", P + "path-db": "/db", P + "keys": "DATABASE_URL, REDIS_URL,DATABASE_URL",
                       P + "keys-db": "PGPASSWORD", P + "expand-references": "false", P + "allow-empty": "TRUE",
                       P + "organization-slug": "hanzo"})
    for c in agents(pod).values():
        cfg = config_of(c)
        assert cfg.sources == [Source("/chat", "", ("DATABASE_URL", "REDIS_URL")), Source("/db", "db", ("PGPASSWORD",))]
        assert (cfg.expand_references, cfg.allow_empty, cfg.organization_slug) == (False, True, "hanzo")
    defaults = parse({P + "path": "/chat"}, S, POD).config
    assert (defaults.expand_references, defaults.allow_empty, defaults.organization_slug) == (True, False, "")
    assert defaults.sources == [Source("/chat")]
    org = parse({P + "path": "/chat"}, settings_from_dict({"organizationSlug": "hanzo-ai"}), POD).config
    assert org.organization_slug == "hanzo-ai"


@pytest.mark.parametrize("key,value,accepted", [
    ("keys", " , ", "comma list of key names"),
    ("keys", "a/b", "comma list of key names"),
    ("expand-references", "yes", '"true" or "false"'),
    ("allow-empty", "1", '"true" or "false"'),
    ("organization-slug", "bad slug", "organization slug"),
])
def test_bad_issue_10_values_name_annotation_value_and_accepted(key, value, accepted):
    err = refused({P + "path": "/chat", P + key: value})
    assert err.annotation == P + key and str(err).startswith(f'{P}{key}: {json.dumps(value)} is not accepted; ')
    assert accepted in str(err) and err.code == 400


def test_keys_name_must_name_a_path_name():
    err = refused({P + "path": "/chat", P + "keys-db": "A"})
    assert err.annotation == P + "keys-db" and "path-db" in str(err)
