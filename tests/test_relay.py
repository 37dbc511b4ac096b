"""The change relay end to end: a dev KMS with events off, the real `kms-injector relay` process over
TLS, a local Kubernetes API stand-in answering TokenReviews (the real REST path and object shapes),
and subscribers driven through injector/relay_client.py, the module the agent runs.

The helpers here (RelayHarness, FakeKubeAuth, ...) are imported by the other tests/test_relay_*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devkms.api import build_app
from devkms.audit import AuditLog
from devkms.seed import tiny_seed
from devkms.state import DevKms
from injector.config import AgentConfig, Source
from injector.log import Logger
from injector.relay_client import RelayClientState, relay_trigger
from tests.agent_support import Proc, free_port, spawn, stop_process, wait_for, write_credentials
from tests.conftest import KMS_INJECTOR
from webhook import certs

PROJECT, ENV = "test-proj", "prod"
AUDIENCE = "kms-relay.test"
KUBE_TOKEN = "relay-sa-bearer"  # the relay's own service-account token, for the stand-in API server
# Every value the seed and the tests write: none may ever appear in the relay's output.
ROTATED_PREFIX = "rotated-value-"


# --- the Kubernetes API stand-in: TokenReview -------------------------------------------------------

def kube_status(code: int, reason: str, message: str, **extra: Any) -> web.Response:
    """A failure as kube-apiserver answers it: a Status object with the HTTP code."""
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code, **extra}, status=code)


class FakeKubeAuth:
    """POST /apis/authentication.k8s.io/v1/tokenreviews with the API server's shapes: 201 and a
    TokenReview whose status says authenticated + user + audiences, or carries `error` (an unknown
    token, or one whose audiences do not include the requested one, as kube-apiserver words it).
    Also GET /api/v1/namespaces/{ns}/secrets/{name} (the relay's auto TLS reads the webhook's
    Secret): the object as stored, or the 404 Status kube-apiserver answers."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, str, list[str]]] = {}  # token -> (namespace, sa, audiences)
        self.secrets: dict[tuple[str, str], dict] = {}  # (namespace, name) -> Secret object
        self.secret_gets = 0
        self.reviews = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def token_for(self, namespace: str, sa: str, audiences: list[str] | None = None) -> str:
        token = "eyJ" + secrets.token_urlsafe(24)
        self.tokens[token] = (namespace, sa, audiences or [AUDIENCE])
        return token

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._review)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get_secret)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _get_secret(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if request.headers.get("Authorization") != f"Bearer {KUBE_TOKEN}":
            return kube_status(401, "Unauthorized", "Unauthorized")
        self.secret_gets += 1
        obj = self.secrets.get((ns, name))
        if obj is None:
            return kube_status(404, "NotFound", f'secrets "{name}" not found', details={"name": name, "kind": "secrets"})
        return web.json_response(obj)

    async def _review(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KUBE_TOKEN}":
            return kube_status(401, "Unauthorized", "Unauthorized")
        body = await request.json()
        assert body.get("kind") == "TokenReview" and body.get("apiVersion") == "authentication.k8s.io/v1"
        spec = body["spec"]
        self.reviews += 1
        wanted = spec.get("audiences") or []
        out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": None}, "spec": spec}
        known = self.tokens.get(spec.get("token", ""))
        if known is None:
            out["status"] = {"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
        elif wanted and not set(wanted) & set(known[2]):
            out["status"] = {"user": {}, "error": f"[invalid bearer token, token audiences {json.dumps(known[2])} is invalid "
                                                  f"for the target audiences {json.dumps(wanted)}, unknown]"}
        else:
            ns, sa, _ = known
            out["status"] = {"authenticated": True, "audiences": [a for a in known[2] if not wanted or a in wanted],
                             "user": {"username": f"system:serviceaccount:{ns}:{sa}", "uid": f"uid-{sa}",
                                      "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                                      "extra": {"authentication.kubernetes.io/pod-name": [f"{sa}-pod"]}}}
        return web.json_response(out, status=201)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "relay", "user": {"token": KUBE_TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "relay"}}]}))
        return path


