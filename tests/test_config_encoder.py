"""injector.config_json.dict_to_json / config_to_json: ONE config encoding, two ways to produce it: the
stdlib (the agent) or a fast sorted-keys dumps the webhook passes in (orjson), used only where its
bytes are the stdlib's. The two agree byte for byte, non-ASCII text, DEL, control characters, odd
floats and huge integers included, on made-up dicts and on real AgentConfigs."""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import given
from hypothesis import strategies as st

from injector import config_json as cfgmod
from injector.config import AgentConfig, Source
from injector.config_json import config_to_json, dict_to_json, dict_to_json_stdlib

from .test_mutate_properties import FUZZ

leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                 st.sampled_from(["é", "\x7f", "\u2028", "\x00\x1f", "😀", "ß", "a\"b\\c"]))
docs = st.dictionaries(st.text(max_size=8), st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12), max_size=8)


def fast(data: dict) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def _stdlib(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


@given(data=docs)
@FUZZ
def test_both_paths_write_the_same_bytes(data):
    expected = _stdlib(data)
    assert dict_to_json_stdlib(data) == expected
    assert dict_to_json(data) == expected and dict_to_json(data, fast) == expected
    if cfgmod._orjson_safe(data):
        try:
            raw = fast(data)
        except TypeError:  # refused: the encoder falls back
            return
        if raw.isascii() and b"\x7f" not in raw:  # where the encoder takes the fast path
            assert raw.decode() == expected


@given(template=st.text(max_size=40), process=st.sampled_from(["", "nginx"]), refresh=st.floats(5, 86400),
       timeout=st.one_of(st.floats(1e-9, 1e30), st.sampled_from([1e-5, 1e16, 1e20, 0.0001, 3])),
       key=st.text(min_size=1, max_size=8).filter(lambda k: "," not in k and "\x00" not in k))
@FUZZ
def test_real_configs_encode_identically_and_round_trip(template, process, refresh, timeout, key):
    cfg = AgentConfig(host="http://kms.hanzo.svc.cluster.local/api", project="p", env="prod",
                      sources=[Source("/chat", "", (key,))], templates={"app.conf": template}, refresh_interval=refresh,
                      init_timeout=timeout, command_timeout=timeout, signal="SIGHUP" if process else "", signal_process=process)
    d = cfg.to_dict()
    assert dict_to_json(d, fast) == config_to_json(d, fast) == config_to_json(d) == _stdlib(d) == cfg.to_json()
    assert AgentConfig.from_json(cfg.to_json()) == cfg


def test_the_fast_path_is_taken_and_falls_back_where_it_must():
    d = AgentConfig(host="http://k/api", project="p", env="e", sources=[Source("/a")]).to_dict()
    assert cfgmod._orjson_safe(d)
    assert not cfgmod._orjson_safe({"x": 1e-7}) and not cfgmod._orjson_safe({"x": [math.inf]})
    assert dict_to_json({"é": "ü", "n": math.nan}, fast) == '{"n":NaN,"\\u00e9":"\\u00fc"}'
    calls = []
    assert config_to_json(d, lambda x: calls.append(x) or fast(x)) == _stdlib(d) and calls == [d]  # the fast path ran
    calls.clear()
    assert config_to_json({**d, "init_timeout": 1e-5}, lambda x: calls.append(x) or fast(x)) == _stdlib({**d, "init_timeout": 1e-5})
    assert calls == []  # a float the two spell differently never reaches it
