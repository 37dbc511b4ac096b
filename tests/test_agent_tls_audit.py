"""The real agent against a dev KMS behind TLS with a private CA (issue 12 point 10), and the
audit trail: every KMS request names the pod in its User-Agent, and KMS records it (point 12)."""

from __future__ import annotations

import json
import ssl
import tomllib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from devkms.api import build_app
from devkms.audit import AuditLog
from devkms.state import DevKms
from injector.kms.client import VERSION, pod_user_agent
from tests.agent_support import CHAT, CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, ROOT, SHARED, agent_args, read_folder, seed, spawn, write_credentials
from tests.test_kms_http import _make_ca_and_cert

POD = {"KMS_POD_NAME": "chat-7d9f5c-x2x4q", "KMS_POD_NAMESPACE": "hanzo"}
UA = f"kms-injector-agent/{VERSION} (pod=hanzo/chat-7d9f5c-x2x4q)"


@asynccontextmanager
async def tls_dev_kms(tmp: Path, audit: Path) -> AsyncIterator[tuple[str, Path, DevKms]]:
    """The dev KMS app served over TLS with a certificate from a CA made here: (https base URL, CA file, state)."""
    ca_file, cert_file, key_file = _make_ca_and_cert(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    state = DevKms(seed())
    log = AuditLog(audit)
    runner = web.AppRunner(build_app(state, audit=log), access_log=None, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/api", ca_file, state
    finally:
        await runner.cleanup()
        log.close()


def config_env(host: str, ca_file: str) -> dict[str, str]:
    # as the webhook passes it: the AgentConfig JSON (ca_file is the mounted bundle), plus the
    # downward-API pod name and namespace
    return {"KMS_AGENT_CONFIG": json.dumps({"host": host, "project": PROJECT, "env": ENV, "sources": ["/chat"],
                                            **({"ca_file": ca_file} if ca_file else {})}), **POD}


async def test_agent_trusts_a_private_ca_only_through_ca_file_and_names_its_pod(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    async with tls_dev_kms(tmp_path, audit) as (host, ca_file, _state):
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        mount = tmp_path / "secrets"

        # without the bundle the system CAs cannot verify KMS: init fails, saying why
        plain = spawn(agent_args(host, mount, tmp_path / "auth", "--init-timeout", "2s", mode="init"),
                      tmp_path, "no-ca", env=config_env(host, ""))
        assert await plain.wait_exit() == 1
        assert "TLS verification of 127.0.0.1" in plain.stderr() and "local issuer" in plain.stderr(), plain.stderr()[-800:]
        assert read_folder(mount) == {}

        # a bundle that is not there: the error names the file
        missing = spawn(agent_args(host, mount, tmp_path / "auth", "--init-timeout", "2s", mode="init"),
                        tmp_path, "missing-ca", env=config_env(host, str(tmp_path / "nope.pem")))
        assert await missing.wait_exit() == 1
        assert f"cannot load the CA bundle {tmp_path / 'nope.pem'}" in missing.stderr(), missing.stderr()[-800:]

        # with ca_file: verified, fetched, written
        init = spawn(agent_args(host, mount, tmp_path / "auth", mode="init"), tmp_path, "with-ca", env=config_env(host, str(ca_file)))
        assert await init.wait_exit() == 0, init.stderr()[-1500:]
        assert read_folder(mount) == {**SHARED, **CHAT}

    reads = [json.loads(line) for line in audit.read_text().splitlines()]
    assert reads, "the dev KMS audited no read"
    assert {r["path"] for r in reads} == {"/chat"} and {r["status"] for r in reads} == {200}
    assert {r["user_agent"] for r in reads} == {UA}  # KMS's audit log says which pod read /chat
    for out in (plain, missing, init):
        assert CLIENT_SECRET not in out.stderr()


def test_pod_user_agent() -> None:
    assert pod_user_agent(POD) == UA
    assert pod_user_agent({}) == f"kms-injector-agent/{VERSION}"
    # nothing that is not a DNS name reaches the header (a bad env var must not inject one)
    for bad in ("chat\r\nX-Evil: 1", "chat pod", "", "-chat", "x" * 254, "chat/../x", "ćhat"):
        assert pod_user_agent({**POD, "KMS_POD_NAME": bad}) == f"kms-injector-agent/{VERSION}", bad
        assert pod_user_agent({**POD, "KMS_POD_NAMESPACE": bad}) == f"kms-injector-agent/{VERSION}", bad


def test_version_matches_the_distribution() -> None:
    assert VERSION == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
