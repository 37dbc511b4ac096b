"""The agent containers the webhook adds, one builder per kind. Pure.

- `init_container`: `kms-agent-init`, fetches once and exits. Its config carries no signal and no
  command: the app has not started, so there is nothing to notify, and its deadline bounds the
  fetch only.
- `sidecar_container`: `kms-agent` among the app containers, refreshing, with a liveness probe.
- `native_container`: `kms-agent` as a restartable init container with a startup probe on
  /readyz, so the app starts once the first files exist.

All share the image, env (the AgentConfig as JSON, the pod's name and namespace), resources,
security context and mounts: the secrets volume at one fixed internal path (never the app's
mount path), the credentials and the CA bundle read-only.

Change relay (settings `relay`, pod's namespace in `relay.namespaces`, mode sidecar or native):
the refreshing agent's config gets relay_url/relay_ca/relay_token_path/relay_poll_factor and it
alone mounts the projected token `kms-relay-token` (audience: the relay). The init container
neither subscribes nor gets the token or the CA: it fetches once and exits, and least privilege
keeps a credential out of a container that has no use for it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import orjson

from injector.config import config_to_json

from .annotations import AGENT_CA_DIR, AGENT_MOUNT_PATH, CA_FILE_NAME, PREFIX, ContainerFacts, Parsed, PodFacts
from .settings import RELAY_TOKEN_DIR, Settings

AGENT = "kms-agent"
AGENT_INIT = "kms-agent-init"
VOLUME_SECRETS = "kms-secrets"
VOLUME_AUTH = "kms-auth"
VOLUME_TOKEN = "kms-sa-token"
VOLUME_CA = "kms-ca"
VOLUME_RELAY_TOKEN = "kms-relay-token"
OUR_CONTAINERS = (AGENT, AGENT_INIT)
OUR_VOLUMES = (VOLUME_SECRETS, VOLUME_AUTH, VOLUME_TOKEN, VOLUME_CA, VOLUME_RELAY_TOKEN)
_RELAY_OFF = {"relay_url": "", "relay_ca": "", "relay_token_path": ""}


def _sorted_dumps(data: dict[str, Any], _dumps: Any = orjson.dumps, _option: int = orjson.OPT_SORT_KEYS) -> bytes:
    # injector.config decides where these bytes may stand for the stdlib's; the agent has no orjson.
    return _dumps(data, option=_option)


@dataclass(slots=True)
class AgentParts:
    """What every agent container of one pod shares, built once per pod."""

    config: dict[str, Any]  # AgentConfig.to_dict() of the sidecar/native agent (init_container edits it)
    config_json: str
    mounts: list[dict[str, Any]]  # every agent container's
    relay_mounts: list[dict[str, Any]]  # the sidecar/native agent's: mounts + the relay token, or mounts itself
    security: dict[str, Any]
    resources: dict[str, dict[str, str]]


def relayed(parsed: Parsed, facts: PodFacts, settings: Settings) -> bool:
    """Whether this pod's refreshing agent subscribes to the change relay (init mode: no such agent)."""
    return parsed.options.mode != "init" and settings.relay.applies_to(facts.namespace)


