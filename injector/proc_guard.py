"""Keep same-uid processes out of the agent: prctl(PR_SET_DUMPABLE, 0) at start-up.

In signal mode the agent runs with the app's uid in a shared PID namespace. A dumpable process
lets any process of its uid open `/proc/<pid>/root/...` (the agent container's files, such as
the mounted clientSecret), `/proc/<pid>/environ` and `/proc/<pid>/mem`, and ptrace it. A
non-dumpable one needs CAP_SYS_PTRACE for all of those (the kernel also makes its /proc entries
root-owned). Signals are not affected: what still passes is listed in docs/annotations.md.

Standard library only (ctypes is loaded here, once, at start-up). Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_non_dumpable() -> bool:
    """Mark this process non-dumpable. True when it is now; False where prctl is unavailable.

    The flag is reset by execve(2): a command the agent runs after a change is dumpable again."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    if libc is None:
        return False
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0


def _libc():  # noqa: ANN202 - a ctypes.CDLL, typed loosely to keep ctypes out of annotations
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc
