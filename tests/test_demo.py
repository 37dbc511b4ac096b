"""`kms-injector demo` end to end: it shows the rotation reaching the app, and stops what it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.agent_support import AGENT, ROOT

DEMO = [AGENT[0], "demo"] if AGENT[0].endswith("kms-injector") else [*AGENT[:-1], "demo"]


def _port_closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port)) != 0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _survivors(marker: str) -> list[str]:
    """Processes whose command line mentions `marker` (the test's own scratch folder)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and not _gone(int(pid)):
            out.append(f"{pid}: {cmd[:120]}")
    return out


def test_demo_rotates_a_secret_and_the_app_reloads(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    proc = subprocess.run([*DEMO, "--workdir", str(workdir)], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"\[2\] agent --mode init: .* in \d+ ms \(exit 0\)", out)
    assert "first sync found the same content: no write, no signal" in out
    swap = re.search(r"\.\.data: (\.\.\S+) -> (\.\.\S+)", out)
    assert swap and swap.group(1) != swap.group(2)
    assert re.search(r"app: reload #1 on SIGHUP: .*\(changed\)", out)
    assert "reload #2" not in out
    # the offline injection step: same mutation as the webhook
    assert "initContainers: kms-agent-init" in out and "containers:     chat, kms-agent" in out
    assert "kms.hanzo.ai/status: injected" in out
    # the relay step: two agents on two folders with a 60 s poll; the rotation reaches only its folder's
    # agent, in about the relay's 2 s poll (the deadline leaves room for a busy CI machine, not for 54 s)
    relay = re.search(r"rotated (\S+) in (/\S+): its agent's \.\.data (\.\.\S+) -> (\.\.\S+) ([\d.]+) s after", out)
    assert relay and relay.group(3) != relay.group(4), out
    assert float(relay.group(5)) < 30
    assert re.search(r"two sidecar agents subscribed .*: /chat and " + re.escape(relay.group(2)), out)
    assert "the /chat agent was not told" in out
    relay_url = re.search(r"kms-injector relay on (\S+)", out).group(1)
    assert _port_closed(relay_url)
    # Nothing it started keeps running.
    url = re.search(r"dev KMS listening on (\S+)", out).group(1)
    assert _port_closed(url)
    assert _gone(int(re.search(r"example app started \(pid (\d+)", out).group(1)))
    assert _survivors(str(workdir)) == []
    # Key names and hashes only: no value from the seed appears.
    assert "dev-chat-pw" not in out and "dev-hanzo-services-client-secret" not in out and "rotated-" not in out


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_demo_interrupted_stops_everything(tmp_path: Path, inherited: str) -> None:
    # "ignored": as when started in the background by a non-interactive shell (SIGINT is SIG_IGN, and
    # Python keeps it): the demo ran to its end and exited 0 before it set its own handler.
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None
    proc = subprocess.Popen([*DEMO, "--workdir", str(tmp_path / "demo-run")], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "example app started" in line:
                break
        assert any("example app started" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the demo alone, not its children
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130
    out = "".join(lines)
    assert _survivors(str(tmp_path)) == []  # the agents too, even one started as Ctrl-C arrived
    assert _port_closed(re.search(r"dev KMS listening on (\S+)", out).group(1))
    assert _gone(int(re.search(r"example app started \(pid (\d+)", out).group(1)))