def volumes(parsed: Parsed, settings: Settings, relay: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes to add, the agents' mounts of them). With `relay`, the relay token volume is
    added too; its mount is not in the list (only the refreshing agent gets it: parts())."""
    cfg, o = parsed.config, parsed.options
    vols: list[dict[str, Any]] = [
        {"name": VOLUME_SECRETS, "emptyDir": {"medium": "Memory", "sizeLimit": settings.secrets_size_limit}}]
    mounts: list[dict[str, Any]] = [{"name": VOLUME_SECRETS, "mountPath": AGENT_MOUNT_PATH}]
    if cfg.auth == "kubernetes":
        k = settings.kubernetes_auth
        vols.append({"name": VOLUME_TOKEN, "projected": {"defaultMode": 0o444, "sources": [{"serviceAccountToken": {
            "audience": k.audience, "expirationSeconds": k.expiration_seconds, "path": posixpath.basename(cfg.token_path)}}]}})
        mounts.append({"name": VOLUME_TOKEN, "mountPath": posixpath.dirname(cfg.token_path), "readOnly": True})
    else:
        vols.append({"name": VOLUME_AUTH, "secret": {"secretName": o.auth_secret, "defaultMode": 0o444}})
        mounts.append({"name": VOLUME_AUTH, "mountPath": cfg.credentials_dir, "readOnly": True})
    if o.ca is not None:
        items = [{"key": o.ca.key, "path": CA_FILE_NAME}]
        source = ({"configMap": {"name": o.ca.name, "items": items, "defaultMode": 0o444}} if o.ca.kind == "configMap"
                  else {"secret": {"secretName": o.ca.name, "items": items, "defaultMode": 0o444}})
        vols.append({"name": VOLUME_CA, **source})
        mounts.append({"name": VOLUME_CA, "mountPath": AGENT_CA_DIR, "readOnly": True})
    if relay:
        vols.append({"name": VOLUME_RELAY_TOKEN, "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": dict(settings.relay.token_volume)}]}})
    return vols, mounts


def parts(parsed: Parsed, facts: PodFacts, settings: Settings, mounts: list[dict[str, Any]], warnings: list[str],
          relay: bool = False) -> AgentParts:
    o = parsed.options
    config = parsed.config.to_dict()
    relay_mounts = mounts
    if relay:
        config.update(settings.relay.config_fields)  # built once per settings load
        relay_mounts = [*mounts, {"name": VOLUME_RELAY_TOKEN, "mountPath": RELAY_TOKEN_DIR, "readOnly": True}]
    return AgentParts(config, config_to_json(config, _sorted_dumps), mounts, relay_mounts,
                      security(parsed, facts, settings, warnings), settings.agent.resources.to_k8s(o.cpu_request, o.memory_request))


def security(parsed: Parsed, facts: PodFacts, settings: Settings, warnings: list[str]) -> dict[str, Any]:
    """Non-root, read-only root, no escalation, no capabilities, RuntimeDefault seccomp.

    Signalling: a process may signal another with the same uid without any capability, so when
    the target app container (or the pod) sets a non-root runAsUser the agent runs as that uid.
    Otherwise the app's uid is unknown (the image decides) or root, and the agent gets CAP_KILL;
    a warning says so, since container runtimes grant added capabilities to non-root processes
    unevenly, and setting runAsUser is the dependable way."""
    uid = settings.agent.run_as_user
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if parsed.config.signal:
        selected = set(parsed.options.containers)
        target: ContainerFacts = next((c for c in facts.containers if c.name in selected), facts.containers[0])
        if target.run_as_user:
            uid = target.run_as_user
        else:
            caps["add"] = ["KILL"]
            why = "runs as root" if target.run_as_user == 0 else "sets no runAsUser"
            warnings.append(f"{PREFIX}signal: container {target.name!r} {why}; the agent gets CAP_KILL to signal it. "
                            "Set a non-root runAsUser so the agent can run as the same uid instead")
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": settings.agent.run_as_group,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": caps,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(name: str, mode_arg: str, cfg_json: str, p: AgentParts, settings: Settings, own: bool,
               mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # `own`: a second container of the pod gets its own mounts/resources dicts, never shared ones.
    mounts = p.mounts if mounts is None else mounts
    return {
        "name": name,
        "image": settings.agent.image,
        "imagePullPolicy": settings.agent.image_pull_policy,
        "command": ["kms-injector"],
        "args": ["agent", "--mode", mode_arg],
        "env": [
            {"name": "KMS_AGENT_CONFIG", "value": cfg_json},
            {"name": "KMS_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "KMS_POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
        ],
        "resources": {k: dict(v) for k, v in p.resources.items()} if own else p.resources,
        "securityContext": p.security,
        "volumeMounts": [dict(m) for m in mounts] if own else mounts,
        # Init failures print one line naming what failed; show it in `kubectl describe`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _health(c: dict[str, Any], port: int) -> None:
    c["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3}


def init_container(p: AgentParts, settings: Settings) -> dict[str, Any]:
    # The same dict, edited in place: the sidecar's JSON is already encoded (p.config_json).
    cfg = p.config
    cfg["mode"], cfg["health_port"], cfg["signal"], cfg["signal_process"], cfg["command"] = "init", 0, "", "", []
    if cfg["relay_url"]:  # it never subscribes: no relay, no PEM in its env
        cfg.update(_RELAY_OFF)
    return _container(AGENT_INIT, "init", config_to_json(cfg, _sorted_dumps), p, settings, own=False)


def sidecar_container(p: AgentParts, parsed: Parsed, settings: Settings) -> dict[str, Any]:
    c = _container(AGENT, "sidecar", p.config_json, p, settings, own=True, mounts=p.relay_mounts)
    if parsed.options.health_port:
        _health(c, parsed.options.health_port)
    return c


def native_container(p: AgentParts, parsed: Parsed, settings: Settings) -> dict[str, Any]:
    c = _container(AGENT, "sidecar", p.config_json, p, settings, own=False, mounts=p.relay_mounts)
    port = parsed.options.health_port
    _health(c, port)
    c["restartPolicy"] = "Always"
    # The app starts only once the first files exist (/readyz), within the init timeout.
    c["startupProbe"] = {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 1,
                         "timeoutSeconds": 2, "failureThreshold": int(parsed.config.init_timeout) + 30}
    return c
