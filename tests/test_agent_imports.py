"""The agent package imports only the standard library and h11 at run time (issue 13 item 3).

h11 is the one exception issue 13 item 7 allows: pure-Python HTTP/1.1 framing, measured at ~5 ms
and < 1 MiB (bench/README.md "HTTP framing"); the agent image installs it and nothing else.

Real runs of `kms-injector agent` (init and sidecar) against the dev KMS, with `-X importtime`:
every module the process imported is the standard library or `injector` (the site machinery of
the venv aside). For a plain-http KMS neither `ssl` nor OpenSSL's `_hashlib` is loaded (4.4 and
3.7 MiB of resident memory, see bench/README.md). Then the agent image's situation: a tree that
holds only injector/, run without site-packages (`python -I -S`), syncs; the webhook and dev
commands there say they are not in it, without a traceback."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest

from devkms.server import run_dev_kms
from tests.agent_support import (
    AGENT, CHAT, CLIENT_ID, CLIENT_SECRET, SHARED, agent_args, free_port, read_folder, seed, spawn, wait_for,
    write_credentials,
)

# Modules the interpreter's site step loads from the venv before the agent's code runs.
SITE_MACHINERY = ("__editable__", "_distutils_hack", "_virtualenv", "sitecustomize", "usercustomize")
# The one third-party distribution the agent image carries (Dockerfile.agent).
AGENT_DEPENDENCIES = {"h11"}
# The C modules that map OpenSSL (importtime also lists the blocked attempt at `ssl` itself).
NOT_FOR_PLAIN_HTTP = ("_ssl", "_hashlib")


@pytest.fixture
async def kms():
    async with run_dev_kms(seed()) as server:
        yield server


def imported(stderr: str) -> list[str]:
    """Module names from `-X importtime` lines (`import time: self | cumulative | name`)."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:") and "|" in line]


def third_party(modules: list[str]) -> set[str]:
    # "imported package": importtime's header line; "org": pickle's probe for Jython's
    # org.python.core, which fails (importtime lists attempts too).
    tops = {m.split(".")[0] for m in modules} - {"imported package", "org"}
    return {t for t in tops if t not in sys.stdlib_module_names and t != "injector" and not t.startswith(SITE_MACHINERY)
            and t not in AGENT_DEPENDENCIES}


def importtime(argv: list[str]) -> list[str]:
    """The agent command line `argv` (from agent_args), run with `python -X importtime`."""
    head = [AGENT[0]] if len(AGENT) == 2 else ["-m", "injector"]
    return [sys.executable, "-X", "importtime", *head, *argv[len(AGENT) - 1:]]


