"""Sidecar wake-ups from KMS change events, debounced.

`event_trigger(agent)` is a sync-loop trigger (injector.agent_loop.AgentLoop.add_trigger, run
under the agent's supervisor): it subscribes to the KMS event stream for the agent's folders
(injector.kms.events) and calls `agent.nudge()` when a change arrives (the loop ignores nudges
while its syncs fail: it retries on its own schedule then). A lone change fetches at once
(leading edge: nothing fired in the last QUIET seconds); the rest of a burst is coalesced: the next wake fires after QUIET seconds without a new event, and
never later than MAX_WAIT after the first held-back one, so 50 updates in a row cost two or three
fetches, not 50.
An event that arrives while a fetch runs is not lost: the agent's wake flag is cleared when a
sync starts, so a wake during the fetch makes the loop fetch again right after it.

Polling at refresh_interval goes on regardless (the safety net). A server whose events are not
available (no route, not on the plan, no permission, Hanzo's stub route answering 422, repeated
5xx) is told once in the log and probed again only every ~15 minutes; 429 waits at least 5
minutes (injector.kms.events.SubscribePolicy: at most 15 subscribe requests an hour against a
server that always refuses). A canonical-API KMS or `events: false` (annotation
`kms.hanzo.ai/events: "false"`) means polling only, with no subscribe at all. Stdlib only.

`relay_change_trigger(agent, state)` replaces event_trigger when config.relay_url is set: the
relay's notices (injector.relay_client) go through the same Debouncer and nudge, and while its
stream is healthy the safety-net poll is stretched by config.relay_poll_factor. While the relay is
unreachable the agent polls at the normal interval and opens no KMS event stream: a relay is
deployed where per-pod streams do not work or cost too much (no route on Hanzo's and the Go
servers, 5 streams per project and identity upstream), and a relay outage hits every pod at once:
10,000 pods subscribing to KMS together, then dropping it together when the relay is back, would
be a storm on the KMS exactly when something is already wrong.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from injector.seams import TriggerHost

QUIET = 0.25  # seconds without a new event before the fetch
MAX_WAIT = 1.0  # never delay a fetch longer than this after the first event of a burst


class Debouncer:
    """Coalesce pokes: `fire(reason)` at once when idle, then once per QUIET window of a burst
    (a held-back poke waits at most MAX_WAIT)."""

    def __init__(self, fire: Callable[[str], Any], *, quiet: float = QUIET, max_wait: float = MAX_WAIT,
                 clock: Callable[[], float] | None = None) -> None:
        self.fire = fire
        self.quiet = quiet
        self.max_wait = max_wait
        self._clock = clock
        self._pending = asyncio.Event()
        self._first: float | None = None
        self._last = 0.0
        self._fired_at = float("-inf")
        self._reason = ""
        self.pokes = 0
        self.fired = 0

    @property
    def pending(self) -> bool:
        """A poke is held back, waiting for its quiet window."""
        return self._pending.is_set()

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def poke(self, reason: str) -> None:
        now = self._now()
        self.pokes += 1
        if not self._pending.is_set() and now - self._fired_at >= self.quiet:
            self._fire(reason, now)  # leading edge: a lone change costs no waiting
            return
        self._last = now
        if self._first is None:
            self._first = now
        self._reason = reason
        self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            while True:
                assert self._first is not None
                wait = min(self._last + self.quiet, self._first + self.max_wait) - self._now()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._pending.clear()
            self._first = None
            self._fire(self._reason, self._now())

    def _fire(self, reason: str, now: float) -> None:
        self._fired_at = now
        self.fired += 1
        self.fire(reason)


def subscriber_metrics(sub: Any, wakeups: list[int], debouncer: "Debouncer | None" = None) -> Callable[[Any], None]:
    """Fills a metrics reading (injector.health.Metrics) from the subscriber's live state: counts only."""

    def collect(m: Any) -> None:
        if debouncer is not None:
            m.fetch_pending = m.fetch_pending or debouncer.pending
        m.events_connected = bool(sub.connected)
        m.events_received_total = sub.events
        m.events_reconnects_total = max(0, sub.connects - 1)
        m.event_wakeups_total = wakeups[0]

    return collect


