"""Seed file (YAML or dict) -> the dev KMS's initial state, validated with errors naming the field.

Format (see docs/dev-server.md)::

    kubernetes:                       # optional: kubernetes-auth verification (phase 2)
      publicKey: |                    # PEM, or publicKeyFile: path (relative to the seed file)
        -----BEGIN PUBLIC KEY-----...
      audience: kms.hanzo.ai
    identities:
      - name: hanzo-services
        id: 3f2a...                   # optional; stable uuid derived from the name otherwise
        clientId: dev-client-id
        clientSecret: dev-client-secret
        kubernetes:                   # optional: may log in with kubernetes-auth
          serviceAccounts: ["ns:name", "ns:*"]   # optional allow-list of JWT subjects
          audience: kms.hanzo.ai                 # optional, overrides the global one
        access:
          - project: secrets-639-c    # slug or id; "*" for every project
            environments: ["*"]       # globs
            paths: ["/**"]            # globs: * = one segment, ** = any depth
            read: true
            write: false
    projects:
      secrets-639-c:
        id: 7d3c...                   # optional
        name: Hanzo shared services   # optional
        environments:
          prod:
            name: Production          # optional
            folders:
              /shared:
                secrets: {SENTRY_DSN: "https://...", LOG_LEVEL: info}
              /chat:
                imports: [/shared, {environment: prod, path: /other}]
                secrets:
                  DATABASE_URL: postgres://...
                  JWT_SECRET: {value: "...", comment: "signing key"}

Parent folders of a folder exist implicitly; "/" exists in every environment.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMESPACE = uuid.UUID("8b6f6a44-61a1-4f0c-9c55-1f6e3c1d2b7a")


class SeedError(ValueError):
    """The seed is malformed; the message names the offending field and what is accepted."""


def stable_id(*parts: str) -> str:
    """Deterministic uuid so ids (and so ETags) survive a restart from the same seed."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join(parts)))


def normalize_path(path: str) -> str:
    """'/chat/' -> '/chat', '' -> '/', 'chat' -> '/chat'. Raises ValueError on '..' or NUL."""
    if not isinstance(path, str):
        raise ValueError("a folder path must be a string such as /chat")
    if "\x00" in path:
        raise ValueError("a folder path must not contain NUL")
    parts = [p for p in path.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"folder path {path!r} must not contain '.' or '..' segments")
    return "/" + "/".join(parts)


@dataclass
class AccessRule:
    project: str = "*"
    environments: list[str] = field(default_factory=lambda: ["*"])
    paths: list[str] = field(default_factory=lambda: ["/**"])
    read: bool = True
    write: bool = False


@dataclass
class KubernetesAuth:
    service_accounts: list[str] = field(default_factory=list)  # "ns:name" globs; empty = any
    audience: str | None = None


@dataclass
class Identity:
    name: str
    id: str
    client_id: str
    client_secret: str
    access: list[AccessRule] = field(default_factory=list)
    kubernetes: KubernetesAuth | None = None
    token_ttl: float | None = None      # accessTokenTTL (s); None = the server's; 0 = never expires
    token_max_ttl: float | None = None  # accessTokenMaxTTL (s); None = the server's; 0 = none
    token_period: float | None = None   # periodic token: renew within each period, no max TTL
    org: str | None = None              # canonical API: the org its token's `owner` claim names


@dataclass
class Import:
    environment: str
    path: str


@dataclass
class SeedSecret:
    key: str
    value: str
    comment: str = ""
    id: str | None = None          # optional: pin ids/versions/times to replay recorded bodies
    version: int = 1
    created_at: str | None = None
    updated_at: str | None = None


@dataclass
class SeedFolder:
    path: str
    id: str | None = None
    secrets: list[SeedSecret] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)


@dataclass
class SeedEnvironment:
    slug: str
    name: str
    folders: list[SeedFolder] = field(default_factory=list)


@dataclass
class SeedProject:
    slug: str
    id: str
    name: str
    environments: list[SeedEnvironment] = field(default_factory=list)


@dataclass
class Seed:
    identities: list[Identity]
    projects: list[SeedProject]
    k8s_public_key_pem: str | None = None
    k8s_audience: str | None = None


