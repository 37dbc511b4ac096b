"""render.py and keys.py: pure functions over plain data (formats, escaping, templates, skips)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from injector.config import AgentConfig, Source
from injector.keys import unsafe_key_reason
from injector.render import RenderError, TemplateError, dotenv_quote, render, render_template

NASTY = {
    "PLAIN": "hunter2",
    "QUOTE1": "it's",
    "QUOTE2": 'say "hi"',
    "BACKSLASH": "C:\\path\\n",
    "NEWLINES": "line1\nline2\r\nline3",
    "DOLLAR": "$HOME ${HOME} $$ `id`",
    "MIXED": "a'b\"c\\d$e\nf",
    "UNICODE": "żółć 🔑 \u2028 \u0085 \ufeff \x7f \x01 tab\there",
    "EMPTY": "",
    "SPACES": "  padded  ",
    "HASH": "value # not a comment",
}


def cfg(**kw) -> AgentConfig:
    base = dict(host="http://127.0.0.1:8200/api", project="secrets-639-c", env="prod", sources=[Source("/chat")])
    base.update(kw)
    return AgentConfig(**base)


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", ".", "..", "../x", "a/b", "/abs", "..data", "..2026_01_01_00_00_00.1", "nul\x00byte", "back\\slash", "x" * 256, "é" * 128],
)
def test_unsafe_keys_have_a_reason(key):
    reason = unsafe_key_reason(key)
    assert reason and isinstance(reason, str)


@pytest.mark.parametrize("key", ["A", "DATABASE_URL", ".env", ".hidden", "a.b-c_d", "x" * 255, "é" * 127, "k..v", "sp ace"])
def test_safe_keys(key):
    assert unsafe_key_reason(key) is None


# -- files format ----------------------------------------------------------------------------------


def test_files_format_main_and_extra_sources():
    c = cfg(sources=[Source("/chat"), Source("/shared/db", "db")])
    r = render(c, {"": {"A": "1", "B": "two"}, "db": {"URL": "postgres://x"}})
    assert r.files == {"A": b"1", "B": b"two", "db/URL": b"postgres://x"}
    assert r.skipped == []


def test_files_format_values_are_exact_utf8():
    r = render(cfg(), {"": dict(NASTY)})
    assert r.files == {k: v.encode("utf-8") for k, v in NASTY.items()}


def test_unsafe_keys_are_skipped_with_reason_never_value():
    hostile = {"../x": "V1", "..data": "V2", "a/b": "V3", "": "V4", "k" * 300: "V5", "nul\x00": "V6", ".": "V7", "OK": "fine"}
    for fmt in ("files", "json", "yaml", "dotenv"):
        r = render(cfg(format=fmt), {"": hostile})
        names = [k for k, _ in r.skipped]
        assert "../x" in names and "..data" in names and "a/b" in names and "" in names and "nul\x00" in names
        assert any(n.startswith("kkkk") and "300 chars" in n for n in names), names
        blob = repr(r.skipped)
        for v in ("V1", "V2", "V3", "V4", "V5", "V6", "V7"):
            assert v not in blob
        body = b"".join(r.files.values())
        assert b"fine" in body
        for v in (b"V1", b"V2", b"V3", b"V4", b"V5", b"V6", b"V7"):
            assert v not in body, fmt


def test_non_string_value_is_skipped():
    r = render(cfg(), {"": {"N": 5, "L": ["x"], "S": "ok"}})
    assert r.files == {"S": b"ok"}
    assert sorted(r.skipped) == [("L", "value is not a string"), ("N", "value is not a string")]


def test_main_key_clashing_with_subfolder_or_template_is_skipped():
    c = cfg(sources=[Source("/chat"), Source("/db", "db")], templates={"app.conf": "x=${A}"})
    r = render(c, {"": {"A": "1", "db": "clash", "app.conf": "clash"}, "db": {"U": "u"}})
    assert r.files == {"A": b"1", "db/U": b"u", "app.conf": b"x=1"}
    assert {k for k, _ in r.skipped} == {"db", "app.conf"}


def test_missing_source_data_is_an_error():
    with pytest.raises(RenderError, match="db"):
        render(cfg(sources=[Source("/chat"), Source("/db", "db")]), {"": {}})


# -- aggregate formats -----------------------------------------------------------------------------


def test_json_roundtrip_and_per_source_files():
    c = cfg(format="json", sources=[Source("/chat"), Source("/db", "db")])
    r = render(c, {"": dict(NASTY), "db": {"U": "u"}})
    assert set(r.files) == {"secrets.json", "db/secrets.json"}
    assert json.loads(r.files["secrets.json"]) == NASTY
    assert json.loads(r.files["db/secrets.json"]) == {"U": "u"}
    assert r.files["secrets.json"].endswith(b"\n")


def test_json_lone_surrogate_stays_valid_json():
    r = render(cfg(format="json"), {"": {"S": "a\ud800b"}})
    assert json.loads(r.files["secrets.json"].decode("ascii")) == {"S": "a\ud800b"}


def test_yaml_roundtrip_with_pyyaml():
    r = render(cfg(format="yaml"), {"": dict(NASTY)})
    assert yaml.safe_load(r.files["secrets.yaml"]) == NASTY
    # keys that look like YAML specials stay strings
    tricky = {"yes": "no", "null": "~", "1": "2", "k: v": "- item", "#": "&anchor *ref !tag"}
    r = render(cfg(format="yaml"), {"": tricky})
    assert yaml.safe_load(r.files["secrets.yaml"]) == tricky


def test_yaml_empty_is_empty_mapping():
    assert yaml.safe_load(render(cfg(format="yaml"), {"": {}}).files["secrets.yaml"]) == {}


def test_dotenv_lines_and_skips():
    r = render(cfg(format="dotenv"), {"": {"GOOD": "v", "bad-name": "x", "1BAD": "y", "NUL": "a\x00b", "_ok2": "z"}})
    text = r.files[".env"].decode()
    assert text == "GOOD='v'\n_ok2='z'\n"
    assert {k for k, _ in r.skipped} == {"bad-name", "1BAD", "NUL"}


def test_dotenv_quoting_rules():
    assert dotenv_quote("plain $HOME ${X} `id` \"q\"") == "'plain $HOME ${X} `id` \"q\"'"
    # issue 12 point 6: single quotes for every value; a quote is closed, escaped, reopened
    assert dotenv_quote("it's") == "'it'\\''s'"
    assert dotenv_quote("a\\b") == "'a\\b'"
    assert dotenv_quote('a\n"b"\r') == "'a\n\"b\"\r'"


def test_dotenv_single_quoted_values_survive_a_real_shell(tmp_path):
    values = {k: v for k, v in NASTY.items() if not any(c in v for c in "'\\\n\r") and "\x01" not in v}
    assert len(values) >= 4
    r = render(cfg(format="dotenv"), {"": values})
    (tmp_path / ".env").write_bytes(r.files[".env"])
    for key, value in values.items():
        out = subprocess.run(["sh", "-c", f'. ./.env; printf %s "${key}"'], cwd=tmp_path, capture_output=True, check=True)
        assert out.stdout.decode() == value, key


HOSTILE = {
    "SUBST": "$(touch pwned-subst)",
    "BACKTICK": "`touch pwned-backtick`",
    "VAR": "$HOME ${HOME} $$ $0 $1 ${X:-y}",
    "QUOTE_BREAK": "'; touch pwned-quote; '",
    "QUOTE_ESCAPE": "'\\''$(touch pwned-esc)'\\''",
    "DOUBLE": '"$(touch pwned-double)"',
    "NEWLINE": "a\ntouch pwned-newline\n",
    "CRLF": "x\r\ny\r",
    "BACKSLASH": "C:\\path\\n \\' \\\\",
    "MIXED": NASTY["MIXED"] + "$(touch pwned-mixed)",
    "TRAILING_NL": "end\n\n",
    "LONE_QUOTE": "'",
    "HEREDOC": "<<EOF\nEOF\n;|&",
}


# sh is required; the others add coverage where this machine has them
SHELLS = ["sh"] + [s for s in ("bash", "dash", "busybox") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_dotenv_hostile_values_run_nothing_in_a_real_shell(tmp_path, shell):
    """Issue 12 point 6: `. ./.env` executes nothing a KMS value holds and yields the exact bytes
    (the NASTY values too: quotes, backslashes, CR/LF, which the old double-quoting mangled)."""
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    values = {**HOSTILE, **{f"NASTY_{k}": v for k, v in NASTY.items()}}
    r = render(cfg(format="dotenv"), {"": values})
    assert not r.skipped
    (tmp_path / ".env").write_bytes(r.files[".env"])
    keys = sorted(values)
    script = ". ./.env; printf '%s\\0' " + " ".join(f'"${k}"' for k in keys)
    out = subprocess.run([*argv, "-c", script], cwd=tmp_path, capture_output=True, check=True, env={"PATH": "/usr/bin:/bin", "HOME": "/home-x"})
    assert out.stderr == b"", out.stderr
    got = out.stdout.split(b"\0")[:-1]
    assert dict(zip(keys, (g.decode() for g in got))) == {k: values[k] for k in keys}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"], "sourcing .env ran a command"


def test_aggregate_name_clashing_with_template_is_refused():
    with pytest.raises(RenderError, match="secrets.json"):
        render(cfg(format="json", templates={"secrets.json": "x"}), {"": {}})


# -- templates -------------------------------------------------------------------------------------


def test_template_substitution_qualified_and_escape():
    c = cfg(sources=[Source("/chat"), Source("/db", "db")], templates={"app.env": "A=${A}\nDB=${db/URL}\nlit=$${A} cost=$5 $x {y}\n"})
    r = render(c, {"": {"A": "a$1"}, "db": {"URL": "pg://u:${p}@h"}})
    assert r.files["app.env"] == b"A=a$1\nDB=pg://u:${p}@h\nlit=${A} cost=$5 $x {y}\n"
    # templates come in addition to the per-key files
    assert r.files["A"] == b"a$1" and r.files["db/URL"] == b"pg://u:${p}@h"


def test_template_with_aggregate_format():
    c = cfg(format="dotenv", templates={"conn": "${USER}:${PASS}"})
    r = render(c, {"": {"USER": "u", "PASS": "p"}})
    assert set(r.files) == {".env", "conn"}
    assert r.files["conn"] == b"u:p"


def test_template_unknown_key_names_template_and_key_not_values():
    c = cfg(templates={"app.conf": "x=${A} y=${MISSING}"})
    with pytest.raises(TemplateError) as err:
        render(c, {"": {"A": "SECRETVALUE"}})
    msg = str(err.value)
    assert "app.conf" in msg and "MISSING" in msg and "SECRETVALUE" not in msg
    assert err.value.template == "app.conf" and err.value.key == "MISSING"


def test_template_unknown_source_and_skipped_key():
    with pytest.raises(TemplateError, match="nope"):
        render(cfg(templates={"t": "${nope/A}"}), {"": {"A": "1"}})
    with pytest.raises(TemplateError, match="skipped"):
        render(cfg(templates={"t": "${..data}"}), {"": {"..data": "SECRETVALUE"}})


def test_template_unterminated_placeholder_is_an_error():
    with pytest.raises(TemplateError, match="closing"):
        render_template("t", "x=${A", {"": {"A": "1"}})


def test_output_is_deterministic():
    data = {"": {f"K{i}": str(i) for i in range(50)}}
    for fmt in ("json", "yaml", "dotenv"):
        c = cfg(format=fmt)
        reordered = {"": dict(reversed(list(data[""].items())))}
        assert render(c, data).files == render(c, reordered).files
