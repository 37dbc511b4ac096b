"""Helpers for the reliability, hostile-input, leak and fuzz tests (issue 6).

- `check_patch_contract(pod, ops, settings)`: every JSON patch op the webhook emits must stay
  inside the contract (only our containers/volumes/status annotation added, app containers only
  get the read-only secrets mount, hardened agents, no hostPath, config host allowed...).
- `assert_no_leaks(sources, markers)`: zero occurrences of any marker in any captured text; the
  failure names the source and the marker's label, never the marker itself.
- `WebhookProcess`: `kms-injector webhook` as a real HTTPS subprocess with a test CA.
- `snapshot(mount)`: files byte-for-byte plus the `..data` link's target and inode.
- `cpu_seconds(pid)`: user+system CPU of a live process, from /proc.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .agent_support import stop_process

ROOT = Path(__file__).resolve().parents[1]
SOAK = os.environ.get("KMS_SOAK", "") not in ("", "0")

P = "kms.hanzo.ai/"
STATUS = P + "status"
OUR_CONTAINERS = ("kms-agent", "kms-agent-init")
OUR_VOLUMES = ("kms-secrets", "kms-auth", "kms-sa-token", "kms-ca", "kms-relay-token")
AGENT_MOUNT_PATH = "/kms-agent/secrets"  # the agents' fixed mount of the secrets volume (issue 12 item 5)
AGENT_ENV = {"KMS_AGENT_CONFIG", "KMS_POD_NAME", "KMS_POD_NAMESPACE"}
FORBIDDEN_MOUNT_PREFIXES = ("/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/usr", "/var/run/secrets", "/kms/auth", "/kms/sa")
_SECRET_MOUNT = re.compile(r"/spec/(containers|initContainers)/(\d+)/volumeMounts(/-)?")


# -- the patch contract ------------------------------------------------------------------------------

def _check_mount_path(path: Any) -> None:
    assert isinstance(path, str) and path.startswith("/") and path != "/", path
    parts = path.split("/")[1:]
    assert all(p and p not in (".", "..") and "\x00" not in p for p in parts), path
    for bad in FORBIDDEN_MOUNT_PREFIXES:
        assert not (path == bad or path.startswith(bad + "/") or bad.startswith(path + "/")), f"mount path {path} covers {bad}"


def _check_volume(v: Any) -> None:
    assert isinstance(v, dict) and v.get("name") in OUR_VOLUMES, v
    kinds = set(v) - {"name"}
    assert len(kinds) == 1, f"volume {v['name']} has sources {kinds}"
    (kind,) = kinds
    assert kind != "hostPath"
    if v["name"] == "kms-secrets":
        assert kind == "emptyDir" and v["emptyDir"].get("medium") == "Memory" and v["emptyDir"].get("sizeLimit"), v
    elif v["name"] == "kms-auth":
        assert kind == "secret" and set(v["secret"]) <= {"secretName", "defaultMode"}, v
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", v["secret"]["secretName"]), v
    elif v["name"] == "kms-ca":  # a CA bundle: one key, as ca.crt
        assert kind in ("secret", "configMap") and v[kind]["items"] == [{"key": v[kind]["items"][0]["key"], "path": "ca.crt"}], v
    else:
        assert kind == "projected" and all(set(s) == {"serviceAccountToken"} for s in v["projected"]["sources"]), v


def _check_agent(c: Any, settings: Any, allowed_names: tuple[str, ...]) -> str:
    """Returns the agent's mount path (from its config)."""
    from injector.config import AgentConfig

    assert isinstance(c, dict) and c.get("name") in allowed_names, c.get("name") if isinstance(c, dict) else c
    assert c["image"] == settings.agent.image, f"image {c['image']} is not the settings' image"
    assert c["command"] == ["kms-injector"] and c["args"][0] == "agent", (c["command"], c["args"])
    assert not {"envFrom", "workingDir", "stdin", "tty"} & set(c), set(c)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, sc
    assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False, sc
    assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0, sc
    assert sc["capabilities"]["drop"] == ["ALL"] and set(sc["capabilities"].get("add", [])) <= {"KILL"}, sc
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, sc
    env = {e["name"]: e for e in c["env"]}
    assert set(env) == AGENT_ENV, set(env)
    cfg = AgentConfig.from_json(env["KMS_AGENT_CONFIG"]["value"])  # the agent must be able to read it
    assert cfg.host == settings.host or settings.host_allowed(cfg.host), cfg.host
    assert "@" not in cfg.host.split("//", 1)[-1].split("/", 1)[0], "credentials in the host"
    _check_mount_path(cfg.mount_path)
    for src in cfg.sources:
        assert ".." not in src.path.split("/") and "\x00" not in src.path, src
    for fname in cfg.templates:
        assert "/" not in fname and not fname.startswith(".."), fname
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) <= set(OUR_VOLUMES) and "kms-secrets" in mounts, set(mounts)
    assert mounts["kms-secrets"]["mountPath"] == cfg.mount_path
    for name in ("kms-auth", "kms-sa-token", "kms-ca", "kms-relay-token"):
        if name in mounts:
            assert mounts[name].get("readOnly") is True
    # The relay token: only the refreshing agent subscribes, and its config says where the token is.
    if "kms-relay-token" in mounts:
        assert c["name"] == "kms-agent" and cfg.mode == "sidecar" and cfg.relay_url.startswith("https://"), c["name"]
        assert cfg.relay_token_path == mounts["kms-relay-token"]["mountPath"] + "/token", cfg.relay_token_path
    else:
        assert cfg.relay_url == "" and cfg.relay_ca == "", "relay fields without the relay token"
    for p in c.get("ports", []):
        assert set(p) <= {"containerPort", "protocol"} and "hostPort" not in p, p
    return cfg.mount_path


