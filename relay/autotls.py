"""`--tls-mode auto` for the relay: a serving certificate issued from the webhook's own CA.

The webhook in auto mode keeps a CA in its TLS Secret (`ca.crt`, `ca.key`; webhook/autotls.py) and
puts that CA's certificate into the agents' AgentConfig (`relay_ca`). The relay reads that Secret
and every replica issues itself a leaf for the relay Service's names, in memory and into
--cert-dir (an emptyDir), which webhook/tls.py's reloader serves. It never writes to the cluster,
so replicas need no Lease and no coordination: each re-issues when its leaf has a third of its life
left, or when the CA in the Secret changed (the webhook rotated it; during the webhook's grace
period both CAs are in `ca.crt`, so agents holding either keep verifying us once we moved).
RBAC: `get` on that one Secret. The GET goes through relay/kubeapi.py (h11, the TokenReview's
client), not kubernetes-asyncio: that import alone would cost the relay ~55 MiB of RSS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from injector.log import Logger
from webhook import certs

if TYPE_CHECKING:
    from relay.kubeapi import KubeTarget

TICK = 30.0
LEAF_LIFETIME_DAYS = 90


class RelayAutoTLS:
    def __init__(self, *, namespace: str, secret: str, service: str, cert_dir: Path, log: Logger,
                 kube_target: KubeTarget | None = None, tick: float = TICK) -> None:
        self.namespace, self.secret, self.service = namespace, secret, service
        self.cert_dir = cert_dir
        self.log = log
        self.kube_target = kube_target  # None: in-cluster config, else the kubeconfig (relay/kubeapi.py)
        self.tick = tick
        self._api: Any = None
        self._ca_cert: bytes | None = None
        self._leaf: certs.KeyPair | None = None
        self.problem = "waiting for the webhook's CA Secret"

    def not_ready_reasons(self) -> list[str]:
        return [self.problem] if self.problem else []

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def run(self, stop: asyncio.Event) -> None:
        from webhook.autotls_shared import run_every

        def failed(exc: Exception) -> None:  # keep serving the current leaf; say why once
            reason = f"auto TLS step failed: {type(exc).__name__}"
            if reason != self.problem and self._leaf is None:
                self.log.warning("relay_autotls_failed", error=type(exc).__name__)
                self.problem = reason

        await run_every(self.step, self.tick, stop, failed)

    async def step(self) -> None:
        from relay.kubeapi import KubeApi, KubeApiError, KubeConfigError, load_target
        from webhook.autotls_shared import material_from_secret, write_pair

        where = f"Secret {self.namespace}/{self.secret}"
        try:
            if self._api is None:
                self._api = KubeApi(self.kube_target or load_target())
            secret = await self._api.get_json(f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}")
        except KubeConfigError as exc:  # names the kubeconfig field; holds no credential
            self.problem = f"cannot read {where}: {exc}"
            if self._leaf is None:
                self.log.warning("relay_ca_unavailable", secret=self.secret, error=str(exc))
            return
        except KubeApiError as exc:
            self.problem = f"cannot read {where}: {exc.status} {exc.reason}"
            if self._leaf is None:
                self.log.warning("relay_ca_unavailable", secret=self.secret, status=exc.status, reason=exc.reason)
            return
        material = material_from_secret(secret)
        if material is None:
            self.problem = f"{where} holds no usable CA yet (the webhook makes it)"
            return
        ca = material.ca
        if self._leaf is not None and ca.cert_pem == self._ca_cert and not certs.needs_renewal(self._leaf.cert_pem):
            self.problem = ""
            return
        import datetime as dt

        leaf = await asyncio.to_thread(certs.generate_serving_cert, ca, certs.service_dns_names(self.service, self.namespace),
                                       dt.timedelta(days=LEAF_LIFETIME_DAYS))
        await asyncio.to_thread(write_pair, self.cert_dir, leaf)
        first = self._leaf is None
        self._leaf, self._ca_cert = leaf, ca.cert_pem
        self.problem = ""
        self.log.info("relay_cert_issued" if first else "relay_cert_renewed", service=self.service,
                      serial=f"{certs.serial_of(leaf.cert_pem):x}")