def relay_metrics(state: Any, wakeups: list[int], debouncer: "Debouncer | None" = None) -> Callable[[Any], None]:
    """Fills a metrics reading from the relay client's state (injector.relay_client.RelayClientState)."""

    def collect(m: Any) -> None:
        if debouncer is not None:
            m.fetch_pending = m.fetch_pending or debouncer.pending
        m.relay_connected = bool(state.connected)
        m.relay_notices_total = state.notices
        m.relay_reconnects_total = max(0, state.connects - 1)
        m.relay_failures_total = state.failures
        m.relay_refusals_total = state.refusals
        m.relay_wakeups_total = wakeups[0]

    return collect


async def relay_change_trigger(agent: "TriggerHost", state: Any = None) -> None:
    """Agent trigger when config.relay_url is set: subscribe to the relay, debounce, wake; stretch
    the safety-net poll while the relay is healthy. `state` (a RelayClientState) outlives a restart
    of this trigger by the supervisor, so the counters never go down."""
    from injector.relay_client import RelayClientState, relay_trigger

    cfg = agent.config
    state = state if state is not None else RelayClientState()
    wakeups = [0]

    def relay_wake(reason: str) -> None:
        if agent.nudge(reason):
            wakeups[0] += 1

    debouncer = Debouncer(relay_wake)
    state.on_health = agent.pace_changed
    agent.set_pace(lambda: state.poll_factor(cfg))
    agent.add_metrics_source(relay_metrics(state, wakeups, debouncer), key="relay")
    flusher = asyncio.create_task(debouncer.run())
    try:
        await relay_trigger(cfg, debouncer.poke, agent.log, state)
    finally:
        state.connected = False
        agent.pace_changed()  # not healthy any more: the normal interval
        flusher.cancel()
        try:
            await flusher
        except (asyncio.CancelledError, Exception):
            pass


async def event_trigger(agent: "TriggerHost") -> None:
    """Agent trigger: subscribe, debounce, wake. Returns at once when events are off or the API
    has none (canonical); otherwise runs for the agent's life (refusals only make it wait)."""
    cfg = agent.config
    if not cfg.events:
        agent.log.info("events_disabled", action="polling only", refresh_interval=cfg.refresh_interval)
        return
    client = agent.client
    step = 0.1
    while getattr(client, "api", "infisical") is None:  # api: auto, not detected yet: the sync loop
        await asyncio.sleep(step)  # detects it (with its own backoff); no requests from here
        step = min(5.0, step * 2)
    if getattr(client, "api", "infisical") == "canonical":
        agent.log.info("events_unsupported", reason="the canonical KMS API has no event stream", action="polling only")
        return
    from injector.kms.events import EventSubscriber

    wakeups = [0]

    def event_wake(reason: str) -> None:  # the debouncer's output: counted when it woke the loop
        if agent.nudge(reason):
            wakeups[0] += 1

    sub = EventSubscriber(client, cfg.project, cfg.env, [s.path for s in cfg.sources], logger=agent.log,
                          on_need_login=lambda: agent.nudge("event stream token rejected"))
    debouncer = Debouncer(event_wake)
    agent.add_metrics_source(subscriber_metrics(sub, wakeups, debouncer), key="events")
    flusher = asyncio.create_task(debouncer.run())

    def on_change(ev: Any) -> None:
        if ev.kind == "change":
            agent.log.debug("kms_event", event_type=ev.event_type, path=ev.secret_path, keys=list(ev.keys)[:20])
            debouncer.poke("kms change event")
        else:  # (re)connected: changes made while no stream was open are caught by one fetch
            debouncer.poke("event stream connected")

    try:
        await sub.run(on_change)
    finally:
        flusher.cancel()
        try:
            await flusher
        except (asyncio.CancelledError, Exception):
            pass
