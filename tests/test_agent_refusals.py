"""Refused credentials are remembered across restarts (issue 12 item 9): real agent processes
against the dev KMS, whose identities lock after 3 wrong logins in a row.

An init container in CrashLoopBackOff restarts again and again with the same wrong Secret, then
the sidecar starts: all of them together spend at most 2 wrong logins, so the shared identity is
never locked; once the Secret is fixed, the sidecar logs in at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devkms.server import run_dev_kms
from injector.refusals import FILE_NAME
from tests.agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, IDENTITY, SHARED, agent_args, free_port, read_folder, seed, spawn, wait_for,
    write_credentials,
)

LOGIN = "POST /v1/auth/universal-auth/login"
WRONG = "wrong-secret-crashloop-4242"


@pytest.fixture
async def kms():
    async with run_dev_kms(seed()) as server:
        yield server


def wrong_logins(kms) -> int:
    return kms.stats()["statuses"].get("401", 0)


async def test_restarted_agents_spend_at_most_two_wrong_logins_then_log_in_once_fixed(kms, tmp_path: Path) -> None:
    auth, mount = tmp_path / "auth", tmp_path / "secrets"
    write_credentials(auth, CLIENT_ID, WRONG)
    # The init container, restarted by kubelet after every exit 1 (CrashLoopBackOff).
    for run in range(4):
        init = spawn(agent_args(kms.base_url, mount, auth, "--init-timeout", "1s", mode="init"), tmp_path, f"init{run}")
        assert await init.wait_exit(30) == 1, init.stderr()[-2000:]
        assert wrong_logins(kms) <= 2, (run, kms.stats())
        assert WRONG not in init.stderr()
    assert wrong_logins(kms) == 2 and kms.stats()["routes"][LOGIN] == 2
    assert not kms.state.locked_until, "the identity was locked"
    last = [ln for ln in init.stderr().splitlines() if not ln.startswith("{")]
    assert len(last) == 1 and "refused" in last[0], init.stderr()[-2000:]
    assert init.events("credentials_rejected")[0]["remembered"] is True

    # What is remembered: a salted digest and a count on the memory volume, never the secret; not
    # a key the app sees, and not swept by the writer's repair (the sidecar repairs at start).
    record = json.loads((mount / FILE_NAME).read_text())
    assert record["refusals"] == 2 and set(record) == {"v", "salt", "digest", "refusals", "at"}
    assert WRONG not in (mount / FILE_NAME).read_text()
    assert read_folder(mount) == {}

    port = free_port()
    sidecar = spawn(agent_args(kms.base_url, mount, auth, "--refresh-interval", "5s", "--health-port", str(port)),
                    tmp_path, "sidecar")
    try:
        await wait_for(lambda: sidecar.events("credentials_rejected"), 30, "the sidecar to park the refused credentials")
        assert sidecar.events("credentials_rejected")[0]["remembered"] is True
        assert (mount / FILE_NAME).exists()
        await wait_for(lambda: sidecar.events("health_listening"), 30, "health server")
        assert wrong_logins(kms) == 2

        write_credentials(auth, CLIENT_ID, CLIENT_SECRET)  # the Secret gets fixed
        await wait_for(lambda: sidecar.events("first_sync"), 30, "a login with the fixed credentials")
        assert read_folder(mount) == {**SHARED, **CHAT}
        assert kms.stats()["routes"][LOGIN] == 3 and wrong_logins(kms) == 2
        assert not os.path.lexists(mount / FILE_NAME), "the refusals are forgotten after a success"
        assert not kms.state.locked_until
        assert WRONG not in sidecar.stderr() and CLIENT_SECRET not in sidecar.stderr()
    finally:
        sidecar.stop()
    assert IDENTITY  # the seed's identity is the one all these agents share


async def test_changed_credentials_are_tried_even_after_refusals(kms, tmp_path: Path) -> None:
    """The memory is per credentials: a different (also wrong) Secret gets its own two tries, and
    the record of the old one is replaced, not added to."""
    auth, mount = tmp_path / "auth", tmp_path / "secrets"
    write_credentials(auth, CLIENT_ID, WRONG)
    for run in range(3):
        init = spawn(agent_args(kms.base_url, mount, auth, "--init-timeout", "1s", mode="init"), tmp_path, f"a{run}")
        assert await init.wait_exit(30) == 1
    assert wrong_logins(kms) == 2 and kms.state.failed_logins[IDENTITY] == 2
    write_credentials(auth, CLIENT_ID, WRONG + "-other")
    init = spawn(agent_args(kms.base_url, mount, auth, "--init-timeout", "1s", mode="init"), tmp_path, "b")
    assert await init.wait_exit(30) == 1
    assert wrong_logins(kms) == 3  # one more try for the new credentials (which, here, locks the identity:
    # the dev KMS counts wrong logins per identity, whatever the secret; the agent cannot know
    # that another Secret's refusals count against the same identity)
    assert json.loads((mount / FILE_NAME).read_text())["refusals"] == 1
