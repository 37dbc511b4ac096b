"""The demo's relay step (devkms/demo.py): `kms-injector relay` in front of the dev KMS, two sidecar
agents on two folders subscribed to it, and one rotation that reaches the right agent in about the
relay's poll interval (2 s) while the agents' own poll is 60 s (x10 while the relay is up).

The relay checks each pod's projected token with a TokenReview; here a small stand-in answers the
Kubernetes API's POST /apis/authentication.k8s.io/v1/tokenreviews (real shapes) for the two demo
tokens, on a thread of the demo process. The relay's TLS comes from a throwaway CA (the CA travels
to the agents in their AgentConfig, as the webhook puts it there). Values are never printed.
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devkms.demo import Demo

AUDIENCE = "kms-relay.demo"
AGENT_REFRESH = "60s"
SETTINGS = """\
host: {host}
project: {project}
env: {env}
path_policies:
  - namespaces: [demo]
    projects: [{project}]
    paths: [{a}, {b}]
default_policy: deny
"""


class TokenReviews:
    """The Kubernetes API's TokenReview, for the demo's tokens only (everything else: not authenticated)."""

    def __init__(self, audience: str) -> None:
        self.audience = audience
        self.bearer = "demo-relay-" + _secrets.token_urlsafe(12)  # the relay's own API token
        self.tokens: dict[str, str] = {}  # token -> service account (namespace demo)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="tokenreviews", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def token_for(self, sa: str) -> str:
        token = "eyJ" + _secrets.token_urlsafe(24)
        self.tokens[token] = sa
        return token

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reviews = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: the demo prints its own story
                pass

            def do_POST(self) -> None:
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    return self._send(404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"})
                if self.headers.get("Authorization") != f"Bearer {reviews.bearer}":
                    return self._send(401, {"kind": "Status", "status": "Failure", "code": 401, "reason": "Unauthorized"})
                try:
                    spec = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))["spec"]
                except (ValueError, KeyError, TypeError):
                    return self._send(400, {"kind": "Status", "status": "Failure", "code": 400, "reason": "BadRequest"})
                sa = reviews.tokens.get(spec.get("token", ""))
                wanted = spec.get("audiences") or []
                out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {}, "spec": spec}
                if sa is None or (wanted and reviews.audience not in wanted):
                    out["status"] = {"user": {}, "error": "[invalid bearer token]"}
                else:
                    out["status"] = {"authenticated": True, "audiences": [reviews.audience],
                                     "user": {"username": f"system:serviceaccount:demo:{sa}", "uid": f"uid-{sa}",
                                              "groups": ["system:serviceaccounts", "system:authenticated"]}}
                self._send(201, out)

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def other_folder(demo: "Demo") -> tuple[str, str]:
    """A second folder of the demo's project with secrets (and a key to rotate there), not importing the first."""
    import yaml

    data = yaml.safe_load(demo.seed.read_text()) or {}
    folders = data["projects"][demo.project]["environments"][demo.env].get("folders") or {}
    for path in sorted(folders):
        f = folders[path] or {}
        if path != demo.path and f.get("secrets") and demo.path not in (f.get("imports") or []) and \
                path not in ((folders.get(demo.path) or {}).get("imports") or []):
            return path, sorted(f["secrets"])[0]
    from devkms.demo import DemoError

    raise DemoError(f"{demo.seed}: the relay step needs a second folder with secrets in {demo.project}/{demo.env}")


