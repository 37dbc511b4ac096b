"""Webhook -> agent, end to end: the containers the webhook injects run as they are written.

A real AdmissionReview (from kube-apiserver v1.28.7) goes through `review()`; the patch is applied
with jsonpatch; then the injected init container and sidecar are started as real processes with
exactly their `command`, `args` and `KMS_AGENT_CONFIG`, against the dev KMS. Only what a pod gets
from kubelet is stood in for: the Secret volume (`--credentials-dir`, a kubelet-style folder),
the memory volume's path (the mount-path annotation) and the health port (free on this machine).
"""

from __future__ import annotations

import base64
import copy
import json
import sys
from pathlib import Path

import jsonpatch

from devkms.server import run_dev_kms
from injector.config import AgentConfig
from webhook.annotations import AGENT_MOUNT_PATH
from webhook.mutate import review
from webhook.settings import settings_from_dict

from .agent_support import (
    CHAT, CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, ROOT, free_port, read_folder, seed, spawn, wait_for, write_credentials,
)

FIXTURE = ROOT / "tests" / "fixtures" / "admission" / "deployment-pod-generatename-signal.json"
_SCRIPT = Path(sys.executable).parent


APP_MOUNT = "/opt"


def _injected_pod(base_url: str) -> dict:
    body = json.loads(FIXTURE.read_text())
    pod = body["request"]["object"]
    pod["metadata"]["annotations"] = {
        "kms.hanzo.ai/path": "/chat",
        "kms.hanzo.ai/project": PROJECT,
        "kms.hanzo.ai/env": ENV,
        "kms.hanzo.ai/mount-path": APP_MOUNT,
        "kms.hanzo.ai/refresh-interval": "5s",
        "kms.hanzo.ai/signal": "SIGHUP",
    }
    settings = settings_from_dict({"host": base_url, "allowed_hosts": [base_url]})
    result = review(body, settings)
    assert result.decision == "injected", result.response
    patch = json.loads(base64.b64decode(result.response["response"]["patch"]))
    return jsonpatch.apply_patch(copy.deepcopy(pod), patch)


def _argv_env(container: dict, creds: Path, mount: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    command = container["command"]
    assert command == ["kms-injector"], command  # the agent image has it on PATH
    # The agents mount the volume at one fixed path, never the app's (issue 12 item 5).
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kms-secrets"] == AGENT_MOUNT_PATH and APP_MOUNT not in mounts.values(), mounts
    argv = [str(_SCRIPT / command[0]), *container["args"], "--credentials-dir", str(creds), "--mount-path", str(mount), *extra]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return argv, env


async def test_injected_containers_run_as_written(tmp_path: Path) -> None:
    async with run_dev_kms(seed=seed()) as kms:
        mount, creds = tmp_path / "kms-secrets", tmp_path / "kms-auth"
        write_credentials(creds, CLIENT_ID, CLIENT_SECRET)
        pod = _injected_pod(kms.base_url)
        init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "kms-agent-init")
        sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "kms-agent")
        assert pod["spec"]["initContainers"][0] is init  # ours first: later init containers can read secrets
        app = next(c for c in pod["spec"]["containers"] if c["name"] == "commerce")
        assert {"name": "kms-secrets", "mountPath": APP_MOUNT, "readOnly": True} in app["volumeMounts"]

        argv, env = _argv_env(init, creds, mount)
        init_cfg = AgentConfig.from_json(env["KMS_AGENT_CONFIG"])
        assert init_cfg.mount_path == AGENT_MOUNT_PATH and init_cfg.signal == "" and init_cfg.command == []
        proc = spawn(argv, tmp_path, "init", env)
        assert await proc.wait_exit(60) == 0, proc.stderr()
        assert not proc.events("signal_no_process")  # the init container notifies nobody (issue 12 item 3)
        assert read_folder(mount)["DATABASE_URL"] == CHAT["DATABASE_URL"]
        assert (mount / "DATABASE_URL").stat().st_mode & 0o777 == 0o444

        port = free_port()
        argv, env = _argv_env(sidecar, creds, mount, "--health-port", str(port))
        side = spawn(argv, tmp_path, "sidecar", env)
        try:
            await wait_for(lambda: side.events("first_sync"), 60, "sidecar first sync")
            assert side.events("first_sync")[0]["changed"] is False  # the init container's files stand
            kms.set_secret(PROJECT, ENV, "/chat", "DATABASE_URL", "postgres://chat:VALUE-rotated-e2e@db/chat")
            await wait_for(lambda: read_folder(mount).get("DATABASE_URL") == "postgres://chat:VALUE-rotated-e2e@db/chat",
                           30, "rotated value on disk")
            # The signal target the webhook chose (the app's command) is not running here: a warning.
            await wait_for(lambda: side.events("signal_no_process"), 30, "missing-process warning")
            assert side.events("signal_no_process")[0]["process"] == "commerce"  # basename of the app's command
        finally:
            side.stop()
        assert side.popen.returncode == 0
        for text in (proc.stderr(), side.stderr()):
            assert CLIENT_SECRET not in text and "VALUE-rotated-e2e" not in text and CHAT["DATABASE_URL"] not in text
