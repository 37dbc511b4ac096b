"""AgentConfig: the webhook -> agent contract round-trips and refuses bad values by field name."""

import json

import pytest

from injector.config import AgentConfig, ConfigError, Source, parse_duration, parse_file_mode, normalize_path


def make(**kw):
    base = dict(host="http://kms.hanzo.svc.cluster.local/api", project="secrets-639-c", env="prod", sources=[Source("/chat")])
    base.update(kw)
    return AgentConfig(**base)


def test_round_trip_json():
    cfg = make(sources=[Source("/chat"), Source("/shared", "shared")], templates={"app.env": "A=${A}"}, file_mode=0o440, signal="SIGHUP")
    again = AgentConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["file_mode"] == "0440"


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("45", 45), ("250ms", 0.25), (7, 7)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "5d", "", "1e9"])
def test_bad_durations_name_the_field(text):
    with pytest.raises(ConfigError) as err:
        parse_duration(text, "refresh_interval")
    assert err.value.field == "refresh_interval"
    assert "30s" in str(err.value)


def test_file_modes():
    assert parse_file_mode("0444") == 0o444
    assert parse_file_mode("0o440") == 0o440
    for bad in ("0777", "0111", "abc", "0044"):
        with pytest.raises(ConfigError):
            parse_file_mode(bad)


@pytest.mark.parametrize(
    "field,value",
    [
        ("host", "file:///etc/passwd"),
        ("host", "http://user:pw@kms/api"),
        ("host", "kms.hanzo.svc"),
        ("project", "../x"),
        ("env", ""),
        ("mode", "daemon"),
        ("format", "toml"),
        ("refresh_interval", 1),
        ("signal", "SIGKILL"),
        ("health_port", 70000),
    ],
)
def test_refusals_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        make(**{field: value})
    assert err.value.field == field


@pytest.mark.parametrize("path", ["chat", "/../etc", "/a/../b", "/a\x00b", "/" + "a" * 600, "/a b"])
def test_bad_paths(path):
    with pytest.raises(ConfigError):
        normalize_path(path)


def test_path_normalised():
    assert normalize_path("/chat/") == "/chat"
    assert normalize_path("/") == "/"


def test_from_dict_rejects_unknown_and_wrong_types():
    good = json.loads(make().to_json())
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({**good, "surprise": 1})
    assert err.value.field == "surprise"
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({**good, "events": "yes"})
    assert err.value.field == "events"
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({k: v for k, v in good.items() if k != "project"})
    assert err.value.field == "project"
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_json("{not json")
    assert err.value.field == "KMS_AGENT_CONFIG"


def test_kubernetes_auth_needs_identity():
    with pytest.raises(ConfigError) as err:
        make(auth="kubernetes")
    assert err.value.field == "identity_id"
    assert make(auth="kubernetes", identity_id="abc").identity_id == "abc"


def test_duplicate_subdirs_refused():
    with pytest.raises(ConfigError):
        make(sources=[Source("/a", "x"), Source("/b", "x")])
