"""The webhook's Prometheus metrics, hand-rolled.

Why not prometheus-client: the hot path needs three counter bumps and one histogram observation
per admission; here that is a dict increment and a bisect (~0.3 µs), with no locks and no
registry; the text is written by injector.promtext, the writer the agent's /metrics uses too.
prometheus-client would add an import, a lock per observation and label lookups for nothing we use.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from injector.promtext import Exposition

# Seconds. Admission budgets are in milliseconds (apiserver timeoutSeconds is 10 at most).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DECISIONS = ("skip", "injected", "already", "rejected", "invalid", "error")


@dataclass
class Metrics:
    admissions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    bad_requests: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (400/413/415)
    dry_run: int = 0
    tls_reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    # Settings hot reload (webhook.settings_reload): reloads after the first load, by result.
    settings_reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    settings_generation: int = 0      # 1 after the first load, +1 per reload swapped in
    settings_loaded_at: float = 0.0   # unix time the served settings were loaded (0: built-in)
    settings_reload_error: str | None = None  # field named by the newest change that did not load
    _buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    _sum: float = 0.0
    _count: int = 0

    def observe(self, decision: str, seconds: float) -> None:
        self.admissions[decision] = self.admissions.get(decision, 0) + 1
        self._buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds
        self._count += 1

    def bad_request(self, status: int) -> None:
        self.bad_requests[status] = self.bad_requests.get(status, 0) + 1

    def render(self, *, ready: bool, cert_not_after: float | None, cache: tuple[int, int] | None = None) -> str:
        """The /metrics body. `cache` is the answer cache's (hits, misses); None when it is off."""
        a = self.admissions
        out = Exposition()
        out.labelled("kms_injector_admissions_total", "counter", "AdmissionReviews answered, by decision.",
                     "decision", sorted(a.items()))
        out.counter("kms_injector_injections_total", "Pods mutated to receive KMS secrets.", a.get("injected", 0))
        out.counter("kms_injector_rejections_total", "Pods refused for invalid or forbidden annotations.", a.get("rejected", 0))
        out.labelled("kms_injector_bad_requests_total", "counter", "Requests refused before review, by HTTP status.",
                     "code", sorted(self.bad_requests.items()))
        out.histogram("kms_injector_admission_duration_seconds", "Time to answer one AdmissionReview.",
                      LATENCY_BUCKETS, self._buckets, self._sum, sum_fmt=".6f")
        out.labelled("kms_injector_tls_reloads_total", "counter", "Serving certificate reloads, by result.",
                     "result", sorted(self.tls_reloads.items()))
        out.gauge("kms_injector_ready", "1 when a certificate is served and settings are loaded.", int(ready))
        out.labelled("kms_injector_settings_reloads_total", "counter",
                     "Settings file changes seen, by result (error: old settings kept).",
                     "result", sorted(self.settings_reloads.items()))
        out.gauge("kms_injector_settings_generation", "Settings in use: 1 for the first load, +1 per reload.",
                  self.settings_generation)
        out.gauge("kms_injector_settings_loaded_timestamp_seconds", "When the settings in use were loaded (unix time).",
                  self.settings_loaded_at, fmt=".0f")
        out.gauge("kms_injector_settings_reload_failing",
                  "1 while the newest settings file does not load (old ones served).",
                  int(self.settings_reload_error is not None))
        if cert_not_after is not None:
            out.gauge("kms_injector_tls_cert_not_after_seconds", "Expiry of the served certificate (unix time).",
                      cert_not_after, fmt=".0f")
        if cache is not None:
            out.labelled("kms_injector_review_cache_total", "counter",
                         "Reviews answered from the identical-request cache, by result.",
                         "result", (("hit", cache[0]), ("miss", cache[1])))
        return out.text()
