"""notify.py with real processes and real signals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from injector.log import Logger
from injector.notify import find_processes, process_matches, run_command, send_signal
from tests.agent_support import wait_until

# Counts SIGHUPs; on SIGUSR1 writes the final count and exits. Each count is written to a file.
COUNTER = r"""
import os, signal, sys, time
out = sys.argv[1]
count = 0
done = False
def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
def on_hup(signum, frame):
    global count
    count += 1
    write(out, str(count))
def on_usr1(signum, frame):
    global done
    done = True
signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGUSR1, on_usr1)
write(out, "0")
while not done:
    time.sleep(0.01)
write(out + ".final", str(count))
"""


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def logger() -> tuple[Logger, io.StringIO]:
    stream = io.StringIO()
    return Logger("notify", stream=stream), stream


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- matching (pure) -----------------------------------------------------------------------------


def test_match_rules():
    assert process_matches("myapp", "myapp", ["/usr/bin/myapp", "--flag"])
    assert process_matches("myapp", "other", ["/usr/local/bin/myapp"])
    assert process_matches("nginx", "nginx", ["nginx: worker process"])  # argv rewritten, comm not
    assert process_matches("app.py", "python3", ["python3", "-u", "examples/app.py"])
    assert process_matches("server.js", "node", ["/usr/bin/node", "--inspect", "dist/server.js", "x"])
    assert process_matches("a-very-long-process-name", "a-very-long-pro", ["/x/a-very-long-process-name"])
    assert not process_matches("app.py", "python3", ["python3", "other.py", "app.py"])  # only the script
    assert not process_matches("app.py", "myapp", ["/usr/bin/myapp", "app.py"])  # not an interpreter
    assert not process_matches("app", "app", [])  # kernel threads and zombies have no cmdline
    assert not process_matches("", "x", ["x"])


# -- real processes --------------------------------------------------------------------------------


def start_counter(tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    name = f"hupcount_{uuid.uuid4().hex[:8]}.py"  # unique: other test workers run python too
    script = tmp_path / name
    script.write_text(COUNTER)
    out = tmp_path / "count"
    proc = subprocess.Popen([sys.executable, "-u", str(script), str(out)])
    wait_until(lambda: read(out) == "0" or proc.poll() is not None, what="counter ready")
    assert proc.poll() is None
    return proc, name, out


def test_child_gets_exactly_the_signals_sent(tmp_path):
    proc, name, out = start_counter(tmp_path)
    try:
        assert find_processes(name) == [proc.pid]
        log, stream = logger()
        for i in range(1, 4):
            assert send_signal(name, "SIGHUP", logger=log) == [proc.pid]
            wait_until(lambda: read(out) == str(i), what=f"SIGHUP #{i} counted")
        assert send_signal(name, "USR1", logger=log) == [proc.pid]
        assert proc.wait(timeout=30) == 0
        assert read(tmp_path / "count.final") == "3"
        sent = [e for e in events(stream) if e["event"] == "signal_sent"]
        assert len(sent) == 4 and sent[0]["signal"] == "SIGHUP" and sent[0]["pids"] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_match_by_comm_and_argv0_of_a_real_binary(tmp_path):
    name = f"kmsn{uuid.uuid4().hex[:8]}"  # <= 15 bytes, so comm carries it whole
    exe = tmp_path / name
    os.symlink(sys.executable, exe)
    proc = subprocess.Popen([str(exe), "-S", "-c", "import time; time.sleep(60)"])
    try:
        wait_until(lambda: find_processes(name) == [proc.pid], what="process visible in /proc")
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        assert comm == name
        # SIGTERM is a signal it does not handle: the process ends, proving delivery
        assert send_signal(name, "SIGTERM", logger=logger()[0]) == [proc.pid]
        assert proc.wait(timeout=30) == -15
    finally:
        proc.kill()
        proc.wait()


def test_never_signals_itself():
    own_comm = Path("/proc/self/comm").read_text().strip()
    assert os.getpid() not in find_processes(own_comm)


def test_missing_process_is_a_warning_not_a_crash():
    log, stream = logger()
    name = f"no-such-proc-{uuid.uuid4().hex[:8]}"
    assert send_signal(name, "SIGHUP", logger=log) == []
    (ev,) = events(stream)
    assert ev["level"] == "warning" and ev["event"] == "signal_no_process" and ev["process"] == name


def test_bad_signal_name_is_a_clear_error():
    try:
        send_signal("x", "SIGNOPE", logger=logger()[0])
    except ValueError as exc:
        assert "SIGNOPE" in str(exc) and "SIGHUP" in str(exc)
    else:
        raise AssertionError("no error for a bad signal name")


# -- commands --------------------------------------------------------------------------------------


async def test_command_exit_status_is_reported_and_output_never_logged(capfd):
    log, stream = logger()
    marker = f"SECRETMARK-{uuid.uuid4().hex}"
    ok = await run_command(["sh", "-c", f"echo {marker}; echo {marker} >&2; exit 0"], timeout=20, logger=log)
    bad = await run_command(["sh", "-c", f"echo {marker}; exit 3"], timeout=20, logger=log)
    assert ok.ok and ok.returncode == 0 and not ok.timed_out
    assert bad.returncode == 3 and not bad.ok
    captured = capfd.readouterr()
    assert marker not in stream.getvalue() + captured.out + captured.err
    done = [e for e in events(stream) if e["event"] == "command_done"]
    assert [e["exit_code"] for e in done] == [0, 3] and all(e["command"] == "sh" for e in done)
    assert all("duration_ms" in e for e in done)


async def test_command_timeout_kills_it_and_its_children(tmp_path):
    log, stream = logger()
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    result = await run_command(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5, logger=log)
    elapsed = time.monotonic() - t0
    assert result.timed_out and result.returncode is None and not result.ok
    assert elapsed < 15
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state == "Z"  # killed, waiting for init to reap it
        except FileNotFoundError:
            return True

    wait_until(gone, what="background child killed with the group")
    assert any(e["event"] == "command_timeout" for e in events(stream))


async def test_command_not_found_is_a_result_not_an_exception():
    log, stream = logger()
    result = await run_command([f"/nonexistent/cmd-{uuid.uuid4().hex[:6]}"], timeout=5, logger=log)
    assert result.returncode is None and not result.ok and "could not start" in result.error
    assert events(stream)[0]["event"] == "command_failed"


# A master that handles SIGHUP and forks workers that keep its cmdline and the default SIGHUP
# action (gunicorn, multiprocessing, nginx workers all look like this in /proc).
FORKING = r"""
import os, signal, sys, time
out = sys.argv[1]
hups = 0
def on_hup(signum, frame):
    global hups
    hups += 1
    with open(out + ".hups", "w") as f:
        f.write(str(hups))
signal.signal(signal.SIGHUP, on_hup)
workers = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        time.sleep(120)
        os._exit(0)
    workers.append(pid)
with open(out, "w") as f:
    f.write(" ".join(map(str, workers)))
while True:
    time.sleep(0.05)
"""


def test_signal_goes_to_the_master_not_to_its_forked_workers(tmp_path):
    name = f"forker_{uuid.uuid4().hex[:8]}.py"
    script = tmp_path / name
    script.write_text(FORKING)
    out = tmp_path / "workers"
    proc = subprocess.Popen([sys.executable, "-u", str(script), str(out)])
    workers: list[int] = []
    try:
        wait_until(lambda: bool(read(out)) or proc.poll() is not None, what="workers forked")
        workers = [int(p) for p in read(out).split()]
        assert find_processes(name) == sorted([proc.pid, *workers])  # all match by name
        assert send_signal(name, "SIGHUP", logger=logger()[0]) == [proc.pid]  # only the master
        wait_until(lambda: read(tmp_path / "workers.hups") == "1", what="master got SIGHUP")
        for pid in workers:  # a worker with the default action would have died
            assert Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    finally:
        for pid in workers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
