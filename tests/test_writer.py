"""writer.py on real files: kubelet layout, no-op detection, removals, hostile names, repair, size."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from injector.config import AgentConfig, Source
from injector.log import Logger
from injector.render import render
from injector.mount_read import read_current, read_modes
from injector.writer import DATA, AtomicWriter, UnsafePathError, validate_paths

ROOT = Path(__file__).resolve().parent.parent
VERSION_DIR = re.compile(r"^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d{9}$")


def version_dirs(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if VERSION_DIR.match(n))


def tree(root: Path) -> set[str]:
    """Every path under root (relative), without following links."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def test_layout_links_and_modes(tmp_path):
    d = tmp_path / "secrets"
    w = AtomicWriter(str(d), 0o440)
    assert w.write({"A": b"1", "B": b"two", "db/URL": b"pg://", "db/PASS": b"pw"}) is True
    vd = version_dirs(d)
    assert len(vd) == 1
    assert os.readlink(d / DATA) == vd[0]
    assert os.readlink(d / "A") == "..data/A"
    assert os.readlink(d / "db") == "..data/db"  # a source folder is one link: it swaps atomically too
    assert sorted(os.listdir(d)) == sorted([vd[0], DATA, "A", "B", "db"])
    assert (d / "A").read_bytes() == b"1" and (d / "db" / "PASS").read_bytes() == b"pw"
    assert read_modes(str(d)) == {"A": 0o440, "B": 0o440, "db/URL": 0o440, "db/PASS": 0o440}
    assert stat.S_IMODE(os.stat(d / vd[0]).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(d / vd[0] / "db").st_mode) == 0o755
    assert read_current(str(d)) == {"A": b"1", "B": b"two", "db/URL": b"pg://", "db/PASS": b"pw"}


