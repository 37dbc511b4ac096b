"""Shared fixtures: a dev KMS in-process (`dev_kms`, `dev_kms_factory`) and as a real subprocess
(`dev_server_process`). The tiny seed is devkms.tiny_seed() (see its docstring)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkms import run_dev_kms, tiny_seed
from tests.agent_support import stop_process

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "kms-injector"
KMS_INJECTOR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "injector"]


@pytest.fixture
def kms_seed() -> dict:
    """The tiny test seed (a fresh dict per test; override this fixture to change dev_kms's seed)."""
    return tiny_seed()


@pytest.fixture
async def dev_kms(kms_seed: dict):
    """A running in-process dev KMS (DevKmsServer) with the tiny seed: .base_url, .state, .set_secret()..."""
    async with run_dev_kms(seed=kms_seed) as kms:
        yield kms


@pytest.fixture
async def dev_kms_factory():
    """`kms = await dev_kms_factory(seed=..., token_ttl=2, rate_limit=5, ...)`: run_dev_kms with any
    options; every server started is stopped at teardown."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(**kw: Any):
            kw.setdefault("seed", tiny_seed())
            return await stack.enter_async_context(run_dev_kms(**kw))

        yield start


@dataclass
class DevServerProcess:
    proc: subprocess.Popen
    base_url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        return stop_process(self.proc, sig, timeout)


def start_dev_server(args: list[str], stderr_path: Path, timeout: float = 30) -> DevServerProcess:
    """Start `kms-injector dev-server --port 0 ARGS` and read the URL line it prints first."""
    err = open(stderr_path, "w")
    proc = subprocess.Popen([*KMS_INJECTOR, "dev-server", "--port", "0", *args], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise AssertionError(f"dev-server printed no URL line (exit {proc.returncode}); stderr:\n{stderr_path.read_text()[-2000:]}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                continue
            line += chunk
    return DevServerProcess(proc, line.decode().strip(), stderr_path)


@pytest.fixture
def dev_server_process(tmp_path: Path):
    """Factory: `srv = dev_server_process("--seed", path, "--test-hooks")` -> DevServerProcess with
    .base_url, .proc, .stderr(), .stop(). Processes still running at teardown get SIGTERM."""
    started: list[DevServerProcess] = []

    def start(*args: str, timeout: float = 30) -> DevServerProcess:
        srv = start_dev_server(list(args), tmp_path / f"dev-server-{len(started)}.stderr", timeout)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        if srv.proc.stdout:
            srv.proc.stdout.close()


@pytest.fixture(scope="session")
def rsa_keys():
    """(signing key, an unrelated key, the signing key's public PEM) for service-account JWTs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, other, pem
