"""Reading a mount the AtomicWriter keeps: the files (or their permission bits) of the version
`..data` points at, through directory file descriptors (O_NOFOLLOW), never following a planted
link. For tests, diagnostics and readers; the agent's write path does not load this module.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, TypeVar

from injector.writer import DIR_FLAGS, current_version, read_all, walk_files

_T = TypeVar("_T")


def read_current(target_dir: str) -> dict[str, bytes]:
    """The files of the version `..data` points at, {relative path: bytes}; {} if none."""
    return _map_current(target_dir, lambda fd: read_all(fd, os.fstat(fd).st_size))


def read_modes(target_dir: str) -> dict[str, int]:
    """{relative path: permission bits} of the current version (for tests and diagnostics)."""
    return _map_current(target_dir, lambda fd: stat.S_IMODE(os.fstat(fd).st_mode))


def _map_current(target_dir: str, per_file: Callable[[int], _T]) -> dict[str, _T]:
    """{relative path: per_file(fd)} over the current version's files; {} if there is none."""
    try:
        dfd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    try:
        version = current_version(dfd)
        if version is None:
            return {}
        vfd = os.open(version, DIR_FLAGS, dir_fd=dfd)
        try:
            out = {}
            for rel, fd in walk_files(vfd, "", strict=False):
                try:
                    out[rel] = per_file(fd)
                finally:
                    os.close(fd)
            return out
        finally:
            os.close(vfd)
    finally:
        os.close(dfd)