def check_patch_contract(pod: Mapping[str, Any], ops: list[dict[str, Any]], settings: Any) -> None:
    """Assert that every op stays inside the webhook's contract (see module docstring)."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    lengths = {k: len(spec.get(k) or []) for k in ("containers", "initContainers")}
    app_mounts: set[str] = set()
    agent_mounts: set[str] = set()
    added_agents: list[str] = []
    for op in ops:
        assert set(op) == {"op", "path", "value"} and op["op"] == "add", op
        path, value = op["path"], op["value"]
        m = _SECRET_MOUNT.fullmatch(path)
        if path == "/metadata":
            assert pod.get("metadata") is None and value == {"annotations": {STATUS: "injected"}}, op
        elif path == "/metadata/annotations":
            assert (pod.get("metadata") or {}).get("annotations") is None and value == {STATUS: "injected"}, op
        elif path == "/metadata/annotations/kms.hanzo.ai~1status":
            assert value == "injected", op
        elif m:
            key, index = m.group(1), int(m.group(2))
            assert index < lengths[key], f"{path}: index beyond the original pod"
            target = spec[key][index]
            assert target.get("name") not in OUR_CONTAINERS
            mounts = [value] if m.group(3) else value
            assert isinstance(mounts, list) and len(mounts) == 1, op
            mount = mounts[0]
            assert set(mount) == {"name", "mountPath", "readOnly"} and mount["name"] == "kms-secrets", mount
            assert mount["readOnly"] is True, f"app container {target.get('name')} gets a writable mount"
            _check_mount_path(mount["mountPath"])
            app_mounts.add(mount["mountPath"])
        elif path in ("/spec/volumes", "/spec/volumes/-"):
            for v in (value if path == "/spec/volumes" else [value]):
                _check_volume(v)
        elif path in ("/spec/initContainers", "/spec/initContainers/0"):
            items = value if path == "/spec/initContainers" else [value]
            assert isinstance(items, list) and len(items) == 1, op
            agent_mounts.add(_check_agent(items[0], settings, OUR_CONTAINERS))
            added_agents.append(items[0]["name"])
            if items[0]["name"] == "kms-agent":
                assert items[0].get("restartPolicy") == "Always", "native sidecar must be restartable"
        elif path == "/spec/containers/-":
            agent_mounts.add(_check_agent(value, settings, ("kms-agent",)))
            added_agents.append("kms-agent")
        elif path == "/spec/shareProcessNamespace":
            assert value is True, op
        else:
            raise AssertionError(f"patch op outside the contract: {path}")
    if ops:
        assert ops[0]["path"].startswith("/metadata"), "the status mark must come first"
        assert added_agents and len(added_agents) == len(set(added_agents)) <= 2, added_agents
        # The agents write at one fixed path; every app container sees the files at one mount path.
        assert agent_mounts == {AGENT_MOUNT_PATH} and len(app_mounts) <= 1, (app_mounts, agent_mounts)


# -- leaks ---------------------------------------------------------------------------------------------

def assert_no_leaks(sources: Mapping[str, str | bytes], markers: Mapping[str, str]) -> int:
    """sources: name -> captured text; markers: label -> secret string. Returns bytes scanned."""
    assert markers, "no markers to look for"
    assert all(len(m) >= 8 for m in markers.values()), "markers must be distinctive"
    found = []
    scanned = 0
    for name, text in sources.items():
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        scanned += len(text)
        for label, marker in markers.items():
            if marker in text:
                found.append(f"{label} in {name}")
    assert not found, "secret material leaked: " + "; ".join(found[:20])
    return scanned


# -- webhook over HTTPS ----------------------------------------------------------------------------------

def make_ca(name: str = "test-ca") -> tuple[Any, Any]:
    """A self-signed test CA (made here with `cryptography`, independent of webhook/certs.py)
    -> (certificate, private key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca: tuple[Any, Any]) -> tuple[bytes, bytes, int]:
    """A localhost/127.0.0.1 server certificate signed by `ca` -> (cert PEM, key PEM, serial)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=12))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.serial_number


def make_tls(d: Path) -> tuple[Path, Path, str]:
    """A test CA and a leaf written to d/tls.crt and d/tls.key -> cert path, key path, CA PEM."""
    from cryptography.hazmat.primitives import serialization

    ca = make_ca("reliability-test-ca")
    cert, key, _ = make_leaf(ca)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / "tls.crt", d / "tls.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path, ca[0].public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class WebhookProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    ca_pem: str

    @classmethod
    def start(cls, tmp: Path, *extra: str, timeout: float = 30.0) -> "WebhookProcess":
        cert, key, ca_pem = make_tls(tmp / "tls")
        log_path = tmp / "webhook.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "injector", "webhook", "--host", "127.0.0.1", "--port", "0",
             "--tls-cert", str(cert), "--tls-key", str(key), *extra],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=open(tmp / "webhook.out", "wb"), stderr=open(log_path, "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in log_path.read_text(errors="replace").splitlines():
                if '"listening"' in line:
                    return cls(proc, int(json.loads(line)["port"]), log_path, ca_pem)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise AssertionError(f"webhook did not start: {log_path.read_text()[-2000:]}")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def connection(self, timeout: float = 30.0):
        import http.client

        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.ssl_context())

    def post(self, conn: Any, body: bytes, content_type: str | None = "application/json") -> tuple[int, bytes]:
        """POST /mutate over a kept-alive connection; reconnects once if the server closed it."""
        headers = {"Content-Type": content_type} if content_type else {}
        for attempt in (0, 1):
            try:
                conn.request("POST", "/mutate", body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, OSError) as exc:  # e.g. the server closed after a 413
                conn.close()
                if attempt:
                    raise AssertionError(f"webhook connection failed: {exc}") from None
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, str]:
        conn = self.connection()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# -- files on disk ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    files: dict[str, bytes]
    data_target: str
    data_inode: int
    version_inode: int


def snapshot(mount: Path) -> Snapshot:
    files = {}
    for name in sorted(os.listdir(mount)):
        if name.startswith(".."):
            continue
        p = mount / name
        if p.is_dir():
            for sub in sorted(os.listdir(p)):
                files[f"{name}/{sub}"] = (p / sub).read_bytes()
        else:
            files[name] = p.read_bytes()
    target = os.readlink(mount / "..data")
    return Snapshot(files, target, os.lstat(mount / "..data").st_ino, os.stat(mount / target).st_ino)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

