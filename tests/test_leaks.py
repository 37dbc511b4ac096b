"""Leak check (issue 6 item 5): scenarios run with distinct marker strings as secret values,
client secrets and tokens; then every captured output is scanned for every marker.

The fault, crash and hostile-input tests each scan their own outputs the same way
(reliability_support.assert_no_leaks); this file adds the flows where a value is most tempted to
escape: the dev KMS as a real process (stderr + audit log) answering logins, renewals, reads,
writes, wrong secrets and forged tokens; agents failing in init (wrong secret, a template naming
a missing key: the one-line failure), a sidecar living through a rotation, a hostile key, a
truncated body (half of a real response, values included), an expired token; agent metrics.
Markers for tokens are read from the dev KMS's state (in-process) or from the login answers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import yaml

from devkms.server import run_dev_kms
from tests.agent_support import agent_args, free_port, metric, metrics, read_folder, spawn, wait_for, write_credentials
from tests.conftest import start_dev_server

from .reliability_support import assert_no_leaks

PROJECT, ENV = "secrets-639-c", "prod"
TAG = secrets.token_hex(4)
VALUES = {
    "/chat": {"DATABASE_URL": f"postgres://chat:LEAKVAL-db-{TAG}@db/chat", "API_KEY": f"LEAKVAL-api-{TAG}",
              "JWT_SECRET": f"LEAKVAL-jwt-{TAG}"},
    "/shared": {"SENTRY_DSN": f"https://LEAKVAL-sentry-{TAG}@sentry/1"},
}
ROTATED = f"LEAKVAL-rotated-{TAG}"
HOSTILE_VALUE = f"LEAKVAL-hostile-{TAG}"
WRITTEN_VIA_API = f"LEAKVAL-api-write-{TAG}"
SECRETS = {"client secret": f"LEAKCS-main-{TAG}", "other identity's secret": f"LEAKCS-other-{TAG}",
           "wrong secret": f"LEAKCS-wrong-{TAG}"}
FORGED_TOKEN = f"LEAKTOK-forged-{TAG}"


def leak_seed() -> dict:
    access = [{"project": PROJECT, "environments": ["*"], "paths": ["/**"], "read": True, "write": True}]
    return {
        "identities": [
            {"name": "main", "clientId": "leak-main", "clientSecret": SECRETS["client secret"], "access": access},
            {"name": "other", "clientId": "leak-other", "clientSecret": SECRETS["other identity's secret"], "access": access},
        ],
        "projects": {PROJECT: {"environments": {ENV: {"folders": {
            "/shared": {"secrets": dict(VALUES["/shared"])},
            "/chat": {"imports": ["/shared"], "secrets": dict(VALUES["/chat"])},
        }}}}},
    }


def value_markers() -> dict[str, str]:
    out = {f"value {k}": v for folder in VALUES.values() for k, v in folder.items()}
    out.update({"rotated value": ROTATED, "hostile key's value": HOSTILE_VALUE, "value written via API": WRITTEN_VIA_API})
    out.update(SECRETS)
    out["forged token"] = FORGED_TOKEN
    return out


async def test_agent_flows_never_leak_values_secrets_or_tokens(tmp_path: Path, capfd) -> None:
    audit = tmp_path / "audit.jsonl"
    tokens: set[str] = set()
    async with run_dev_kms(leak_seed(), audit_log=audit, lockout_seconds=60) as kms:
        def collect() -> None:
            tokens.update(kms.state.tokens)

        write_credentials(tmp_path / "auth", "leak-main", SECRETS["client secret"])
        write_credentials(tmp_path / "auth-wrong", "leak-other", SECRETS["wrong secret"])
        url = kms.base_url

        async def init_ok() -> dict:
            p = spawn(agent_args(url, tmp_path / "m-init", tmp_path / "auth", mode="init"), tmp_path, "init-ok")
            assert await p.wait_exit(60) == 0, p.stderr()[-1500:]
            # DATABASE_URL: the sidecar flow below rotates API_KEY concurrently.
            assert read_folder(tmp_path / "m-init")["DATABASE_URL"] == VALUES["/chat"]["DATABASE_URL"]
            return {"init ok": p.stderr() + p.stdout()}

        async def init_wrong_secret() -> dict:
            p = spawn(agent_args(url, tmp_path / "m-wrong", tmp_path / "auth-wrong", "--init-timeout", "3s", mode="init"), tmp_path, "init-wrong")
            assert await p.wait_exit(60) == 1
            assert "init failed" in p.stderr()
            return {"init wrong secret": p.stderr() + p.stdout()}

        async def init_bad_template() -> dict:
            p = spawn(agent_args(url, tmp_path / "m-tpl", tmp_path / "auth", "--init-timeout", "3s", "--template",
                                 "app.env=DB=${DATABASE_URL}\nKEY=${API_KEY}\nX=${NOT_IN_KMS}", mode="init"), tmp_path, "init-template")
            assert await p.wait_exit(60) == 1
            assert "NOT_IN_KMS" in p.stderr()  # the failure names the missing key
            return {"init bad template": p.stderr() + p.stdout()}

        async def sidecar() -> dict:
            port = free_port()
            mount = tmp_path / "m-side"
            p = spawn(agent_args(url, mount, tmp_path / "auth", "--refresh-interval", "5s", "--health-port", str(port)), tmp_path, "sidecar")
            try:
                await wait_for(lambda: p.events("first_sync"), 30, "first sync")
                collect()
                kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", ROTATED)
                kms.set_secret(PROJECT, ENV, "/chat", "../../escape", HOSTILE_VALUE)
                await wait_for(lambda: (mount / "API_KEY").read_text() == ROTATED, 30, "rotation")
                # Half of a real response (values in it) then a cut connection.
                async with aiohttp.ClientSession() as s:
                    await (await s.post(f"{url}/_dev/faults", json={"body": "truncate", "path": "/v3/secrets"})).release()
                    kms.set_secret(PROJECT, ENV, "/chat", "JWT_SECRET", ROTATED + "-2")
                    await wait_for(lambda: _failures(port), 30, "a truncated answer")
                    await (await s.delete(f"{url}/_dev/faults")).release()
                    kms.state.expire_tokens()  # the next fetch gets 403 TokenError and logs in again
                await wait_for(lambda: (mount / "JWT_SECRET").read_text() == ROTATED + "-2", 30, "recovery")
                collect()
                body = await metrics(port)
                assert metric(body, "kms_agent_sync_failures_total") >= 1 and metric(body, "kms_agent_changes_total") >= 2
                return {"sidecar": p.stderr() + p.stdout(), "sidecar metrics": body}
            finally:
                p.stop()
                collect()

        async def poll_tokens() -> None:
            for _ in range(600):
                collect()
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll_tokens())
        try:
            parts = await asyncio.gather(init_ok(), init_wrong_secret(), init_bad_template(), sidecar())
        finally:
            poller.cancel()
        collect()
    captured = capfd.readouterr()
    sources = {k: v for part in parts for k, v in part.items()}
    sources["dev KMS logs"] = captured.out + captured.err
    sources["audit log"] = audit.read_text()
    assert sources["audit log"].count("\n") >= 5, "no audit lines were written"
    assert len(tokens) >= 3, tokens and len(tokens)
    markers = value_markers()
    markers.update({f"token #{i}": t for i, t in enumerate(sorted(tokens))})
    scanned = assert_no_leaks(sources, markers)
    print(json.dumps({"leak_check": "agent flows", "sources": len(sources), "bytes": scanned, "markers": len(markers)}))


async def _failures(port: int) -> bool:
    return metric(await metrics(port), "kms_agent_sync_failures_total") >= 1


def _call(base: str, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dev_server_process_never_logs_values_secrets_or_tokens(tmp_path: Path) -> None:
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text(yaml.safe_dump(leak_seed()))
    audit = tmp_path / "audit.jsonl"
    srv = start_dev_server(["--seed", str(seed_file), "--test-hooks", "--audit-log", str(audit), "--token-ttl", "60"],
                           tmp_path / "dev-server.stderr")
    tokens: list[str] = []
    error_bodies: list[bytes] = []
    try:
        base = srv.base_url
        q = "?" + urllib.parse.urlencode({"workspaceSlug": PROJECT, "environment": ENV, "secretPath": "/chat", "include_imports": "true"})
        for cid, secret in (("leak-main", SECRETS["client secret"]), ("leak-other", SECRETS["other identity's secret"])):
            status, body = _call(base, "POST", "/v1/auth/universal-auth/login", {"clientId": cid, "clientSecret": secret})
            assert status == 200, body
            tokens.append(json.loads(body)["accessToken"])
        status, body = _call(base, "GET", "/v3/secrets/raw" + q, token=tokens[0])
        assert status == 200 and VALUES["/chat"]["API_KEY"].encode() in body  # the values do travel, to the caller only
        status, body = _call(base, "POST", "/v1/auth/token/renew", {"accessToken": tokens[0]})
        assert status == 200
        tokens.append(json.loads(body)["accessToken"])
        status, _ = _call(base, "PATCH", "/v3/secrets/raw/API_KEY", {"workspaceSlug": PROJECT, "environment": ENV, "secretPath": "/chat",
                                                                      "secretValue": WRITTEN_VIA_API}, token=tokens[-1])
        assert status == 200
        # Refusals: wrong secret (three times: lockout), forged and revoked tokens, bad bodies that quote values.
        for _ in range(3):
            status, body = _call(base, "POST", "/v1/auth/universal-auth/login", {"clientId": "leak-other", "clientSecret": SECRETS["wrong secret"]})
            assert status == 401
            error_bodies.append(body)
        for method, path, body, token in (
            ("GET", "/v3/secrets/raw" + q, None, FORGED_TOKEN),
            ("POST", "/v1/auth/token/renew", {"accessToken": FORGED_TOKEN}, None),
            ("POST", "/v1/auth/token/revoke", {"accessToken": tokens[1]}, None),
            ("GET", "/v3/secrets/raw" + q, None, tokens[1]),  # revoked
            ("POST", "/v3/secrets/raw/API_KEY", {"workspaceSlug": PROJECT, "environment": ENV, "secretPath": "/chat",
                                                 "secretValue": WRITTEN_VIA_API}, tokens[-1]),  # exists -> 400
            ("PATCH", "/v3/secrets/raw/API_KEY", {"workspaceSlug": PROJECT, "environment": ENV, "secretPath": "/chat",
                                                  "secretValue": 12345, "secretComment": SECRETS["wrong secret"]}, tokens[-1]),
            ("POST", "/v1/auth/universal-auth/login", {"clientId": "leak-main", "clientSecret": [SECRETS["wrong secret"]]}, None),
        ):
            status, body = _call(base, method, path, body, token)
            assert status < 500, (method, path, status, body[:200])  # answered, never a 500
            error_bodies.append(body)
        _call(base, "POST", "/_dev/faults", {"status": 500, "count": 1})
        status, body = _call(base, "GET", "/v3/secrets/raw" + q, token=tokens[-1])
        assert status == 500
        error_bodies.append(body)
        stats = _call(base, "GET", "/_dev/stats")[1]
    finally:
        rc = srv.stop()
        srv.proc.stdout.close()
    assert rc == 0
    sources = {"dev-server stderr": srv.stderr(), "dev-server audit": audit.read_text(), "error bodies": b"\n".join(error_bodies),
               "dev stats": stats}
    assert sources["dev-server audit"].count("\n") >= 5  # reads, writes and refused writes are audited
    markers = value_markers()
    markers.update({f"token #{i}": t for i, t in enumerate(tokens)})
    scanned = assert_no_leaks(sources, markers)
    print(json.dumps({"leak_check": "dev-server process", "bytes": scanned, "markers": len(markers)}))
