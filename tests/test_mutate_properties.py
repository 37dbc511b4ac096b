"""Property-based fuzzing of the admission handler and the annotation parser (hypothesis).

Budget: KMS_FUZZ_EXAMPLES (default 200, so `make test` stays fast; `make fuzz` runs 20,000).
Properties: never an exception, always a well-formed AdmissionReview answer with the uid echoed,
a refusal always carries a short message, and every patch applies cleanly to the pod it was made
for, yields a pod Kubernetes accepts, and is never applied twice."""

from __future__ import annotations

import os

import jsonpatch
import kubernetes_validate
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from webhook.annotations import AnnotationError, ContainerFacts, PodFacts, parse
from webhook.mutate import review
from webhook import certs
from webhook.settings import Settings, settings_from_dict

from .podcheck import K8S_VERSION, check_pod_spec, decode_patch

EXAMPLES = int(os.environ.get("KMS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
P = "kms.hanzo.ai/"
SETTINGS = [
    Settings(),
    settings_from_dict({"allowed_hosts": ["https://kms.hanzo.ai/api"], "default_policy": "deny", "path_policies": [
        {"namespaces": ["hanzo"], "projects": ["secrets-639-c"], "paths": ["/chat/**", "/*/db"]}]}),
    # The change relay configured (issue 11): relayed pods stay valid too.
    settings_from_dict({"relay": {"url": "https://kms-injector-relay.kms-injector.svc:443",
                                  "ca": certs.generate_ca("fuzz-relay-ca").cert_pem.decode(), "namespaces": ["hanzo"]}}),
]

KEYS = ["inject", "status", "path", "path-db", "path-../x", "project", "env", "host", "api", "auth", "auth-secret",
        "identity-id", "mode", "refresh-interval", "init-timeout", "mount-path", "containers", "format", "file-mode",
        "signal", "signal-process", "command", "events", "agent-cpu", "agent-memory", "agent-health-port",
        "template-app.env", "template-../../etc/passwd", "image", "agent-image", "unknown"]
GOOD = {
    "inject": ["true", "true", "false"], "status": ["pending", "injected"], "path": ["/chat", "/", "/chat/db", "/commerce"],
    "path-db": ["/chat/db"], "project": ["secrets-639-c", "hanzo-iam"], "env": ["prod", "dev"],
    "host": ["http://kms.hanzo.svc.cluster.local/api", "https://kms.hanzo.ai/api", "file:///etc/passwd", "https://u:p@x/api"],
    "api": ["auto", "canonical"], "auth": ["universal", "kubernetes"], "auth-secret": ["iam-kms-auth"],
    "identity-id": ["6b1c-2f0e"], "mode": ["sidecar", "init", "native"], "refresh-interval": ["30s", "5m", "1s", "soon"],
    "mount-path": ["/kms/secrets", "/run/kms", "/etc", "/"], "containers": ["app", "app,side", "ghost"],
    "format": ["files", "dotenv", "json", "yaml"], "file-mode": ["0444", "0440", "0777"], "signal": ["SIGHUP", "usr1", "KILL"],
    "signal-process": ["nginx", "/bin/sh"], "command": ["/bin/reload --now", "'"], "events": ["true", "false"],
    "agent-cpu": ["20m", "9"], "agent-memory": ["32Mi", "1Gi"], "agent-health-port": ["9099", "80", "8080"],
}
hostile_text = st.one_of(st.text(max_size=40), st.just("\x00"), st.just("a" * 10_000), st.just("/../../etc"), st.just("${X}"))


@st.composite
def annotation_maps(draw):
    ann = {}
    hostile = draw(st.integers(0, 3)) == 3  # a quarter of the maps carry arbitrary keys and values
    for key in draw(st.lists(st.sampled_from(KEYS if hostile else list(GOOD)), max_size=6, unique=True)):
        choices = GOOD.get(key, [])
        if hostile or not choices:
            value = draw(st.one_of(st.sampled_from(choices), hostile_text) if choices else hostile_text)
        else:
            value = draw(st.sampled_from(choices) if draw(st.integers(0, 3)) == 3 else st.sampled_from(choices[:2]))
        ann[P + key] = value
    if draw(st.integers(0, 4)) != 4:
        ann[P + "path"] = draw(st.sampled_from(GOOD["path"]))
    if draw(st.integers(0, 9)) == 9:
        ann[draw(st.text(max_size=20))] = draw(st.text(max_size=20))
    if draw(st.integers(0, 19)) == 19:
        ann[P + "refresh-interval"] = draw(st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2)))
    return ann


