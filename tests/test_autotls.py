"""`--tls-mode auto` against a local Kubernetes API stand-in (aiohttp on 127.0.0.1).

The stand-in answers the real REST paths and object shapes auto-TLS uses: Secrets and Leases
(GET/POST/PUT with resourceVersion checks: 409 Conflict Status on a stale update, 409
AlreadyExists on a create race, 404 NotFound Status), and MutatingWebhookConfiguration GET and
strategic-merge PATCH (webhooks merged by name; a resourceVersion in the patch is a
precondition). kubernetes-asyncio is pointed at it with Configuration(host=...) and a bearer
token the stand-in checks; no cluster is involved.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from webhook import certs
from webhook.autotls import AutoTLS, AutoTLSConfig, material_from_secret

ROOT = Path(__file__).resolve().parent.parent
NS = "kms-system"
TOKEN = "test-bearer-token"
MWC = "kms-injector"
SECRET = "kms-injector-tls"
LEASE = "kms-injector-tls"
SERVICE = "kms-injector"


# --- the Kubernetes API stand-in ------------------------------------------------------------------

def status(code: int, reason: str, message: str, kind: str = "", name: str = "") -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"name": name, "kind": kind}, "code": code}
    return web.json_response(body, status=code)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name) -> object
        self.rv = 100
        self.requests: list[tuple[str, str, int]] = []        # (method, path, status answered)
        self.bodies: list[tuple[str, str, Any]] = []          # (method, path, body) of writes
        self.hooks: list = []  # (method, resource, fn(method, resource, ns, name)): run once, before that write
        self.runner: web.AppRunner | None = None
        self.port = 0

    # state helpers for tests
    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put_object(self, resource: str, ns: str, name: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(name=name, resourceVersion=self.next_rv(), uid=f"uid-{resource}-{name}")
        if ns:
            meta["namespace"] = ns
        meta.setdefault("creationTimestamp", "2026-11-28T20:00:00Z")
        self.objects[(resource, ns, name)] = obj
        return obj

    def get(self, resource: str, ns: str, name: str) -> dict | None:
        return self.objects.get((resource, ns, name))

    def writes(self, resource: str) -> list[tuple[str, str, Any]]:
        return [b for b in self.bodies if f"/{resource}" in b[1]]

    # HTTP
    async def start(self) -> None:
        app = web.Application(middlewares=[self._mw])
        core = "/api/v1/namespaces/{ns}/secrets"
        coord = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        for base, res in ((core, "secrets"), (coord, "leases")):
            app.router.add_get(base + "/{name}", self._get(res))
            app.router.add_post(base, self._create(res))
            app.router.add_put(base + "/{name}", self._replace(res))
        mwc = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        app.router.add_get(mwc, self._get("mutatingwebhookconfigurations"))
        app.router.add_patch(mwc, self._patch_mwc)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    @web.middleware
    async def _mw(self, request: web.Request, handler):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            resp = status(401, "Unauthorized", "Unauthorized")
        else:
            resp = await handler(request)
        self.requests.append((request.method, request.path, resp.status))
        return resp

    def _get(self, resource: str):
        async def handler(request: web.Request) -> web.Response:
            ns, name = request.match_info.get("ns", ""), request.match_info["name"]
            obj = self.get(resource, ns, name)
            if obj is None:
                return status(404, "NotFound", f'{resource} "{name}" not found', resource, name)
            return web.json_response(obj)
        return handler

    def arm(self, method: str, resource: str, fn) -> None:
        self.hooks.append((method, resource, fn))

    async def _run_hooks(self, method: str, resource: str, ns: str, name: str) -> None:
        for hook in [h for h in self.hooks if h[:2] == (method, resource)]:
            self.hooks.remove(hook)
            hook[2](method, resource, ns, name)

    def _create(self, resource: str):
        async def handler(request: web.Request) -> web.Response:
            ns, body = request.match_info["ns"], await request.json()
            name = (body.get("metadata") or {}).get("name")
            await self._run_hooks("POST", resource, ns, name)
            self.bodies.append(("POST", request.path, body))
            if not name:
                return status(422, "Invalid", f"{resource}: metadata.name: Required value", resource)
            if (resource, ns, name) in self.objects:
                return status(409, "AlreadyExists", f'{resource} "{name}" already exists', resource, name)
            if (body.get("metadata") or {}).get("resourceVersion"):
                return status(400, "BadRequest", "resourceVersion should not be set on objects to be created")
            return web.json_response(self.put_object(resource, ns, name, body), status=201)
        return handler

    def _replace(self, resource: str):
        async def handler(request: web.Request) -> web.Response:
            ns, name, body = request.match_info["ns"], request.match_info["name"], await request.json()
            await self._run_hooks("PUT", resource, ns, name)
            self.bodies.append(("PUT", request.path, body))
            cur = self.get(resource, ns, name)
            if cur is None:
                return status(404, "NotFound", f'{resource} "{name}" not found', resource, name)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != cur["metadata"]["resourceVersion"]:
                return status(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                              "modified; please apply your changes to the latest version and try again", resource, name)
            return web.json_response(self.put_object(resource, ns, name, body))
        return handler

    async def _patch_mwc(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._run_hooks("PATCH", "mutatingwebhookconfigurations", "", name)
        if request.content_type != "application/strategic-merge-patch+json":
            return status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/strategic-merge-patch+json (got {request.content_type})")
        patch = await request.json()
        self.bodies.append(("PATCH", request.path, patch))
        cur = self.get("mutatingwebhookconfigurations", "", name)
        if cur is None:
            return status(404, "NotFound", f'mutatingwebhookconfigurations.admissionregistration.k8s.io "{name}" not found')
        rv = (patch.get("metadata") or {}).get("resourceVersion")
        if rv and rv != cur["metadata"]["resourceVersion"]:
            return status(409, "Conflict", f'Operation cannot be fulfilled on mutatingwebhookconfigurations.admissionregistration.k8s.io "{name}": the object has been modified; please apply your changes to the latest version and try again')
        new = copy.deepcopy(cur)
        hooks = {h["name"]: h for h in new.get("webhooks", [])}
        for ph in patch.get("webhooks", []):  # strategic merge: patchMergeKey=name
            target = hooks.get(ph["name"])
            if target is None:
                new.setdefault("webhooks", []).append(ph)
                continue
            for k, v in ph.items():
                if isinstance(v, dict) and isinstance(target.get(k), dict):
                    target[k].update(v)
                else:
                    target[k] = v
        new["metadata"] = {k: v for k, v in cur["metadata"].items()}
        return web.json_response(self.put_object("mutatingwebhookconfigurations", "", name, new))


def mwc_object() -> dict:
    hook = lambda n: {  # noqa: E731
        "name": n, "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun", "failurePolicy": "Fail",
        "clientConfig": {"service": {"name": SERVICE, "namespace": NS, "path": "/mutate", "port": 443}},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "*"}],
    }
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": MWC}, "webhooks": [hook("inject.kms.hanzo.ai"), hook("inject-native.kms.hanzo.ai")]}


@pytest.fixture
async def kube():
    fake = FakeKube()
    fake.put_object("mutatingwebhookconfigurations", "", MWC, mwc_object())
    await fake.start()
    yield fake
    await fake.stop()


def make_replica(fake: FakeKube, tmp: Path, identity: str, **over: Any) -> AutoTLS:
    conf = client.Configuration(host=f"http://127.0.0.1:{fake.port}")
    conf.api_key = {"BearerToken": TOKEN}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
    cfg = AutoTLSConfig(namespace=NS, secret=SECRET, webhook_config=MWC, service=SERVICE, lease=LEASE,
                        cert_dir=tmp / identity, identity=identity, lease_duration=over.pop("lease_duration", 15.0),
                        tick=over.pop("tick", 0.2), kube_configuration=conf, **over)
    return AutoTLS(cfg)


@pytest.fixture
async def replicas(kube, tmp_path):
    made: list[AutoTLS] = []

    def factory(identity: str, **over: Any) -> AutoTLS:
        r = make_replica(kube, tmp_path, identity, **over)
        made.append(r)
        return r

    yield factory
    for r in made:
        await r.close()


def secret_material(fake: FakeKube):
    m = material_from_secret(fake.get("secrets", NS, SECRET))
    assert m is not None
    return m


def bundles(fake: FakeKube) -> list[list[bytes]]:
    hooks = fake.get("mutatingwebhookconfigurations", "", MWC)["webhooks"]
    return [certs.split_pem_bundle(base64.b64decode(h["clientConfig"].get("caBundle", ""))) for h in hooks]


def seed_secret(fake: FakeKube, leaf: certs.KeyPair, ca: certs.KeyPair, previous: bytes | None = None) -> None:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    fake.put_object("secrets", NS, SECRET, {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": SECRET, "namespace": NS},
        "data": {"tls.crt": b64(leaf.cert_pem), "tls.key": b64(leaf.key_pem),
                 "ca.crt": b64(certs.ca_bundle(ca.cert_pem, previous)), "ca.key": b64(ca.key_pem)}})


def seed_bundle(fake: FakeKube, *cas: bytes) -> None:
    obj = copy.deepcopy(fake.get("mutatingwebhookconfigurations", "", MWC))
    for h in obj["webhooks"]:
        h["clientConfig"]["caBundle"] = base64.b64encode(certs.ca_bundle(*cas)).decode()
    fake.put_object("mutatingwebhookconfigurations", "", MWC, obj)


async def tls_handshake_ok(cert_dir: Path, bundle_pem: bytes, hostname: str) -> bool:
    """A real handshake: server from cert_dir's pair, client trusting only the caBundle."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")

    async def handle(reader, writer):
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        ctx = ssl.create_default_context(cadata=bundle_pem.decode())
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname)
        data = await reader.read(2)
        writer.close()
        return data == b"ok"
    finally:
        srv.close()


