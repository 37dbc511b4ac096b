"""Auth Secret policies (`path_policies[].auth_secrets`, `protected_auth_secrets`): on the Hanzo
platform no pod but IAM's may have IAM's machine identity (Secret `iam-kms-auth`) mounted into its
agent. Checked through `mutate.review` AND through the real HTTPS server (`kms-injector webhook`
subprocess), with the platform settings (tests/platform.py) and the shipped Hanzo Helm values."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path

import pytest
import yaml

from webhook.mutate import review
from webhook.settings import Settings, load_settings, settings_from_dict

from . import platform
from .reliability_support import ROOT, WebhookProcess, check_patch_contract

P = "kms.hanzo.ai/"
IAM = "iam-kms-auth"
SERVICES = {s.name: s for s in platform.SERVICES}


def pod_of(svc: platform.Service, sa: str | None = None, extra: dict | None = None) -> dict:
    tpl = copy.deepcopy(platform.deployment(svc)["spec"]["template"])
    tpl["metadata"]["annotations"].update(extra or {})
    tpl["metadata"]["namespace"] = platform.NAMESPACE
    tpl["metadata"]["generateName"] = f"{svc.name}-"
    if sa is not None:
        tpl["spec"]["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", **tpl}


def admission(pod: dict) -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": platform.NAMESPACE,
        "operation": "CREATE", "object": pod, "dryRun": False}}


def verdict(doc: dict, out: dict, settings: Settings) -> tuple[bool, str, list]:
    """(allowed, refusal message, patch ops) after checking the envelope and, if allowed, the patch."""
    resp = out["response"]
    assert out["kind"] == "AdmissionReview" and resp["uid"] == doc["request"]["uid"]
    if not resp["allowed"]:
        assert "patch" not in resp and resp["status"]["code"] == 403, resp
        return False, resp["status"]["message"], []
    ops = json.loads(base64.b64decode(resp["patch"]))
    check_patch_contract(doc["request"]["object"], ops, settings)
    return True, "", ops


def auth_secret_of(ops: list) -> str:
    names = [op["value"]["secret"]["secretName"] for op in ops
             if op["op"] == "add" and isinstance(op.get("value"), dict) and op["value"].get("name") == "kms-auth"]
    names += [v["secret"]["secretName"] for op in ops if op["op"] == "add" and isinstance(op.get("value"), list)
              for v in op["value"] if isinstance(v, dict) and v.get("name") == "kms-auth"]
    assert len(names) == 1, ops
    return names[0]


# Each case: (pod, expected auth Secret when allowed or None when refused, needles in the refusal).
def cases() -> list[tuple[str, dict, str | None, tuple[str, ...]]]:
    chat, iam = SERVICES["chat"], SERVICES["iam"]
    return [
        ("chat names IAM's Secret", pod_of(chat, extra={P + "auth-secret": IAM}), None,
         (P + "auth-secret", f'"{IAM}"', "protected", "'chat'", "universal-auth-credentials")),
        ("chat names another Secret", pod_of(chat, extra={P + "auth-secret": "console-creds"}), None,
         (P + "auth-secret", '"console-creds"', "allowed auth Secrets: universal-auth-credentials")),
        ("IAM without its Secret", pod_of(iam, extra={P + "auth-secret": "universal-auth-credentials"}), None,
         (P + "auth-secret", '"universal-auth-credentials"', f"allowed auth Secrets: {IAM}")),
        ("chat", pod_of(chat), "universal-auth-credentials", ()),
        ("iam", pod_of(iam), IAM, ()),
    ]


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("auth-secret-settings") / "settings.yaml"
    f.write_text(yaml.safe_dump(platform.settings_dict()))
    return f


@pytest.fixture(scope="module")
def settings(settings_file) -> Settings:
    return load_settings(str(settings_file))


def test_platform_settings_pin_each_service_to_its_auth_secret(settings) -> None:
    for case_id, pod, secret, needles in cases():
        doc = admission(pod)
        result = review(doc, settings)
        assert result.internal_error == "", case_id
        allowed, msg, ops = verdict(doc, result.response, settings)
        assert allowed is (secret is not None), (case_id, msg)
        if secret:
            assert auth_secret_of(ops) == secret, case_id
        for needle in needles:
            assert needle in msg, (case_id, needle, msg)


def test_all_17_services_still_inject_with_their_own_identity(settings) -> None:
    for svc in platform.SERVICES:
        doc = admission(pod_of(svc))
        allowed, msg, ops = verdict(doc, review(doc, settings).response, settings)
        assert allowed, (svc.name, msg)
        assert auth_secret_of(ops) == svc.auth_secret, svc.name
        if svc.name != "iam":  # and nobody else may take IAM's identity
            bad = admission(pod_of(svc, extra={P + "auth-secret": IAM}))
            allowed, msg, _ = verdict(bad, review(bad, settings).response, settings)
            assert not allowed and P + "auth-secret" in msg and "protected" in msg, svc.name


def test_protected_secret_is_refused_to_pods_no_policy_covers() -> None:
    # default_policy allow, no policy for `debug` (or for another namespace): still no IAM identity.
    s = settings_from_dict({"path_policies": platform.path_policies(), "protectedAuthSecrets": [IAM]})
    for sa, namespace in (("debug", platform.NAMESPACE), ("default", "other")):
        pod = pod_of(SERVICES["chat"], sa=sa, extra={P + "auth-secret": IAM})
        pod["metadata"]["namespace"] = namespace
        doc = admission(pod)
        doc["request"]["namespace"] = namespace
        allowed, msg, _ = verdict(doc, review(doc, s).response, s)
        assert not allowed and "protected" in msg and f"'{sa}'" in msg and f"'{namespace}'" in msg, msg
        pod["metadata"]["annotations"][P + "auth-secret"] = "my-own-identity"  # unprotected: fine
        doc = admission(pod)
        allowed, msg, ops = verdict(doc, review(doc, s).response, s)
        assert allowed and auth_secret_of(ops) == "my-own-identity", msg


def test_shipped_hanzo_values_protect_iam() -> None:
    values = yaml.safe_load((ROOT / "examples" / "values-hanzo.yaml").read_text())
    s = settings_from_dict(values["settings"])
    assert s.protected_auth_secrets == (IAM,)
    for svc in platform.SERVICES:
        assert s.check_auth_secret(platform.NAMESPACE, svc.name, svc.auth_secret) is None, svc.name
        other = "universal-auth-credentials" if svc.name == "iam" else IAM
        assert s.check_auth_secret(platform.NAMESPACE, svc.name, other) is not None, svc.name
    assert s.check_auth_secret(platform.NAMESPACE, "default", IAM) is not None


def test_refusals_through_the_https_server(settings_file, settings, tmp_path) -> None:
    w = WebhookProcess.start(tmp_path, "--settings", str(settings_file))
    try:
        conn = w.connection()
        try:
            for case_id, pod, secret, needles in cases():
                doc = admission(pod)
                status, raw = w.post(conn, json.dumps(doc).encode())
                assert status == 200, (case_id, status, raw[:300])
                allowed, msg, ops = verdict(doc, json.loads(raw), settings)
                assert allowed is (secret is not None), (case_id, msg)
                if secret:
                    assert auth_secret_of(ops) == secret, case_id
                for needle in needles:
                    assert needle in msg, (case_id, needle, msg)
        finally:
            conn.close()
        decisions = [json.loads(x).get("decision") for x in w.log().splitlines() if x.startswith("{")]
        assert decisions.count("rejected") >= 3, decisions
    finally:
        w.stop()
