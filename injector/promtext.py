"""Prometheus text exposition format (version 0.0.4): the one writer behind every /metrics.

Stdlib only (the agent serves /metrics too). Why not prometheus-client: its registry, locks and
label lookups buy nothing here; each program keeps its counters in plain fields and renders them
on a scrape. Names are checked (a bad one is a bug, raised at once, not a scrape that Prometheus
rejects later); label values and HELP text are escaped as the format requires.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Literal, Mapping, Sequence

Kind = Literal["counter", "gauge", "histogram", "summary", "untyped"]
Value = int | float | bool

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KINDS = ("counter", "gauge", "histogram", "summary", "untyped")


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed are the three characters the format escapes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes backslash and line feed (a quote is literal there)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Value, fmt: str | None = None) -> str:
    """bool -> 1/0, int as is, float via `fmt` (e.g. ".3f") or its shortest repr; NaN/±Inf spelled
    the way the format wants."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(v, fmt) if fmt else repr(v)


class Exposition:
    """Collects metric families in order; `text()` is the response body.

    Each family is written once: HELP, TYPE, then its samples. A second family with the same name
    is refused (Prometheus rejects the whole scrape for it)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._families: set[str] = set()

    def family(self, name: str, kind: Kind, help_: str) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r} is not valid; expected [a-zA-Z_:][a-zA-Z0-9_:]*")
        if kind not in _KINDS:
            raise ValueError(f"metric {name}: type {kind!r} is not one of {', '.join(_KINDS)}")
        if name in self._families:
            raise ValueError(f"metric {name} is written twice; each family appears once")
        self._families.add(name)
        self._lines.append(f"# HELP {name} {escape_help(help_)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: Value, labels: Mapping[str, object] | None = None, *, fmt: str | None = None) -> None:
        """One sample line of the family just declared (`name` may carry a suffix: _bucket...)."""
        if not _METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r} is not valid; expected [a-zA-Z_:][a-zA-Z0-9_:]*")
        if labels:
            parts = []
            for key, val in labels.items():
                if not _LABEL_NAME.match(key) or key.startswith("__"):
                    raise ValueError(f"metric {name}: label name {key!r} is not valid; expected [a-zA-Z_][a-zA-Z0-9_]*, not starting with __")
                parts.append(f'{key}="{escape_label_value(str(val))}"')
            self._lines.append(f"{name}{{{','.join(parts)}}} {format_value(value, fmt)}")
        else:
            self._lines.append(f"{name} {format_value(value, fmt)}")

    def counter(self, name: str, help_: str, value: Value, *, fmt: str | None = None) -> None:
        self.family(name, "counter", help_)
        self.sample(name, value, fmt=fmt)

    def gauge(self, name: str, help_: str, value: Value, *, fmt: str | None = None) -> None:
        self.family(name, "gauge", help_)
        self.sample(name, value, fmt=fmt)

    def labelled(self, name: str, kind: Kind, help_: str, label: str, series: Iterable[tuple[object, Value]],
                 *, fmt: str | None = None) -> None:
        """A family with one label: `series` is (label value, sample value) pairs, written in order."""
        self.family(name, kind, help_)
        for key, value in series:
            self.sample(name, value, {label: key}, fmt=fmt)

    def histogram(self, name: str, help_: str, bounds: Sequence[float], counts: Sequence[int], total: float,
                  *, sum_fmt: str | None = None) -> None:
        """`counts[i]` observations fell in (bounds[i-1], bounds[i]]; the last one, past every bound.
        Written cumulative, as the format wants, with `+Inf`, `_sum` and `_count`."""
        if len(counts) != len(bounds) + 1:
            raise ValueError(f"histogram {name}: {len(counts)} counts for {len(bounds)} bounds; expected one more count than bounds")
        if any(b >= a for a, b in zip(bounds[1:], bounds)):
            raise ValueError(f"histogram {name}: bucket bounds must increase")
        self.family(name, "histogram", help_)
        cumulative = 0
        for bound, n in zip(bounds, counts):
            cumulative += n
            self.sample(f"{name}_bucket", cumulative, {"le": format_value(float(bound))})
        cumulative += counts[-1]
        self.sample(f"{name}_bucket", cumulative, {"le": "+Inf"})
        self.sample(f"{name}_sum", total, fmt=sum_fmt)
        self.sample(f"{name}_count", cumulative)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