def _str(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SeedError(f"{where}: expected a string, got {type(value).__name__}")
    text = str(value)
    if not text and not allow_empty:
        raise SeedError(f"{where}: must not be empty")
    return text


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise SeedError(f"{where}: expected a list of strings")
    return [_str(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SeedError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SeedError(f"{where}: expected true or false")
    return value


def _parse_rule(raw: Any, where: str) -> AccessRule:
    raw = _mapping(raw, where)
    unknown = set(raw) - {"project", "environments", "paths", "read", "write"}
    if unknown:
        raise SeedError(f"{where}: unknown field(s) {sorted(unknown)}; accepted: project, environments, paths, read, write")
    rule = AccessRule(
        project=_str(raw.get("project", "*"), f"{where}.project"),
        environments=_str_list(raw.get("environments", ["*"]), f"{where}.environments"),
        paths=_str_list(raw.get("paths", ["/**"]), f"{where}.paths"),
        read=_bool(raw.get("read", True), f"{where}.read"),
        write=_bool(raw.get("write", False), f"{where}.write"),
    )
    for i, p in enumerate(rule.paths):
        if not p.startswith("/"):
            raise SeedError(f"{where}.paths[{i}]: {p!r} must start with '/' (globs like /chat/** are fine)")
    return rule


def _parse_identity(raw: Any, where: str) -> Identity:
    raw = _mapping(raw, where)
    name = _str(raw.get("name"), f"{where}.name")
    k8s = None
    if raw.get("kubernetes") is not None:
        kraw = _mapping(raw["kubernetes"], f"{where}.kubernetes")
        k8s = KubernetesAuth(
            service_accounts=_str_list(kraw.get("serviceAccounts", []), f"{where}.kubernetes.serviceAccounts"),
            audience=_str(kraw["audience"], f"{where}.kubernetes.audience") if kraw.get("audience") is not None else None,
        )
    access = raw.get("access", [])
    if not isinstance(access, list):
        raise SeedError(f"{where}.access: expected a list of rules")
    return Identity(
        name=name,
        id=_str(raw.get("id") or stable_id("identity", name), f"{where}.id"),
        client_id=_str(raw.get("clientId"), f"{where}.clientId"),
        client_secret=_str(raw.get("clientSecret"), f"{where}.clientSecret"),
        access=[_parse_rule(r, f"{where}.access[{i}]") for i, r in enumerate(access)],
        kubernetes=k8s,
        token_ttl=_seconds(raw.get("accessTokenTTL"), f"{where}.accessTokenTTL"),
        token_max_ttl=_seconds(raw.get("accessTokenMaxTTL"), f"{where}.accessTokenMaxTTL"),
        token_period=_seconds(raw.get("accessTokenPeriod"), f"{where}.accessTokenPeriod"),
        org=_str(raw["org"], f"{where}.org") if raw.get("org") is not None else None,
    )


def _seconds(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SeedError(f"{where}: expected a number of seconds >= 0")
    return float(value)


def _parse_secret(key: Any, raw: Any, where: str) -> SeedSecret:
    key = _str(key, f"{where} key")
    if isinstance(raw, dict):
        unknown = set(raw) - {"value", "comment", "id", "version", "createdAt", "updatedAt"}
        if unknown:
            raise SeedError(f"{where}.{key}: unknown field(s) {sorted(unknown)}; accepted: value, comment, id, version, "
                            "createdAt, updatedAt")
        version = raw.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SeedError(f"{where}.{key}.version: expected a whole number >= 1")
        opt = {k: _str(raw[k], f"{where}.{key}.{k}") if raw.get(k) is not None else None
               for k in ("id", "createdAt", "updatedAt")}
        return SeedSecret(key, _str(raw.get("value", ""), f"{where}.{key}.value", allow_empty=True),
                          _str(raw.get("comment", ""), f"{where}.{key}.comment", allow_empty=True),
                          id=opt["id"], version=version, created_at=opt["createdAt"], updated_at=opt["updatedAt"])
    if raw is None:
        raw = ""
    return SeedSecret(key, _str(raw, f"{where}.{key}", allow_empty=True))


def _parse_import(raw: Any, env: str, where: str) -> Import:
    if isinstance(raw, str):
        return Import(env, _path(raw, where))
    raw = _mapping(raw, where)
    return Import(_str(raw.get("environment", env), f"{where}.environment"), _path(raw.get("path"), f"{where}.path"))


def _path(raw: Any, where: str) -> str:
    try:
        return normalize_path(_str(raw, where))
    except ValueError as exc:
        raise SeedError(f"{where}: {exc}") from None


def _parse_project(slug: Any, raw: Any, where: str) -> SeedProject:
    slug = _str(slug, f"{where} slug")
    raw = _mapping(raw, f"{where}.{slug}")
    project = SeedProject(slug=slug, id=_str(raw.get("id") or stable_id("project", slug), f"{where}.{slug}.id"),
                          name=_str(raw.get("name", slug), f"{where}.{slug}.name"))
    for env_slug, env_raw in _mapping(raw.get("environments"), f"{where}.{slug}.environments").items():
        ewhere = f"{where}.{slug}.environments.{env_slug}"
        env_raw = _mapping(env_raw, ewhere)
        env = SeedEnvironment(slug=_str(env_slug, ewhere), name=_str(env_raw.get("name", env_slug), f"{ewhere}.name"))
        for fpath, fraw in _mapping(env_raw.get("folders"), f"{ewhere}.folders").items():
            fwhere = f"{ewhere}.folders.{fpath}"
            fraw = _mapping(fraw, fwhere)
            imports = fraw.get("imports", [])
            if not isinstance(imports, list):
                raise SeedError(f"{fwhere}.imports: expected a list of paths or {{environment, path}}")
            env.folders.append(SeedFolder(
                path=_path(fpath, fwhere),
                id=_str(fraw["id"], f"{fwhere}.id") if fraw.get("id") is not None else None,
                secrets=[_parse_secret(k, v, f"{fwhere}.secrets") for k, v in _mapping(fraw.get("secrets"), f"{fwhere}.secrets").items()],
                imports=[_parse_import(r, env.slug, f"{fwhere}.imports[{i}]") for i, r in enumerate(imports)],
            ))
        project.environments.append(env)
    return project


def parse_seed(raw: Any, base_dir: Path | None = None) -> Seed:
    """Validate a seed mapping (already loaded from YAML/JSON) into dataclasses."""
    raw = _mapping(raw, "seed")
    unknown = set(raw) - {"identities", "projects", "kubernetes"}
    if unknown:
        raise SeedError(f"seed: unknown top-level field(s) {sorted(unknown)}; accepted: identities, projects, kubernetes")
    idents_raw = raw.get("identities") or []
    if not isinstance(idents_raw, list):
        raise SeedError("seed.identities: expected a list")
    identities = [_parse_identity(r, f"identities[{i}]") for i, r in enumerate(idents_raw)]
    for attr in ("name", "client_id", "id"):
        seen: set[str] = set()
        for ident in identities:
            value = getattr(ident, attr)
            if value in seen:
                raise SeedError(f"identities: duplicate {attr} {value if attr != 'client_id' else '(clientId)'!r}")
            seen.add(value)
    projects = [_parse_project(s, r, "projects") for s, r in _mapping(raw.get("projects"), "projects").items()]
    pem = aud = None
    if raw.get("kubernetes") is not None:
        k = _mapping(raw["kubernetes"], "kubernetes")
        if k.get("publicKey"):
            pem = _str(k["publicKey"], "kubernetes.publicKey")
        elif k.get("publicKeyFile"):
            p = Path(_str(k["publicKeyFile"], "kubernetes.publicKeyFile"))
            if base_dir is not None and not p.is_absolute():
                p = base_dir / p
            try:
                pem = p.read_text()
            except OSError as exc:
                raise SeedError(f"kubernetes.publicKeyFile: cannot read {p}: {exc.strerror}") from None
        if k.get("audience") is not None:
            aud = _str(k["audience"], "kubernetes.audience")
    return Seed(identities=identities, projects=projects, k8s_public_key_pem=pem, k8s_audience=aud)


def load_seed(source: "str | Path | dict | Seed") -> Seed:
    """A Seed from a dict, a YAML/JSON file path, or an existing Seed."""
    if isinstance(source, Seed):
        return source
    if isinstance(source, dict):
        return parse_seed(source)
    import yaml

    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SeedError(f"cannot read seed file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SeedError(f"seed file {path} is not valid YAML: {exc}") from None
    return parse_seed(data, base_dir=path.parent)


def tiny_seed() -> dict:
    """A small seed for tests (used by tests/conftest.py; importable by any test).

    Project `test-proj` (id `proj-test-id`), envs prod and dev:
      /shared: SHARED_TOKEN, API_KEY (shadowed by /app's own API_KEY)
      /app (imports /shared): DATABASE_URL, API_KEY; /app/sub: NESTED_KEY
      /restricted: ONLY_ADMIN
    Project `iam-proj` (`/`): IAM_SECRET.
    Identities: `svc` (read+write all of test-proj), `reader` (read /app/** in prod only),
    `iam` (read iam-proj only). clientId = `<name>-id`, clientSecret = `<name>-secret`.
    """
    return {
        "identities": [
            {"name": "svc", "clientId": "svc-id", "clientSecret": "svc-secret",
             "access": [{"project": "test-proj", "environments": ["*"], "paths": ["/**"], "read": True, "write": True}]},
            {"name": "reader", "clientId": "reader-id", "clientSecret": "reader-secret",
             "access": [{"project": "test-proj", "environments": ["prod"], "paths": ["/app/**"], "read": True}]},
            {"name": "iam", "clientId": "iam-id", "clientSecret": "iam-secret",
             "access": [{"project": "iam-proj", "paths": ["/**"], "read": True}]},
        ],
        "projects": {
            "test-proj": {"id": "proj-test-id", "environments": {
                "prod": {"folders": {
                    "/shared": {"secrets": {"SHARED_TOKEN": "shared-token-value", "API_KEY": "from-shared"}},
                    "/app": {"imports": ["/shared"], "secrets": {"DATABASE_URL": "postgres://app@db/app", "API_KEY": "from-app"}},
                    "/app/sub": {"secrets": {"NESTED_KEY": "nested-value"}},
                    "/restricted": {"secrets": {"ONLY_ADMIN": "admin-value"}},
                }},
                "dev": {"folders": {"/app": {"secrets": {"DATABASE_URL": "postgres://dev"}}}},
            }},
            "iam-proj": {"environments": {"prod": {"folders": {"/": {"secrets": {"IAM_SECRET": "iam-value"}}}}}},
        },
    }
