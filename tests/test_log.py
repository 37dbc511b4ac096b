"""injector.log: the one logger of both programs. JSON lines, the level threshold, the webhook's
batched fast path (one write per event-loop iteration, order kept, flushed at exit), a faster
encoder with the stdlib as its fallback, and children that share the queue."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

from injector.log import Logger
from webhook.app import fast_logger, orjson_line


class CountingBytes(io.BytesIO):
    """A byte stream that counts write calls (each one a write(2) on a real fd)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def text_stream() -> tuple[io.TextIOWrapper, CountingBytes]:
    raw = CountingBytes()
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True), raw


def lines(raw: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in raw.getvalue().decode().splitlines()]


def test_a_line_has_the_fields_and_respects_the_level() -> None:
    stream = io.StringIO()
    log = Logger("agent", stream=stream, level="info", pod="p-1")
    log.debug("hidden")
    log.warning("kms_unreachable", host="kms.example", status=503)
    (rec,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert rec["level"] == "warning" and rec["component"] == "agent" and rec["event"] == "kms_unreachable"
    assert rec["pod"] == "p-1" and rec["status"] == 503 and rec["ts"].endswith("Z") and len(rec["ts"]) == 24


async def test_lines_of_one_loop_iteration_are_one_write_in_order() -> None:
    stream, raw = text_stream()
    log = Logger("webhook", stream=stream, encode=orjson_line)
    for i in range(50):
        log.info_soon("admission", n=i)
    assert raw.writes == 0  # nothing written inside the iteration
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert raw.writes == 1 and [r["n"] for r in lines(raw)] == list(range(50))


async def test_another_log_call_writes_the_queue_first() -> None:
    stream, raw = text_stream()
    log = Logger("webhook", stream=stream)
    tls = log.named("webhook.tls")
    log.info_soon("admission", n=1)
    tls.error("tls_reload_failed")  # a child shares the queue: order holds across components
    log.bind(uid="u").info_soon("admission", n=2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    recs = lines(raw)
    assert [(r["event"], r.get("n")) for r in recs] == [("admission", 1), ("tls_reload_failed", None), ("admission", 2)]
    assert recs[1]["component"] == "webhook.tls" and recs[2]["uid"] == "u"


def test_without_a_loop_info_soon_writes_at_once() -> None:
    stream = io.StringIO()
    Logger("x", stream=stream).info_soon("now")
    assert json.loads(stream.getvalue())["event"] == "now"


def test_what_the_fast_encoder_refuses_the_stdlib_writes() -> None:
    stream = io.StringIO()
    log = Logger("webhook", stream=stream, encode=orjson_line)
    log.info("big", n=2**70, path=__import__("pathlib").Path("/x"))
    rec = json.loads(stream.getvalue())
    assert rec["n"] == 2**70 and rec["path"] == "/x"
    loop_: dict = {}
    loop_["self"] = loop_
    log.error("circular", value=loop_)  # unencodable by both: a line saying so, no exception
    assert json.loads(stream.getvalue().splitlines()[1]) | {"ts": ""} == {
        "ts": "", "level": "error", "component": "webhook", "event": "circular", "log_error": "unencodable fields"}


def test_a_closed_stream_never_takes_the_process_down() -> None:
    stream = io.StringIO()
    stream.close()
    Logger("x", stream=stream).error("still_fine")


def test_queued_lines_are_written_at_exit() -> None:
    code = ("import asyncio, sys\n"
            "from webhook.app import fast_logger\n"
            "log = fast_logger('webhook')\n"
            "async def main():\n"
            "    log.info_soon('last_words', n=1)\n"
            "    raise SystemExit(3)\n"
            "asyncio.run(main())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    recs = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.startswith("{")]
    assert [r["event"] for r in recs] == ["last_words"], proc.stderr


def test_fast_logger_is_the_shared_logger() -> None:
    log = fast_logger("webhook")
    assert type(log) is Logger and log.encode is orjson_line
