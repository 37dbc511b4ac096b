"""Cluster-wide webhook settings: defaults, allowed KMS hosts, excluded namespaces, path policies.

Loaded once from a YAML file (a ConfigMap in the cluster). Keys may be written snake_case
(`allowed_hosts`) or camelCase (`allowedHosts`); unknown keys are refused so a typo never silently
turns a policy off. Every error names the field (e.g. `path_policies[2].paths[0]`).

Path policies are opt-in: a policy applies to a pod when its namespace (and, if the policy lists
any, its service account) match. When one or more policies apply, every (project, path) the pod
asks for must be allowed by at least one of them. When none applies, `default_policy` decides:
`allow` (the default: no policy, no restriction) or `deny`.

CA bundle: `ca_bundle` names a ConfigMap or a Secret (in each injected namespace, e.g. spread by
trust-manager) whose `key` the agents trust for an https KMS host; a pod may name its own Secret
with `kms.hanzo.ai/ca-secret` only when an applying policy lists it in `ca_secrets`.

Auth Secrets: a policy may also list `auth_secrets` (names or `*` globs). When any applying policy
lists them, the pod's auth Secret (annotation or default) must be in their union. Names in
`protected_auth_secrets` (e.g. IAM's identity) are refused unless an applying policy lists that
exact name, whatever `default_policy` says and even for pods no policy applies to.

Change relay (`relay`, issue 11): when `relay.url` is set, the sidecar/native agent of a pod in
`relay.namespaces` gets the URL, the CA (PEM text, not a secret) and a projected token (audience
`relay.audience`) in its AgentConfig and subscribes there. The CA is `relay.ca` inline or read from
`relay.ca_file` at every settings load (the chart mounts a Secret's ca.crt): while that file cannot
be read, no pod gets the relay (`relay.problem` says why) and agents poll KMS on their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from injector.config import (
    APIS,
    DEFAULT_HEALTH_PORT,
    MAX_REFRESH_SECONDS,
    MIN_REFRESH_SECONDS,
    ConfigError,
    _check_host,
)

from .settings_error import SettingsError
from .settings_relay import (  # noqa: F401 (re-exported: callers find them here)
    DEFAULT_RELAY_AUDIENCE,
    MAX_RELAY_CA_BYTES,
    RELAY_TOKEN_DIR,
    RELAY_TOKEN_PATH,
    RelaySettings,
    check_relay_ca,
    validate_relay,
)

DEFAULT_HOST = "http://kms.hanzo.svc.cluster.local/api"
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SECRET_GLOB = re.compile(r"^[a-z0-9*]([-a-z0-9.*]{0,251}[a-z0-9*])?$")
_SLUG_GLOB = re.compile(r"^[A-Za-z0-9_.*-]{1,64}$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
# Kubernetes resource.Quantity (the common forms): 10m, 0.5, 24Mi, 1G, 1e3.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+|E[0-9]+)?$")
_SUFFIX = {
    None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def _agent_version() -> str:
    try:
        from importlib.metadata import version

        return version("kms-injector")
    except Exception:  # not installed as a distribution (e.g. running from a source tree)
        return "0.1.0"



def parse_quantity(value: str) -> float | None:
    """A Kubernetes quantity string -> its numeric value, or None when it is not one."""
    m = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if not m:
        return None
    number, suffix = float(m.group(1)), m.group(2)
    if suffix not in _SUFFIX:  # a decimal exponent (e3, E3); "Ei" is in _SUFFIX
        exponent = int(suffix[1:])
        # Kubernetes quantities stop at about 9e18; a huge exponent would overflow a float.
        return number * 10.0 ** exponent if exponent <= 18 else None
    return number * _SUFFIX[suffix]


@dataclass(frozen=True)
class Resources:
    """Agent container resources. Empty string = not set. Annotations may override requests only."""

    cpu_request: str = "10m"
    memory_request: str = "24Mi"
    cpu_limit: str = ""  # no CPU limit by default: throttling an agent only delays rotations
    memory_limit: str = "64Mi"

    def to_k8s(self, cpu_request: str | None = None, memory_request: str | None = None) -> dict[str, dict[str, str]]:
        requests = {"cpu": cpu_request or self.cpu_request, "memory": memory_request or self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        out = {"requests": {k: v for k, v in requests.items() if v}, "limits": {k: v for k, v in limits.items() if v}}
        return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class AgentSettings:
    image: str = field(default_factory=lambda: f"ghcr.io/hanzoai/kms-injector-agent:{_agent_version()}")
    image_pull_policy: str = "IfNotPresent"
    resources: Resources = field(default_factory=Resources)
    health_port: int = DEFAULT_HEALTH_PORT
    # The agent image's non-root user; used unless signalling needs the app's uid.
    run_as_user: int = 65532
    run_as_group: int = 65532


@dataclass(frozen=True)
class KubernetesAuthSettings:
    """Projected service-account token for `kms.hanzo.ai/auth: kubernetes`."""

    audience: str = "kms.hanzo.ai"
    expiration_seconds: int = 600  # the shortest kubelet allows; kubelet rotates at 80% of it


@dataclass(frozen=True)
class PathPolicy:
    """Pods in `namespaces` (and, when given, running as one of `service_accounts`) may read only
    these projects and paths. `*` in namespaces/service_accounts/projects matches any; path globs
    use `*` for one segment and `**` for any depth (`/chat/**` also matches `/chat`)."""

    namespaces: tuple[str, ...]
    projects: tuple[str, ...]
    paths: tuple[str, ...]
    service_accounts: tuple[str, ...] = ()
    # Secrets the pod may mount as its Universal Auth identity; () = this policy does not restrict.
    auth_secrets: tuple[str, ...] = ()
    # Secrets a pod may name as its CA bundle (kms.hanzo.ai/ca-secret); () = none.
    ca_secrets: tuple[str, ...] = ()

    def applies_to(self, namespace: str, service_account: str) -> bool:
        if "*" not in self.namespaces and namespace not in self.namespaces:
            return False
        return not self.service_accounts or "*" in self.service_accounts or service_account in self.service_accounts

    def allows(self, project: str, path: str) -> bool:
        if not any(_slug_match(p, project) for p in self.projects):
            return False
        return any(_path_regex(g).match(path) for g in self.paths)


@dataclass(frozen=True)
class CABundle:
    """A CA bundle (PEM) the agents trust for https KMS hosts: a ConfigMap or a Secret of the pod's
    namespace (at most one of them), mounted read-only into the agent containers only."""

    config_map: str = ""
    secret: str = ""
    key: str = "ca.crt"



@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    project: str = "secrets-639-c"
    env: str = "prod"
    api: str = "auto"
    refresh_interval: float = 60.0
    mount_path: str = "/kms/secrets"
    auth_secret: str = "universal-auth-credentials"
    secrets_size_limit: str = "16Mi"  # tmpfs emptyDir sizeLimit for the secrets volume
    agent: AgentSettings = field(default_factory=AgentSettings)
    kubernetes_auth: KubernetesAuthSettings = field(default_factory=KubernetesAuthSettings)
    # The settings' own host is always allowed; list any others a pod may name.
    allowed_hosts: tuple[str, ...] = ()
    excluded_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    path_policies: tuple[PathPolicy, ...] = ()
    default_policy: str = "allow"
    # Auth Secrets refused unless an applying policy lists the exact name (names or `*` globs here).
    protected_auth_secrets: tuple[str, ...] = ()
    organization_slug: str = ""  # sent at login (Infisical API) unless kms.hanzo.ai/organization-slug
    ca_bundle: CABundle = field(default_factory=CABundle)
    relay: RelaySettings = field(default_factory=RelaySettings)

    def __post_init__(self) -> None:
        _validate(self)

    def host_allowed(self, host: str) -> bool:
        h = host.rstrip("/")
        return h == self.host.rstrip("/") or any(h == a.rstrip("/") for a in self.allowed_hosts)

    def check_path(self, namespace: str, service_account: str, project: str, path: str) -> str | None:
        """None when allowed, else a sentence saying why not (for the admission message)."""
        matching = [p for p in self.path_policies if p.applies_to(namespace, service_account)]
        if not matching:
            if self.default_policy == "allow":
                return None
            return (f"no path policy covers namespace {namespace!r} service account {service_account!r} "
                    "and the default policy is deny; ask the cluster operator to add one")
        if any(p.allows(project, path) for p in matching):
            return None
        allowed = "; ".join(f"projects {', '.join(p.projects)} paths {', '.join(p.paths)}" for p in matching)
        return (f"project {project!r} path {path!r} is outside the path policy for namespace {namespace!r} "
                f"service account {service_account!r} (allowed: {allowed})")

    def check_auth_secret(self, namespace: str, service_account: str, secret: str) -> str | None:
        """None when the pod may mount `secret` as its auth Secret, else why not (admission message)."""
        matching = [p for p in self.path_policies if p.applies_to(namespace, service_account)]
        listed = list(dict.fromkeys(g for p in matching for g in p.auth_secrets))
        who = f"namespace {namespace!r} service account {service_account!r}"
        if any(_slug_match(g, secret) for g in self.protected_auth_secrets):
            # Protected: a glob (even `*`) in a policy is not enough; the exact name must be listed.
            if secret in listed:
                return None
            allowed = ", ".join(listed) if listed else f"any unprotected Secret, such as the default {self.auth_secret}"
            return (f"the Secret is protected (protected_auth_secrets) and no path policy for {who} lists it "
                    f"in authSecrets (allowed: {allowed}); ask the cluster operator")
        if not listed or any(_slug_match(g, secret) for g in listed):
            return None
        return f"outside the path policy for {who} (allowed auth Secrets: {', '.join(listed)})"

    def check_ca_secret(self, namespace: str, service_account: str, secret: str) -> str | None:
        """None when an applying policy lists `secret` in ca_secrets, else why not (admission message)."""
        matching = [p for p in self.path_policies if p.applies_to(namespace, service_account)]
        listed = list(dict.fromkeys(g for p in matching for g in p.ca_secrets))
        if any(_slug_match(g, secret) for g in listed):
            return None
        allowed = f"allowed: {', '.join(listed)}" if listed else "none is listed"
        return (f"no path policy for namespace {namespace!r} service account {service_account!r} lists it in caSecrets "
                f"({allowed}); ask the cluster operator, or rely on the settings' ca_bundle")


# -- glob helpers ---------------------------------------------------------------------------------
def _slug_match(pattern: str, value: str) -> bool:
    if "*" not in pattern:
        return pattern == value
    return re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), value) is not None


@lru_cache(maxsize=1024)
def _path_regex(glob: str) -> re.Pattern[str]:
    """`/a/*/c` one segment per `*`; `/a/**` = /a and everything below; `/**` = every path."""
    if glob.endswith("/**"):
        base = glob[:-3]
        head = _segments_regex(base)
        return re.compile(f"^{head}(/.*)?$" if base else "^/.*$")
    return re.compile(f"^{_segments_regex(glob)}$" if glob != "/" else "^/$")


def _segments_regex(glob: str) -> str:
    out = []
    for seg in glob.split("/")[1:]:
        if seg == "**":
            out.append("(/[^/]+)*")
        else:
            out.append("/" + re.escape(seg).replace(r"\*", "[^/]*"))
    return "".join(out)


# -- validation -----------------------------------------------------------------------------------
def _validate(s: Settings) -> None:
    try:
        _check_host(s.host)
    except ConfigError as exc:
        raise SettingsError("host", exc.detail) from None
    for i, h in enumerate(s.allowed_hosts):
        try:
            _check_host(h)
        except ConfigError as exc:
            raise SettingsError(f"allowed_hosts[{i}]", exc.detail) from None
    for name in ("project", "env"):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", getattr(s, name)):
            raise SettingsError(name, f"{getattr(s, name)!r} is not a slug ([A-Za-z0-9_.-], up to 64)")
    if s.api not in APIS:
        raise SettingsError("api", f"{s.api!r} is not accepted; use one of {', '.join(APIS)}")
    if not MIN_REFRESH_SECONDS <= s.refresh_interval <= MAX_REFRESH_SECONDS:
        raise SettingsError("refresh_interval", f"{s.refresh_interval:g}s is out of range; use 5s to 24h")
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", s.mount_path) or "/../" in s.mount_path + "/":
        raise SettingsError("mount_path", f"{s.mount_path!r} is not an absolute directory path such as /kms/secrets")
    if not _DNS_SUBDOMAIN.match(s.auth_secret):
        raise SettingsError("auth_secret", f"{s.auth_secret!r} is not a Secret name (lowercase DNS subdomain)")
    _quantity("secrets_size_limit", s.secrets_size_limit, required=True)
    a = s.agent
    if not _IMAGE.match(a.image):
        raise SettingsError("agent.image", f"{a.image!r} is not an image reference such as ghcr.io/hanzoai/kms-injector-agent:0.1.0")
    if a.image_pull_policy not in IMAGE_PULL_POLICIES:
        raise SettingsError("agent.image_pull_policy", f"{a.image_pull_policy!r} is not accepted; use one of {', '.join(IMAGE_PULL_POLICIES)}")
    if not 1024 <= a.health_port <= 65535:
        raise SettingsError("agent.health_port", f"{a.health_port!r} is not accepted; use a port from 1024 to 65535 (the agent runs non-root)")
    for name in ("run_as_user", "run_as_group"):
        if not 1 <= getattr(a, name) <= 2**31 - 1:
            raise SettingsError(f"agent.{name}", f"{getattr(a, name)!r} is not accepted; use a non-root id (1 .. 2147483647)")
    r = a.resources
    for kind in ("cpu", "memory"):  # named as in the YAML: agent.resources.requests.cpu
        _quantity(f"agent.resources.requests.{kind}", getattr(r, f"{kind}_request"), required=False)
        _quantity(f"agent.resources.limits.{kind}", getattr(r, f"{kind}_limit"), required=False)
        req, lim = getattr(r, f"{kind}_request"), getattr(r, f"{kind}_limit")
        if req and lim and parse_quantity(req) > parse_quantity(lim):  # type: ignore[operator]
            raise SettingsError(f"agent.resources.requests.{kind}", f"{req} is above the limit {lim}")
    k = s.kubernetes_auth
    if not k.audience or len(k.audience) > 256 or any(c.isspace() for c in k.audience):
        raise SettingsError("kubernetes_auth.audience", f"{k.audience!r} is not an audience (non-empty, no spaces, up to 256)")
    if not 600 <= k.expiration_seconds <= 2**32:
        raise SettingsError("kubernetes_auth.expiration_seconds", f"{k.expiration_seconds!r} is not accepted; kubelet requires at least 600")
    for i, ns in enumerate(s.excluded_namespaces):
        if not _DNS_LABEL.match(ns):
            raise SettingsError(f"excluded_namespaces[{i}]", f"{ns!r} is not a namespace name")
    if s.default_policy not in ("allow", "deny"):
        raise SettingsError("default_policy", f"{s.default_policy!r} is not accepted; use allow or deny")
    for i, p in enumerate(s.path_policies):
        where = f"path_policies[{i}]"
        if not p.namespaces:
            raise SettingsError(f"{where}.namespaces", "must list at least one namespace (or '*')")
        if not p.projects:
            raise SettingsError(f"{where}.projects", "must list at least one project (or '*')")
        if not p.paths:
            raise SettingsError(f"{where}.paths", "must list at least one path glob such as /chat/**")
        for j, ns in enumerate(p.namespaces):
            if ns != "*" and not _DNS_LABEL.match(ns):
                raise SettingsError(f"{where}.namespaces[{j}]", f"{ns!r} is not a namespace name or '*'")
        for j, sa in enumerate(p.service_accounts):
            if sa != "*" and not _DNS_SUBDOMAIN.match(sa):
                raise SettingsError(f"{where}.service_accounts[{j}]", f"{sa!r} is not a service account name or '*'")
        for j, pr in enumerate(p.projects):
            if not _SLUG_GLOB.match(pr):
                raise SettingsError(f"{where}.projects[{j}]", f"{pr!r} is not a project slug or glob")
        for j, g in enumerate(p.paths):
            if not isinstance(g, str) or not g.startswith("/") or "\x00" in g or any(seg in (".", "..") for seg in g.split("/")):
                raise SettingsError(f"{where}.paths[{j}]", f"{g!r} is not a path glob such as /chat, /chat/** or /**")
            if not re.fullmatch(r"(/([A-Za-z0-9_.*-]+))*(/\*\*)?/?|/", g):
                raise SettingsError(f"{where}.paths[{j}]", f"{g!r} has characters a KMS path cannot have; use [A-Za-z0-9_.-], * and **")
        for j, a in enumerate(p.auth_secrets):
            _secret_glob(f"{where}.auth_secrets[{j}]", a)
        for j, a in enumerate(p.ca_secrets):
            _secret_glob(f"{where}.ca_secrets[{j}]", a)
    if s.organization_slug and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", s.organization_slug):
        raise SettingsError("organization_slug", f"{s.organization_slug!r} is not an organization slug ([A-Za-z0-9_.-], up to 64)")
    b = s.ca_bundle
    if b.config_map and b.secret:
        raise SettingsError("ca_bundle", "set config_map or secret, not both")
    for name in ("config_map", "secret"):
        if getattr(b, name) and not _DNS_SUBDOMAIN.match(getattr(b, name)):
            raise SettingsError(f"ca_bundle.{name}", f"{getattr(b, name)!r} is not a {name.replace('_', '')} name (lowercase DNS subdomain)")
    if not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", b.key):
        raise SettingsError("ca_bundle.key", f"{b.key!r} is not a ConfigMap/Secret key ([-._a-zA-Z0-9], e.g. ca.crt)")
    validate_relay(s.relay)
    for i, a in enumerate(s.protected_auth_secrets):
        _secret_glob(f"protected_auth_secrets[{i}]", a)
        if _slug_match(a, s.auth_secret):
            raise SettingsError(f"protected_auth_secrets[{i}]", f"protects the default auth_secret {s.auth_secret!r}, which every "
                                "universal-auth pod without kms.hanzo.ai/auth-secret uses; protect only dedicated Secrets")




def _secret_glob(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _SECRET_GLOB.match(value):
        raise SettingsError(name, f"{value!r} is not a Secret name (lowercase DNS subdomain) or a glob of one with *")


def _quantity(name: str, value: Any, required: bool) -> None:
    if not isinstance(value, str) or (required and not value) or (value and parse_quantity(value) is None):
        raise SettingsError(name, f"{value!r} is not a Kubernetes quantity such as 10m, 24Mi or 1Gi")


# The loader (YAML / dict -> Settings) lives in webhook/settings_load.py; re-exported here, where
# every caller has always found it. Imported last: it builds the classes above.
from .settings_load import load_settings, settings_from_dict  # noqa: E402

__all__ = ["Settings", "SettingsError", "AgentSettings", "Resources", "KubernetesAuthSettings", "PathPolicy", "CABundle",
           "RelaySettings", "RELAY_TOKEN_PATH", "check_relay_ca",
           "parse_quantity", "load_settings", "settings_from_dict", "DEFAULT_HOST"]
