"""webhook.reload: the one reload-on-change under the serving certificate and the settings file.

Real files laid out and updated the way kubelet updates a Secret/ConfigMap volume (a `..data`
symlink swap), the real inotify watcher, short poll intervals so the safety-net poll runs many
times. The same scenario runs against both users; the generic rules run against a small JSON
reloader built on the public base class."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from injector.log import Logger
from webhook import certs
from webhook.metrics import Metrics
from webhook.reload import UNREADABLE, Reloader, files_digest
from webhook.settings_reload import SettingsReloader
from webhook.tls import CertReloader

from .agent_support import write_volume

OTHER_HOST = "https://kms.other.example/api"
SETTINGS = ["defaultPolicy: allow\n", f"defaultPolicy: allow\nallowedHosts:\n  - {OTHER_HOST}\n"]
BROKEN_SETTINGS = "defaultPolicy: sometimes\n"


def events(stream: io.StringIO, name: str) -> list[dict]:
    return [r for r in map(json.loads, stream.getvalue().splitlines()) if r["event"] == name]


async def until(cond: Callable[[], Any], what: str, stream: io.StringIO, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}; log: {stream.getvalue()[-1500:]}"
        await asyncio.sleep(0.02)
    return value


@contextlib.asynccontextmanager
async def watching(r: Reloader) -> AsyncIterator[asyncio.Task]:
    stop = asyncio.Event()
    task = asyncio.create_task(r.watch(stop))
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "watch() did not return after stop was set"


# --- both users, one scenario ------------------------------------------------------------------------

@dataclass
class User:
    """How the scenario drives one reloader: its volume contents, what it serves, its log events."""

    name: str
    make: Callable[[Path, Logger], Reloader]
    good: list[dict[str, str]]  # two different good volume contents
    bad: dict[str, str]
    served: Callable[[Reloader], Any]  # what new admissions/handshakes would see
    accepted_event: str
    failed_event: str
    recovered_event: str


_CA = certs.generate_ca("test-reload-ca")


def _pair() -> dict[str, str]:
    leaf = certs.generate_serving_cert(_CA, ["localhost"])
    return {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()}


def _cert_user() -> User:
    good = [_pair(), _pair()]
    bad = {"tls.crt": good[1]["tls.crt"], "tls.key": _pair()["tls.key"]}  # a key of another cert
    return User(
        "tls",
        lambda d, log: CertReloader(d / "tls.crt", d / "tls.key", log=log, poll_interval=0.2),
        good, bad,
        lambda r: r.current and r.current.serial,
        "tls_cert_reloaded", "tls_reload_failed", "tls_reload_recovered")


def _settings_user() -> User:
    swapped: list[Any] = []

    def make(d: Path, log: Logger) -> Reloader:
        return SettingsReloader(d / "settings.yaml", metrics=Metrics(), log=log, poll_interval=0.2, on_change=swapped.append)

    return User(
        "settings", make,
        [{"settings.yaml": s} for s in SETTINGS], {"settings.yaml": BROKEN_SETTINGS},
        lambda r: (r.generation, tuple(swapped[-1].allowed_hosts) if swapped else None),
        "settings_reloaded", "settings_reload_failed", "settings_reload_recovered")


@pytest.mark.parametrize("make_user", [_cert_user, _settings_user], ids=["certificate", "settings"])
async def test_change_bad_change_revert_and_change_again(tmp_path: Path, make_user: Callable[[], User]) -> None:
    user = make_user()
    vol, stream = tmp_path / "vol", io.StringIO()
    write_volume(vol, user.good[0])
    r = user.make(vol, Logger("webhook", stream=stream))
    result = r.load_now()
    assert result and not isinstance(result, Exception)
    first = user.served(r)
    async with watching(r):
        # A good change is served.
        write_volume(vol, user.good[1])
        await until(lambda: user.served(r) != first, "the good change to be served", stream)
        second = user.served(r)
        assert len(events(stream, user.accepted_event)) == 1

        # A bad change keeps what is served, is reported once, and is not retried while it stays.
        write_volume(vol, user.bad)
        await until(lambda: events(stream, user.failed_event), "the bad change to be reported", stream)
        digest_of_bad = r.failed_digest
        assert digest_of_bad == files_digest(r.paths) and user.served(r) == second

        # Back to the served bytes: no longer failing, nothing swapped.
        write_volume(vol, user.good[1])
        await until(lambda: events(stream, user.recovered_event), "the revert to be noticed", stream)
        assert r.failed_digest is None and user.served(r) == second
        assert len(events(stream, user.failed_event)) == 1, "the same bad bytes were reported twice"
        assert len(events(stream, user.accepted_event)) == 1

        # A change after all that is served again.
        write_volume(vol, user.good[0])
        await until(lambda: len(events(stream, user.accepted_event)) == 2, "the next change", stream)
        assert user.served(r) not in (second, None)
    assert "BEGIN" not in stream.getvalue() and OTHER_HOST not in stream.getvalue(), "file contents in the log"


# --- the generic rules, on a reloader built on the base class ----------------------------------------

class JsonReloader(Reloader[dict]):
    """A third user: serves a JSON object from one file."""

    settle = 2.0  # generous: the writer's second step below lands well within it

    def __init__(self, path: Path, log: Logger) -> None:
        super().__init__([path], name="json", log=log, poll_interval=0.1)
        self.parses = 0
        self.digest_checks = 0
        self.served: dict | None = None
        self.rejections: list[str] = []
        self.on_parse: Callable[[], None] | None = None
        self.fail_accept_once = False

    def current_digest(self) -> str:
        self.digest_checks += 1
        return super().current_digest()

    def parse(self) -> dict:
        self.parses += 1
        text = self.paths[0].read_text()
        if self.on_parse is not None:
            self.on_parse()
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        return value

    def accepted(self, value: dict, digest: str, first: bool) -> None:
        if self.fail_accept_once:
            self.fail_accept_once = False
            raise RuntimeError("a bug in a hook")
        self.served = value

    def rejected(self, exc: Exception, digest: str, first: bool) -> None:
        self.rejections.append(type(exc).__name__)


def loaded(tmp_path: Path) -> tuple[Path, io.StringIO, JsonReloader]:
    """A JsonReloader serving {"v": 1} from a real file, and its log."""
    path, stream = tmp_path / "v.json", io.StringIO()
    path.write_text('{"v": 1}')
    r = JsonReloader(path, Logger("j", stream=stream))
    assert r.load_now() == {"v": 1} and r.served == {"v": 1}
    return path, stream, r


async def test_the_same_bad_bytes_are_parsed_once_however_often_polled(tmp_path: Path) -> None:
    path, stream, r = loaded(tmp_path)
    async with watching(r):
        path.write_text("[not json")
        await until(lambda: r.rejections, "the bad bytes to be rejected", stream)
        parses, checks = r.parses, r.digest_checks
        await until(lambda: r.digest_checks >= checks + 10, "ten more polls", stream)
        assert r.parses == parses and r.rejections == ["JSONDecodeError"] and r.served == {"v": 1}


async def test_a_writer_finishing_within_the_settle_time_is_served_not_rejected(tmp_path: Path) -> None:
    path, _, r = loaded(tmp_path)
    path.write_text('{"v": ')  # the first half of a two-step write

    def second_step() -> None:
        r.on_parse = None
        threading.Timer(0.05, path.write_text, ('{"v": 2}',)).start()

    r.on_parse = second_step
    assert await r.reload() is True
    assert r.served == {"v": 2} and r.rejections == [] and r.digest == files_digest([path])


async def test_a_bug_in_a_hook_is_logged_and_the_watch_goes_on(tmp_path: Path) -> None:
    path, stream, r = loaded(tmp_path)
    async with watching(r) as task:
        r.fail_accept_once = True
        path.write_text('{"v": 2}')
        await until(lambda: events(stream, "json_reload_error"), "the hook's error to be logged", stream)
        assert events(stream, "json_reload_error")[0]["error"] == "RuntimeError"
        path.write_text('{"v": 3}')
        await until(lambda: r.served == {"v": 3}, "the next change after the bug", stream)
        assert not task.done()


async def test_files_that_do_not_exist_yet_are_picked_up_when_they_appear(tmp_path: Path) -> None:
    vol, stream = tmp_path / "not-yet", io.StringIO()
    r = JsonReloader(vol / "v.json", Logger("j", stream=stream))
    assert isinstance(r.load_now(), Exception) and r.failed_digest == UNREADABLE
    async with watching(r):
        write_volume(vol, {"v.json": '{"v": "late"}'})
        await until(lambda: r.served == {"v": "late"}, "the late file to be served", stream)
        assert r.rejections == ["FileNotFoundError"]  # once, at the first load
