"""`--tls-mode auto`: the webhook manages its own CA and serving certificate.

Every replica, every `tick` seconds:
  1. Lease (coordination.k8s.io/v1): acquire, renew, or observe another holder. Only the holder
     writes. Expiry is judged by *local* time since the record last changed (as client-go does),
     so clock skew between nodes cannot make two leaders. A leader that cannot renew within the
     lease duration, or sees another holder, stops writing at once.
  2. Leader only: reconcile the Secret (type kubernetes.io/tls; `tls.crt`, `tls.key`, `ca.crt` =
     current CA then the previous one during a rotation, `ca.key` = the current CA's key) and the
     MutatingWebhookConfiguration's `webhooks[*].clientConfig.caBundle`.
  3. All replicas: copy the Secret's pair into --cert-dir when it changed; tls.py hot-reloads it.

Rotation, so the apiserver never sees a cert it cannot verify:
  - leaf: re-issued when < 1/3 of its lifetime remains, names or key are wrong, or it is not
    signed by the current CA (only once the caBundle already trusts that CA);
  - CA: when < 1/3 remains, a new CA becomes current and the old one stays in `ca.crt` and the
    caBundle; the leaf moves to the new CA after the bundle carries it; the old CA is dropped
    `previous_ca_grace` seconds after that leaf was issued (every replica has long reloaded).
Conflicts (409) are answered by re-reading and retrying.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from injector.log import Logger, get_logger
from webhook import certs
from webhook.autotls_shared import ISSUED_AT, Material, material_from_secret, run_every, write_pair  # noqa: F401 (re-exported)
from webhook.kube import Kube, KubeError, api_client
from webhook.reload import bytes_digest

MANAGED_BY = {"app.kubernetes.io/managed-by": "kms-injector"}
MAX_CONFLICT_RETRIES = 5


@dataclass
class AutoTLSConfig:
    namespace: str
    secret: str
    webhook_config: str
    service: str
    lease: str
    cert_dir: Path
    identity: str
    lease_duration: float = 15.0
    tick: float = 2.0
    ca_lifetime: dt.timedelta = certs.CA_LIFETIME
    leaf_lifetime: dt.timedelta = certs.LEAF_LIFETIME
    renew_fraction: float = certs.RENEW_FRACTION
    previous_ca_grace: float = 3600.0
    kube_configuration: Any = None  # kubernetes_asyncio Configuration; None = in-cluster/kubeconfig

    @property
    def dns_names(self) -> list[str]:
        return certs.service_dns_names(self.service, self.namespace)


# --- pure: what the Secret should hold ------------------------------------------------------------

def secret_body(cfg: AutoTLSConfig, m: Material, existing: dict | None) -> dict:
    """The Secret to create, or to PUT over `existing` (its resourceVersion makes the PUT
    conditional; other writers' labels and annotations are kept)."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    old = (existing or {}).get("metadata") or {}
    meta: dict[str, Any] = {k: v for k, v in old.items() if k not in ("managedFields",)}
    meta.update(name=cfg.secret, namespace=cfg.namespace)
    meta["labels"] = {**(old.get("labels") or {}), **MANAGED_BY}
    meta["annotations"] = {**(old.get("annotations") or {}), ISSUED_AT: _iso(m.leaf_issued_at or certs.utcnow())}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(m.leaf.cert_pem), "tls.key": b64(m.leaf.key_pem),
                     "ca.crt": b64(m.bundle()), "ca.key": b64(m.ca.key_pem)}}


