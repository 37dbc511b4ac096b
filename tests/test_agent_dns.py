"""A dead cluster DNS must not hold the agent's exit: SIGTERM during a lookup that never returns
still exits 0 at once (kubelet would otherwise wait out the grace period, then SIGKILL).

Real parts: a DNS server on a loopback address that receives queries and never answers, made the
agent's resolver through a bind-mounted resolv.conf in the agent's own mount namespace
(`unshare --mount`, root only, as CI and this machine run)."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import time
from pathlib import Path

from tests.agent_support import agent_args, spawn, wait_for, write_credentials


async def test_sigterm_during_a_hanging_dns_lookup_exits_at_once(tmp_path: Path) -> None:
    assert shutil.which("unshare") and shutil.which("mount"), "util-linux (unshare, mount) is part of the machine"
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a DNS server that never answers
    silent.bind((f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.53", 53))
    silent.setblocking(False)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {silent.getsockname()[0]}\noptions timeout:30 attempts:3\n")
    write_credentials(tmp_path / "auth", "id", "secret")
    argv = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
            *agent_args("http://kms.dns-outage.invalid:8080/api", tmp_path / "mount", tmp_path / "auth",
                        "--request-timeout", "60s")]
    p = spawn(argv, tmp_path, "agent")
    try:
        def queried() -> bool:
            try:
                return bool(silent.recvfrom(4096))
            except BlockingIOError:
                return False

        await wait_for(queried, 30, "the agent's DNS query")  # the lookup is now stuck in a resolver thread
        t0 = time.monotonic()
        p.popen.send_signal(signal.SIGTERM)
        code = await p.wait_exit(20)
        elapsed = time.monotonic() - t0
        assert code == 0, p.stderr()[-1500:]
        assert elapsed < 5, f"exit took {elapsed:.1f}s after SIGTERM with DNS hanging"
        assert any(e.get("event") == "stopping" for e in p.events()), p.stderr()[-1500:]
    finally:
        p.stop()
        silent.close()