def step_relay(demo: "Demo") -> None:
    from devkms.demo import WAIT, DemoError, _find_log, _rel, _wait_log, list_version
    from webhook import certs

    work = demo.workdir / "relay"
    (work / "tls").mkdir(parents=True)
    ca = certs.generate_ca("kms-demo-relay-ca")
    leaf = certs.generate_serving_cert(ca, ["localhost"], ip_addresses=["127.0.0.1"])
    (work / "tls" / "tls.crt").write_bytes(leaf.cert_pem)
    (work / "tls" / "tls.key").write_bytes(leaf.key_pem)
    os.chmod(work / "tls" / "tls.key", 0o600)
    path_b, key_b = other_folder(demo)
    (work / "settings.yaml").write_text(SETTINGS.format(host=demo.base_url, project=demo.project, env=demo.env,
                                                        a=demo.path, b=path_b))
    reviews = TokenReviews(AUDIENCE)
    demo.cleanups.append(reviews.close)
    (work / "kubeconfig").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "demo",
        "clusters": [{"name": "demo", "cluster": {"server": reviews.url}}],
        "users": [{"name": "relay", "user": {"token": reviews.bearer}}],
        "contexts": [{"name": "demo", "context": {"cluster": "demo", "user": "relay"}}]}))
    log = work / "relay.log"
    relay = demo.spawn("relay", [sys.executable, "-m", "injector", "relay", "--host", "127.0.0.1", "--port", "0",
                                 "--settings", str(work / "settings.yaml"), "--tls-cert", str(work / "tls" / "tls.crt"),
                                 "--tls-key", str(work / "tls" / "tls.key"), "--credentials-dir", str(demo.auth_dir),
                                 "--audience", AUDIENCE],
                       stdout_to=work / "relay.out", stderr_to=log, env={"KUBECONFIG": str(work / "kubeconfig")})
    _wait_log(log, '"event":"listening"', relay)
    port = json.loads(_find_log(log, '"event":"listening"'))["port"]
    demo.say(f"[7] kms-injector relay on https://127.0.0.1:{port} (the dev KMS serves no working change events: the relay checks "
             f"each watched folder every 2 s, asking for no values)")

    agents = {}
    for path in (demo.path, path_b):
        name = path.strip("/").replace("/", "-") or "root"
        token_file = work / f"token-{name}"
        token_file.write_text(reviews.token_for(name))
        config = {"relay_url": f"https://127.0.0.1:{port}", "relay_ca": ca.cert_pem.decode(),
                  "relay_token_path": str(token_file)}
        mount = work / f"secrets-{name}"
        argv = [sys.executable, "-m", "injector", "agent", "--mode", "sidecar", "--host", demo.base_url,
                "--project", demo.project, "--env", demo.env, "--path", path, "--mount-path", str(mount),
                "--credentials-dir", str(demo.auth_dir), "--refresh-interval", AGENT_REFRESH]
        alog = work / f"agent-{name}.log"
        proc = demo.spawn(f"agent {path}", argv, stdout_to=work / f"agent-{name}.out", stderr_to=alog,
                          env={"KMS_AGENT_CONFIG": json.dumps(config)})
        agents[path] = (proc, alog, mount)
    for path, (proc, alog, _) in agents.items():
        _wait_log(alog, '"event":"relay_connected"', proc)
    demo.say(f"      two sidecar agents subscribed (projected token checked by TokenReview, path policy allows): "
             f"{demo.path} and {path_b}, own poll {AGENT_REFRESH} (x10 while the relay is up)")

    _, _, mount_a = agents[demo.path]
    _, _, mount_b = agents[path_b]
    before_a, before_b = list_version(mount_a), list_version(mount_b)
    token = demo.login(*demo.writer_identity)
    new_value = "rotated-" + _secrets.token_hex(12)  # never printed
    t0 = time.monotonic()
    demo.api("PATCH", f"/v3/secrets/raw/{key_b}", {
        "workspaceSlug": demo.project, "projectSlug": demo.project, "environment": demo.env,
        "secretPath": path_b, "secretValue": new_value, "type": "shared"}, token=token)
    deadline = t0 + WAIT
    while _read(mount_b / key_b) != new_value:
        if time.monotonic() > deadline:
            raise DemoError(f"the rotation of {key_b} in {path_b} did not reach its agent within {WAIT:g}s; see {_rel(work)}")
        time.sleep(0.02)
    took = time.monotonic() - t0
    if list_version(mount_a) != before_a:
        raise DemoError(f"the {demo.path} agent rewrote its files after a rotation in {path_b}")
    demo.say(f"      rotated {key_b} in {path_b}: its agent's ..data {before_b} -> {list_version(mount_b)} "
             f"{took:.1f} s after the change (relay notice, then the agent's own fetch)")
    demo.say(f"      the {demo.path} agent was not told and kept ..data {before_a}")


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""