async def test_init_imports_only_the_standard_library_and_no_tls_for_http(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount = tmp_path / "secrets"
    agent = spawn(importtime(agent_args(kms.base_url, mount, tmp_path / "auth", mode="init")), tmp_path, "init")
    assert await agent.wait_exit() == 0, agent.stderr()[-2000:]
    assert read_folder(mount) == {**SHARED, **CHAT}
    modules = imported(agent.stderr())
    assert "injector.agent_loop" in modules and "asyncio" in modules  # the parse sees the real imports
    assert third_party(modules) == set()
    assert not set(NOT_FOR_PLAIN_HTTP) & set(modules), sorted(set(NOT_FOR_PLAIN_HTTP) & set(modules))


async def test_sidecar_imports_only_the_standard_library_and_no_tls_for_http(kms, tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount, port = tmp_path / "secrets", free_port()
    agent = spawn(importtime(agent_args(kms.base_url, mount, tmp_path / "auth", "--health-port", str(port),
                                        "--refresh-interval", "5s")), tmp_path, "sidecar")
    try:
        await wait_for(lambda: agent.events("first_sync") and agent.events("events_connected") and agent.events("health_listening"),
                       30, "first sync, event stream and health server")
        from tests.agent_support import metrics

        assert "kms_agent_ready 1" in await metrics(port)
        maps = Path(f"/proc/{agent.popen.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps, "OpenSSL is mapped into a plain-http sidecar"
        agent.popen.send_signal(signal.SIGTERM)
        assert await agent.wait_exit(30) == 0
    finally:
        agent.stop()
    modules = imported(agent.stderr())
    assert {"injector.event_trigger", "injector.kms.events", "injector.filewatch", "injector.health"} <= set(modules)
    assert third_party(modules) == set()
    assert not set(NOT_FOR_PLAIN_HTTP) & set(modules), sorted(set(NOT_FOR_PLAIN_HTTP) & set(modules))


async def test_an_https_host_still_gets_tls(tmp_path: Path) -> None:
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    port = free_port()  # nothing listens: the connection is refused, after ssl was loaded for it
    agent = spawn(importtime(agent_args(f"https://127.0.0.1:{port}/api", tmp_path / "secrets", tmp_path / "auth",
                                        "--init-timeout", "1s", mode="init")), tmp_path, "init")
    assert await agent.wait_exit() == 1
    err = agent.stderr()
    assert "_ssl" in imported(err) and "TLS is not loaded" not in err and "Traceback" not in err
    assert "cannot connect" in err or "connect" in err.lower()


def _agent_only_tree(tmp: Path) -> Path:
    """What the agent image holds: injector/ and its one dependency (h11), nothing else."""
    import h11

    root = Path(__file__).resolve().parents[1]
    tree = tmp / "image"
    shutil.copytree(root / "injector", tree / "injector", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(h11.__file__).parent, tree / "h11", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _isolated(tree: Path, *args: str) -> list[str]:
    # -I: no user site, no PYTHON* env; -S: no site-packages at all, so a third-party import fails.
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from injector.cli import main; sys.exit(main())"
    return [sys.executable, "-I", "-S", "-c", code, *args]


async def test_the_agent_alone_without_site_packages_syncs(kms, tmp_path: Path) -> None:
    tree = _agent_only_tree(tmp_path)
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount = tmp_path / "secrets"
    argv = agent_args(kms.base_url, mount, tmp_path / "auth", mode="init")
    assert argv[:len(AGENT)] == AGENT
    agent = spawn(_isolated(tree, *argv[len(AGENT) - 1:]), tmp_path, "isolated")
    assert await agent.wait_exit() == 0, agent.stderr()[-2000:]
    assert read_folder(mount) == {**SHARED, **CHAT}


@pytest.mark.parametrize("command", ["webhook", "inject", "dev-server", "demo"])
async def test_commands_not_in_the_agent_image_say_so(tmp_path: Path, command: str) -> None:
    tree = _agent_only_tree(tmp_path)
    proc = spawn(_isolated(tree, command, "--help"), tmp_path, command)
    assert await proc.wait_exit() == 2
    err = proc.stderr()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"the {command!r} command is not in this installation" in err and "agent image" in err


async def test_a_json_config_file_needs_no_yaml(kms, tmp_path: Path) -> None:
    """The agent image has no PyYAML: a --config file written as JSON works there; a YAML one is
    refused with a line that says to write JSON."""
    import json

    tree = _agent_only_tree(tmp_path)
    write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
    mount = tmp_path / "secrets"
    (tmp_path / "agent.json").write_text(json.dumps({
        "host": kms.base_url, "project": "secrets-639-c", "env": "prod", "sources": ["/chat"], "mode": "init",
        "mount_path": str(mount), "credentials_dir": str(tmp_path / "auth")}))
    agent = spawn(_isolated(tree, "agent", "--config", str(tmp_path / "agent.json")), tmp_path, "json")
    assert await agent.wait_exit() == 0, agent.stderr()[-2000:]
    assert read_folder(mount) == {**SHARED, **CHAT}
    (tmp_path / "agent.yaml").write_text(f"host: {kms.base_url}\nproject: secrets-639-c\n")
    agent = spawn(_isolated(tree, "agent", "--config", str(tmp_path / "agent.yaml")), tmp_path, "yaml")
    assert await agent.wait_exit() == 2
    err = agent.stderr().strip()
    assert err.startswith("kms-agent: bad config: config:") and "write the file as JSON" in err and len(err.splitlines()) == 1


async def test_without_watchfiles_the_fallback_watch_polls_instead_of_dying(tmp_path: Path) -> None:
    """Where inotify is unavailable (another OS, or inotify_init1 failing with EMFILE on a busy
    node), the watch falls back to watchfiles; the agent image has none, so it polls (every
    `recheck`) instead of dying with ImportError over and over."""
    tree = _agent_only_tree(tmp_path)
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); import asyncio\n"
            "from injector.filewatch import _watchfiles\n"
            "async def main():\n"
            "    gen = _watchfiles([sys.argv[1]], 0.05, 0.05)\n"
            "    for _ in range(3):\n"
            "        await anext(gen)\n"
            "    await gen.aclose()\n"
            "    print('polled 3 times')\n"
            "asyncio.run(main())\n")
    proc = spawn([sys.executable, "-I", "-S", "-c", code, str(tmp_path)], tmp_path, "poll")
    assert await proc.wait_exit() == 0, proc.stderr()
    assert proc.stdout().strip() == "polled 3 times"