SVC_HOST = f"{SERVICE}.{NS}.svc"


# --- cases ----------------------------------------------------------------------------------------

async def test_first_start_creates_ca_cert_secret_and_patches_bundle(kube, replicas):
    a = replicas("replica-a")
    await a.step()
    assert a.is_leader and a.synced
    lease = kube.get("leases", NS, LEASE)
    assert lease["spec"]["holderIdentity"] == "replica-a" and lease["spec"]["leaseDurationSeconds"] == 15
    assert lease["spec"]["renewTime"].endswith("Z") and "." in lease["spec"]["renewTime"]  # MicroTime
    secret = kube.get("secrets", NS, SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) >= {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    m = secret_material(kube)
    assert certs.signed_by(m.leaf.cert_pem, m.ca.cert_pem) and m.previous_ca is None
    assert {SVC_HOST, f"{SVC_HOST}.cluster.local"} <= set(certs.dns_names_of(m.leaf.cert_pem))
    assert 300 < (certs.not_after(m.leaf.cert_pem) - certs.utcnow()).days <= 366
    assert all(b == [m.ca.cert_pem] for b in bundles(kube)) and len(bundles(kube)) == 2
    assert (a.cfg.cert_dir / "tls.crt").read_bytes() == m.leaf.cert_pem
    assert oct((a.cfg.cert_dir / "tls.key").stat().st_mode & 0o777) == "0o600"
    assert await tls_handshake_ok(a.cfg.cert_dir, b"".join(bundles(kube)[0]), SVC_HOST)
    # A second round changes nothing.
    n = len(kube.bodies)
    await a.step()
    assert [b[0] for b in kube.bodies[n:]] == ["PUT"]  # only the lease renewal
    assert kube.bodies[-1][1].endswith(f"/leases/{LEASE}")


async def test_second_replica_only_reads(kube, replicas):
    a, b = replicas("replica-a"), replicas("replica-b")
    await a.step()
    n = len(kube.bodies)
    for _ in range(3):
        await b.step()
    assert not b.is_leader and b.writes == 0 and b.synced
    assert kube.bodies[n:] == []  # not even the lease
    assert (b.cfg.cert_dir / "tls.crt").read_bytes() == (a.cfg.cert_dir / "tls.crt").read_bytes()


async def test_not_ready_until_the_secret_exists(kube, replicas):
    b = replicas("replica-b")
    kube.put_object("leases", NS, LEASE, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                          "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15}})
    await b.step()
    assert not b.is_leader and not b.synced and b.not_ready_reasons()
    assert not (b.cfg.cert_dir / "tls.crt").exists()


async def test_missing_webhook_config_still_serves_then_patches_when_it_appears(kube, replicas):
    del kube.objects[("mutatingwebhookconfigurations", "", MWC)]
    a = replicas("replica-a")
    await a.step()
    assert a.synced and (a.cfg.cert_dir / "tls.crt").exists()  # serving does not wait for the MWC
    ca = secret_material(kube).ca.cert_pem
    kube.put_object("mutatingwebhookconfigurations", "", MWC, mwc_object())  # e.g. Helm applies it later
    await a.step()
    assert all(b == [ca] for b in bundles(kube))


async def test_leaf_near_expiry_is_renewed(kube, replicas):
    ca = certs.generate_ca(now=certs.utcnow() - dt.timedelta(days=301))
    old_leaf = certs.generate_serving_cert(ca, certs.service_dns_names(SERVICE, NS),
                                           now=certs.utcnow() - dt.timedelta(days=300))
    seed_secret(kube, old_leaf, ca)
    seed_bundle(kube, ca.cert_pem)
    a = replicas("replica-a")
    await a.step()
    m = secret_material(kube)
    assert m.leaf.cert_pem != old_leaf.cert_pem and m.ca.cert_pem == ca.cert_pem
    assert certs.signed_by(m.leaf.cert_pem, ca.cert_pem) and not certs.needs_renewal(m.leaf.cert_pem)
    assert all(b == [ca.cert_pem] for b in bundles(kube))
    assert not kube.writes("mutatingwebhookconfigurations")  # bundle already right
    assert (a.cfg.cert_dir / "tls.crt").read_bytes() == m.leaf.cert_pem


async def test_ca_rotation_keeps_previous_ca_in_bundle(kube, replicas):
    old_ca = certs.generate_ca(now=certs.utcnow() - dt.timedelta(days=8 * 365))
    leaf = certs.generate_serving_cert(old_ca, certs.service_dns_names(SERVICE, NS))
    seed_secret(kube, leaf, old_ca)
    seed_bundle(kube, old_ca.cert_pem)
    a = replicas("replica-a", previous_ca_grace=3600)
    await a.step()
    m = secret_material(kube)
    assert m.ca.cert_pem != old_ca.cert_pem and m.previous_ca == old_ca.cert_pem
    assert certs.signed_by(m.leaf.cert_pem, m.ca.cert_pem)
    assert all(b == [m.ca.cert_pem, old_ca.cert_pem] for b in bundles(kube))
    # Order: the first Secret write kept the old leaf; the bundle got the new CA before the leaf moved.
    writes = [(meth, path) for meth, path, _ in kube.bodies if "leases" not in path]
    assert writes == [("PUT", f"/api/v1/namespaces/{NS}/secrets/{SECRET}"),
                      ("PATCH", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{MWC}"),
                      ("PUT", f"/api/v1/namespaces/{NS}/secrets/{SECRET}")]
    first = material_from_secret(kube.writes("secrets")[0][2])
    assert first.leaf.cert_pem == leaf.cert_pem
    # Every cert served during the rotation verifies against the bundle.
    assert await tls_handshake_ok(a.cfg.cert_dir, b"".join(bundles(kube)[0]), SVC_HOST)
    # Within the grace period the old CA stays; after it, it is retired from Secret and bundle.
    await a.step()
    assert secret_material(kube).previous_ca == old_ca.cert_pem
    a.cfg.previous_ca_grace = 0
    await a.step()
    m2 = secret_material(kube)
    assert m2.previous_ca is None and m2.ca.cert_pem == m.ca.cert_pem and m2.leaf.cert_pem == m.leaf.cert_pem
    assert all(b == [m.ca.cert_pem] for b in bundles(kube))


async def test_conflicts_are_retried_after_rereading(kube, replicas):
    ca = certs.generate_ca(now=certs.utcnow() - dt.timedelta(days=301))
    old_leaf = certs.generate_serving_cert(ca, certs.service_dns_names(SERVICE, NS), now=certs.utcnow() - dt.timedelta(days=300))
    seed_secret(kube, old_leaf, ca)
    seed_bundle(kube, ca.cert_pem)
    a = replicas("replica-a")

    def someone_else_writes(method: str, resource: str, ns: str, name: str) -> None:
        # Another client edits the object between our read and our write: our resourceVersion goes stale.
        obj = copy.deepcopy(kube.get(resource, ns, name))
        obj["metadata"].setdefault("labels", {})["touched"] = "yes"
        kube.put_object(resource, ns, name, obj)

    kube.arm("PUT", "secrets", someone_else_writes)
    await a.step()
    puts = [s for m, p, s in kube.requests if m == "PUT" and p.endswith(f"/secrets/{SECRET}")]
    assert puts == [409, 200]
    secret = kube.get("secrets", NS, SECRET)
    assert secret["metadata"]["labels"]["touched"] == "yes"  # re-read, so the other write survived
    m = secret_material(kube)
    assert m.leaf.cert_pem != old_leaf.cert_pem and not certs.needs_renewal(m.leaf.cert_pem)

    # A caBundle patch meeting a stale resourceVersion is retried after re-reading too.
    seed_bundle(kube, certs.generate_ca().cert_pem)
    kube.arm("PATCH", "mutatingwebhookconfigurations", someone_else_writes)
    await a.step()
    patches = [s for m, p, s in kube.requests if m == "PATCH"]
    assert patches == [409, 200]
    assert all(b == [ca.cert_pem] for b in bundles(kube))


async def test_lost_lease_stops_writing_and_expired_lease_is_taken_over(kube, replicas):
    a = replicas("replica-a", lease_duration=1.0)
    await a.step()
    assert a.is_leader
    # Another replica takes the lease (e.g. after a partition): fresh renewTime, new holder.
    lease = copy.deepcopy(kube.get("leases", NS, LEASE))
    lease["spec"].update(holderIdentity="replica-b", leaseTransitions=1,
                         renewTime=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    kube.put_object("leases", NS, LEASE, lease)
    # Make a write necessary: the leaf does not name the Service.
    m = secret_material(kube)
    stale = certs.generate_serving_cert(m.ca, ["someone-else.example"])
    seed_secret(kube, stale, m.ca)
    n = len(kube.bodies)
    await a.step()
    assert not a.is_leader
    assert kube.bodies[n:] == []  # no Secret, caBundle or Lease write
    assert secret_material(kube).leaf.cert_pem == stale.cert_pem
    assert kube.get("leases", NS, LEASE)["spec"]["holderIdentity"] == "replica-b"
    # replica-b stops renewing: after the lease duration (local clock) replica-a takes over and renews the leaf.
    deadline = time.monotonic() + 20
    while not a.is_leader and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        await a.step()
    assert a.is_leader
    spec = kube.get("leases", NS, LEASE)["spec"]
    assert spec["holderIdentity"] == "replica-a" and spec["leaseTransitions"] == 2
    assert secret_material(kube).leaf.cert_pem != stale.cert_pem


async def test_two_replicas_racing_from_nothing_make_one_ca(kube, replicas):
    a, b = replicas("replica-a"), replicas("replica-b")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in (a, b)]
    try:
        deadline = time.monotonic() + 20
        while not (a.synced and b.synced) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a few more rounds
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert a.synced and b.synced
    assert [a.is_leader, b.is_leader].count(True) == 1
    assert len([1 for m, p, s in kube.requests if m == "POST" and p.endswith("/secrets") and s == 201]) == 1
    assert (a.cfg.cert_dir / "tls.crt").read_bytes() == (b.cfg.cert_dir / "tls.crt").read_bytes()


async def test_webhook_process_in_auto_mode_serves_the_managed_cert(kube, tmp_path):
    """`kms-injector webhook --tls-mode auto` end to end, reaching the stand-in via a kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{kube.port}"}}],
        "users": [{"name": "t", "user": {"token": TOKEN}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": NS}}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1", POD_NAME="webhook-0")
    log = tmp_path / "webhook.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "injector", "webhook", "--host", "127.0.0.1", "--port", "0", "--tls-mode", "auto",
        "--namespace", NS, "--service", SERVICE, "--tls-secret", SECRET, "--webhook-config", MWC, "--lease", LEASE,
        "--cert-dir", str(tmp_path / "certs"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                rec = json.loads(line) if line.startswith("{") else {}
                if rec.get("event") == "listening":
                    port = rec["port"]
                    break
            if port or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert port, log.read_text()
        ready = False
        while time.monotonic() < deadline and not ready:
            hooks = kube.get("mutatingwebhookconfigurations", "", MWC)["webhooks"]
            bundle = base64.b64decode(hooks[0]["clientConfig"].get("caBundle", ""))
            if bundle:
                try:
                    ctx = ssl.create_default_context(cadata=bundle.decode())
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=SVC_HOST)
                    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    ready = (await reader.read()).startswith(b"HTTP/1.1 200")
                    writer.close()
                except (ssl.SSLError, OSError):
                    pass
            if not ready:
                await asyncio.sleep(0.2)
        assert ready, log.read_text()
        assert kube.get("leases", NS, LEASE)["spec"]["holderIdentity"] == "webhook-0"
        assert TOKEN not in log.read_text()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode == 0
