"""The agent under a pod's real uids and groups (issue 12 points 1 and 2). Needs root: the test
starts the real agent and its readers as other uids (subprocess user=/group=/extra_groups=).

- fsGroup: kubelet makes an fsGroup emptyDir setgid with the pod's group; the agent runs as one
  uid with that group as a supplementary group, the app as another uid in the same group. Files
  of mode 0440 must be readable by the app, so every directory the writer makes keeps setgid.
- non-dumpable: in signal mode the app shares the agent's uid and PID namespace. The agent's
  credentials live in its own mount namespace (here: a tmpfs mounted in a private namespace, as
  the kms-auth volume is mounted only into the agent containers); a process of the same uid
  must not reach them through /proc/<agent>/root, nor read /proc/<agent>/environ or mem.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import h11
import pytest

from devkms.server import run_dev_kms
from tests.agent_support import BILLING, CHAT, CLIENT_ID, CLIENT_SECRET, ROOT, SHARED, agent_args, seed, wait_for, write_credentials

POD_GID = 4242  # the pod's fsGroup
AGENT_UID, APP_UID = 5101, 5102

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes under other uids: needs root")


@pytest.fixture
def base():
    """A world-traversable base (pytest's tmp_path is 0700 root): the other uids must reach it."""
    d = Path(tempfile.mkdtemp(prefix="kms-uids-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    d.chmod(0o755)
    # The agent's one dependency (h11, pure Python), where the other uids can import it.
    shutil.copytree(Path(h11.__file__).parent, d / "pylib" / "h11", ignore=shutil.ignore_patterns("__pycache__"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@functools.cache
def _pod_python() -> str:
    """An interpreter the other uids may execute (this venv's may sit under a 0700 /root). The
    agent imports only the standard library, so any Python >= 3.11 runs it from the source tree."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            probe = subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 11)"], user=AGENT_UID,
                                   capture_output=True, timeout=60)
        except OSError:  # missing, or not executable by that uid
            continue
        if probe.returncode == 0:
            return exe
    raise AssertionError("no Python >= 3.11 that another uid may run: these tests need one")


def pod_env(base: Path) -> dict[str, str]:
    """The source tree and the copied h11 (see `base`) on the path; nothing else inherited."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}{os.pathsep}{base / 'pylib'}", "PYTHONDONTWRITEBYTECODE": "1"}


def agent_cmd(argv: list[str]) -> list[str]:
    """agent_args() with the agent run as `python -m injector agent` by an interpreter any uid may run."""
    i = argv.index("agent")
    return [_pod_python(), "-m", "injector", *argv[i:]]


def run_as(uid: int, gid: int, groups: list[int], code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_pod_python(), "-c", code, *args], user=uid, group=gid, extra_groups=groups,
                          capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})


READER = r"""
import json, os, sys
root = sys.argv[1]
out = {}
for rel in sys.argv[2:]:
    try:
        with open(os.path.join(root, rel)) as f:
            out[rel] = f.read()
    except OSError as exc:
        out[rel] = "ERR " + type(exc).__name__
print(json.dumps(out))
"""


async def test_fsgroup_volume_files_of_mode_0440_are_readable_by_the_app(base: Path) -> None:
    vol = base / "secrets"
    vol.mkdir()
    os.chown(vol, 0, POD_GID)
    vol.chmod(0o2777)  # what kubelet makes of an fsGroup emptyDir: drwxrwsrwx root:fsGroup
    write_credentials(base / "auth", CLIENT_ID, CLIENT_SECRET)
    async with run_dev_kms(seed()) as kms:
        argv = agent_cmd(agent_args(kms.base_url, vol, base / "auth", "--file-mode", "0440", mode="init", paths=("/chat", "billing=/billing")))
        err = base / "agent.err"
        with open(err, "w") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=fh, user=AGENT_UID, group=AGENT_UID, extra_groups=[POD_GID],
                                    cwd=str(ROOT), env=pod_env(base))
        await wait_for(lambda: proc.poll() is not None, 60, "the init agent to exit")
        assert proc.returncode == 0, err.read_text()

    want = {**{k: v for k, v in CHAT.items()}, **SHARED, **{f"billing/{k}": v for k, v in BILLING.items()}}
    version = vol / os.readlink(vol / "..data")
    made = [version, version / "billing"]
    for d in made:  # every directory the writer made keeps setgid and the pod's group
        st = d.stat()
        assert st.st_mode & stat.S_ISGID, f"{d.name} lost the setgid bit: {stat.filemode(st.st_mode)}"
        assert st.st_gid == POD_GID, (d.name, st.st_gid)
    for rel in want:
        st = (version / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid) == (0o440, POD_GID, AGENT_UID), rel

    # The app: another uid, in the pod's group only through fsGroup (a supplementary group).
    out = run_as(APP_UID, APP_UID, [POD_GID], READER, str(vol), *want)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == want
    # and a process outside the pod's group reads nothing (0440 means what it says)
    outsider = run_as(APP_UID + 1, APP_UID + 1, [], READER, str(vol), "API_KEY")
    assert json.loads(outsider.stdout) == {"API_KEY": "ERR PermissionError"}


# -- non-dumpable ----------------------------------------------------------------------------------

LAUNCH = r"""
# In a private mount namespace (unshare -m): a tmpfs only the agent sees holds its credentials,
# as the kms-auth Secret volume is mounted only into the agent containers. Then become the app's
# uid and exec the real agent.
import os, subprocess, sys
auth, uid, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "kms-auth", auth], check=True)
for name, text in (("clientId", sys.argv[4]), ("clientSecret", secret)):
    with open(os.path.join(auth, name), "w") as f:
        f.write(text)
os.chown(auth, uid, uid)
os.setgroups([]); os.setgid(uid); os.setuid(uid)
os.execv(sys.argv[5], sys.argv[5:])
"""

PROBE = r"""
import json, sys
pid, path = sys.argv[1], sys.argv[2]
out = {}
for name, target in (("root", f"/proc/{pid}/root{path}"), ("environ", f"/proc/{pid}/environ"), ("mem", f"/proc/{pid}/mem")):
    try:
        with open(target, "rb") as f:
            data = f.read(65536) if name != "mem" else b"opened"
        out[name] = "READ " + data.decode("latin-1")
    except OSError as exc:
        out[name] = "ERR " + type(exc).__name__
print(json.dumps(out))
"""


async def test_a_process_of_the_agents_uid_cannot_read_its_credentials_environment_or_memory(base: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        raise AssertionError("unshare and mount (util-linux) are needed for this test")
    auth = base / "agent-auth"
    auth.mkdir()
    mount = base / "secrets"
    mount.mkdir()
    os.chown(mount, AGENT_UID, AGENT_UID)
    env_marker = "env-marker-7d1e0c"
    async with run_dev_kms(seed()) as kms:
        agent_argv = agent_cmd(agent_args(kms.base_url, mount, auth, "--refresh-interval", "1h", "--no-events"))
        err = base / "agent.err"
        with open(err, "w") as fh:
            proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", sys.executable, "-c", LAUNCH,
                 str(auth), str(AGENT_UID), CLIENT_SECRET, CLIENT_ID, *agent_argv],
                stdout=fh, stderr=fh, cwd=str(ROOT),
                env={**pod_env(base), "KMS_TEST_ENV_MARKER": env_marker})
        try:
            await wait_for(lambda: (mount / "API_KEY").exists() or proc.poll() is not None, 60, "the agent's first files")
            assert proc.poll() is None, err.read_text()
            assert (mount / "API_KEY").read_text() == CHAT["API_KEY"]
            assert not (auth / "clientSecret").exists()  # outside the agent's namespace: not there
            # The app: same uid, no capabilities, in the pod's PID namespace.
            out = run_as(AGENT_UID, AGENT_UID, [], PROBE, str(proc.pid), str(auth / "clientSecret"))
            assert out.returncode == 0, out.stderr
            probe = json.loads(out.stdout)
            assert proc.poll() is None, err.read_text()
        finally:
            proc.terminate()
            proc.wait(20)
    # compare outcomes only: what a failed run read (the secret) must not reach the test output
    outcome = {k: "READ" if v.startswith("READ") else v for k, v in probe.items()}
    assert outcome == {"root": "ERR PermissionError", "environ": "ERR PermissionError", "mem": "ERR PermissionError"}
    assert CLIENT_SECRET not in err.read_text() and env_marker not in err.read_text()
    # the agent itself still works: it wrote its files as that uid
    assert (mount / "..data").resolve().stat().st_uid == AGENT_UID
