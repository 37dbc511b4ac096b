"""Hostile input, agent side (issue 6 item 4): KMS answers with key names that try to escape the
mount (`../../etc/passwd`, `..data`, absolute paths, `a/b`, NUL, 300 bytes, a fake version folder),
a 10 MB value, a folder of 10,000 keys, and the same keys in several imports. The real agent
(init, then sidecar) against the dev KMS seeded with them: it exits 0, writes the safe keys
exactly, skips each unsafe one with a warning that names the key and never the value, writes
nothing outside the mount, and the folder's own value wins over imports (the later import over
an earlier one)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from devkms.server import run_dev_kms
from tests.agent_support import (
    CLIENT_ID, CLIENT_SECRET, ENV, PROJECT, agent_args, read_folder, seed, serve_app, spawn, wait_for, write_credentials,
)

from .reliability_support import assert_no_leaks

HOSTILE = {  # key -> value; each value is a distinct marker that must never be logged or written
    "../../etc/passwd": "HOSTILEVAL-passwd-41a9",
    "../escape": "HOSTILEVAL-escape-7c2e",
    "..data": "HOSTILEVAL-dotdotdata-0b3f",
    "..data_tmp": "HOSTILEVAL-datatmp-8d11",
    "..2026_01_01_00_00_00.1": "HOSTILEVAL-fakeversion-5e6a",
    "/etc/passwd": "HOSTILEVAL-absolute-92fd",
    "/abs": "HOSTILEVAL-abs-c4d0",
    "a/b": "HOSTILEVAL-slash-13ab",
    "..": "HOSTILEVAL-dotdot-6f70",
    ".": "HOSTILEVAL-dot-2a2a",
    "nul\x00key": "HOSTILEVAL-nul-77e1",
    "back\\slash": "HOSTILEVAL-backslash-4bb4",
    "k" * 300: "HOSTILEVAL-long-a0a0",
}
SAFE = {"GOOD": "plain-value-1", "dots.are.fine": "plain-value-2", "UNICODE_ключ": "plain-value-3", "-dash": "plain-value-4"}
BIG_VALUE = "".join(f"{i:08d}" for i in range(1_250_000))  # 10,000,000 bytes, position-coded
MANY = {f"K{i:05d}": f"many-{i}" for i in range(10_000)}
DUPS = {
    "/imp-a": {"DUP": "from-import-a", "OWN": "from-import-a", "ONLY_A": "only-a"},
    "/imp-b": {"DUP": "from-import-b", "ONLY_B": "only-b"},
    "/dup": {"OWN": "from-the-folder"},
}


@pytest.fixture
def base():
    d = Path(tempfile.mkdtemp(prefix="kms-hostile-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hostile_seed() -> dict:
    s = seed()
    folders = s["projects"][PROJECT]["environments"][ENV]["folders"]
    folders["/hostile"] = {"secrets": {**HOSTILE, **SAFE, "BIG": BIG_VALUE}}
    folders["/many"] = {"secrets": dict(MANY)}
    folders["/imp-a"] = {"secrets": DUPS["/imp-a"]}
    folders["/imp-b"] = {"secrets": DUPS["/imp-b"]}
    folders["/dup"] = {"imports": ["/imp-a", "/imp-b"], "secrets": DUPS["/dup"]}
    return s


def tree(root: Path, skip: Path) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip:
            dirs[:] = []
            continue
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


async def test_hostile_keys_big_values_many_keys_and_duplicate_imports(tmp_path: Path, base: Path) -> None:
    mount = base / "deep" / "er" / "secrets"
    mount.mkdir(parents=True)
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_text("canary\n")
    before = tree(base, mount)
    async with run_dev_kms(hostile_seed()) as kms:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        paths = ("/hostile", "many=/many", "dup=/dup")
        t0 = time.monotonic()
        init = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", mode="init", paths=paths), tmp_path, "init")
        rc = await init.wait_exit(timeout=120)
        took = time.monotonic() - t0
        assert rc == 0, init.stderr()[-3000:]

        files = read_folder(mount)
        assert {k: v for k, v in files.items() if "/" not in k and k != "BIG"} == SAFE
        big = (mount / "BIG").read_bytes()
        assert len(big) == 10_000_000 and hashlib.sha256(big).digest() == hashlib.sha256(BIG_VALUE.encode()).digest()
        many = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("many/")}
        assert many == MANY
        dup = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("dup/")}
        assert dup == {"DUP": "from-import-b", "OWN": "from-the-folder", "ONLY_A": "only-a", "ONLY_B": "only-b"}

        # Only our entries in the mount; nothing created or changed outside it.
        entries = set(os.listdir(mount))
        dotted = {e for e in entries if e.startswith("..")}
        assert dotted == {"..data", os.readlink(mount / "..data")}, dotted
        assert entries - dotted == set(SAFE) | {"BIG", "many", "dup"}
        assert tree(base, mount) == before
        assert (base / "etc" / "passwd").read_text() == "canary\n"

        # One warning per unsafe key, naming it (shortened when long), never its value.
        skipped = init.events("key_skipped")
        named = {r["key"] for r in skipped}
        assert len(skipped) == len(HOSTILE), [r["key"] for r in skipped]
        for key in HOSTILE:  # logged as is (JSON escapes NUL), shortened past 120 characters
            assert key in named if len(key) <= 120 else f"{key[:120]}...({len(key)} chars)" in named, (key, named)

        # The sidecar over the same data: no rewrite (same content), still healthy after a hostile
        # key is rotated and a new one appears; the 10 MB file is removed when its key goes.
        version = os.readlink(mount / "..data")
        side = spawn(agent_args(kms.base_url, mount, tmp_path / "auth", "--refresh-interval", "5s", paths=paths), tmp_path, "sidecar")
        try:
            await wait_for(lambda: side.events("first_sync"), 60, "sidecar first sync")
            assert side.events("first_sync")[0]["changed"] is False and os.readlink(mount / "..data") == version
            kms.set_secret(PROJECT, ENV, "/hostile", "..data", "HOSTILEVAL-dotdotdata-rotated-1")
            kms.set_secret(PROJECT, ENV, "/hostile", "../../../../../../tmp/kms-owned", "HOSTILEVAL-new-escape-2")
            kms.delete_secret(PROJECT, ENV, "/hostile", "BIG")
            await wait_for(lambda: not os.path.lexists(mount / "BIG"), 30, "BIG removed")
            assert read_folder(mount)["GOOD"] == SAFE["GOOD"] and not side.events("sync_failing")
            assert not os.path.exists("/tmp/kms-owned") and tree(base, mount) == before
        finally:
            side.stop()

    outputs = {"init stderr": init.stderr(), "init stdout": init.stdout(), "sidecar stderr": side.stderr()}
    markers = {f"value of {k!r}"[:40]: v for k, v in HOSTILE.items()}
    markers.update({"rotated hostile": "HOSTILEVAL-dotdotdata-rotated-1", "new escape": "HOSTILEVAL-new-escape-2",
                    "big value": BIG_VALUE[1000:1032], "client secret": CLIENT_SECRET, "many value": "many-4242"})
    assert_no_leaks(outputs, markers)
    print(f"hostile agent: init with a 10 MB value, 10,000 keys and {len(HOSTILE)} hostile keys took {took:.2f}s")


async def test_key_that_is_not_utf8_text_is_skipped_not_fatal(tmp_path: Path) -> None:
    # JSON "\ud800" decodes to a lone surrogate, which cannot be encoded as a file name. It must be
    # skipped like any other unsafe key, not fail every sync (and so block every other rotation).
    # A hand-written KMS: the dev KMS cannot even store such a key.
    from aiohttp import web

    body = ('{"secrets": [{"secretKey": "GOOD", "secretValue": "good-1"},'
            ' {"secretKey": "BAD\\ud800", "secretValue": "HOSTILEVAL-surrogate-9"}], "imports": []}')

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "tok-odd", "expiresIn": 3600, "accessTokenMaxTTL": 0})

    async def secrets_raw(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/auth/universal-auth/login", login)
    app.router.add_get("/api/v3/secrets/raw", secrets_raw)
    runner, port = await serve_app(app)
    mount = tmp_path / "secrets"
    try:
        write_credentials(tmp_path / "auth", CLIENT_ID, CLIENT_SECRET)
        init = spawn(agent_args(f"http://127.0.0.1:{port}/api", mount, tmp_path / "auth", "--init-timeout", "20s",
                                mode="init", paths=("/odd",)), tmp_path, "init")
        rc = await init.wait_exit(timeout=60)
    finally:
        await runner.cleanup()
    assert rc == 0, init.stderr()[-2000:]
    assert read_folder(mount) == {"GOOD": "good-1"}
    skipped = init.events("key_skipped")
    assert [r["key"] for r in skipped] == ["BAD\ud800"], skipped
    assert "UTF-8" in skipped[0]["reason"]
    assert_no_leaks({"init stderr": init.stderr()}, {"surrogate value": "HOSTILEVAL-surrogate-9"})