# --- a dev KMS that records the query of every secrets request --------------------------------------

class RecordingKms:
    """The dev KMS (devkms.build_app over a DevKms state), plus a middleware that records each
    request's path and query: the request log the tests read (who asked for values)."""

    def __init__(self, seed: dict | None = None, **state_kw: Any) -> None:
        self.state = DevKms(seed or tiny_seed(), **state_kw)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def start(self) -> None:
        app = build_app(self.state, test_hooks=True, audit=AuditLog(stream=open(os.devnull, "w")))

        @web.middleware
        async def record(request: web.Request, handler):
            self.requests.append((request.method, request.path, dict(request.query)))
            return await handler(request)

        app.middlewares.insert(0, record)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    def secret_reads(self) -> list[dict[str, str]]:
        return [q for m, p, q in self.requests if m == "GET" and p == "/api/v3/secrets/raw"]

    def rotate(self, path: str, key: str = "ROTATED") -> str:
        value = ROTATED_PREFIX + secrets.token_hex(8)
        self.state.set_secret(PROJECT, ENV, path, key, value)
        return value


# --- the relay process ------------------------------------------------------------------------------

SETTINGS = """\
host: {host}
project: test-proj
env: prod
path_policies:
  - namespaces: [chat]
    service_accounts: [chat]
    projects: [test-proj]
    paths: [/app, /app/**]
  - namespaces: [shop]
    projects: [test-proj]
    paths: [/shared, /restricted]
  - namespaces: [load]
    projects: [test-proj]
    paths: [/**]
default_policy: deny
"""


@dataclass
class RelayHarness:
    tmp: Path
    kms: RecordingKms
    kube: FakeKubeAuth
    port: int = 0
    ca_pem: str = ""
    proc: Proc | None = None
    extra: list[str] = field(default_factory=list)
    runs: int = 0
    host_name: str = "127.0.0.1"  # the name clients dial and verify (auto TLS: one of the Service's names)

    def prepare(self) -> None:
        ca = certs.generate_ca("relay-test-ca")
        leaf = certs.generate_serving_cert(ca, ["localhost"], ip_addresses=["127.0.0.1"])
        (self.tmp / "tls").mkdir(exist_ok=True)
        (self.tmp / "tls" / "tls.crt").write_bytes(leaf.cert_pem)
        (self.tmp / "tls" / "tls.key").write_bytes(leaf.key_pem)
        self.ca_pem = ca.cert_pem.decode()
        write_credentials(self.tmp / "relay-auth", "svc-id", "svc-secret")
        (self.tmp / "settings.yaml").write_text(SETTINGS.format(host=self.kms.base_url))
        self.kube.kubeconfig(self.tmp / "kubeconfig")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"https://{self.host_name}:{self.port}"

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Proc:
        self.runs += 1
        argv = [*KMS_INJECTOR, "relay", "--port", str(self.port), "--host", "127.0.0.1",
                "--settings", str(self.tmp / "settings.yaml"),
                "--tls-cert", str(self.tmp / "tls" / "tls.crt"), "--tls-key", str(self.tmp / "tls" / "tls.key"),
                "--credentials-dir", str(self.tmp / "relay-auth"), "--audience", AUDIENCE,
                "--poll-interval", "0.3", "--heartbeat", "2", *self.extra, *extra]
        self.proc = spawn(argv, self.tmp, f"relay{self.runs}", env={"KUBECONFIG": str(self.tmp / "kubeconfig"), **(env or {})})
        return self.proc

    async def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"the relay exited ({self.proc.popen.returncode}):\n{self.proc.stderr()[-3000:]}")
            return bool(self.proc.events("listening"))

        await wait_for(up, 30, "relay listening")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc.popen, timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.popen.kill()
            self.proc.popen.wait()

    def all_output(self) -> str:
        return "".join((p.read_text(errors="replace") for p in self.tmp.glob("relay*.err"))) + \
               "".join((p.read_text(errors="replace") for p in self.tmp.glob("relay*.out")))

    async def get(self, path: str) -> tuple[int, str]:
        return await https_get(self.port, self.ca_pem, path, self.host_name)


