"""`kms-injector agent --mode init` as a real subprocess against the dev KMS."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from devkms.server import run_dev_kms
from tests.agent_support import (
    AGENT, BILLING, CHAT, CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, SHARED, agent_args, read_folder, seed, spawn,
    write_credentials,
)


@pytest.fixture
async def kms():
    async with run_dev_kms(seed()) as server:
        yield server


async def test_init_writes_every_key_with_its_mode_and_exits_0(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount = tmp_path / "secrets"
    agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--file-mode", "0440",
                             mode="init", paths=("/chat", "billing=/billing")), tmp_path, "init")
    assert await agent.wait_exit() == 0, agent.stderr()

    expected = {**SHARED, **CHAT, **{f"billing/{k}": v for k, v in BILLING.items()}}
    assert read_folder(mount) == expected
    for rel in expected:
        mode = stat.S_IMODE(os.stat(mount / rel).st_mode)
        assert mode == 0o440, (rel, oct(mode))
    # The kubelet layout apps rely on: KEY -> ..data/KEY, ..data -> one version dir.
    assert os.readlink(mount / "..data").startswith("..2")
    assert os.readlink(mount / "API_KEY") == "..data/API_KEY"
    # Logs name keys and paths, never a value.
    logs = agent.stderr()
    assert all(v not in logs for v in expected.values() if len(v) > 6)


async def test_config_from_env_json_and_yaml_file_with_flags_winning(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    env_config = {"host": kms.base_url, "project": PROJECT, "env": ENV, "sources": [{"path": "/billing"}],
                  "mode": "sidecar", "mount_path": str(tmp_path / "from-env"), "credentials_dir": str(tmp_path / "auth")}
    (tmp_path / "agent.yaml").write_text(f"mount_path: {tmp_path / 'from-yaml'}\nformat: json\nfile_mode: '0400'\n")
    argv = [*AGENT, "--config", str(tmp_path / "agent.yaml"), "--mode", "init"]
    agent = spawn(argv, tmp_path, "init", env={"KMS_AGENT_CONFIG": json.dumps(env_config)})
    assert await agent.wait_exit() == 0, agent.stderr()
    # env gave host/sources, the file replaced mount path and format, the flag replaced the mode.
    assert not (tmp_path / "from-env").exists()
    assert json.loads((tmp_path / "from-yaml" / "secrets.json").read_text()) == BILLING
    assert stat.S_IMODE(os.stat(tmp_path / "from-yaml" / "secrets.json").st_mode) == 0o400


async def test_wrong_credentials_exit_1_with_one_clear_line_before_the_deadline(kms, tmp_path: Path) -> None:
    wrong = "wrong-secret-value-8c1d"
    write_credentials(tmp_path / "auth", CLIENT_ID, wrong)
    t0 = time.monotonic()
    agent = spawn(agent_args(kms.base_url, tmp_path / "secrets", tmp_path / "auth", "--init-timeout", "2s", mode="init"),
                  tmp_path, "init")
    assert await agent.wait_exit(timeout=20) == 1
    elapsed = time.monotonic() - t0
    assert elapsed < 2 + 3, f"took {elapsed:.1f}s for a 2s init timeout"

    err = agent.stderr()
    plain = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, err
    line = plain[0]
    assert line.startswith("kms-agent: init failed after 2s (") and "): invalid credentials (" in line
    for part in (f"host={kms.base_url}", f"project={PROJECT}", f"env={ENV}", "path=/chat", "status=401", "KMS said:"):
        assert part in line, (part, line)
    assert wrong not in err and CLIENT_SECRET not in err
    assert not (tmp_path / "secrets" / "API_KEY").exists()
    # Wrong credentials are not hammered (an identity may be locked after a few bad logins).
    assert kms.stats()["routes"].get("POST /v1/auth/universal-auth/login", 0) <= 2


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["--refresh-interval", "1s"], None, "refresh_interval"),
        (["--host", "ftp://kms.example"], None, "host"),
        (["--file-mode", "0777"], None, "file_mode"),
        (["--format", "toml"], None, "format"),
        (["--path", "../etc"], None, "sources[0].path"),
        ([], '{"host": "http://127.0.0.1:1/api", "project": "p", "env": "prod", "sources": ["/a"], "refresh": 5}', "refresh"),
        ([], "{not json", "KMS_AGENT_CONFIG"),
    ],
)
async def test_bad_config_exits_2_naming_the_field(tmp_path: Path, args: list[str], env: str | None, field: str) -> None:
    base = [] if env else ["--host", "http://127.0.0.1:9/api", "--project", PROJECT, "--env", ENV, "--path", "/chat"]
    if args and args[0] == "--path":
        base = base[:-2]
    agent = spawn([*AGENT, "--mode", "init", *base, *args], tmp_path, "bad", env={"KMS_AGENT_CONFIG": env} if env else None)
    assert await agent.wait_exit() == 2
    err = agent.stderr().strip()
    assert err.startswith(f"kms-agent: bad config: {field}:"), err
    assert len(err.splitlines()) == 1


async def test_missing_config_names_the_required_field(tmp_path: Path) -> None:
    agent = spawn([*AGENT, "--mode", "init", "--project", PROJECT], tmp_path, "none")
    assert await agent.wait_exit() == 2
    assert agent.stderr().startswith("kms-agent: bad config: host: is required")


class _TlsKmsHoldingClose:
    """A tiny Infisical-API KMS over real TLS, on a thread, that never answers the agent's TLS
    close_notify: the agent's close of its idle connection then waits (bounded by SHUTDOWN_GRACE),
    and `closing` is set the moment the close starts, so a SIGTERM can land inside that window."""

    def __init__(self, cert: Path, key: Path, secrets: dict[str, str]) -> None:
        import socket
        import ssl
        import threading

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.secrets = secrets
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.closing = threading.Event()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, raw) -> None:
        raw.settimeout(30)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:  # the agent's close_notify: hold the socket, never answer it
                        self.closing.set()
                        self.stop.wait(30)
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                path = lines[0].split(" ")[1].split("?")[0]
                if path == "/api/v1/auth/universal-auth/login":
                    body = {"accessToken": "tok-tls-close", "expiresIn": 3600, "accessTokenMaxTTL": 0}
                elif path == "/api/v3/secrets/raw":
                    body = {"secrets": [{"secretKey": k, "secretValue": v} for k, v in self.secrets.items()], "imports": []}
                else:
                    body = {"message": "not found"}
                data = json.dumps(body).encode()
                status = "404 Not Found" if "message" in body else "200 OK"
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)


async def test_sigterm_while_init_closes_its_connection_after_success_exits_0(tmp_path: Path) -> None:
    # After the first sync succeeds, init closes its KMS connection (bounded by SHUTDOWN_GRACE). A
    # SIGTERM landing then used to cancel the close: an uncaught CancelledError, a traceback, exit 1,
    # although the files were written. The server holds the TLS close open and tells us when it
    # starts, so the signal lands inside that window. The window is 0.5 s: on a starved machine a
    # signal may come too late (the agent then already exited 0), so up to 3 runs must include one
    # where the agent logged `stopping`, i.e. handled the signal while closing.
    import signal as _signal

    from tests.agent_support import wait_for
    from tests.reliability_support import make_tls

    cert, key, ca_pem = make_tls(tmp_path / "tls")
    (tmp_path / "ca.pem").write_text(ca_pem)
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    secrets = {"API_KEY": "VALUE-tls-close-1", "DB_URL": "VALUE-tls-close-2"}
    landed = 0
    for attempt in range(3):
        server = _TlsKmsHoldingClose(cert, key, secrets)
        mount = tmp_path / f"secrets{attempt}"
        try:
            agent = spawn(agent_args(f"https://127.0.0.1:{server.port}/api", mount, tmp_path / "auth", "--init-timeout", "30s",
                                     mode="init"), tmp_path, f"init{attempt}", env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")})
            await wait_for(lambda: server.closing.is_set() or agent.popen.poll() is not None, timeout=30, what="agent closing")
            assert server.closing.is_set(), agent.stderr()[-2000:]
            if agent.popen.poll() is None:
                agent.popen.send_signal(_signal.SIGTERM)
            rc = await agent.wait_exit(timeout=30)
        finally:
            server.close()
        err = agent.stderr()
        assert rc == 0, err[-2000:]
        assert "Traceback" not in err and "CancelledError" not in err, err[-2000:]
        assert agent.events("first_sync"), err[-2000:]
        assert read_folder(mount) == secrets
        assert "VALUE-tls-close" not in err and CLIENT_SECRET not in err
        if agent.events("stopping"):
            landed += 1
            break
    assert landed, "no SIGTERM landed while the agent was closing, in 3 runs"


async def test_sigterm_during_the_notify_command_exits_0_with_the_files_written(kms, tmp_path: Path) -> None:
    """The files are written before the command runs: a SIGTERM cutting the command (the pod is
    going away) leaves a finished sync, exit 0, not a failed one. Only the sidecar notifies, so
    this runs in sidecar mode (init never runs the command: the test below)."""
    import signal as _signal

    from tests.agent_support import wait_for

    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount, marker = tmp_path / "secrets", tmp_path / "command-started"
    agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--command", f"sh -c 'touch {marker}; sleep 60'",
                             mode="sidecar"), tmp_path, "sidecar-command")
    try:
        await wait_for(lambda: marker.exists() or agent.popen.poll() is not None, 30, "the command to start")
        assert marker.exists(), agent.stderr()[-2000:]
        agent.popen.send_signal(_signal.SIGTERM)
        assert await agent.wait_exit(30) == 0, agent.stderr()[-2000:]
    finally:
        agent.stop()
    assert read_folder(mount) == {**SHARED, **CHAT}
    assert agent.events("stopping") and "Traceback" not in agent.stderr()


async def test_init_never_notifies_even_when_its_config_carries_a_command_or_signal(kms, tmp_path: Path) -> None:
    """Issue 12 item 3: the init container's config may carry the signal or command; init writes
    the files and exits 0 at once, running nothing and signalling nobody (no app runs yet, and a
    command would hold every pod start for its timeout)."""
    import sys

    from tests.agent_support import APP, app_name, wait_for

    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount, marker = tmp_path / "secrets", tmp_path / "command-ran"
    agent = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--command", f"sh -c 'touch {marker}; sleep 60'",
                             "--init-timeout", "5s", mode="init"), tmp_path, "init-command")
    assert await agent.wait_exit(30) == 0, agent.stderr()[-2000:]
    assert read_folder(mount) == {**SHARED, **CHAT}
    assert not marker.exists(), "init ran the notify command"
    assert agent.events("notify_skipped") and not [e for e in agent.events() if e["event"].startswith("command_")]

    # A signal: an app of that name runs (here, after a first init wrote its files); a second
    # init with changed content signals nobody.
    name = app_name()
    app = spawn([sys.executable, str(APP), str(mount)], tmp_path, "app", env={"KMS_APP_NAME": name})
    try:
        await wait_for(lambda: "app: loaded" in app.stdout(), what="app start")
        kms.set_secret(PROJECT, ENV, "/chat", "API_KEY", "VALUE-init-rotated")
        again = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--signal", "SIGHUP", "--signal-process", name,
                                 mode="init"), tmp_path, "init-signal")
        assert await again.wait_exit(30) == 0, again.stderr()[-2000:]
        assert read_folder(mount)["API_KEY"] == "VALUE-init-rotated"
        # The app exists, so a signal would have been logged as sent (or refused): nothing was tried.
        assert again.events("files_written") and not [e for e in again.events() if e["event"].startswith("signal_")]
    finally:
        app.stop()


async def test_every_log_line_names_the_pod_and_its_namespace(kms, tmp_path: Path) -> None:
    """Issue 12 item 12 (log side): the webhook sets KMS_POD_NAME / KMS_POD_NAMESPACE from the
    downward API; every line the agent writes (its own, the KMS client's, the writer's) names them."""
    pod = {"KMS_POD_NAME": "chat-7d9f-abcde", "KMS_POD_NAMESPACE": "hanzo"}
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    agent = spawn(agent_args(kms.base_url, tmp_path / "secrets", tmp_path / "auth", mode="init"), tmp_path, "init", env=pod)
    assert await agent.wait_exit() == 0, agent.stderr()
    lines = agent.stderr().splitlines()
    records = agent.events()
    assert len(records) == len(lines) and {"starting", "kms_login", "files_written", "first_sync"} <= {r["event"] for r in records}
    assert all(r.get("pod") == "chat-7d9f-abcde" and r.get("namespace") == "hanzo" for r in records), records

    write_credentials(tmp_path / "auth", CLIENT_ID, "wrong-secret-pod-line")
    failed = spawn(agent_args(kms.base_url, tmp_path / "other", tmp_path / "auth", "--init-timeout", "1s", mode="init"),
                   tmp_path, "failed", env=pod)
    assert await failed.wait_exit() == 1
    plain = [line for line in failed.stderr().splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].endswith(" pod=hanzo/chat-7d9f-abcde"), plain
    assert all(r.get("pod") == "chat-7d9f-abcde" for r in failed.events())
