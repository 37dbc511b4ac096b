"""Run the dev KMS in-process: `async with run_dev_kms(seed=...) as kms:` (tests, demo, bench)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from .api import build_app
from .audit import AuditLog
from .seed import Seed, tiny_seed
from .state import DevKms


class DevKmsServer:
    """A DevKms served over real HTTP on host:port. start()/stop() may repeat; after the first
    start the port stays the same (outage tests: stop, check the client's error, start again)."""

    def __init__(self, state: DevKms, *, host: str = "127.0.0.1", port: int = 0, test_hooks: bool = True,
                 audit: AuditLog | None = None, api: str | None = None) -> None:
        self.state, self.host, self.port, self.test_hooks, self.api = state, host, port, test_hooks, api
        self.audit = audit or AuditLog()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/api` in every profile: the in-cluster URL has the `/api`, and a
        canonical client strips it (kms-api.md); the canonical routes are at root_url."""
        return self.root_url + "/api"

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def profile(self) -> str:
        return self.state.profile.name

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(build_app(self.state, test_hooks=self.test_hooks, audit=self.audit, api=self.api),
                               access_log=None, shutdown_timeout=2.0, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self.port == 0:
            self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # helpers that tests and the demo use (no auth; change events fire as for API writes)
    def set_secret(self, project: str, env: str, path: str, key: str, value: str) -> dict:
        return self.state.set_secret(project, env, path, key, value)

    def delete_secret(self, project: str, env: str, path: str, key: str) -> dict:
        return self.state.delete_secret(project, env, path, key)

    def get_value(self, project: str, env: str, path: str, key: str) -> str:
        return self.state.get_value(project, env, path, key)

    def stats(self) -> dict:
        return self.state.stats()

    def credentials(self, identity: str) -> tuple[str, str]:
        return self.state.credentials(identity)

    async def login(self, identity: str) -> str:
        """A real HTTP login as a seeded identity; returns the access token."""
        cid, csec = self.credentials(identity)
        canonical = self.state.profile.infisical is None
        url = f"{self.root_url}/v1/kms/auth/login" if canonical else f"{self.base_url}/v1/auth/universal-auth/login"
        async with aiohttp.ClientSession() as s:
            async with s.post(url,
                              json={"clientId": cid, "clientSecret": csec}) as r:
                r.raise_for_status()
                return (await r.json())["accessToken"]


@contextlib.asynccontextmanager
async def run_dev_kms(seed: "str | Path | dict | Seed | None" = None, *, token_ttl: float = 7200,
                      max_ttl: float = 2592000, rate_limit: float = 0, lockout_seconds: float | None = None,
                      port: int = 0, host: str = "127.0.0.1", test_hooks: bool = True,
                      audit_log: "str | Path | None" = None, api: str | None = None, profile: str = "dev",
                      **state_kw: Any) -> AsyncIterator[DevKmsServer]:
    """Serve a dev KMS for the duration of the block. `seed` defaults to tiny_seed().
    profile: which real server to model (profiles.py; default "dev"). lockout_seconds: None = the
    profile's (dev 30 s, hanzo-node / infisical-events 300 s).
    api: the dev profile's legacy switch: "infisical" (default), "canonical" or "both" (canonical_legacy.py).
    Extra keywords go to DevKms (events, max_event_streams, k8s_public_key_pem, k8s_audience,
    events_on_plan, events_permitted, event_heartbeat, event_max_seconds, list_cap, clock, ...)."""
    state = DevKms(tiny_seed() if seed is None else seed, token_ttl=token_ttl, max_ttl=max_ttl,
                   rate_limit=rate_limit, lockout_seconds=lockout_seconds, profile=profile, **state_kw)
    audit = AuditLog(audit_log) if audit_log else AuditLog()
    server = DevKmsServer(state, host=host, port=port, test_hooks=test_hooks, audit=audit, api=api)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        audit.close()
