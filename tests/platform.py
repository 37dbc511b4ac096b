"""The Hanzo platform inventory: the 17 services that read secrets from KMS.

One place for the list, reused by the inject tests, the webhook server tests and the Helm values
example. 16 services share the Universal Auth identity (Secret `universal-auth-credentials`) and
read `/<service>` in project `secrets-639-c`; IAM has its own identity (`iam-kms-auth`) and its own
project (`hanzo-iam`, path `/`). `examples/platform.yaml` is `manifests()` written out (a test
keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAMESPACE = "hanzo"
SHARED_PROJECT = "secrets-639-c"
SHARED_AUTH_SECRET = "universal-auth-credentials"


@dataclass(frozen=True)
class Service:
    name: str
    path: str
    project: str = SHARED_PROJECT
    auth_secret: str = SHARED_AUTH_SECRET

    def annotations(self) -> dict[str, str]:
        ann = {"kms.hanzo.ai/path": self.path}
        if self.project != SHARED_PROJECT:
            ann["kms.hanzo.ai/project"] = self.project
        if self.auth_secret != SHARED_AUTH_SECRET:
            ann["kms.hanzo.ai/auth-secret"] = self.auth_secret
        return ann


_SHARED = ("chat", "console", "analytics", "commerce", "flow", "rag", "search", "pricing", "vector",
           "bootnode", "studio", "bot-hub", "app", "crawl", "auto", "lux-chat")
SERVICES: tuple[Service, ...] = (
    *(Service(name, f"/{name}") for name in _SHARED),
    Service("iam", "/", project="hanzo-iam", auth_secret="iam-kms-auth"),
)
assert len(SERVICES) == 17


def service_account(svc: Service) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": svc.name, "namespace": NAMESPACE}}


def deployment(svc: Service) -> dict[str, Any]:
    labels = {"app": svc.name, "app.kubernetes.io/part-of": "hanzo-platform"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": svc.name, "namespace": NAMESPACE, "labels": dict(labels)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": svc.name}},
            "template": {
                "metadata": {"labels": labels, "annotations": svc.annotations()},
                "spec": {
                    "serviceAccountName": svc.name,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [{
                        "name": svc.name,
                        "image": f"ghcr.io/hanzoai/{svc.name}:latest",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                    }],
                },
            },
        },
    }


def manifests() -> list[dict[str, Any]]:
    """ServiceAccount + Deployment per service, in inventory order."""
    out: list[dict[str, Any]] = []
    for svc in SERVICES:
        out += [service_account(svc), deployment(svc)]
    return out


def path_policies() -> list[dict[str, Any]]:
    """Settings path policies that pin each service account to its own folder and auth Secret (and
    IAM to its project and identity)."""
    return [{"namespaces": [NAMESPACE], "serviceAccounts": [s.name], "projects": [s.project],
             "paths": ["/**"] if s.path == "/" else [s.path, f"{s.path}/**"], "authSecrets": [s.auth_secret]}
            for s in SERVICES]


def settings_dict() -> dict[str, Any]:
    return {"default_policy": "deny", "path_policies": path_policies(), "protected_auth_secrets": ["iam-kms-auth"]}
