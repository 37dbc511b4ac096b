"""Readers never see a partial or mixed version: during 200 rotations, and while the writer is
SIGKILLed at random points. The reader is a separate real process; the writer is the real
AtomicWriter (in this process, then in killed subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from injector.mount_read import read_current
from injector.writer import DATA, AtomicWriter
from tests.agent_support import wait_until

ROOT = Path(__file__).resolve().parent.parent
KEYS = [f"K{i}" for i in range(8)]

# Every file of version N carries N, its own key name and its own length, and ends with a trailer,
# so a truncated, partial or foreign file is detectable. Odd versions have one extra key (ODD) and
# a sub-folder file, so key additions and removals are exercised too.
PAYLOAD = r'''
def payload(n):
    files = {}
    names = [f"K{i}" for i in range(8)] + (["ODD", "sub/S"] if n % 2 else [])
    for i, key in enumerate(names):
        body = f"v={n};k={key};" + "x" * ((n * 7919 + i * 104729) % 20000)
        files[key] = f"{body};len={len(body)};end\n".encode()
    return files


def check(key, data):
    """The version in a file, or raise if the file is not one whole file for `key`."""
    text = data.decode()
    if not text.endswith(";end\n"):
        raise AssertionError(f"{key}: partial file ({len(data)} bytes)")
    head, _, rest = text.partition(";k=")
    k, _, _ = rest.partition(";")
    body, _, tail = text[:-5].rpartition(";len=")
    if k != key or int(tail) != len(body) or not head.startswith("v="):
        raise AssertionError(f"{key}: malformed file")
    return int(head[2:])
'''

READER = PAYLOAD + r'''
import errno, json, os, sys, time

d, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
stats = {"snapshots": 0, "snapshot_retries": 0, "link_passes": 0, "link_consistent": 0, "versions": set(), "errors": []}
readied = False

def err(msg):
    if len(stats["errors"]) < 20:
        stats["errors"].append(msg)

def snapshot():
    """Resolve ..data once, read that version folder through one fd, resolve ..data again: when
    it did not move, what was read must be exactly one complete version. (When it moved, the old
    folder may be mid-removal: a consistent reader reads again, as kubelet-style readers do.)"""
    try:
        version = os.readlink(os.path.join(d, "..data"))
        fd = os.open(os.path.join(d, version), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        stats["snapshot_retries"] += 1  # swapped and removed between readlink and open
        return
    try:
        names = sorted(os.listdir(fd))
        files = {}
        for name in names:
            if name == "sub":
                sfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    for s in os.listdir(sfd):
                        with open(os.open(s, os.O_RDONLY, dir_fd=sfd), "rb") as f:
                            files["sub/" + s] = f.read()
                finally:
                    os.close(sfd)
                continue
            with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
                files[name] = f.read()
    except FileNotFoundError:
        stats["snapshot_retries"] += 1  # the version was removed after a swap: read again
        return
    finally:
        os.close(fd)
    if os.readlink(os.path.join(d, "..data")) != version:
        stats["snapshot_retries"] += 1
        return
    versions = {check(k, v) for k, v in files.items()}
    if len(versions) != 1:
        err(f"mixed snapshot: versions {sorted(versions)}")
        return
    (n,) = versions
    if sorted(files) != sorted(payload(n)):
        err(f"incomplete snapshot of v{n}: {sorted(files)}")
        return
    stats["snapshots"] += 1
    stats["versions"].add(n)

def through_links():
    """Open every KEY via its user-visible link: each is a whole file; if ..data did not move
    meanwhile, all are the same version."""
    before = os.readlink(os.path.join(d, "..data"))
    seen = {}
    for key in [f"K{i}" for i in range(8)] + ["ODD", "sub/S"]:
        try:
            with open(os.path.join(d, key), "rb") as f:
                seen[key] = check(key, f.read())
        except FileNotFoundError:
            seen[key] = None
    after = os.readlink(os.path.join(d, "..data"))
    stats["link_passes"] += 1
    if before == after:
        vs = {v for v in seen.values() if v is not None}
        if len(vs) != 1:
            err(f"mixed through links without a swap: {seen}")
            return
        (n,) = vs
        expected = set(payload(n))
        present = {k for k, v in seen.items() if v is not None}
        if present != expected:
            err(f"key set of v{n} through links: {sorted(present)}")
            return
        stats["link_consistent"] += 1

while not os.path.exists(stop):
    try:
        snapshot()
        through_links()
    except AssertionError as e:
        err(str(e))
    except Exception as e:
        err(f"{type(e).__name__}: {e}")
    if not readied and stats["snapshots"]:
        open(ready, "w").close()
        readied = True
stats["versions"] = len(stats["versions"])
print(json.dumps(stats))
'''

WRITER = PAYLOAD + r'''
import sys
from injector.writer import AtomicWriter
d, start, progress = sys.argv[1], int(sys.argv[2]), sys.argv[3]
w = AtomicWriter(d, 0o444)
n = start
while True:
    w.write(payload(n))
    with open(progress, "w") as f:
        f.write(str(n))
    n += 1
'''

ns: dict = {}
exec(PAYLOAD, ns)
payload = ns["payload"]
check = ns["check"]


@pytest.fixture
def mount(tmp_path):
    """The secrets folder on tmpfs when /dev/shm exists (what the pod's emptyDir(Memory) is), so
    hundreds of rotations stay fast; fsync on a busy shared disk would dominate otherwise."""
    import shutil
    import tempfile

    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="kms-reader-test-", dir="/dev/shm"))
        yield base / "secrets"
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path / "secrets"


def start_reader(tmp_path: Path, d: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "reader.py"
    script.write_text(READER)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(script), str(d), str(stop), str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: ready.exists() or proc.poll() is not None, what="reader ready")
    assert proc.poll() is None, proc.stderr.read()
    return proc, stop


def stop_reader(proc: subprocess.Popen, stop: Path) -> dict:
    stop.touch()
    out, errtext = proc.communicate(timeout=60)
    assert proc.returncode == 0, errtext
    return json.loads(out)


def assert_clean(d: Path) -> None:
    """Exactly one version folder (the current one), no temp links, links match the version."""
    entries = os.listdir(d)
    current = os.readlink(d / DATA)
    dotted = sorted(e for e in entries if e.startswith(".."))
    assert dotted == sorted([DATA, current]), dotted
    files = read_current(str(d))
    n = check("K0", files["K0"])
    assert files == payload(n)
    tops = {k.split("/")[0] for k in files}
    assert {e for e in entries if not e.startswith("..")} == tops
    for t in tops:
        assert os.readlink(d / t) == f"..data/{t}"


def test_reader_never_sees_mixed_or_partial_version_during_200_rotations(tmp_path, mount):
    d = mount
    w = AtomicWriter(str(d), 0o444)
    w.write(payload(0))
    reader, stop = start_reader(tmp_path, d)
    try:
        for n in range(1, 201):
            assert w.write(payload(n)) is True
            if n % 20 == 0:
                time.sleep(0.005)  # let the reader get scheduled on a busy 2-core machine
    finally:
        stats = stop_reader(reader, stop)
    assert stats["errors"] == []
    assert stats["snapshots"] >= 10, stats
    assert stats["link_consistent"] >= 5, stats
    assert stats["versions"] >= 3, stats
    assert_clean(d)
    assert read_current(str(d)) == payload(200)


def test_writer_killed_at_random_points_leaves_one_complete_version_and_is_repaired(tmp_path, mount):
    d = mount
    AtomicWriter(str(d), 0o444).write(payload(0))
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(os.getpid())
    reader, stop = start_reader(tmp_path, d)
    leftovers_seen = 0
    kills = 0
    writes = 0
    try:
        deadline = time.monotonic() + 45
        while (kills < 30 or writes < 200) and time.monotonic() < deadline:
            start = (kills + 1) * 1000
            progress = tmp_path / f"progress-{kills}"
            proc = subprocess.Popen([sys.executable, str(script), str(d), str(start), str(progress)], env=env, stderr=subprocess.PIPE)
            try:
                wait_until(lambda: progress.exists() or proc.poll() is not None, what="writer progress")
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(rng.uniform(0, 0.03))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                proc.stderr.close()
            kills += 1
            writes += int(progress.read_text() or start) - start + 1 if progress.exists() else 0
            # after a kill, ..data is a complete version, whatever else was left behind
            files = read_current(str(d))
            n = check("K0", files["K0"])
            assert files == payload(n)
            current = os.readlink(d / DATA)
            extra = [e for e in os.listdir(d) if e.startswith("..") and e not in (DATA, current)]
            leftovers_seen += bool(extra) or any(os.path.islink(d / e) and not os.path.exists(d / e) for e in os.listdir(d))
    finally:
        stats = stop_reader(reader, stop)
    assert kills >= 10, f"only {kills} kills in the time budget"
    assert writes >= 50, f"only {writes} rotations in the time budget"
    assert stats["errors"] == []
    assert stats["snapshots"] >= 10, stats
    # the next start repairs whatever the last kill left (a fresh process, as the sidecar would be)
    code = "import sys; from injector.writer import AtomicWriter; print(len(AtomicWriter(sys.argv[1]).repair()))"
    subprocess.run([sys.executable, "-c", code, str(d)], env=env, check=True, timeout=60, capture_output=True)
    assert_clean(d)
    assert leftovers_seen >= 1, "no kill landed mid-write: the test did not exercise repair"
    print(json.dumps({"kills": kills, "writes": writes, "leftovers_seen": leftovers_seen, **stats}))