async def https_get(port: int, ca_pem: str, path: str, host_name: str = "127.0.0.1") -> tuple[int, str]:
    ctx = ssl.create_default_context(cadata=ca_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host_name)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def raw_watch(port: int, ca_pem: str, token: str | None, body: Any) -> tuple[int, dict | str]:
    """One POST /v1/watch whose refusal we read in full (an accepted stream is closed at once)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    writer.write(f"POST /v1/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    length = re.search(rb"(?i)content-length: (\d+)", head)
    if status != 200 and length:
        text = (await reader.readexactly(int(length.group(1)))).decode()
        writer.close()
        return status, json.loads(text)
    writer.close()
    return status, ""


class ListLog(Logger):
    """A Logger that keeps its records (and still writes nothing to the test output)."""

    def __init__(self) -> None:
        super().__init__("relay-client", stream=open(os.devnull, "w"), level="debug")
        self.records: list[dict] = []

    def log(self, level: str, event: str, **fields: Any) -> None:
        self.records.append({"level": level, "event": event, **fields})


@dataclass
class Subscriber:
    """An agent's relay side: relay_client.relay_trigger with a wake() that records its reasons."""

    name: str
    paths: tuple[str, ...]
    state: RelayClientState
    log: ListLog
    config: AgentConfig | None = None
    wakes: list[str] = field(default_factory=list)
    task: asyncio.Task | None = None

    def changes(self) -> list[str]:
        return [w for w in self.wakes if w != "relay: subscribed"]


def agent_config(relay: RelayHarness, token_path: Path, paths: tuple[str, ...]) -> AgentConfig:
    return AgentConfig(host=relay.kms.base_url, project=PROJECT, env=ENV, sources=[Source(p, f"s{i}") for i, p in enumerate(paths)],
                       relay_url=relay.url, relay_ca=relay.ca_pem, relay_token_path=str(token_path))


def subscribe(relay: RelayHarness, name: str, token: str, paths: tuple[str, ...], spread: float = 0.0,
              host: str | None = None) -> Subscriber:
    token_path = relay.tmp / f"token-{name}"
    token_path.write_text(token)
    cfg = agent_config(relay, token_path, paths)
    if host is not None:
        cfg.host = host
    state = RelayClientState(spread=spread)
    state.backoff.base, state.backoff.cap = 0.2, 1.0
    sub = Subscriber(name, paths, state, ListLog(), config=cfg)
    sub.task = asyncio.create_task(relay_trigger(cfg, sub.wakes.append, sub.log, state))
    return sub


async def stop_subscribers(subs: list[Subscriber]) -> None:
    for s in subs:
        if s.task:
            s.task.cancel()
    await asyncio.gather(*(s.task for s in subs if s.task), return_exceptions=True)


@contextlib.asynccontextmanager
async def relay_environment(tmp_path: Path, events: bool):
    """A recording dev KMS (with or without its event stream), the TokenReview stand-in and a
    prepared (not yet started) relay harness; all stopped afterwards."""
    kms = RecordingKms(events=events)
    kube = FakeKubeAuth()
    await kms.start()
    await kube.start()
    relay = RelayHarness(tmp_path, kms, kube)
    relay.prepare()
    try:
        yield relay
    finally:
        relay.stop()
        await kube.stop()
        await kms.stop()


@pytest.fixture
async def relay_env(tmp_path: Path):
    async with relay_environment(tmp_path, events=False) as relay:  # no event stream: the relay must poll
        yield relay


