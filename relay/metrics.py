"""The relay's Prometheus text: counts and gauges only (never a folder's contents, never a token).
Hand-rolled like webhook/metrics.py: a few integers, no registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RelayCounters:
    subscribes: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (bad_request, unauthenticated, forbidden, ...)
    tls_reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


def render(c: RelayCounters, watcher: Any, reviewer: Any, *, ready: bool) -> str:
    st = watcher.stats
    streams = list(watcher.streams.values())
    out = [
        "# HELP kms_relay_subscribers Open subscriber streams.",
        "# TYPE kms_relay_subscribers gauge",
        f"kms_relay_subscribers {watcher.subscribers}",
        "# HELP kms_relay_subscribes_total Subscriptions accepted.",
        "# TYPE kms_relay_subscribes_total counter",
        f"kms_relay_subscribes_total {c.subscribes}",
        "# HELP kms_relay_subscribes_refused_total Subscriptions refused, by reason.",
        "# TYPE kms_relay_subscribes_refused_total counter",
        *(f'kms_relay_subscribes_refused_total{{reason="{r}"}} {n}' for r, n in sorted(c.refused.items())),
        "# HELP kms_relay_watched_folders Folders watched (at least one subscriber), by state.",
        "# TYPE kms_relay_watched_folders gauge",
        f'kms_relay_watched_folders{{state="watched"}} {sum(1 for f in watcher.folders.values() if f.watched)}',
        f'kms_relay_watched_folders{{state="unwatched"}} {sum(1 for f in watcher.folders.values() if not f.watched)}',
        "# HELP kms_relay_changes_total Folder changes detected.",
        "# TYPE kms_relay_changes_total counter",
        f"kms_relay_changes_total {st.changes}",
        "# HELP kms_relay_notices_total Notices queued to subscribers (one per subscriber per change).",
        "# TYPE kms_relay_notices_total counter",
        f"kms_relay_notices_total {st.notices}",
        "# HELP kms_relay_kms_polls_total Folder checks sent to KMS, by result.",
        "# TYPE kms_relay_kms_polls_total counter",
        *(f'kms_relay_kms_polls_total{{result="{r}"}} {n}' for r, n in sorted(st.polls.items())),
        "# HELP kms_relay_value_answers_total KMS answers that carried values anyway (digested and dropped at once).",
        "# TYPE kms_relay_value_answers_total counter",
        f"kms_relay_value_answers_total {st.value_answers}",
        "# HELP kms_relay_event_streams KMS change-event streams, by state.",
        "# TYPE kms_relay_event_streams gauge",
        f'kms_relay_event_streams{{state="connected"}} {sum(1 for s in streams if s.connected)}',
        f'kms_relay_event_streams{{state="unsupported"}} {sum(1 for s in streams if s.unsupported)}',
        "# HELP kms_relay_token_reviews_total TokenReviews sent to the Kubernetes API (cache misses).",
        "# TYPE kms_relay_token_reviews_total counter",
        f"kms_relay_token_reviews_total {reviewer.reviews}",
        "# HELP kms_relay_tls_reloads_total Serving certificate reloads, by result.",
        "# TYPE kms_relay_tls_reloads_total counter",
        *(f'kms_relay_tls_reloads_total{{result="{r}"}} {n}' for r, n in sorted(c.tls_reloads.items())),
        "# HELP kms_relay_ready 1 when a certificate is served and settings are loaded.",
        "# TYPE kms_relay_ready gauge",
        f"kms_relay_ready {int(ready)}",
    ]
    return "\n".join(out) + "\n"
