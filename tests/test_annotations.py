"""Annotation parsing (pure) and webhook settings: every v1 annotation, every refusal names the
annotation, the value and what is accepted; settings files refuse bad fields by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from injector.config import AgentConfig, Source
from webhook.annotations import (
    AGENT_MOUNT_PATH,
    AnnotationError,
    ContainerFacts,
    PodFacts,
    injection_requested,
    parse,
)
from webhook.settings import PathPolicy, Settings, SettingsError, load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parent.parent
P = "kms.hanzo.ai/"
POD = PodFacts(namespace="hanzo", service_account="chat",
               containers=(ContainerFacts("chat", command0="chat-server", image="ghcr.io/hanzoai/chat:1.0", ports=(8080,)),
                           ContainerFacts("proxy", image="envoyproxy/envoy:v1.30")),
               init_containers=(ContainerFacts("migrate", command0="migrate"),))
S = Settings(allowed_hosts=("https://kms.hanzo.ai/api",))


def ann(**kw: str) -> dict[str, str]:
    out = {P + "path": "/chat"}
    out.update({P + k.replace("_", "-"): v for k, v in kw.items()})
    return out


def refused(annotations: dict, settings: Settings = S, pod: PodFacts = POD) -> AnnotationError:
    with pytest.raises(AnnotationError) as err:
        parse(annotations, settings, pod)
    return err.value


# -- defaults and every annotation --------------------------------------------------------------------
def test_minimal_pod_gets_settings_defaults():
    p = parse({P + "path": "/chat"}, S, POD)
    c = p.config
    assert isinstance(c, AgentConfig)
    assert (c.host, c.project, c.env) == ("http://kms.hanzo.svc.cluster.local/api", "secrets-639-c", "prod")
    assert c.sources == [Source("/chat")]
    assert (c.mode, c.auth, c.format, c.file_mode, c.refresh_interval, c.health_port) == ("sidecar", "universal", "files", 0o444, 60.0, 8099)
    # The app sees the files at its mount path; the agents write them at one fixed internal path.
    assert p.options.app_mount_path == "/kms/secrets" and c.mount_path == AGENT_MOUNT_PATH and c.signal == "" and c.command == []
    o = p.options
    assert o.mode == "sidecar" and o.containers == ("chat", "proxy") and o.init_containers == ("migrate",)
    assert o.auth_secret == "universal-auth-credentials"
    assert p.warnings == []


def test_every_annotation_is_parsed():
    a = {
        P + "path": "/chat/", P + "path-shared": "/shared", P + "project": "hanzo-iam", P + "env": "staging",
        P + "host": "https://kms.hanzo.ai/api", P + "api": "canonical", P + "auth-secret": "iam-kms-auth",
        P + "mode": "native", P + "refresh-interval": "5m", P + "init-timeout": "30s", P + "mount-path": "/run/secrets/kms",
        P + "containers": "chat, migrate", P + "format": "dotenv", P + "template-app.conf": "url=${DATABASE_URL}\n",
        P + "file-mode": "0400", P + "signal": "hup", P + "events": "false", P + "agent-cpu": "20m",
        P + "agent-memory": "32Mi", P + "agent-health-port": "9099",
    }
    p = parse(a, S, POD)
    c, o = p.config, p.options
    assert c.sources == [Source("/chat"), Source("/shared", "shared")]
    assert (c.project, c.env, c.host, c.api) == ("hanzo-iam", "staging", "https://kms.hanzo.ai/api", "canonical")
    assert c.mode == "sidecar" and o.mode == "native"  # the native agent runs the sidecar loop
    assert (c.refresh_interval, c.init_timeout, o.app_mount_path, c.format) == (300.0, 30.0, "/run/secrets/kms", "dotenv")
    assert c.mount_path == AGENT_MOUNT_PATH
    assert c.templates == {"app.conf": "url=${DATABASE_URL}\n"}
    assert c.file_mode == 0o400 and c.events is False and c.health_port == 9099
    assert c.signal == "SIGHUP" and c.signal_process == "chat-server"  # basename of the first selected container's command
    assert o.containers == ("chat",) and o.init_containers == ("migrate",)
    assert (o.auth_secret, o.cpu_request, o.memory_request) == ("iam-kms-auth", "20m", "32Mi")
    assert AgentConfig.from_json(c.to_json()) == c


def test_kubernetes_auth_needs_identity():
    p = parse(ann(auth="kubernetes", identity_id="6b1c2f0e-iam"), S, POD)
    assert (p.config.auth, p.config.identity_id, p.options.auth_secret) == ("kubernetes", "6b1c2f0e-iam", "")
    err = refused(ann(auth="kubernetes"))
    assert err.annotation == P + "identity-id" and "required" in str(err)


def test_fs_group_defaults_file_mode_0440_and_init_mode_has_no_health_port():
    pod = PodFacts(namespace="hanzo", containers=(ContainerFacts("app", command0="app"),), fs_group=True)
    p = parse(ann(mode="init"), S, pod)
    assert p.config.file_mode == 0o440 and p.config.mode == "init" and p.config.health_port == 0


def test_signal_process_defaults_to_image_name_with_a_warning():
    p = parse(ann(signal="SIGUSR1", containers="proxy"), S, POD)
    assert p.config.signal_process == "envoy"
    assert any("signal-process" in w and "envoy" in w for w in p.warnings)
    assert parse(ann(signal="SIGHUP", signal_process="nginx"), S, POD).config.signal_process == "nginx"


def test_unknown_annotations_warn_and_ignored_combinations_warn():
    p = parse(ann(pth="/oops", mode="init", signal="SIGHUP"), S, POD)
    assert any(w.startswith(P + "pth: unknown annotation") for w in p.warnings)
    assert any("ignored in init mode" in w for w in p.warnings) and p.config.signal == ""


@pytest.mark.parametrize("annotations,expected", [
    ({P + "path": "/x"}, True), ({P + "inject": "true"}, True), ({P + "inject": "TRUE", P + "path": "/x"}, True),
    ({P + "inject": "false", P + "path": "/x"}, False), ({P + "project": "p"}, False),
])
def test_injection_requested(annotations, expected):
    assert injection_requested(annotations) is expected


# -- refusals: annotation, value, accepted -----------------------------------------------------------
@pytest.mark.parametrize("key,value,accepted", [
    ("refresh-interval", "soon", "30s, 5m, 1h"),
    ("refresh-interval", "1s", "from 5s to 24h"),
    ("refresh-interval", "25h", "from 5s to 24h"),
    ("init-timeout", "0", "from 1s to 1h"),
    ("mode", "daemon", "sidecar, init, native"),
    ("format", "toml", "files, dotenv, json, yaml"),
    ("auth", "ldap", "universal, kubernetes"),
    ("api", "vault", "auto, infisical, canonical"),
    ("file-mode", "0777", "0444, 0440"),
    ("signal", "SIGKILL", "SIGHUP"),
    ("project", "../iam", "project slug"),
    ("env", "", "environment slug"),
    ("auth-secret", "Bad_Name", "Secret in the pod's namespace"),
    ("containers", "chat,ghost", "its containers are chat, proxy, migrate"),
    ("agent-memory", "1Gi", "cannot exceed the limit 64Mi"),
    ("agent-cpu", "lots", "CPU quantity"),
    ("agent-health-port", "8080", "already uses port 8080"),
    ("agent-health-port", "80", "1024 to 65535"),
    ("command", "reload 'unbalanced", "balanced quotes"),
    ("inject", "yes", '"true" or "false"'),
    ("events", "maybe", '"true" or "false"'),
    ("signal-process", "/bin/sh", "no slashes"),
    ("mount-path", "/", "absolute directory"),
    ("mount-path", "/etc", "not under"),
    ("mount-path", "/kms/auth", "not under"),
    ("mount-path", "/var/run/secrets/kubernetes.io/serviceaccount", "not under"),
    ("mount-path", "/a/../etc", "never . or .."),
    ("mount-path", "relative", "absolute directory"),
])
def test_bad_values_are_refused_naming_annotation_value_and_accepted(key, value, accepted):
    a = ann(**{key.replace("-", "_"): value})
    if key == "signal-process":
        a[P + "signal"] = "SIGHUP"
    err = refused(a)
    msg = str(err)
    assert err.annotation == P + key and msg.startswith(P + key + ": ")
    assert f'"{value}"' in msg and accepted in msg and err.code == 400


def test_signal_and_command_together_are_refused():
    err = refused(ann(signal="SIGHUP", command="/bin/reload"))
    assert "not both" in str(err)


# -- hostile input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host,code", [
    ("https://evil.example.com/api", 403),
    ("http://kms.hanzo.svc.cluster.local:8080/api", 403),  # port differs
    ("http://kms.hanzo.svc.cluster.local/api/v2", 403),  # path differs
    ("file:///etc/passwd", 400),
    ("https://user:pass@kms.hanzo.ai/api", 400),
    ("https://kms.hanzo.ai/api?x=1", 400),
    ("gopher://kms.hanzo.ai/api", 400),
])
def test_hosts_must_be_on_the_allowed_list(host, code):
    err = refused(ann(host=host))
    assert err.annotation == P + "host" and err.code == code
    assert "user:pass" not in str(err)  # a password in a URL is never echoed
    if code == 403:
        assert "allowed hosts" in str(err) and "https://kms.hanzo.ai/api" in str(err)
    assert parse(ann(host="https://kms.hanzo.ai/api/"), S, POD).config.host == "https://kms.hanzo.ai/api/"


@pytest.mark.parametrize("key,value", [
    ("path", "/../iam"), ("path", "chat"), ("path", "/chat\x00"), ("path", "/" + "a" * 10_000),
    ("path-x", "/ok/./x"), ("project", "a" * 10_000), ("host", "http://" + "k" * 10_000),
])
def test_traversal_nul_and_huge_values_are_refused_with_short_messages(key, value):
    err = refused({P + "path": "/chat", P + key: value})
    msg = str(err)
    assert err.annotation == P + key and len(msg) < 600 and "\x00" not in msg
    if len(value) > 100:
        assert f"({len(value)} characters)" in msg


@pytest.mark.parametrize("key", [P + "template-../etc", P + "template-a/b", P + "template-..data", P + "template-", P + "path-../x", P + "path-"])
def test_template_and_folder_names_cannot_escape_the_mount(key):
    err = refused({P + "path": "/chat", key: "x"})
    assert err.annotation == key and ("file name" in str(err) or "folder name" in str(err))


def test_huge_template_and_nul_template_refused():
    assert "at most 32768" in str(refused(ann(template_big="x" * 40_000)))
    assert refused(ann(template_a="a\x00b")).annotation == P + "template-a"


@pytest.mark.parametrize("key", [P + "image", P + "agent-image", P + "init-image", P + "Image-Override"])
def test_image_overrides_are_refused(key):
    err = refused({P + "path": "/chat", key: "evil.example.com/miner:latest"})
    assert err.code == 403 and err.annotation == key and "cluster operator" in str(err)


def test_non_string_values_are_refused():
    err = refused({P + "path": "/chat", P + "refresh-interval": 30})
    assert "strings" in str(err) and "<int>" in str(err)


def test_path_policies_confine_service_accounts():
    s = settings_from_dict({
        "default_policy": "deny",
        "path_policies": [
            {"namespaces": ["hanzo"], "serviceAccounts": ["iam"], "projects": ["hanzo-iam"], "paths": ["/**"]},
            {"namespaces": ["hanzo"], "serviceAccounts": ["chat"], "projects": ["secrets-639-c"], "paths": ["/chat", "/chat/**"]},
        ],
    })
    assert parse(ann(path_db="/chat/db"), s, POD).config.sources[1] == Source("/chat/db", "db")
    err = refused({P + "path": "/iam", P + "project": "hanzo-iam"}, s)
    assert err.code == 403 and err.annotation == P + "path" and "outside the path policy" in str(err) and "'chat'" in str(err)
    assert refused({P + "path": "/commerce"}, s).code == 403
    other = PodFacts(namespace="hanzo", service_account="debug", containers=POD.containers)
    assert "default policy is deny" in str(refused(ann(), s, other))
    iam = PodFacts(namespace="hanzo", service_account="iam", containers=POD.containers)
    assert parse({P + "path": "/", P + "project": "hanzo-iam"}, s, iam).config.project == "hanzo-iam"
    # default_policy allow: pods no policy covers are unrestricted
    open_s = settings_from_dict({"path_policies": [{"namespaces": ["hanzo"], "projects": ["x"], "paths": ["/x"]}]})
    elsewhere = PodFacts(namespace="other", containers=POD.containers)
    assert parse({P + "path": "/anything"}, open_s, elsewhere).config.sources == [Source("/anything")]


def test_auth_secret_policies_confine_which_identity_a_pod_mounts():
    s = settings_from_dict({
        "protectedAuthSecrets": ["iam-kms-auth"],
        "path_policies": [
            {"namespaces": ["hanzo"], "serviceAccounts": ["iam"], "projects": ["hanzo-iam"], "paths": ["/**"],
             "authSecrets": ["iam-kms-auth"]},
            {"namespaces": ["hanzo"], "serviceAccounts": ["chat"], "projects": ["secrets-639-c"], "paths": ["/chat/**"],
             "authSecrets": ["universal-auth-credentials", "chat-*"]},
            # a wildcard policy for chat too: `*` never unlocks a protected Secret
            {"namespaces": ["hanzo"], "serviceAccounts": ["chat"], "projects": ["x"], "paths": ["/x"], "authSecrets": ["*-auth"]},
        ],
    })
    assert parse(ann(), s, POD).options.auth_secret == "universal-auth-credentials"  # the default, listed
    assert parse(ann(auth_secret="chat-kms"), s, POD).options.auth_secret == "chat-kms"  # glob
    err = refused(ann(auth_secret="iam-kms-auth"), s)
    assert err.code == 403 and err.annotation == P + "auth-secret"
    msg = str(err)
    assert msg.startswith(P + 'auth-secret: "iam-kms-auth" is not accepted; ') and "protected" in msg
    assert "universal-auth-credentials, chat-*, *-auth" in msg and "'chat'" in msg
    err = refused(ann(auth_secret="commerce-creds"), s)
    assert err.code == 403 and "allowed auth Secrets: universal-auth-credentials, chat-*, *-auth" in str(err)
    # IAM: only its own identity; the shared default is not on its list.
    iam = PodFacts(namespace="hanzo", service_account="iam", containers=POD.containers)
    iam_ann = {P + "path": "/", P + "project": "hanzo-iam", P + "auth-secret": "iam-kms-auth"}
    assert parse(iam_ann, s, iam).options.auth_secret == "iam-kms-auth"
    err = refused({P + "path": "/", P + "project": "hanzo-iam"}, s, iam)
    assert err.code == 403 and '"universal-auth-credentials"' in str(err) and "iam-kms-auth" in str(err)
    # No policy applies (default_policy allow): anything but a protected Secret.
    debug = PodFacts(namespace="hanzo", service_account="debug", containers=POD.containers)
    assert parse(ann(auth_secret="whatever"), s, debug).options.auth_secret == "whatever"
    err = refused(ann(auth_secret="iam-kms-auth"), s, debug)
    assert err.code == 403 and "protected" in str(err) and "'debug'" in str(err)
    # kubernetes auth mounts no Secret: nothing to check (the annotation is ignored with a warning).
    k = parse(ann(auth="kubernetes", identity_id="id-1", auth_secret="iam-kms-auth"), s, POD)
    assert k.options.auth_secret == "" and any("ignored" in w for w in k.warnings)


def test_auth_secrets_absent_means_unrestricted():
    s = settings_from_dict({"path_policies": [{"namespaces": ["hanzo"], "projects": ["*"], "paths": ["/**"]}]})
    assert s.path_policies[0].auth_secrets == () and s.protected_auth_secrets == ()
    assert parse(ann(auth_secret="iam-kms-auth"), s, POD).options.auth_secret == "iam-kms-auth"


@pytest.mark.parametrize("glob,path,ok", [
    ("/chat/**", "/chat", True), ("/chat/**", "/chat/a/b", True), ("/chat/**", "/chatty", False),
    ("/chat", "/chat/a", False), ("/*/db", "/chat/db", True), ("/*/db", "/a/b/db", False),
    ("/**", "/", True), ("/a/**/z", "/a/z", True), ("/a/**/z", "/a/b/c/z", True),
])
def test_path_globs(glob, path, ok):
    assert PathPolicy(("*",), ("*",), (glob,)).allows("p", path) is ok


# -- settings ------------------------------------------------------------------------------------------
def test_settings_defaults():
    s = Settings()
    assert s.host == "http://kms.hanzo.svc.cluster.local/api" and (s.project, s.env) == ("secrets-639-c", "prod")
    assert s.agent.image.startswith("ghcr.io/hanzoai/kms-injector-agent:")
    assert s.agent.resources.to_k8s() == {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}}
    assert s.excluded_namespaces == ("kube-system", "kube-public", "kube-node-lease")
    assert s.auth_secret == "universal-auth-credentials" and s.secrets_size_limit == "16Mi"
    assert s.kubernetes_auth.expiration_seconds >= 600 and s.default_policy == "allow"


def test_example_settings_file_loads():
    s = load_settings(str(ROOT / "examples" / "settings.yaml"))
    assert s.host_allowed("https://kms.hanzo.ai/api") and not s.host_allowed("https://kms.hanzo.ai")
    assert s.path_policies[0].service_accounts == ("iam",) and s.refresh_interval == 60.0


@pytest.mark.parametrize("text,field", [
    ("refresh_interval: soon", "refresh_interval"),
    ("refresh_interval: 1s", "refresh_interval"),
    ("allowedHosts: [file:///etc]", "allowed_hosts[0]"),
    ("colour: blue", "colour"),
    ("agent: {image_pull_policy: Sometimes}", "agent.image_pull_policy"),
    ("agent: {resources: {requests: {memory: lots}}}", "agent.resources.requests.memory"),
    ("agent: {resources: {requests: {memory: 128Mi}}}", "agent.resources.requests.memory"),
    ("agent: {health_port: 80}", "agent.health_port"),
    ("kubernetes_auth: {expiration_seconds: 60}", "kubernetes_auth.expiration_seconds"),
    ("default_policy: maybe", "default_policy"),
    ("path_policies: [{namespaces: [hanzo], projects: [p]}]", "path_policies[0].paths"),
    ("path_policies: [{namespaces: [hanzo], projects: [p], paths: [/a/../b]}]", "path_policies[0].paths[0]"),
    ("path_policies: [{namespaces: [Bad_NS], projects: [p], paths: [/a]}]", "path_policies[0].namespaces[0]"),
    ("excluded_namespaces: [UPPER]", "excluded_namespaces[0]"),
    ("path_policies: [{namespaces: [hanzo], projects: [p], paths: [/a], authSecrets: [Bad_Name]}]", "path_policies[0].auth_secrets[0]"),
    ("path_policies: [{namespaces: [hanzo], projects: [p], paths: [/a], auth_secrets: []}]", "path_policies[0].auth_secrets"),
    ("path_policies: [{namespaces: [hanzo], projects: [p], paths: [/a], authSecrets: {a: b}}]", "path_policies[0].auth_secrets"),
    ("path_policies: [{namespaces: [hanzo], projects: [p], paths: [/a], authSecrets: [ok, true]}]", "path_policies[0].auth_secrets[1]"),
    ("protectedAuthSecrets: [iam/kms]", "protected_auth_secrets[0]"),
    ("protected_auth_secrets: 7", "protected_auth_secrets"),
    ("protected_auth_secrets: [iam-kms-auth, universal-*]", "protected_auth_secrets[1]"),
    ("host: ftp://kms", "host"),
    ("[not, a, mapping]", "(top level)"),
    ("host: [unclosed", "file"),
])
def test_bad_settings_name_the_field(tmp_path, text, field):
    f = tmp_path / "settings.yaml"
    f.write_text(text + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(str(f))
    assert err.value.field == field and str(err.value).startswith(f"settings {field}: ")


def test_missing_settings_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings(str(tmp_path / "nope.yaml"))
    assert "cannot read" in str(err.value)
