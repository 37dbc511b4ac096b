"""injector.promtext: what it writes parses back under the text exposition format (0.0.4) with the
values and label values it was given, escapes included; bad names are refused; and the three
/metrics bodies built on it (agent, webhook, review cache) are well-formed and unchanged."""

from __future__ import annotations

import math
import re

import pytest

from injector import health
from injector.promtext import Exposition, escape_label_value, format_value
from webhook.metrics import LATENCY_BUCKETS, Metrics

# --- an independent reader of the format (what a Prometheus server does with the body) ----------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(text: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], text)


def parse(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; raises on anything the
    format does not allow (a sample before its TYPE, a bad label, a family declared twice)."""
    assert text.endswith("\n"), "the body must end with a line feed"
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"family {name} declared twice"
            assert re.fullmatch(r"(?:[^\\]|\\[\\n])*", help_), f"bad HELP escape: {line!r}"
            families[name] = {"help": re.sub(r"\\[\\n]", lambda m: {"\\\\": "\\", "\\n": "\n"}[m.group(0)], help_),
                              "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and families[name]["type"] is None, f"TYPE out of place: {line!r}"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, raw_labels, raw_value = m.groups()
            assert current and name.startswith(current), f"sample {name} outside its family {current}"
            suffix = name[len(current):]
            allowed = ("_bucket", "_sum", "_count", "") if families[current]["type"] == "histogram" else ("",)
            assert suffix in allowed, f"sample {name} does not belong to {current}"
            labels: dict[str, str] = {}
            rest = raw_labels or ""
            while rest:
                lm = _LABEL.match(rest)
                assert lm, f"bad label set in {line!r} at {rest!r}"
                assert lm.group(1) not in labels, f"label {lm.group(1)} twice in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                rest = rest[lm.end():]
            value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw_value)
            families[current]["samples"].append((name, labels, float(raw_value) if value is None else value))
    for name, fam in families.items():
        assert fam["type"], f"family {name} has no TYPE"
    return families


# --- the writer ------------------------------------------------------------------------------------

HOSTILE = ['back\\slash', 'a "quoted" word', "two\nlines", 'all \\ " \n three', "ünïcödé ✓", "", "}{,=\\n"]


@pytest.mark.parametrize("value", HOSTILE)
def test_label_values_are_escaped_and_parse_back(value: str) -> None:
    out = Exposition()
    out.labelled("x_total", "counter", "Things.", "what", [(value, 3), ("plain", 4)])
    text = out.text()
    assert text.count("\n") == 4, f"a raw line feed leaked into the body: {text!r}"
    samples = parse(text)["x_total"]["samples"]
    assert samples == [("x_total", {"what": value}, 3.0), ("x_total", {"what": "plain"}, 4.0)]


def test_escape_label_value_is_exactly_the_three_escapes() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("tab\there") == "tab\there"


def test_help_is_escaped_and_parses_back() -> None:
    out = Exposition()
    out.gauge("g", 'Help with a \\ backslash,\na line feed and "quotes".', 1)
    fam = parse(out.text())["g"]
    assert fam["help"] == 'Help with a \\ backslash,\na line feed and "quotes".'
    assert fam["type"] == "gauge" and fam["samples"] == [("g", {}, 1.0)]


def test_values_round_trip() -> None:
    out = Exposition()
    out.gauge("a", "int.", 12345678901234567890)
    out.gauge("b", "bool.", True)
    out.gauge("c", "float, formatted.", 1764576000.1234567, fmt=".3f")
    out.gauge("d", "float, shortest repr.", 0.1)
    out.gauge("e", "nan.", math.nan)
    out.gauge("f", "inf.", math.inf)
    out.gauge("g", "-inf.", -math.inf)
    fams = parse(out.text())
    assert "\na 12345678901234567890\n" in out.text()
    assert fams["b"]["samples"][0][2] == 1.0
    assert "c 1764576000.123\n" in out.text() and fams["d"]["samples"][0][2] == 0.1
    assert math.isnan(fams["e"]["samples"][0][2])
    assert fams["f"]["samples"][0][2] == math.inf and fams["g"]["samples"][0][2] == -math.inf
    assert format_value(False) == "0" and format_value(7, ".3f") == "7"


def test_histogram_is_cumulative_with_inf_sum_and_count() -> None:
    out = Exposition()
    out.histogram("lat_seconds", "Latency.", (0.1, 0.5, 1.0), [2, 0, 3, 1], 4.25, sum_fmt=".6f")
    fam = parse(out.text())["lat_seconds"]
    assert fam["type"] == "histogram"
    buckets = [(s[1]["le"], s[2]) for s in fam["samples"] if s[0] == "lat_seconds_bucket"]
    assert buckets == [("0.1", 2), ("0.5", 2), ("1.0", 5), ("+Inf", 6)]
    assert ("lat_seconds_sum", {}, 4.25) in fam["samples"] and ("lat_seconds_count", {}, 6) in fam["samples"]
    assert "lat_seconds_sum 4.250000\n" in out.text()


@pytest.mark.parametrize("build, needle", [
    (lambda o: o.gauge("bad-name", "x", 1), "'bad-name' is not valid"),
    (lambda o: o.gauge("9lives", "x", 1), "'9lives' is not valid"),
    (lambda o: o.family("x", "countr", "x"), "type 'countr' is not one of counter"),  # type: ignore[arg-type]
    (lambda o: o.labelled("x", "gauge", "x", "bad label", [("v", 1)]), "label name 'bad label' is not valid"),
    (lambda o: o.labelled("x", "gauge", "x", "__reserved", [("v", 1)]), "not starting with __"),
    (lambda o: (o.gauge("x", "x", 1), o.gauge("x", "x", 2)), "written twice"),
    (lambda o: o.histogram("h", "x", (1.0, 2.0), [1, 2], 0.0), "2 counts for 2 bounds"),
    (lambda o: o.histogram("h", "x", (2.0, 1.0), [1, 2, 3], 0.0), "must increase"),
])
def test_bad_input_is_refused_with_what_is_accepted(build, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        build(Exposition())
    assert needle in str(err.value)


# --- its users ---------------------------------------------------------------------------------------

def test_agent_metrics_parse_and_keep_their_exact_form() -> None:
    m = health.Metrics(syncs_total=7, last_success_timestamp_seconds=1764576000.1234, ready=True, healthy=False)
    text = health.render_metrics(m)
    fams = parse(text)
    assert fams["kms_agent_syncs_total"]["type"] == "counter"
    assert fams["kms_agent_ready"]["type"] == "gauge"
    # The agent's output as it was before the shared writer, line for line.
    assert ("# HELP kms_agent_syncs_total Successful syncs (fetch of every source, render, write).\n"
            "# TYPE kms_agent_syncs_total counter\nkms_agent_syncs_total 7\n") in text
    assert "\nkms_agent_last_success_timestamp_seconds 1764576000.123\n" in text
    assert "\nkms_agent_ready 1\n" in text and "\nkms_agent_healthy 0\n" in text
    assert not any(name.startswith("kms_agent__") for name in fams)  # private fields are not rendered


def test_webhook_metrics_parse_with_cache_series() -> None:
    m = Metrics()
    for decision, seconds in (("injected", 0.0003), ("rejected", 0.004), ("skip", 3.0)):
        m.observe(decision, seconds)
    m.bad_request(415)
    text = m.render(ready=True, cert_not_after=1764576000.7, cache=(5, 9))
    fams = parse(text)
    hist = fams["kms_injector_admission_duration_seconds"]
    les = [s[1]["le"] for s in hist["samples"] if s[0].endswith("_bucket")]
    assert les == [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert ("kms_injector_admission_duration_seconds_count", {}, 3) in hist["samples"]
    assert fams["kms_injector_bad_requests_total"]["samples"] == [("kms_injector_bad_requests_total", {"code": "415"}, 1)]
    assert fams["kms_injector_review_cache_total"]["samples"] == [
        ("kms_injector_review_cache_total", {"result": "hit"}, 5), ("kms_injector_review_cache_total", {"result": "miss"}, 9)]
    assert "\nkms_injector_tls_cert_not_after_seconds 1764576001\n" in text
    assert "kms_injector_review_cache_total" not in m.render(ready=True, cert_not_after=None)
