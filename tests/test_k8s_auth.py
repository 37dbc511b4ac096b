"""Kubernetes auth end to end: the real agent logs in with a projected service-account token file
(an RS256 JWT signed by a key pair made here; the dev KMS verifies it against the public key).
When kubelet rotates the token (a ..data symlink swap) the agent's next login reads the new file."""

from __future__ import annotations

import json
from pathlib import Path


from devkms.server import run_dev_kms
from tests.agent_support import (
    CHAT, ENV, PROJECT, SHARED, agent_args, make_jwt, read_folder, seed, spawn, wait_for, write_volume,
)

IDENTITY_ID = "6a1f0c2e-k8s-agent-tests"
AUDIENCE = "kms.hanzo.ai"
K8S_LOGIN = "POST /v1/auth/kubernetes-auth/login"


def write_token(directory: Path, jwt: str) -> Path:
    """The projected token volume, as kubelet rotates it."""
    write_volume(directory, {"token": jwt})
    return directory / "token"


def k8s_seed() -> dict:
    s = seed()
    s["identities"][0].update(id=IDENTITY_ID, kubernetes={"serviceAccounts": ["hanzo:*"]})
    return s


def k8s_env(token_path: Path) -> dict[str, str]:
    # auth/identity/token path come from the webhook's JSON config, as in a pod; flags add the rest
    return {"KMS_AGENT_CONFIG": json.dumps({"auth": "kubernetes", "identity_id": IDENTITY_ID, "token_path": str(token_path),
                                            "host": "http://unused.invalid/api", "project": PROJECT, "env": ENV,
                                            "sources": ["/chat"]})}


async def test_init_and_sidecar_log_in_with_the_token_file_and_follow_its_rotation(rsa_keys, tmp_path: Path) -> None:
    key, other, pem = rsa_keys
    async with run_dev_kms(k8s_seed(), k8s_public_key_pem=pem, k8s_audience=AUDIENCE, lockout_seconds=0.5) as kms:
        first = make_jwt(key)
        token = write_token(tmp_path / "sa", first)
        mount = tmp_path / "secrets"
        init = spawn(agent_args(kms.base_url, mount, tmp_path / "no-auth-dir", mode="init"), tmp_path, "init", env=k8s_env(token))
        assert await init.wait_exit() == 0, init.stderr()
        assert read_folder(mount) == {**SHARED, **CHAT}
        assert kms.stats()["routes"].get(K8S_LOGIN) == 1

        agent = spawn(agent_args(kms.base_url, mount, tmp_path / "no-auth-dir", "--refresh-interval", "5s"),
                      tmp_path, "sidecar", env=k8s_env(token))
        try:
            await wait_for(lambda: agent.events("first_sync"), what="sidecar first sync")
            assert [e["method"] for e in agent.events("kms_login")] == ["kubernetes-auth"]
            logins = kms.stats()["routes"][K8S_LOGIN]

            # Issue 12 point 7: kubelet rotates the token (every ~8 min for a 600 s token). The KMS
            # token from the last login stays valid: no login, no TokenReview, fetches go on.
            for i in range(2):
                write_token(tmp_path / "sa", make_jwt(key, sa=f"rotation-{i}"))
                await wait_for(lambda: len(agent.events("credentials_changed")) > i, timeout=30, what="the rotation seen")
                kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", f"VALUE-rotation-{i}")
                await wait_for(lambda: (mount / "API_KEY").read_text() == f"VALUE-rotation-{i}", timeout=30, what="a fetch after the rotation")
            assert kms.stats()["routes"][K8S_LOGIN] == logins
            assert {e["action"] for e in agent.events("credentials_changed")} == {"none: the next login reads the new file"}

            # kubelet swaps in a token KMS will not accept (signed by another key), and KMS drops the
            # agent's token: the login that follows reads the NEW file, so it fails, naming the
            # check, and the files stay.
            bad = make_jwt(other, sa="rotated")
            write_token(tmp_path / "sa", bad)
            await wait_for(lambda: len(agent.events("credentials_changed")) > 2, timeout=30, what="the bad token seen")
            assert kms.state.expire_tokens() >= 1
            await wait_for(lambda: agent.events("sync_failing"), timeout=30, what="login with the replaced token")
            failing = agent.events("sync_failing")[0]
            assert "signature" in failing["error"] and "status=401" in failing["error"], failing
            assert read_folder(mount) == {**SHARED, **CHAT, "API_KEY": "VALUE-rotation-1"}

            # kubelet rotates again to a good token: with no valid KMS token, the change wakes a
            # login with it at once, and the agent recovers.
            good = make_jwt(key, sa="rotated-again")
            write_token(tmp_path / "sa", good)
            kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-after-token-rotation")
            await wait_for(lambda: agent.events("sync_recovered"), timeout=30, what="recovery with the new token")
            await wait_for(lambda: (mount / "API_KEY").read_text() == "VALUE-after-token-rotation", timeout=20, what="fresh value")
            stats = kms.stats()
            assert stats["routes"][K8S_LOGIN] >= logins + 2  # one failed (bad token), one good
            assert len(agent.events("credentials_changed")) >= 2
            assert agent.events("credentials_changed")[-1]["action"] == "fresh login with the new credentials"
            logs = init.stderr() + agent.stderr()
            for jwt in (first, bad, good):
                assert jwt not in logs and jwt.split(".")[2] not in logs
        finally:
            agent.stop()


async def test_missing_token_file_fails_init_naming_the_file(rsa_keys, tmp_path: Path) -> None:
    _, _, pem = rsa_keys
    async with run_dev_kms(k8s_seed(), k8s_public_key_pem=pem, k8s_audience=AUDIENCE) as kms:
        token = tmp_path / "sa" / "token"
        init = spawn(agent_args(kms.base_url, tmp_path / "secrets", tmp_path / "x", "--init-timeout", "1s", mode="init"),
                     tmp_path, "init", env=k8s_env(token))
        assert await init.wait_exit() == 1
        assert str(token) in init.stderr() and "service account token" in init.stderr()
        assert kms.stats()["routes"].get(K8S_LOGIN, 0) == 0
