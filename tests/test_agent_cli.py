"""`kms-injector agent` flags: the fast path (injector.agent_cli._fast_parse) reads exactly what
argparse (build_parser, the reference) reads, or hands the command line to argparse."""

from __future__ import annotations

import pytest

from injector.agent_cli import _fast_parse, build_parser, parse_args
from injector.config import ConfigError

SAME = [
    [],
    ["--mode", "init", "--host", "http://127.0.0.1:8200/api", "--project", "p", "--env", "prod", "--path", "/chat"],
    ["--path", "/chat", "--path", "billing=/billing", "--template", "a.conf=x ${K}", "--template=b.conf=y"],
    ["--health-port", "8099", "--no-events", "--no-imports", "--command", "sh -c 'kill -HUP 1'"],
    ["--health-port=0", "--file-mode=0440", "--refresh-interval=30s", "--signal", "SIGHUP", "--signal-process", "app"],
    ["--config", "/etc/agent.json", "--mount-path", "/kms/secrets", "--credentials-dir", "/kms/auth", "--api", "auto"],
    ["--init-timeout", "2s", "--request-timeout", "10s", "--format", "dotenv"],
]


@pytest.mark.parametrize("argv", SAME)
def test_the_fast_path_reads_what_argparse_reads(argv: list[str]) -> None:
    fast = _fast_parse(argv)
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["--mount", "/x"], ["--unknown", "1"], ["--host"], ["--host", "--mode", "init"],
    ["--health-port", "eighty"], ["positional"], ["--no-events=yes"],
])
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert _fast_parse(argv) is None
    if argv == ["--mount", "/x"]:  # argparse accepts unambiguous abbreviations: same result
        assert parse_args(argv).mount_path == "/x"
    elif argv[0] not in ("--help", "-h"):
        with pytest.raises(ConfigError) as err:
            parse_args(argv)
        assert err.value.field == "arguments"