def plan(cur: Material | None, cfg: AutoTLSConfig, now: dt.datetime, bundle_trusts_ca: bool) -> tuple[Material, str] | None:
    """The next Material and why, or None when the current one is fine. One step at a time."""
    names = cfg.dns_names

    def leaf_from(ca: certs.KeyPair) -> certs.KeyPair:
        return certs.generate_serving_cert(ca, names, lifetime=cfg.leaf_lifetime, now=now)

    if cur is None:
        ca = certs.generate_ca(f"kms-injector-ca {cfg.namespace}", lifetime=cfg.ca_lifetime, now=now)
        return Material(leaf_from(ca), ca, None, now), "created"
    if cur.previous_ca is None and certs.needs_renewal(cur.ca.cert_pem, now, cfg.renew_fraction):
        ca = certs.generate_ca(f"kms-injector-ca {cfg.namespace}", lifetime=cfg.ca_lifetime, now=now)
        # The leaf stays on the old CA until the caBundle trusts the new one.
        return replace(cur, ca=ca, previous_ca=cur.ca.cert_pem), "ca-rotation-started"
    leaf_ok = certs.key_matches_cert(cur.leaf.cert_pem, cur.leaf.key_pem) and set(names) <= set(certs.dns_names_of(cur.leaf.cert_pem))
    on_current_ca = leaf_ok and certs.signed_by(cur.leaf.cert_pem, cur.ca.cert_pem)
    if not on_current_ca:
        if not leaf_ok or bundle_trusts_ca or not (cur.previous_ca and certs.signed_by(cur.leaf.cert_pem, cur.previous_ca)):
            return replace(cur, leaf=leaf_from(cur.ca), leaf_issued_at=now), "leaf-issued-by-current-ca"
        return None  # wait for the caBundle to carry the new CA
    if certs.needs_renewal(cur.leaf.cert_pem, now, cfg.renew_fraction):
        return replace(cur, leaf=leaf_from(cur.ca), leaf_issued_at=now), "leaf-renewed"
    if cur.previous_ca is not None:
        issued = cur.leaf_issued_at or (certs.load_cert(cur.leaf.cert_pem).not_valid_before_utc + certs.BACKDATE)
        if (now - issued).total_seconds() >= cfg.previous_ca_grace:
            return replace(cur, previous_ca=None), "previous-ca-retired"
    return None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(t: dt.datetime) -> str:
    """Kubernetes MicroTime, as Lease acquireTime/renewTime want it."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- I/O -----------------------------------------------------------------------------------------

@dataclass
class AutoTLS:
    cfg: AutoTLSConfig
    log: Logger = field(default_factory=lambda: get_logger("webhook.autotls"))
    kube: Kube | None = None
    is_leader: bool = False
    synced: bool = False            # the Secret's pair has been written to cert-dir at least once
    writes: int = 0                 # Secret/MWC writes made by this replica (tests, metrics)
    _renewed_at: float = -1e18      # monotonic time of our last successful lease write
    _observed_rv: str | None = None
    _observed_at: float = 0.0
    _written_digest: str | None = None

    def not_ready_reasons(self) -> list[str]:
        return [] if self.synced else [f"auto-TLS has not yet read a certificate from Secret {self.cfg.namespace}/{self.cfg.secret}"]

    async def _client(self) -> Kube:
        if self.kube is None:
            self.kube = Kube(await api_client(self.cfg.kube_configuration))
        return self.kube

    async def close(self) -> None:
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    async def run(self, stop: asyncio.Event) -> None:
        def failed(exc: Exception) -> None:  # API down, bad config: keep serving what we have, retry
            self.log.error("autotls_step_failed", error_type=type(exc).__name__, error=_safe(exc))

        await run_every(self.step, self.cfg.tick, stop, failed)

    async def step(self) -> None:
        """One round: lease, then (leader) reconcile, then sync cert-dir."""
        kube = await self._client()
        secret = None
        try:
            await self._lease_step(kube)
            if self.leader_valid():
                secret = await self.reconcile(kube)
        except Exception as exc:  # e.g. RBAC refuses the caBundle patch: still serve the Secret's cert
            self.log.error("autotls_reconcile_failed", error_type=type(exc).__name__, error=_safe(exc))
        if secret is None:
            secret = await _get_or_none(kube.get_secret(self.cfg.namespace, self.cfg.secret))
        await self._sync_cert_dir(secret)

    # -- lease ----------------------------------------------------------------------------------
    def leader_valid(self) -> bool:
        return self.is_leader and time.monotonic() - self._renewed_at < self.cfg.lease_duration

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader != self.is_leader:
            self.log.info("lease_acquired" if leader else "lease_lost", lease=self.cfg.lease, identity=self.cfg.identity, why=why)
        self.is_leader = leader

    async def _lease_step(self, kube: Kube) -> None:
        cfg, now = self.cfg, certs.utcnow()
        try:
            lease = await kube.get_lease(cfg.namespace, cfg.lease)
        except KubeError as exc:
            if not exc.not_found:
                if self.is_leader and not self.leader_valid():
                    self._set_leader(False, "renew deadline passed")
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.lease, "namespace": cfg.namespace, "labels": dict(MANAGED_BY)},
                    "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                             "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}}
            try:
                await kube.create_lease(cfg.namespace, body)
            except KubeError as exc2:
                if exc2.conflict:  # another replica created it first
                    self._set_leader(False, "lease created by another replica")
                    return
                raise
            self._renewed_at = time.monotonic()
            self._set_leader(True, "created lease")
            return

        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        rv = meta.get("resourceVersion")
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, time.monotonic()
        if holder and holder != cfg.identity:
            duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
            if time.monotonic() - self._observed_at < duration:
                self._set_leader(False, f"held by {holder}")
                return
        new_spec = dict(spec)
        new_spec.update(holderIdentity=cfg.identity, leaseDurationSeconds=int(cfg.lease_duration), renewTime=_micro(now))
        if holder != cfg.identity:
            new_spec["acquireTime"] = _micro(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": new_spec}
        try:
            updated = await kube.replace_lease(cfg.namespace, cfg.lease, body)
        except KubeError as exc:
            if exc.conflict:  # someone else wrote the lease in between: they may hold it now
                self._set_leader(False, "lease changed concurrently")
                return
            if self.is_leader and not self.leader_valid():
                self._set_leader(False, "renew deadline passed")
            raise
        self._renewed_at = time.monotonic()
        self._observed_rv, self._observed_at = (updated.get("metadata") or {}).get("resourceVersion"), time.monotonic()
        self._set_leader(True, "took over expired lease" if holder != cfg.identity else "renewed")

    # -- leader: Secret and caBundle ------------------------------------------------------------
    async def reconcile(self, kube: Kube) -> dict | None:
        """Bring Secret and caBundle up to date; returns the Secret as last read or written."""
        cfg = self.cfg
        secret = await _get_or_none(kube.get_secret(cfg.namespace, cfg.secret))
        for _ in range(4 * MAX_CONFLICT_RETRIES):
            cur = material_from_secret(secret)
            if secret is not None and cur is None:
                self.log.warning("tls_secret_unusable", secret=cfg.secret, action="making a new CA and certificate")
            trusts = await self._bundle_trusts(kube, cur)
            step = plan(cur, cfg, certs.utcnow(), trusts)
            if step is None:
                await self._patch_ca_bundle(kube, cur.bundle() if cur else None)
                return secret
            new, why = step
            if not self.leader_valid():
                self.log.warning("write_skipped_not_leader", secret=cfg.secret, would=why)
                return secret
            try:
                if secret is None:
                    secret = await kube.create_secret(cfg.namespace, secret_body(cfg, new, None))
                else:
                    secret = await kube.replace_secret(cfg.namespace, cfg.secret, secret_body(cfg, new, secret))
            except KubeError as exc:
                if not exc.conflict:
                    raise
                self.log.info("tls_secret_conflict", secret=cfg.secret, reason=exc.reason, action="re-reading")
                secret = await _get_or_none(kube.get_secret(cfg.namespace, cfg.secret))
                continue
            self.writes += 1
            self.log.info("tls_secret_updated", secret=cfg.secret, change=why,
                          leaf_serial=f"{certs.serial_of(new.leaf.cert_pem):x}", leaf_not_after=_iso(certs.not_after(new.leaf.cert_pem)),
                          ca_serial=f"{certs.serial_of(new.ca.cert_pem):x}", previous_ca=new.previous_ca is not None)
            await self._patch_ca_bundle(kube, new.bundle())
        raise RuntimeError("TLS Secret did not settle after repeated conflicts")

    async def _bundle_trusts(self, kube: Kube, cur: Material | None) -> bool:
        if cur is None:
            return False
        mwc = await _get_or_none(kube.get_mwc(self.cfg.webhook_config))
        hooks = (mwc or {}).get("webhooks") or []
        if not hooks:
            return False
        want = cur.ca.cert_pem
        for h in hooks:
            raw = ((h.get("clientConfig") or {}).get("caBundle")) or ""
            try:
                if want not in certs.split_pem_bundle(base64.b64decode(raw)):
                    return False
            except ValueError:
                return False
        return True

    async def _patch_ca_bundle(self, kube: Kube, bundle: bytes | None) -> None:
        if not bundle:
            return
        name, want = self.cfg.webhook_config, base64.b64encode(bundle).decode()
        for _ in range(MAX_CONFLICT_RETRIES):
            mwc = await _get_or_none(kube.get_mwc(name))
            if mwc is None:
                self.log.error("webhook_config_not_found", name=name, action="caBundle not patched; retrying next round")
                return
            hooks = mwc.get("webhooks") or []
            if all((h.get("clientConfig") or {}).get("caBundle") == want for h in hooks):
                return
            if not self.leader_valid():
                return
            patch = {"metadata": {"resourceVersion": (mwc.get("metadata") or {}).get("resourceVersion")},
                     "webhooks": [{"name": h.get("name"), "clientConfig": {"caBundle": want}} for h in hooks]}
            try:
                await kube.patch_mwc(name, patch)
            except KubeError as exc:
                if exc.conflict:
                    self.log.info("webhook_config_conflict", name=name, action="re-reading")
                    continue
                raise
            self.writes += 1
            self.log.info("ca_bundle_patched", name=name, webhooks=len(hooks), cas=len(certs.split_pem_bundle(bundle)))
            return
        raise RuntimeError(f"MutatingWebhookConfiguration {name}: caBundle patch kept conflicting")

    # -- every replica: cert-dir ----------------------------------------------------------------
    async def _sync_cert_dir(self, secret: dict | None) -> None:
        m = material_from_secret(secret)
        if m is None or not certs.key_matches_cert(m.leaf.cert_pem, m.leaf.key_pem):
            return
        digest = certs_digest(m.leaf)
        if digest != self._written_digest:
            await asyncio.to_thread(write_pair, self.cfg.cert_dir, m.leaf)
            self._written_digest = digest
            self.log.info("cert_dir_updated", cert_dir=str(self.cfg.cert_dir), serial=f"{certs.serial_of(m.leaf.cert_pem):x}")
        self.synced = True


def certs_digest(pair: certs.KeyPair) -> str:
    """Names the pair as webhook.reload names the files it is written to."""
    return bytes_digest([pair.cert_pem, pair.key_pem])


async def _get_or_none(coro: Any) -> dict | None:
    try:
        return await coro
    except KubeError as exc:
        if exc.not_found:
            return None
        raise


def _safe(exc: Exception) -> str:
    """A short error text: KubeError's status/reason/message hold no secret data."""
    if isinstance(exc, KubeError):
        return str(exc)
    return type(exc).__name__
