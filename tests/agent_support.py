"""Helpers for the agent tests: run the real agent as a subprocess, read its files and logs.

Waits poll with asyncio.sleep (the dev KMS runs on the test's event loop, so a blocking sleep
would starve it) and generous deadlines: the CI machine is small and busy.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "kms-injector"
AGENT = [str(_SCRIPT), "agent"] if _SCRIPT.exists() else [sys.executable, "-m", "injector", "agent"]
APP = ROOT / "examples" / "app.py"

PROJECT, ENV = "secrets-639-c", "prod"
CLIENT_ID, CLIENT_SECRET = "agent-test-client", "agent-test-secret-1f2e3d"
IDENTITY = "agent-tests"

# Distinct marker values: a leak check can grep for them in every captured output.
CHAT = {"DATABASE_URL": "postgres://chat:VALUE-db-5a1c@db/chat", "API_KEY": "VALUE-api-77b2", "JWT_SECRET": "VALUE-jwt-c3d4"}
SHARED = {"SENTRY_DSN": "https://VALUE-sentry-91@sentry/1", "LOG_LEVEL": "info"}
BILLING = {"STRIPE_KEY": "VALUE-stripe-e5f6"}


def seed() -> dict[str, Any]:
    return {
        "identities": [{
            "name": IDENTITY, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
            "access": [{"project": PROJECT, "environments": ["*"], "paths": ["/**"], "read": True, "write": True}],
        }],
        "projects": {PROJECT: {"environments": {ENV: {"folders": {
            "/shared": {"secrets": dict(SHARED)},
            "/chat": {"imports": ["/shared"], "secrets": dict(CHAT)},
            "/billing": {"secrets": dict(BILLING)},
        }}}}},
    }


def write_volume(directory: Path, files: dict[str, str]) -> None:
    """Update `directory` the way kubelet updates a Secret, ConfigMap or projected volume: a new
    `..<ts>` dir, a `..data` symlink renamed over the old one, `NAME -> ..data/NAME` links."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
    version.mkdir()
    for name, text in files.items():
        (version / name).write_text(text)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.symlink(version.name, tmp)
    os.rename(tmp, directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old:
        import shutil

        shutil.rmtree(directory / old, ignore_errors=True)


def write_credentials(directory: Path, client_id: str, client_secret: str) -> None:
    """The universal-auth Secret volume (`clientId`, `clientSecret`), as kubelet writes it."""
    write_volume(directory, {"clientId": client_id, "clientSecret": client_secret})


def make_jwt(key: Any, sa: str = "chat", ttl: int = 600, audience: str = "kms.hanzo.ai", **claims: Any) -> str:
    """An RS256 service-account token like kube-apiserver issues, signed with `key`."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    payload = {"iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:hanzo:{sa}",
               "aud": [audience], "iat": now, "nbf": now, "exp": now + ttl, **claims}
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}"


def read_folder(root: Path) -> dict[str, str]:
    """What an app sees: KEY and NAME/KEY files, not the ..data machinery."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for name in sorted(os.listdir(root)):
        if name.startswith(".."):
            continue
        p = root / name
        if p.is_dir():
            out.update({f"{name}/{k}": v for k, v in read_folder(p).items()})
        else:
            out[name] = p.read_text()
    return out


async def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.01) -> None:
    """Blocking twin of `wait_for`, for tests with no event loop to keep serving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send `sig`, wait up to `timeout`, then SIGKILL: a test never leaves a process behind."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    popen: subprocess.Popen
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if name is None or rec.get("event") == name:
                    out.append(rec)
        return out

    async def wait_exit(self, timeout: float = 30.0) -> int:
        await wait_for(lambda: self.popen.poll() is not None, timeout, "process exit")
        return self.popen.returncode

    def stop(self) -> None:
        stop_process(self.popen, timeout=5)


def spawn(argv: list[str], tmp: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    full_env = {k: v for k, v in os.environ.items() if k != "KMS_AGENT_CONFIG"}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    popen = subprocess.Popen(argv, stdout=open(out, "w"), stderr=open(err, "w"), env=full_env, cwd=str(ROOT))
    return Proc(popen, out, err)


def agent_args(host: str, mount: Path, creds: Path, *extra: str, mode: str = "sidecar", paths: tuple[str, ...] = ("/chat",)) -> list[str]:
    argv = [*AGENT, "--mode", mode, "--host", host, "--project", PROJECT, "--env", ENV,
            "--mount-path", str(mount), "--credentials-dir", str(creds)]
    for p in paths:
        argv += ["--path", p]
    return argv + list(extra)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    """http_get off the event loop (the loop also serves the dev KMS)."""
    return await asyncio.get_running_loop().run_in_executor(None, http_get, url)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not in output")


async def metrics(port: int) -> str:
    status, body = await aget(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return body


def app_reloads(app: Proc) -> list[str]:
    return [line for line in app.stdout().splitlines() if "on SIGHUP" in line]


def app_name() -> str:
    """A unique process name per test (<= 15 bytes), so parallel runs never signal each other."""
    return "kmsapp-" + secrets.token_hex(4)


async def serve_app(app: Any) -> tuple[Any, int]:
    """Start an aiohttp app (a deliberately odd KMS) on 127.0.0.1, port 0: (runner, port)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def init_then_app(base_url: str, tmp: Path) -> tuple[Path, Proc, str]:
    """As in a pod: the init container writes the files first, then the example app starts.
    Returns (mount, app, the app's process name for --signal-process)."""
    mount = tmp / "secrets"
    write_credentials(tmp / "auth", CLIENT_ID, CLIENT_SECRET)
    init = spawn(agent_args(base_url, mount, tmp / "auth", mode="init"), tmp, "init")
    assert await init.wait_exit() == 0, init.stderr()
    name = app_name()
    return mount, spawn([sys.executable, str(APP), str(mount)], tmp, "app", env={"KMS_APP_NAME": name}), name