def metric_value(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in metrics:\n{text}")


# --- tests ------------------------------------------------------------------------------------------

async def test_each_rotation_reaches_exactly_the_subscribers_of_that_folder(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    chat_token = relay.kube.token_for("chat", "chat")
    shop_token = relay.kube.token_for("shop", "shop")
    app_subs = [subscribe(relay, f"app{i}", chat_token, ("/app",)) for i in range(3)]
    shared_subs = [subscribe(relay, f"shared{i}", shop_token, ("/shared",)) for i in range(2)]
    restricted = subscribe(relay, "restricted", shop_token, ("/restricted",))
    everyone = [*app_subs, *shared_subs, restricted]
    try:
        await wait_for(lambda: all(s.state.healthy for s in everyone), 30, "every subscriber connected and watched")
        assert all(s.wakes == ["relay: subscribed"] for s in everyone)  # a refetch on connect, nothing else

        relay.kms.rotate("/restricted")
        await wait_for(lambda: restricted.changes(), 20, "the /restricted subscriber notified")
        # /app imports /shared, not /restricted: give the others two full poll rounds to (wrongly) fire
        polls_before = len(relay.kms.secret_reads())
        await wait_for(lambda: len(relay.kms.secret_reads()) >= polls_before + 6, 20, "two more poll rounds")
        assert restricted.changes() == ["relay: /restricted"]
        assert all(not s.changes() for s in [*app_subs, *shared_subs])

        relay.kms.rotate("/app")
        await wait_for(lambda: all(s.changes() for s in app_subs), 20, "every /app subscriber notified")
        polls_before = len(relay.kms.secret_reads())
        await wait_for(lambda: len(relay.kms.secret_reads()) >= polls_before + 6, 20, "two more poll rounds")
        assert all(s.changes() == ["relay: /app"] for s in app_subs)
        assert all(not s.changes() for s in shared_subs) and restricted.changes() == ["relay: /restricted"]

        # /app imports /shared: a change there reaches both folders' subscribers, once each
        relay.kms.rotate("/shared")
        await wait_for(lambda: all(len(s.changes()) == 2 for s in app_subs) and all(s.changes() for s in shared_subs),
                       20, "/shared and its importer /app notified")
        assert all(s.changes() == ["relay: /app", "relay: /app"] for s in app_subs)
        assert all(s.changes() == ["relay: /shared"] for s in shared_subs)
        assert restricted.changes() == ["relay: /restricted"]
        markers = {s.name: s.state.last_marker for s in everyone}
        assert markers["app0"] == {"/app": 2} and markers["shared0"] == {"/shared": 1}

        # one watch per folder, however many subscribers: 3 folders
        status, text = await relay.get("/metrics")
        assert status == 200
        assert metric_value(text, "kms_relay_subscribers") == 6
        assert metric_value(text, 'kms_relay_watched_folders{state="watched"}') == 3
        assert metric_value(text, "kms_relay_changes_total") == 4
        assert metric_value(text, "kms_relay_notices_total") == 1 + 3 + 3 + 2
        assert metric_value(text, 'kms_relay_kms_polls_total{result="not_modified"}') > 0
    finally:
        await stop_subscribers(everyone)


async def test_relay_asks_for_no_values_and_none_appears_in_its_output(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    sub = subscribe(relay, "app", relay.kube.token_for("chat", "chat"), ("/app",))
    try:
        await wait_for(lambda: sub.state.healthy, 30, "subscribed")
        written = [relay.kms.rotate("/app") for _ in range(3)]
        await wait_for(lambda: len(sub.changes()) >= 1 and sub.state.last_marker.get("/app", 0) >= 1, 20, "notified")
        for _ in range(2):
            written.append(relay.kms.rotate("/app"))
            before = sub.state.notices
            await wait_for(lambda: sub.state.notices > before, 20, "notified again")
        status, metrics_text = await relay.get("/metrics")
        assert status == 200
    finally:
        await stop_subscribers([sub])
    reads = relay.kms.secret_reads()
    assert reads, "the relay never read the folder"
    # every read the relay made asked for no values (the seed identity is the relay's own: svc)
    assert all(q.get("viewSecretValue") == "false" for q in reads), reads
    assert all(q.get("include_imports") == "true" for q in reads)
    relay.stop()
    output = relay.all_output() + metrics_text + json.dumps(sub.log.records) + json.dumps(sub.wakes)
    seeded = [v for f in tiny_seed()["projects"][PROJECT]["environments"][ENV]["folders"].values()
              for v in f.get("secrets", {}).values()]
    for value in written + seeded + ["svc-secret"]:
        assert value not in output, f"a secret value leaked into the relay's output: {value[:6]}..."
    assert "value_answers_total 0" in metrics_text  # the dev KMS honoured viewSecretValue=false


async def test_tokens_outside_the_policy_invalid_or_for_another_audience_are_refused(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    folder = {"host": relay.kms.base_url, "project": PROJECT, "env": ENV, "path": "/restricted"}
    port, ca = relay.port, relay.ca_pem

    # a real pod identity, but /restricted is outside the chat policy (/app, /app/**)
    status, body = await raw_watch(port, ca, relay.kube.token_for("chat", "chat"), {"folders": [folder]})
    assert status == 403, body
    assert body["folder"] == folder and "/restricted" in body["message"]
    assert "outside the path policy" in body["policy"] and "/app/**" in body["policy"]

    # the chat namespace's policy names service account chat only: another SA there matches none (deny)
    status, body = await raw_watch(port, ca, relay.kube.token_for("chat", "intruder"),
                                   {"folders": [dict(folder, path="/app")]})
    assert status == 403 and "default policy is deny" in body["policy"], body

    # a host the settings do not allow: the relay is no proxy to arbitrary URLs
    status, body = await raw_watch(port, ca, relay.kube.token_for("shop", "shop"),
                                   {"folders": [dict(folder, path="/shared", host="http://169.254.169.254/api")]})
    assert status == 403 and "allowed_hosts" in body["policy"], body

    # not a token the API server knows
    forged = "eyJ" + secrets.token_urlsafe(24)
    status, body = await raw_watch(port, ca, forged, {"folders": [dict(folder, path="/shared")]})
    assert status == 401 and "not accepted by the Kubernetes API" in body["message"], body
    assert forged not in json.dumps(body)

    # a real token projected for another audience (e.g. the KMS's kubernetes-auth one)
    other = relay.kube.token_for("shop", "shop", audiences=["kms.hanzo.ai"])
    status, body = await raw_watch(port, ca, other, {"folders": [dict(folder, path="/shared")]})
    assert status == 401 and AUDIENCE in body["message"], body

    # no token at all; a malformed body
    status, body = await raw_watch(port, ca, None, {"folders": [folder]})
    assert status == 401 and "Bearer" in body["message"]
    status, body = await raw_watch(port, ca, relay.kube.token_for("shop", "shop"), {"folders": [dict(folder, path="../etc")]})
    assert status == 400 and "folders[0].path" in body["message"], body
    status, body = await raw_watch(port, ca, relay.kube.token_for("shop", "shop"), b"not json")
    assert status == 400 and "folders" in body["message"], body
    status, body = await raw_watch(port, ca, relay.kube.token_for("shop", "shop"), {"folders": [folder], "extra": 1})
    assert status == 400 and "extra" in body["message"], body

    # the client module reports the refusal and backs off instead of storming
    token = relay.kube.token_for("chat", "chat")
    sub = subscribe(relay, "refused", token, ("/restricted",))
    try:
        await wait_for(lambda: sub.state.refusals >= 1, 20, "the refusal seen by the client")
        assert not sub.state.healthy and sub.wakes == []
        assert any(r["event"] == "relay_disconnected" and "403" in r["error"] for r in sub.log.records)
    finally:
        await stop_subscribers([sub])
    status, text = await relay.get("/metrics")
    assert metric_value(text, 'kms_relay_subscribes_refused_total{reason="forbidden"}') >= 4
    assert metric_value(text, 'kms_relay_subscribes_refused_total{reason="unauthenticated"}') >= 3
    assert forged not in relay.all_output() and token not in relay.all_output()


async def test_relay_killed_and_restarted_subscribers_resubscribe_and_refetch(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    subs = [subscribe(relay, f"app{i}", relay.kube.token_for("chat", "chat"), ("/app",)) for i in range(2)]
    try:
        await wait_for(lambda: all(s.state.healthy for s in subs), 30, "subscribed")
        relay.kill()
        await wait_for(lambda: all(not s.state.connected for s in subs), 20, "the drop noticed")
        assert all(s.state.poll_factor(agent_config(relay, Path("x"), ("/app",))) == 1.0 for s in subs)
        relay.kms.rotate("/app")  # made while no relay runs: caught by the refetch on reconnect
        relay.start()
        await relay.wait_ready()
        await wait_for(lambda: all(s.state.connects == 2 and s.state.healthy for s in subs), 30, "re-subscribed")
        assert all(s.wakes.count("relay: subscribed") == 2 for s in subs)
        assert all(s.state.poll_factor(agent_config(relay, Path("x"), ("/app",))) == 10.0 for s in subs)
        relay.kms.rotate("/app")
        await wait_for(lambda: all(s.changes() == ["relay: /app"] for s in subs), 20, "notified by the new relay")
        # the outage was logged once per subscriber, not once per attempt
        assert all(sum(r["event"] == "relay_disconnected" for r in s.log.records) <= 2 for s in subs)
    finally:
        await stop_subscribers(subs)


async def test_folders_nobody_watches_are_dropped(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    token = relay.kube.token_for("shop", "shop")
    a = subscribe(relay, "a", token, ("/shared",))
    b = subscribe(relay, "b", token, ("/shared", "/restricted"))
    try:
        await wait_for(lambda: a.state.healthy and b.state.healthy, 30, "subscribed")
        _, text = await relay.get("/metrics")
        assert metric_value(text, 'kms_relay_watched_folders{state="watched"}') == 2
        await stop_subscribers([b])

        async def folders() -> float:
            return metric_value((await relay.get("/metrics"))[1], 'kms_relay_watched_folders{state="watched"}')

        await wait_for(lambda: folders_equal(folders, 1), 20, "/restricted dropped")
        reads = len([q for q in relay.kms.secret_reads() if q["secretPath"] == "/restricted"])
        polls = len(relay.kms.secret_reads())
        await wait_for(lambda: len(relay.kms.secret_reads()) >= polls + 4, 20, "more polls of /shared")
        assert len([q for q in relay.kms.secret_reads() if q["secretPath"] == "/restricted"]) == reads
        assert relay.proc is not None and relay.proc.events("folder_dropped")
    finally:
        await stop_subscribers([a, b])


async def folders_equal(get, n: float) -> bool:
    return await get() == n


async def test_health_readiness_and_bad_requests(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    assert await relay.get("/healthz") == (200, '{"status":"ok"}')
    assert await relay.get("/readyz") == (200, '{"status":"ready"}')
    status, body = await relay.get("/v1/watch")
    assert status == 405 and "POST /v1/watch" in body


def test_bad_settings_stop_the_relay_with_a_message_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("path_policies:\n  - namespaces: [x]\n    projects: [p]\n")
    cert = tmp_path / "c"
    import subprocess

    proc = subprocess.run([*KMS_INJECTOR, "relay", "--settings", str(tmp_path / "s.yaml"), "--tls-cert", str(cert),
                           "--tls-key", str(cert)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "path_policies[0].paths" in proc.stderr
    proc = subprocess.run([*KMS_INJECTOR, "relay", "--poll-interval", "soon"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--poll-interval" in proc.stderr

