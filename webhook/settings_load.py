"""Webhook settings from a parsed YAML document or a file -> Settings (webhook/settings.py).

Keys may be snake_case or camelCase; unknown keys are refused, naming the key and what is
accepted, so a typo never silently turns a policy off. Every error names the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from injector.config import ConfigError, normalize_path, parse_duration

from .settings import (
    AgentSettings,
    CABundle,
    KubernetesAuthSettings,
    PathPolicy,
    Resources,
    Settings,
)
from .settings_error import SettingsError
from .settings_relay import MAX_RELAY_CA_BYTES, RelaySettings


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _mapping(data: Any, where: str, cls: type) -> dict[str, Any]:
    """Normalise keys to snake_case and refuse unknown ones, naming them and the accepted set."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(where or "(top level)", f"must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _snake(str(key))
        if name not in known:
            prefix = f"{where}." if where else ""
            raise SettingsError(f"{prefix}{key}", f"unknown setting; accepted: {', '.join(sorted(known))}")
        out[name] = value
    return out


def _str(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SettingsError(where, f"{value!r} must be a string")
    return str(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(where, f"{value!r} must be an integer")
    return value


def _strlist(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SettingsError(where, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(value))


def settings_from_dict(data: Any, base_dir: str = "") -> Settings:
    """A parsed YAML document -> Settings (defaults for whatever is missing). A relative
    `relay.ca_file` is taken from `base_dir` (load_settings: the settings file's directory)."""
    top = _mapping(data, "", Settings)
    kw: dict[str, Any] = {}
    for name in ("host", "project", "env", "api", "mount_path", "auth_secret", "secrets_size_limit", "default_policy",
                 "organization_slug"):
        if name in top:
            kw[name] = _str(top[name], name)
    if "refresh_interval" in top:
        try:
            kw["refresh_interval"] = parse_duration(top["refresh_interval"], "refresh_interval")
        except ConfigError as exc:
            raise SettingsError("refresh_interval", exc.detail) from None
    if "mount_path" in kw:
        try:
            kw["mount_path"] = normalize_path(kw["mount_path"], "mount_path")
        except ConfigError as exc:
            raise SettingsError("mount_path", exc.detail) from None
    for name in ("allowed_hosts", "excluded_namespaces", "protected_auth_secrets"):
        if name in top:
            kw[name] = _strlist(top[name] if top[name] is not None else [], name)
    if "agent" in top:
        a = _mapping(top["agent"], "agent", AgentSettings)
        akw: dict[str, Any] = {}
        for name in ("image", "image_pull_policy"):
            if name in a:
                akw[name] = _str(a[name], f"agent.{name}")
        for name in ("health_port", "run_as_user", "run_as_group"):
            if name in a:
                akw[name] = _int(a[name], f"agent.{name}")
        if "resources" in a:
            akw["resources"] = _resources(a["resources"])
        kw["agent"] = AgentSettings(**akw)
    if "kubernetes_auth" in top:
        k = _mapping(top["kubernetes_auth"], "kubernetes_auth", KubernetesAuthSettings)
        kkw: dict[str, Any] = {}
        if "audience" in k:
            kkw["audience"] = _str(k["audience"], "kubernetes_auth.audience")
        if "expiration_seconds" in k:
            kkw["expiration_seconds"] = _int(k["expiration_seconds"], "kubernetes_auth.expiration_seconds")
        kw["kubernetes_auth"] = KubernetesAuthSettings(**kkw)
    if "ca_bundle" in top:
        b = _mapping(top["ca_bundle"], "ca_bundle", CABundle)
        kw["ca_bundle"] = CABundle(**{k: _str(v, f"ca_bundle.{k}") for k, v in b.items()})
    if "relay" in top:
        kw["relay"] = _relay(top["relay"], base_dir)
    if "path_policies" in top:
        raw = top["path_policies"] or []
        if not isinstance(raw, list):
            raise SettingsError("path_policies", "must be a list of {namespaces, serviceAccounts, projects, paths, authSecrets, caSecrets}")
        policies = []
        for i, item in enumerate(raw):
            p = _mapping(item, f"path_policies[{i}]", PathPolicy)
            for req in ("namespaces", "projects", "paths"):
                if req not in p:
                    raise SettingsError(f"path_policies[{i}].{req}", "is required")
            if "auth_secrets" in p and not p["auth_secrets"]:
                # An empty list reads like "no Secret at all"; say so rather than guess.
                raise SettingsError(f"path_policies[{i}].auth_secrets", "must list at least one Secret name or glob; "
                                    "leave the key out to not restrict auth Secrets")
            if "ca_secrets" in p and p["ca_secrets"] is None:
                p["ca_secrets"] = []
            policies.append(PathPolicy(**{k: _strlist(v, f"path_policies[{i}].{k}") for k, v in p.items()}))
        kw["path_policies"] = tuple(policies)
    return Settings(**kw)


def _relay(data: Any, base_dir: str) -> RelaySettings:
    """The `relay` block. `ca_file` is read here, at every load (the chart: a Secret's ca.crt
    projected next to settings.yaml, so `ca_file: relay-ca.crt`): unreadable = the relay is off
    for new pods (`problem`), not a refused file, since the webhook's own CA Secret (auto TLS mode)
    appears only after the webhook first started."""
    r = _mapping(data, "relay", RelaySettings)
    if "problem" in r:
        raise SettingsError("relay.problem", "is set by the webhook, not in the settings; accepted: "
                            "audience, ca, ca_file, expiration_seconds, namespaces, poll_factor, url")
    kw: dict[str, Any] = {}
    for name in ("url", "ca", "ca_file", "audience"):
        if name in r and r[name] is not None:
            kw[name] = _str(r[name], f"relay.{name}")
    if "expiration_seconds" in r:
        kw["expiration_seconds"] = _int(r["expiration_seconds"], "relay.expiration_seconds")
    if "poll_factor" in r:
        v = r["poll_factor"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SettingsError("relay.poll_factor", f"{v!r} must be a number from 1 to 100")
        kw["poll_factor"] = float(v)
    if "namespaces" in r:
        kw["namespaces"] = _strlist(r["namespaces"] if r["namespaces"] is not None else [], "relay.namespaces")
    if kw.get("ca") and kw.get("ca_file"):
        raise SettingsError("relay.ca", "set ca (PEM text) or ca_file (a path), not both")
    path = kw.get("ca_file", "")
    if path and "\x00" not in path:
        path = kw["ca_file"] = os.path.normpath(os.path.join(base_dir or os.getcwd(), path))
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                kw["ca"] = fh.read(MAX_RELAY_CA_BYTES + 1)
        except OSError as exc:
            kw["problem"] = f"relay.ca_file {path}: cannot read it ({exc.strerror or type(exc).__name__})"
        else:
            if not kw["ca"].strip():
                del kw["ca"]
                kw["problem"] = f"relay.ca_file {path}: the file is empty"
    return RelaySettings(**kw)


def _resources(data: Any) -> Resources:
    """Accept the Kubernetes shape {requests: {cpu, memory}, limits: {cpu, memory}}."""
    if not isinstance(data, dict):
        raise SettingsError("agent.resources", "must be {requests: {cpu, memory}, limits: {cpu, memory}}")
    kw: dict[str, str] = {}
    for part in data:
        if part not in ("requests", "limits"):
            raise SettingsError(f"agent.resources.{part}", "unknown; accepted: requests, limits")
        section = data[part] or {}
        if not isinstance(section, dict):
            raise SettingsError(f"agent.resources.{part}", "must be a mapping of cpu/memory to quantities")
        for kind, value in section.items():
            if kind not in ("cpu", "memory"):
                raise SettingsError(f"agent.resources.{part}.{kind}", "unknown; accepted: cpu, memory")
            suffix = "request" if part == "requests" else "limit"
            kw[f"{kind}_{suffix}"] = _str(value, f"agent.resources.{part}.{kind}")
    return Resources(**kw)


def load_settings(path: str) -> Settings:
    """Read a settings YAML file. Errors name the file and the field."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise SettingsError("file", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SettingsError("file", f"{path} is not valid YAML{where}") from None
    return settings_from_dict(data if data is not None else {}, os.path.dirname(os.path.abspath(path)))
