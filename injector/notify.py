"""Tell the app its files changed: signal processes found by name, or run a command.

The webhook sets `shareProcessNamespace: true`, so the agent sees the app's processes in /proc
(the app is not PID 1 there: the pause container is). A process matches `name` when any of:
  - its comm (/proc/PID/comm, the kernel's name, truncated to 15 bytes) equals `name` (or its first
    15 bytes): catches processes that rewrite argv, e.g. `nginx: worker process`;
  - the basename of argv[0] equals `name`: `/usr/bin/myapp --flag` matches `myapp`;
  - argv[0] is an interpreter (python*, pypy*, node, bun, deno, ruby, perl, php, sh, bash, dash,
    ash, zsh) and the basename of its first non-option argument equals `name`:
    `python3 -u examples/app.py` matches `app.py`.
Processes with an empty cmdline (kernel threads, zombies) and the agent itself never match.
Only the outermost matches are signalled: a match whose ancestor also matches is a forked worker
(gunicorn, nginx, multiprocessing keep the master's name) that the master reloads itself; such
workers often keep SIGHUP's default action, which would kill them.

A missing process or a refused signal is a warning, never a crash. A command runs without a shell,
with stdin/stdout/stderr on /dev/null (its output could hold secrets, so it is neither captured nor
logged), in its own process group, killed with the group on timeout; only its exit status and
duration are logged. Stdlib only; asyncio is imported by the caller's event loop anyway.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

_INTERPRETERS = frozenset({"python", "pypy", "node", "nodejs", "bun", "deno", "ruby", "perl", "php", "sh", "bash", "dash", "ash", "zsh"})
COMM_MAX = 15


def _logger(logger: Any) -> Any:
    if logger is not None:
        return logger
    from injector.log import get_logger

    return get_logger("notify")


def process_matches(name: str, comm: str, argv: list[str]) -> bool:
    """The matching rule above, as a pure function of what /proc says."""
    if not name or not argv:
        return False
    if comm and comm == name[:COMM_MAX]:
        return True
    base0 = os.path.basename(argv[0])
    if base0 == name:
        return True
    if base0.rstrip("0123456789.") in _INTERPRETERS:  # python3, python3.11, php8 ...
        for arg in argv[1:]:
            if arg.startswith("-"):
                continue
            return os.path.basename(arg) == name
    return False


def find_processes(name: str, proc: str = "/proc") -> list[int]:
    """PIDs of processes matching `name` (see module doc), excluding this process. Sorted."""
    me = os.getpid()
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                raw = f.read()
            with open(f"{proc}/{entry}/comm", "rb") as f:
                comm = f.read().rstrip(b"\n").decode("utf-8", "replace")
        except OSError:  # exited meanwhile, or hidden by hidepid
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\x00") if a] if raw else []
        if process_matches(name, comm, argv):
            found.append(int(entry))
    return sorted(found)


def _parent(pid: int, proc: str) -> int:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            # "pid (comm) state ppid ...": comm may hold spaces and ')', so split after the last ')'
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def outermost(pids: list[int], proc: str = "/proc") -> list[int]:
    """The PIDs none of whose ancestors is also in `pids` (masters, not their forked workers)."""
    matched = set(pids)
    out = []
    for pid in pids:
        parent, hops = _parent(pid, proc), 0
        while parent > 1 and parent not in matched and hops < 64:
            parent, hops = _parent(parent, proc), hops + 1
        if parent not in matched:
            out.append(pid)
    return out


def parse_signal(signame: str) -> signal.Signals:
    text = str(signame).strip().upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(f"signal {signame!r} is not a signal name such as SIGHUP") from None


def send_signal(name: str, signame: str, logger: Any = None, proc: str = "/proc") -> list[int]:
    """Send `signame` to every process matching `name`; the PIDs that got it. Never raises for
    a missing process or a refused signal: those are warnings."""
    log = _logger(logger)
    sig = parse_signal(signame)
    pids = outermost(find_processes(name, proc), proc)
    if not pids:
        log.warning("signal_no_process", process=name, signal=sig.name, detail="no process with that name in the shared PID namespace")
        return []
    sent = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except ProcessLookupError:  # exited between the scan and the kill
            continue
        except PermissionError:
            log.warning("signal_refused", process=name, pid=pid, signal=sig.name, detail="not permitted: run the agent as the app's uid or give it CAP_KILL")
    if sent:
        log.info("signal_sent", process=name, signal=sig.name, pids=sent)
    return sent


@dataclass
class CommandResult:
    returncode: int | None  # None when it did not start or was killed on timeout
    duration: float
    timed_out: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_command(argv: list[str], timeout: float, logger: Any = None) -> CommandResult:
    """Run argv (no shell) with a timeout; kill its process group on timeout or cancellation."""
    import asyncio

    log = _logger(logger)
    cmd = os.path.basename(argv[0]) if argv else ""
    start = time.monotonic()
    if not argv:
        return CommandResult(None, 0.0, error="empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        result = CommandResult(None, time.monotonic() - start, error=f"could not start {cmd!r}: {exc.strerror or type(exc).__name__}")
        log.warning("command_failed", command=cmd, detail=result.error)
        return result
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(proc.pid)
        await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.CancelledError):
            raise
        result = CommandResult(None, time.monotonic() - start, timed_out=True, error=f"timed out after {timeout:g}s; killed")
        log.warning("command_timeout", command=cmd, timeout_s=timeout, duration_ms=round(result.duration * 1000, 1))
        return result
    result = CommandResult(code, time.monotonic() - start)
    level = log.info if code == 0 else log.warning
    level("command_done", command=cmd, exit_code=code, duration_ms=round(result.duration * 1000, 1))
    return result


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