names = st.sampled_from(["app", "side", "migrate", "web", "kms-agent"])


@st.composite
def containers_(draw, prefix):
    out = []
    for name in draw(st.lists(names, min_size=1 if prefix == "c" else 0, max_size=3, unique=True)):
        c = {"name": name, "image": draw(st.sampled_from(["ghcr.io/hanzoai/app:1.0", "nginx", "reg:5000/a/b@sha256:" + "0" * 64]))}
        if draw(st.booleans()):
            c["command"] = draw(st.sampled_from([["/usr/bin/app"], ["nginx", "-g"], ["python3", "x.py"]]))
        mounts = draw(st.sampled_from([None, "absent", [], [{"name": "data", "mountPath": "/data"}],
                                       [{"name": "data", "mountPath": "/kms/secrets"}]]))
        if mounts != "absent":
            c["volumeMounts"] = mounts
        if draw(st.booleans()):
            c["securityContext"] = {"runAsUser": draw(st.sampled_from([0, 1000, 65532]))}
        if draw(st.integers(0, 4)) == 4:
            c["ports"] = [{"containerPort": draw(st.sampled_from([8080, 8099]))}]
        out.append(c)
    return out


@st.composite
def pods(draw):
    spec = {"containers": draw(containers_("c"))}
    inits = draw(st.one_of(st.just("absent"), st.none(), containers_("i")))
    if isinstance(inits, list) and draw(st.integers(0, 9)) != 9:  # mostly unique names across both lists
        inits = [c for c in inits if c["name"] not in {a["name"] for a in spec["containers"]}]
    if inits != "absent":
        spec["initContainers"] = inits
    vols = draw(st.sampled_from(["absent", None, [], [{"name": "data", "emptyDir": {}}],
                                 [{"name": "data", "emptyDir": {}}, {"name": "kms-secrets", "emptyDir": {}}]]))
    if vols != "absent":
        spec["volumes"] = vols
    for c in spec["containers"] + (spec.get("initContainers") or []):  # keep the *input* pod valid
        for m in c.get("volumeMounts") or []:
            if not any(v["name"] == m["name"] for v in spec.get("volumes") or []):
                spec.setdefault("volumes", []) if spec.get("volumes") is not None else spec.update(volumes=[])
                spec["volumes"].append({"name": m["name"], "emptyDir": {}})
    if draw(st.booleans()):
        spec["securityContext"] = draw(st.sampled_from([{}, {"fsGroup": 2000}, {"runAsUser": 1000}, {"runAsUser": 0, "fsGroup": 1}]))
    if draw(st.booleans()):
        spec["serviceAccountName"] = draw(st.sampled_from(["default", "chat", "iam"]))
    meta = {draw(st.sampled_from(["name", "generateName"])): "p-"}
    ann = None if draw(st.integers(0, 5)) == 5 else draw(annotation_maps())
    if ann is not None:
        meta["annotations"] = ann
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


@st.composite
def bodies(draw):
    pod = draw(junk) if draw(st.integers(0, 7)) == 7 else draw(pods())
    if isinstance(pod, dict) and draw(st.integers(0, 9)) == 9:  # break one field of a real-looking pod
        target = draw(st.sampled_from(["metadata", "spec", "annotations", "containers", "initContainers", "volumes"]))
        bad = draw(junk)
        if target in ("metadata", "spec"):
            pod[target] = bad
        elif target == "annotations" and isinstance(pod.get("metadata"), dict):
            pod["metadata"]["annotations"] = bad
        elif isinstance(pod.get("spec"), dict):
            pod["spec"][target] = bad
    request = {"uid": draw(st.sampled_from(["u-1", "7b9f9bd2-7fa6-4fe3-b598-ecf630ccf42d"])),
               "kind": draw(st.sampled_from([{"group": "", "version": "v1", "kind": "Pod"}] * 9 + [{"group": "apps", "kind": "Deployment"}])),
               "operation": draw(st.sampled_from(["CREATE"] * 9 + ["UPDATE"])),
               "namespace": draw(st.sampled_from(["hanzo"] * 4 + ["default", "kube-system", ""])),
               "dryRun": draw(st.booleans()), "object": pod}
    if draw(st.integers(0, 19)) == 19:
        del request[draw(st.sampled_from(["uid", "kind", "object", "namespace"]))]
    return {"apiVersion": draw(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])), "kind": "AdmissionReview",
            "request": request}


def _well_formed(pod) -> bool:
    return isinstance(pod, dict) and isinstance(pod.get("spec"), dict) and isinstance(pod.get("metadata"), dict) and \
        isinstance(pod["spec"].get("containers"), list) and pod["spec"]["containers"] and \
        (pod["metadata"].get("annotations") is None or isinstance(pod["metadata"]["annotations"], dict))


def _valid_input(pod) -> bool:
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        check_pod_spec(pod["spec"])
        return True
    except Exception:
        return False


@FUZZ
@given(body=bodies(), which=st.integers(0, len(SETTINGS) - 1))
def test_fuzz_admission_never_raises_and_patches_are_valid(body, which):
    s = SETTINGS[which]
    result = review(body, s)
    event(result.decision)
    assert result.internal_error == "", result.message
    out = result.response
    assert out["kind"] == "AdmissionReview" and out["apiVersion"] == body["apiVersion"]
    resp = out["response"]
    req = body["request"]
    assert resp["uid"] == (req.get("uid") or "") and isinstance(resp["allowed"], bool)
    assert result.decision in ("skip", "injected", "already", "rejected", "invalid")
    assert all(isinstance(w, str) and len(w) < 600 for w in resp.get("warnings", []))
    if not resp["allowed"]:
        assert result.decision in ("rejected", "invalid") and "patch" not in resp
        msg = resp["status"]["message"]
        assert isinstance(msg, str) and 0 < len(msg) < 1000 and "\x00" not in msg
        return
    if "patch" not in resp:
        assert result.decision in ("skip", "already")
        return
    assert result.decision == "injected" and resp["patchType"] == "JSONPatch"
    pod = req["object"]
    patched = jsonpatch.apply_patch(pod, decode_patch(resp))  # always applies cleanly
    assert patched["metadata"]["annotations"][P + "status"] == "injected"
    if _well_formed(pod) and _valid_input(pod):  # a valid pod stays valid
        event("validated")
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        check_pod_spec(patched["spec"])
    again = dict(body, request=dict(req, object=patched))
    assert review(again, s).response["response"] == {"uid": resp["uid"], "allowed": True}


@FUZZ
@given(ann=annotation_maps(), fs_group=st.booleans(), sa=st.sampled_from(["default", "chat"]))
def test_fuzz_annotation_parser_refuses_only_with_annotation_errors(ann, fs_group, sa):
    pod = PodFacts(namespace="hanzo", service_account=sa, fs_group=fs_group,
                   containers=(ContainerFacts("app", command0="app"), ContainerFacts("side", image="nginx")),
                   init_containers=(ContainerFacts("migrate"),))
    for s in SETTINGS:
        try:
            parsed = parse(ann, s, pod)
        except AnnotationError as exc:
            msg = str(exc)
            assert exc.annotation.startswith(P) or exc.annotation in ann
            assert len(msg) < 1000 and exc.code in (400, 403)
            continue
        c = parsed.config
        assert c.host == s.host or s.host_allowed(c.host)
        assert all(".." not in src.path.split("/") for src in c.sources)
        assert all("/" not in name and not name.startswith("..") for name in c.templates)
        assert parsed.options.mode in ("sidecar", "init", "native")