def test_unchanged_content_is_not_rewritten_even_by_a_fresh_process(tmp_path):
    d = tmp_path / "s"
    files = {"A": b"1", "sub/B": b"2"}
    assert AtomicWriter(str(d), 0o444).write(files) is True
    data_st = os.lstat(d / DATA)
    vd = version_dirs(d)
    a_st = os.stat(d / "A")
    # same object again, and a new writer in this process
    assert AtomicWriter(str(d), 0o444).write(dict(files)) is False
    # a separate process (the sidecar after the init container) sees the same content
    code = (
        "import sys; from injector.writer import AtomicWriter;"
        "print(AtomicWriter(sys.argv[1], 0o444).write({'A': b'1', 'sub/B': b'2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(d)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    st2 = os.lstat(d / DATA)
    assert (st2.st_ino, st2.st_mtime_ns) == (data_st.st_ino, data_st.st_mtime_ns)
    assert version_dirs(d) == vd
    assert os.stat(d / "A").st_ino == a_st.st_ino


def test_changed_mode_or_content_is_rewritten(tmp_path):
    d = tmp_path / "s"
    assert AtomicWriter(str(d), 0o444).write({"A": b"1"}) is True
    assert AtomicWriter(str(d), 0o440).write({"A": b"1"}) is True  # same bytes, other mode
    assert read_modes(str(d)) == {"A": 0o440}
    w = AtomicWriter(str(d), 0o440)
    assert w.write({"A": b"2"}) is True
    assert (d / "A").read_bytes() == b"2"
    assert len(version_dirs(d)) == 1  # the old version folder is gone


def test_removed_keys_disappear(tmp_path):
    d = tmp_path / "s"
    w = AtomicWriter(str(d), 0o444)
    w.write({"A": b"1", "B": b"2", "db/X": b"3"})
    assert w.write({"A": b"1"}) is True
    assert sorted(os.listdir(d)) == sorted([*version_dirs(d), DATA, "A"])
    assert not os.path.lexists(d / "B") and not os.path.lexists(d / "db")
    assert read_current(str(d)) == {"A": b"1"}
    assert w.write({}) is True
    assert sorted(os.listdir(d)) == sorted([*version_dirs(d), DATA])
    assert read_current(str(d)) == {}


@pytest.mark.parametrize(
    "path",
    ["../x", "..data", "..data_tmp", "a/../b", "/etc/passwd", "", "a//b", "./x", "x/", "k" * 300, "nul\x00", "..2020_01_01_00_00_00.1", "a\\b"],
)
def test_writer_refuses_unsafe_paths_and_touches_nothing(tmp_path, path):
    d = tmp_path / "s"
    w = AtomicWriter(str(d), 0o444)
    w.write({"KEEP": b"v1"})
    before = tree(tmp_path)
    with pytest.raises(UnsafePathError):
        w.write({"KEEP": b"v2", path: b"evil"})
    assert tree(tmp_path) == before
    assert read_current(str(d)) == {"KEEP": b"v1"}


def test_file_and_folder_with_same_name_refused():
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        validate_paths({"a": b"1", "a/b": b"2"})


def test_hostile_kms_keys_through_render_never_escape(tmp_path):
    """KMS returns hostile key names; render skips them, the writer writes the rest inside."""
    d = tmp_path / "mount" / "secrets"
    outside_before = set(os.listdir(tmp_path))
    cfg = AgentConfig(host="http://127.0.0.1:1/api", project="p", env="prod", sources=[Source("/a"), Source("/b", "db")])
    hostile = {"../x": "V", "../../etc/passwd": "V", "..data": "V", "a/b": "V", "": "V", "k" * 300: "V", "nul\x00": "V", "/abs": "V", "..": "V", ".": "V", "OK": "fine"}
    r = render(cfg, {"": hostile, "db": dict(hostile)})
    stream = io.StringIO()
    w = AtomicWriter(str(d), 0o444, logger=Logger("writer", stream=stream))
    assert w.write(r.files) is True
    assert read_current(str(d)) == {"OK": b"fine", "db/OK": b"fine"}
    assert {e for e in os.listdir(d) if not e.startswith("..")} == {"OK", "db"}
    assert set(os.listdir(tmp_path)) == outside_before | {"mount"}
    assert os.listdir(tmp_path / "mount") == ["secrets"]
    assert len(r.skipped) == 2 * (len(hostile) - 1)
    assert "fine" not in stream.getvalue()


def test_planted_symlinks_are_not_followed(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    os.symlink(outside, d / "KEY")  # a link named like a key, pointing outside
    os.symlink(tmp_path, d / "sub")  # a link named like a source folder
    w = AtomicWriter(str(d), 0o444)
    assert w.write({"KEY": b"secret", "sub/X": b"y"}) is True
    assert outside.read_text() == "untouched"
    assert not (tmp_path / "X").exists()
    assert os.readlink(d / "KEY") == "..data/KEY" and (d / "KEY").read_bytes() == b"secret"
    assert os.readlink(d / "sub") == "..data/sub"


def test_foreign_regular_file_is_left_alone(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "KEY").write_text("someone else's")
    stream = io.StringIO()
    AtomicWriter(str(d), 0o444, logger=Logger("writer", stream=stream)).write({"KEY": b"secret"})
    assert (d / "KEY").read_text() == "someone else's"
    assert "entry_not_ours" in stream.getvalue() and "secret" not in stream.getvalue().replace("someone", "")


def test_crash_leftovers_are_repaired_without_breaking_data(tmp_path):
    d = tmp_path / "s"
    w = AtomicWriter(str(d), 0o444)
    w.write({"A": b"1", "B": b"2"})
    current = os.readlink(d / DATA)
    # what a SIGKILL can leave: a half-written version, a dangling ..data_tmp, a stale link,
    # a link of a never-published key, a half-made link swap, a missing link
    half = d / "..2020_01_01_00_00_00.000000001"
    (half / "sub").mkdir(parents=True)
    (half / "A").write_bytes(b"partial")
    os.symlink("..2020_01_01_00_00_00.000000001", d / "..data_tmp")
    os.symlink("..data/GONE", d / "GONE")
    os.symlink("..data/B", d / "..link_tmp")
    os.unlink(d / "B")
    stream = io.StringIO()
    w2 = AtomicWriter(str(d), 0o444, logger=Logger("writer", stream=stream))
    assert w2.write({"A": b"1", "B": b"2"}) is False  # content unchanged: repaired, not rewritten
    assert os.readlink(d / DATA) == current
    assert sorted(os.listdir(d)) == sorted([current, DATA, "A", "B"])
    assert (d / "B").read_bytes() == b"2"
    assert "writer_repaired" in stream.getvalue()
    # repair() is idempotent and leaves a clean directory alone
    assert AtomicWriter(str(d)).repair() == []


def test_repair_when_first_write_crashed(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "..2020_01_01_00_00_00.000000001").mkdir()
    os.symlink("..2020_01_01_00_00_00.000000001", d / "..data_tmp")
    os.symlink("..data/A", d / "A")
    removed = AtomicWriter(str(d)).repair()
    assert set(removed) == {"..2020_01_01_00_00_00.000000001", "..data_tmp"}
    assert read_current(str(d)) == {}
    # a dangling key link with no ..data is left for the next write, which fixes it
    assert AtomicWriter(str(d)).write({"A": b"x"}) is True
    assert (d / "A").read_bytes() == b"x"


@pytest.fixture
def memory_dir(tmp_path):
    """A folder on tmpfs when the machine has /dev/shm: the medium of the pod's emptyDir(Memory),
    where fsync is free. On a disk, 10,000 fsyncs alone take seconds."""
    import shutil
    import tempfile

    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="kms-writer-test-", dir="/dev/shm"))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_ten_thousand_keys_and_a_10mb_value(memory_dir):
    d = memory_dir / "s"
    files = {f"KEY_{i:05d}": f"value-{i}".encode() for i in range(10_000)}
    files["BIG"] = os.urandom(10 * 1024 * 1024)
    w = AtomicWriter(str(d), 0o444)
    t0 = time.monotonic()
    assert w.write(files) is True
    t_write = time.monotonic() - t0
    assert read_current(str(d)) == files
    assert len([e for e in os.listdir(d) if not e.startswith("..")]) == 10_001
    t0 = time.monotonic()
    assert AtomicWriter(str(d), 0o444).write(files) is False  # fresh writer: compares from disk
    t_compare = time.monotonic() - t0
    t0 = time.monotonic()
    assert w.write(files) is False  # same writer: in-memory fast path
    t_fast = time.monotonic() - t0
    changed = dict(files)
    changed["KEY_00042"] = b"rotated"
    del changed["KEY_09999"]
    assert w.write(changed) is True
    assert (d / "KEY_00042").read_bytes() == b"rotated" and not os.path.lexists(d / "KEY_09999")
    assert len(version_dirs(d)) == 1
    print(json.dumps({"write_s": round(t_write, 2), "compare_s": round(t_compare, 2), "fast_s": round(t_fast, 4)}))
    assert t_fast < t_compare  # the fast path must not re-read 10 MB from disk


