"""Atomic directory writer: kubelet's AtomicWriter algorithm (pkg/volume/util/atomic_writer.go).

Layout under the target directory (the same as a Kubernetes Secret volume):

    ..2026_11_28_18_00_00.123456789/   one complete version (files mode `file_mode`, dirs 0755,
                                       setgid kept when the volume is setgid: fsGroup)
    ..data -> ..2026_11_28_18_00_00.123456789
    KEY    -> ..data/KEY                one link per top-level entry (a file, or a folder NAME/)

A write: validate every path; compare with what `..data` holds now (read from disk, so a fresh
process such as the sidecar after the init container sees the init's version) and stop if equal;
else make a new uniquely named version folder, write and fsync every file in it, create the
top-level links that are new (dangling until the swap, like kubelet), point a new `..data_tmp`
symlink at the folder and rename(2) it over `..data` (the atomic switch), remove links of entries
that are gone, and remove the old version folder. A reader that opens `KEY` gets one whole file of
one version; a reader that sees the same `..data` target before and after reading several files
gets one whole version. (A reader that keeps a version folder open while `..data` moves on may see
that old folder being removed: check `..data` again after reading and read again if it moved,
exactly as with a Kubernetes Secret volume.)

Crash safety: a SIGKILL at any point leaves `..data` pointing at a complete version. `repair()`
(run before the first write of each AtomicWriter) removes what a crash can leave behind: version
folders `..data` does not point at, `..data_tmp`, a half-made link, links to entries the current
version does not have, and adds missing links. One writer per directory (the init container and
then the sidecar, never both at once), as with kubelet.

Test-only crash hook: with KMS_TEST_CRASH_AT=STEP in the environment, the writer SIGKILLs its own
process when it reaches STEP (one of CRASH_STEPS), so crash tests hit each step on purpose instead
of hoping a timed kill lands mid-write. Never set it outside tests; unset, it costs one dict
lookup at import and a None comparison per step.

Nothing is written outside the target directory: every relative path is validated per component
(`keys.unsafe_key_reason`: no absolute paths, no `..`, no NUL, no `..` prefixes that could hit
`..data`), and all file operations go through directory file descriptors with O_NOFOLLOW, so even
a symlink planted inside the directory is not followed. Logs carry names and counts, never bytes.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from typing import Any, Mapping

from injector.keys import display_key, unsafe_key_reason

DATA = "..data"
DATA_TMP = "..data_tmp"
LINK_TMP = "..link_tmp"
DIR_MODE = 0o755
_VERSION_DIR = re.compile(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+\Z")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Where a write can be cut, in order (see the test-only crash hook in the module docstring).
CRASH_STEPS = (
    "version-dir-made",   # an empty new version folder exists
    "first-file-written",  # the new version holds one file of several
    "version-written",    # every file is written and synced; no new link yet
    "links-made",         # links of new top entries exist (dangling until the swap)
    "data-tmp-made",      # ..data_tmp points at the new version; ..data still the old one
    "data-swapped",       # ..data names the new version; stale links and the old version remain
    "links-removed",      # links of removed entries are gone; the old version folder remains
    "repair-started",     # repair() removed one leftover of a previous crash, not all
)
_CRASH_AT = os.environ.get("KMS_TEST_CRASH_AT") or None


def _crash_point(step: str) -> None:
    if _CRASH_AT is not None and _CRASH_AT == step:
        os.kill(os.getpid(), signal.SIGKILL)


class UnsafePathError(ValueError):
    """A relative path would land outside the target directory or on a reserved name."""


def validate_paths(files: Mapping[str, Any]) -> None:
    """Refuse the whole payload if any path is unsafe; names the path, never its content."""
    dirs: set[str] = set()
    for rel in files:
        if not isinstance(rel, str):
            raise UnsafePathError(f"path {rel!r} is not a string")
        if rel.startswith("/"):
            raise UnsafePathError(f"path {display_key(rel)!r} is absolute; only relative paths are written")
        parts = rel.split("/")
        for part in parts:
            reason = unsafe_key_reason(part)
            if reason:
                raise UnsafePathError(f"path {display_key(rel)!r} has an unsafe component: {reason}")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        if not isinstance(files[rel], (bytes, bytearray, memoryview)):
            raise UnsafePathError(f"content of {display_key(rel)!r} must be bytes")
    clash = dirs & set(files)
    if clash:
        raise UnsafePathError(f"path {display_key(sorted(clash)[0])!r} is both a file and a folder")


class AtomicWriter:
    def __init__(self, target_dir: str, file_mode: int = 0o444, logger: Any = None, fsync: bool = True) -> None:
        self.target_dir = os.path.abspath(target_dir)
        self.file_mode = file_mode
        self.log = logger
        self.fsync = fsync  # False only for benchmarks/tests on slow disks; emptyDir(Memory) makes it free
        self._repaired = False
        self._last: tuple[str, dict[str, bytes]] | None = None  # (version dir, files) last seen on disk

    # -- public ------------------------------------------------------------------------------
    def write(self, files: Mapping[str, bytes]) -> bool:
        """Make the directory hold exactly `files`. False (and nothing touched) if it already does."""
        validate_paths(files)
        files = {k: bytes(v) for k, v in files.items()}
        os.makedirs(self.target_dir, mode=DIR_MODE, exist_ok=True)
        dfd = os.open(self.target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not self._repaired:
                self._repair(dfd)
            old = current_version(dfd)
            if old is not None:
                if self._last is not None and self._last[0] == old and self._last[1] == files:
                    return False
                if self._same_on_disk(dfd, old, files):
                    self._last = (old, files)
                    self._sync_links(dfd, _top_entries(files))  # cheap no-op unless links went missing
                    self._log("debug", "files_unchanged", files=len(files))
                    return False
            new = self._write_version(dfd, files)
            _crash_point("version-written")
            tops = _top_entries(files)
            self._sync_links(dfd, tops, create_only=True)
            _crash_point("links-made")
            _unlink_quiet(dfd, DATA_TMP)
            os.symlink(new, DATA_TMP, dir_fd=dfd)
            _crash_point("data-tmp-made")
            os.rename(DATA_TMP, DATA, src_dir_fd=dfd, dst_dir_fd=dfd)  # the atomic switch
            if self.fsync:
                os.fsync(dfd)
            _crash_point("data-swapped")
            removed = self._sync_links(dfd, tops)
            _crash_point("links-removed")
            if old is not None and old != new:
                _rmtree_quiet(dfd, old)
            self._last = (new, files)
            self._log("info", "files_written", version=new, files=len(files), removed=removed[:20], removed_count=len(removed))
            return True
        finally:
            os.close(dfd)

    def repair(self) -> list[str]:
        """Remove crash leftovers and reconcile the top-level links; never touches `..data`'s version."""
        try:
            dfd = os.open(self.target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._repaired = True
            return []
        try:
            return self._repair(dfd)
        finally:
            os.close(dfd)

    # -- steps -------------------------------------------------------------------------------
    def _repair(self, dfd: int) -> list[str]:
        removed: list[str] = []
        current = current_version(dfd)
        for name in (DATA_TMP, LINK_TMP):
            if _unlink_quiet(dfd, name):
                removed.append(name)
        with os.scandir(dfd) as it:
            leftovers = [e.name for e in it if _VERSION_DIR.match(e.name) and e.name != current and e.is_dir(follow_symlinks=False)]
        for name in leftovers:
            _rmtree_quiet(dfd, name)
            removed.append(name)
            _crash_point("repair-started")
        if current is not None:
            vfd = os.open(current, DIR_FLAGS, dir_fd=dfd)
            try:
                tops = set(os.listdir(vfd))
            finally:
                os.close(vfd)
            removed += self._sync_links(dfd, tops)
        self._repaired = True
        if removed:
            self._log("info", "writer_repaired", removed=[display_key(n) for n in removed[:20]], removed_count=len(removed))
        return removed

    def _write_version(self, dfd: int, files: dict[str, bytes]) -> str:
        name = _make_version_dir(dfd)
        _crash_point("version-dir-made")
        try:
            root = os.open(name, DIR_FLAGS, dir_fd=dfd)
            dir_fds: dict[str, int] = {"": root}
            try:
                _set_dir_mode(root)
                for i, rel in enumerate(sorted(files)):
                    if i == 1:
                        _crash_point("first-file-written")
                    parent, _, leaf = rel.rpartition("/")
                    pfd = self._subdir(dir_fds, parent)
                    fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                    try:
                        _write_all(fd, files[rel])
                        os.fchmod(fd, self.file_mode)
                        if self.fsync:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                if self.fsync:
                    for fd in dir_fds.values():
                        os.fsync(fd)
            finally:
                for fd in dir_fds.values():
                    os.close(fd)
        except BaseException:
            _rmtree_quiet(dfd, name)
            raise
        return name

    def _subdir(self, dir_fds: dict[str, int], rel: str) -> int:
        if rel in dir_fds:
            return dir_fds[rel]
        parent, _, leaf = rel.rpartition("/")
        pfd = self._subdir(dir_fds, parent)
        os.mkdir(leaf, DIR_MODE, dir_fd=pfd)
        fd = os.open(leaf, DIR_FLAGS, dir_fd=pfd)
        _set_dir_mode(fd)
        dir_fds[rel] = fd
        return fd

    def _same_on_disk(self, dfd: int, version: str, files: dict[str, bytes]) -> bool:
        try:
            vfd = os.open(version, DIR_FLAGS, dir_fd=dfd)
        except OSError:
            return False
        try:
            seen: set[str] = set()
            for rel, fd in walk_files(vfd, ""):
                try:
                    want = files.get(rel)
                    if want is None:
                        return False
                    st = os.fstat(fd)
                    if stat.S_IMODE(st.st_mode) != self.file_mode or st.st_size != len(want):
                        return False
                    if read_all(fd, st.st_size) != want:
                        return False
                    seen.add(rel)
                finally:
                    os.close(fd)
            return seen == set(files)
        except _NotAFile:
            return False
        finally:
            os.close(vfd)

    def _sync_links(self, dfd: int, tops: set[str], create_only: bool = False) -> list[str]:
        """Create `NAME -> ..data/NAME` for each top entry; unless create_only, drop links to others."""
        existing: dict[str, str | None] = {}  # name -> link target (None: not a symlink)
        with os.scandir(dfd) as it:
            for e in it:
                if e.name.startswith(".."):
                    continue
                existing[e.name] = os.readlink(e.name, dir_fd=dfd) if e.is_symlink() else None
        for name in sorted(tops):
            want = f"{DATA}/{name}"
            if name not in existing:
                os.symlink(want, name, dir_fd=dfd)
            elif existing[name] is None:
                self._log("warning", "entry_not_ours", key=display_key(name), detail="a file or folder that is not a writer link has this name; left alone")
            elif existing[name] != want:  # a stray link: replace it atomically
                _unlink_quiet(dfd, LINK_TMP)
                os.symlink(want, LINK_TMP, dir_fd=dfd)
                os.rename(LINK_TMP, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        removed = []
        if not create_only:
            for name, target in existing.items():
                if name not in tops and target == f"{DATA}/{name}":
                    _unlink_quiet(dfd, name)
                    removed.append(display_key(name))
        return sorted(removed)

    def _log(self, level: str, event: str, **fields: Any) -> None:  # names and counts only, never bytes
        if self.log is not None:
            getattr(self.log, level)(event, dir=self.target_dir, **fields)


# -- helpers -----------------------------------------------------------------------------------


class _NotAFile(Exception):
    pass


def current_version(dfd: int) -> str | None:
    """Name of the version folder `..data` points at, if it is a well-formed one that exists."""
    try:
        target = os.readlink(DATA, dir_fd=dfd)
    except (FileNotFoundError, OSError):
        return None
    if not _VERSION_DIR.match(target):
        return None
    try:
        st = os.stat(target, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return target if stat.S_ISDIR(st.st_mode) else None


def _make_version_dir(dfd: int) -> str:
    for _ in range(100):
        now = time.time_ns()
        name = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime(now // 1_000_000_000)) + f"{now % 1_000_000_000:09d}"
        try:
            os.mkdir(name, DIR_MODE, dir_fd=dfd)  # private files stay 0600 until each is complete
            return name
        except FileExistsError:
            continue
    raise FileExistsError("could not create a unique version folder")


def _set_dir_mode(fd: int) -> None:
    """0755, keeping the setgid bit the directory inherited from its parent.

    kubelet makes an fsGroup emptyDir setgid (group = fsGroup), so that everything in it gets the
    pod's group and files of mode 0440 are readable by every container of the pod. mkdir already
    inherited the bit and the group; a plain fchmod(0755) would clear the bit, and files made
    below would get the agent's own group. chmod is skipped when the bits are right already: an
    unprivileged chmod also drops setgid when the caller is not in the directory's group."""
    have = stat.S_IMODE(os.fstat(fd).st_mode)
    want = DIR_MODE | (have & stat.S_ISGID)
    if have != want:
        os.fchmod(fd, want)


def _top_entries(files: Mapping[str, bytes]) -> set[str]:
    return {rel.split("/", 1)[0] for rel in files}


def walk_files(dir_fd: int, prefix: str, strict: bool = True):
    """Yield (relative path, open fd) for every regular file under dir_fd; never follows links.

    Anything else (a symlink, a fifo) raises _NotAFile when strict, else is skipped."""
    with os.scandir(dir_fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it]
    for name, is_dir, is_file in entries:
        rel = prefix + name
        if is_dir:
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                yield from walk_files(sub, rel + "/", strict)
            finally:
                os.close(sub)
        elif is_file:
            yield rel, os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        elif strict:
            raise _NotAFile(rel)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_all(fd: int, size_hint: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, max(size_hint, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _unlink_quiet(dfd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dfd)
        return True
    except FileNotFoundError:
        return False


def _rmtree_quiet(dfd: int, name: str) -> None:
    import shutil  # lazy: only needed once a version is replaced

    try:
        shutil.rmtree(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def __getattr__(name: str) -> Any:
    # read_current and read_modes moved to mount_read.py; old imports keep working, and the
    # write path (every agent run) does not load the reader.
    if name in ("read_current", "read_modes"):
        from injector import mount_read

        return getattr(mount_read, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
