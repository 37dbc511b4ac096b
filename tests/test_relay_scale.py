"""1,000 subscribers on one relay process (the agents' own client module, over TLS): a rotation
reaches exactly the subscribers of its folder, each once, and the relay's KMS traffic stays one
watch per folder however many subscribers there are."""

from __future__ import annotations

import time
from pathlib import Path

from tests.agent_support import wait_for
from tests.test_relay import RelayHarness, metric_value, relay_env, stop_subscribers, subscribe  # noqa: F401 (fixture)

N = 1000


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_one_thousand_subscribers_on_two_folders(relay_env: RelayHarness) -> None:
    relay = relay_env
    relay.start()
    await relay.wait_ready()
    tokens = [relay.kube.token_for("load", f"svc{i}") for i in range(20)]  # 20 service accounts, 50 pods each
    paths = [("/restricted",) if i % 5 < 2 else ("/app/sub",) for i in range(N)]
    subs = [subscribe(relay, "s0", tokens[0], paths[0])]
    restricted = [s for s in subs if s.paths == ("/restricted",)]
    try:
        await wait_for(lambda: subs[0].state.healthy, 60, "the first subscriber connected")
        assert relay.proc is not None
        rss_one = proc_rss_kib(relay.proc.popen.pid)
        subs += [subscribe(relay, f"s{i}", tokens[i % 20], paths[i]) for i in range(1, N)]
        restricted = [s for s in subs if s.paths == ("/restricted",)]
        others = [s for s in subs if s.paths == ("/app/sub",)]
        await wait_for(lambda: all(s.state.healthy for s in subs), 60, f"{N} subscribers connected")
        # Memory: the relay's whole footprint with one subscriber (TokenReview client loaded) and
        # the cost of each further one. aiohttp over asyncio's TLS with kubernetes-asyncio was
        # ~95 MiB and ~40 KiB; the lean server is ~45 MiB and ~16 KiB (bench/README.md, Relay).
        # (polled: the memory a burst of handshakes freed is returned within a second or so)
        pid = relay.proc.popen.pid
        assert rss_one < 70 * 1024, f"relay RSS with one subscriber {rss_one / 1024:.1f} MiB"
        try:
            await wait_for(lambda: (proc_rss_kib(pid) - rss_one) / (N - 1) < 26, 10, "the relay's RSS per subscriber < 26 KiB")
        finally:
            per_sub = (proc_rss_kib(pid) - rss_one) / (N - 1)
            print(f"\nrelay RSS per further subscriber: {per_sub:.1f} KiB")
        assert relay.kube.reviews <= 2 * len(tokens)  # reviews are cached per token, not per pod
        reads_before = len(relay.kms.secret_reads())
        t0 = time.monotonic()
        relay.kms.rotate("/restricted")
        await wait_for(lambda: all(s.changes() for s in restricted), 30, "every /restricted subscriber notified")
        fan_out = time.monotonic() - t0
        reads = len(relay.kms.secret_reads()) - reads_before
        # the others had two more poll rounds to be (wrongly) notified
        mark = len(relay.kms.secret_reads())
        await wait_for(lambda: len(relay.kms.secret_reads()) >= mark + 4, 20, "two more poll rounds")
        assert all(s.changes() == ["relay: /restricted"] for s in restricted)
        assert not any(s.changes() for s in others)
        _, text = await relay.get("/metrics")
        assert metric_value(text, "kms_relay_subscribers") == N
        assert metric_value(text, 'kms_relay_watched_folders{state="watched"}') == 2
        assert metric_value(text, "kms_relay_notices_total") == len(restricted)
        # KMS saw polls of two folders, not of 1,000 pods: a handful of reads during the fan-out
        assert reads < 40, reads
        print(f"\n{N} subscribers: change-to-all-notified {fan_out:.2f}s (poll 0.3s), {reads} KMS reads meanwhile; "
              f"relay RSS {rss_one / 1024:.1f} MiB with one, +{per_sub:.1f} KiB per further subscriber")
    finally:
        await stop_subscribers(subs)