def test_setgid_volume_keeps_setgid_and_group_on_every_folder(tmp_path):
    """Issue 12 point 1 (the uid-level test is tests/test_pod_uids.py): an fsGroup emptyDir is
    setgid; every folder the writer makes keeps the bit, so files get the volume's group."""
    d = tmp_path / "secrets"
    d.mkdir()
    gid = 4242 if os.geteuid() == 0 else os.getgid()
    os.chown(d, -1, gid)
    d.chmod(0o2777)
    w = AtomicWriter(str(d), file_mode=0o440)
    assert w.write({"A": b"1", "sub/B": b"2", "sub/deeper/C": b"3"})
    assert w.write({"A": b"1b", "sub/B": b"2", "sub/deeper/C": b"3", "other/D": b"4"})
    version = d / os.readlink(d / DATA)
    for folder in (version, version / "sub", version / "sub" / "deeper", version / "other"):
        st = folder.stat()
        assert st.st_mode & stat.S_ISGID and stat.S_IMODE(st.st_mode) == 0o2755, (folder.name, oct(st.st_mode))
        assert st.st_gid == gid
    for rel in ("A", "sub/B", "sub/deeper/C", "other/D"):
        st = (version / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o440, gid), rel
    # a volume without setgid gets plain 0755 folders, as before
    plain = tmp_path / "plain"
    AtomicWriter(str(plain)).write({"x/y": b"1"})
    v = plain / os.readlink(plain / DATA)
    assert stat.S_IMODE(v.stat().st_mode) == stat.S_IMODE((v / "x").stat().st_mode) == 0o755
