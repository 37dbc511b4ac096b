"""`kms-injector agent`: read the config, then run the agent process (injector.agent_process).

The modules: agent_cli (arguments -> AgentConfig), agent_process (signals, executor, supervisor,
shutdown), agent_loop (init and sidecar modes), sync (fetch -> render -> write -> notify),
agent_state (readiness, health, counters), backoff (the one retry policy), refusals (refused
credentials across restarts), credentials (files, digest, watch), supervisor, seams (Protocols),
health (the /healthz /readyz /metrics server).

Start-up cost matters (exec to first files is measured against the OpenBao Agent): only the
standard library is imported, and `ssl` only when the config names an https URL (see
`_without_tls`).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Mapping

from injector.config import AgentConfig, ConfigError


def _needs_tls(config: AgentConfig) -> bool:
    return any(url.lower().startswith("https:") for url in (config.host, config.relay_url) if url)


class _TlsNotLoaded(types.ModuleType):
    """Stands in for `ssl` in an agent whose config names no https URL. asyncio imports ssl
    eagerly, which maps OpenSSL's libssl and libcrypto: 4.4 MiB of resident memory and ~5 ms of
    start-up for a plain-http agent that never uses them (measured, bench/README.md). The names
    below exist so `except ssl.SSLError` clauses still work; nothing here can raise them."""

    class SSLError(OSError):
        pass

    class SSLCertVerificationError(SSLError, ValueError):
        verify_message = ""

    def __getattr__(self, name: str):
        # AttributeError, so hasattr()/getattr(default) probes behave as on a Python without ssl.
        raise AttributeError(f"ssl.{name}: TLS is not loaded in this agent (its config names no https URL)")


def _without_tls() -> None:
    """Import asyncio with ssl absent (asyncio then has no TLS support, as on a Python built
    without OpenSSL), then leave a stand-in for modules that `import ssl` at the top."""
    if "ssl" in sys.modules or "asyncio" in sys.modules:
        return  # already paid for (an in-process caller): nothing to save
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        sys.modules["ssl"] = _TlsNotLoaded("ssl")


def _logger_context(environ: Mapping[str, str]) -> dict[str, str]:
    """The pod's name and namespace (the webhook sets them from the downward API) on every line."""
    ctx = {}
    if environ.get("KMS_POD_NAME"):
        ctx["pod"] = environ["KMS_POD_NAME"]
    if environ.get("KMS_POD_NAMESPACE"):
        ctx["namespace"] = environ["KMS_POD_NAMESPACE"]
    return ctx


def main(argv: list[str] | None = None) -> int:
    from injector.proc_guard import make_non_dumpable; make_non_dumpable()  # first: same-uid apps must not read /proc/<agent>/{root,environ,mem}
    from injector.agent_cli import load_config
    from injector.log import get_logger

    try:
        config = load_config(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        print(f"kms-agent: bad config: {exc.field}: {exc.detail}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if not _needs_tls(config):
        _without_tls()
    log = get_logger("agent", **_logger_context(os.environ))
    from injector.agent_process import run_process

    return run_process(config, log)


if __name__ == "__main__":
    sys.exit(main())
