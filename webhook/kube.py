"""The few Kubernetes API calls auto-TLS makes, as plain dicts, over kubernetes-asyncio.

kubernetes-asyncio brings the transport, in-cluster/kubeconfig auth and token refresh; we use
its ApiClient.call_api with response type `object` so objects stay the JSON the API server sent
(no model round trips that drop unknown fields). Errors become KubeError with the HTTP status and
the Status reason (NotFound, Conflict, AlreadyExists, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException

_RESP = {200: "object", 201: "object"}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:  # stale resourceVersion (409 Conflict) or create race (409 AlreadyExists)
        return self.status == 409


async def api_client(configuration: client.Configuration | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    if configuration is None:
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config(client_configuration=configuration)
        else:
            await kconfig.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


@dataclass
class Kube:
    api: client.ApiClient
    timeout: float = 10.0

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> dict:
        try:
            return await self.api.call_api(
                path, method, header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, response_types_map=_RESP, auth_settings=["BearerToken"],
                _return_http_data_only=True, _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise _kube_error(exc) from None

    # Secrets
    async def get_secret(self, ns: str, name: str) -> dict:
        return await self._call("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")

    async def create_secret(self, ns: str, body: dict) -> dict:
        return await self._call("POST", f"/api/v1/namespaces/{ns}/secrets", body)

    async def replace_secret(self, ns: str, name: str, body: dict) -> dict:
        """PUT with body.metadata.resourceVersion: 409 Conflict when someone wrote in between."""
        return await self._call("PUT", f"/api/v1/namespaces/{ns}/secrets/{name}", body)

    # Leases
    async def get_lease(self, ns: str, name: str) -> dict:
        return await self._call("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")

    async def create_lease(self, ns: str, body: dict) -> dict:
        return await self._call("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", body)

    async def replace_lease(self, ns: str, name: str, body: dict) -> dict:
        return await self._call("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", body)

    # MutatingWebhookConfiguration
    async def get_mwc(self, name: str) -> dict:
        return await self._call("GET", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")

    async def patch_mwc(self, name: str, patch: dict) -> dict:
        """Strategic merge patch: `webhooks` merges by `name`, so only caBundle changes.
        A metadata.resourceVersion in the patch is a precondition (409 when stale)."""
        return await self._call("PATCH", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
                                patch, content_type="application/strategic-merge-patch+json")

    async def close(self) -> None:
        await self.api.close()


def _kube_error(exc: ApiException) -> KubeError:
    status = int(exc.status or 0)
    reason, message = str(exc.reason or ""), ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        if isinstance(body, dict) and body.get("kind") == "Status":
            reason = body.get("reason") or reason
            message = body.get("message") or ""
    except (TypeError, ValueError):
        pass
    return KubeError(status, reason, message[:300])
