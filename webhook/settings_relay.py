"""The change relay block of the webhook settings (`relay:`, issue 11): its dataclass and checks.

When `relay.url` is set, the sidecar/native agent of a pod in `relay.namespaces` gets the URL, the
CA (PEM text, not a secret) and a projected token in its AgentConfig (webhook/settings.py says more;
webhook/settings_load.py reads `relay.ca_file`). Apart from the rest of the settings because the
relay process and the pod patch read it on their own.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from injector.config import ConfigError, _check_relay_url

from .settings_error import SettingsError

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS label, as settings.py's

DEFAULT_RELAY_AUDIENCE = "kms-relay.hanzo.ai"
RELAY_TOKEN_DIR = "/kms-agent/relay"  # agent containers only, like the other /kms-agent/* mounts
RELAY_TOKEN_PATH = f"{RELAY_TOKEN_DIR}/token"
MAX_RELAY_CA_BYTES = 64 * 1024  # it travels in every relayed pod's env: a bundle, not a trust store


@dataclass(frozen=True)
class RelaySettings:
    """The change relay the agents subscribe to. `url` "" = no relay (nothing is added to pods)."""

    url: str = ""  # https://HOST[:PORT], e.g. the chart's https://<fullname>-relay.<ns>.svc:443
    ca: str = ""  # PEM of the CA the relay's certificate chains to ("" and no ca_file: system trust)
    ca_file: str = ""  # or a file holding it, read at every settings load (then `ca` is its text);
    # relative: to the settings file's directory (the chart projects relay-ca.crt next to it)
    audience: str = DEFAULT_RELAY_AUDIENCE  # of the projected token; the relay's --audience
    expiration_seconds: int = 600  # of that token; kubelet's minimum, it rotates at 80%
    poll_factor: float = 10.0  # the agents' safety-net poll is stretched this much while subscribed
    namespaces: tuple[str, ...] = ("*",)  # pods elsewhere are left as without a relay
    problem: str = ""  # set by the loader: why the relay is configured but not usable (ca_file unreadable)

    @property
    def active(self) -> bool:
        return bool(self.url) and not self.problem

    def applies_to(self, namespace: str) -> bool:
        return self.active and ("*" in self.namespaces or namespace in self.namespaces)

    @functools.cached_property
    def config_fields(self) -> dict[str, Any]:
        """The AgentConfig fields a relayed agent gets: built once per settings load, merged into
        every relayed pod's config dict (the PEM is not copied per pod)."""
        return {"relay_url": self.url, "relay_ca": self.ca, "relay_token_path": RELAY_TOKEN_PATH,
                "relay_poll_factor": float(self.poll_factor)}

    @functools.cached_property
    def token_volume(self) -> dict[str, Any]:
        return {"audience": self.audience, "expirationSeconds": self.expiration_seconds, "path": "token"}


def validate_relay(r: RelaySettings) -> None:
    if r.url:
        try:
            _check_relay_url(r.url)
        except ConfigError as exc:
            raise SettingsError("relay.url", exc.detail) from None
    if r.ca:
        check_relay_ca("relay.ca_file" if r.ca_file else "relay.ca", r.ca)
    if r.ca_file and (not r.ca_file.startswith("/") or "\x00" in r.ca_file):
        raise SettingsError("relay.ca_file", f"{r.ca_file[:80]!r} is not a file path (absolute, or relative to the settings file) such as relay-ca.crt")
    if not r.audience or len(r.audience) > 256 or any(c.isspace() for c in r.audience):
        raise SettingsError("relay.audience", f"{r.audience!r} is not an audience (non-empty, no spaces, up to 256)")
    if not 600 <= r.expiration_seconds <= 2**32:
        raise SettingsError("relay.expiration_seconds", f"{r.expiration_seconds!r} is not accepted; kubelet requires at least 600")
    if isinstance(r.poll_factor, bool) or not isinstance(r.poll_factor, (int, float)) or not 1 <= r.poll_factor <= 100:
        raise SettingsError("relay.poll_factor", f"{r.poll_factor!r} is out of range; use 1 to 100")
    if not r.namespaces:
        raise SettingsError("relay.namespaces", "must list at least one namespace (or '*'); leave relay.url empty to turn the relay off")
    for i, ns in enumerate(r.namespaces):
        if ns != "*" and not _NAMESPACE.match(ns):
            raise SettingsError(f"relay.namespaces[{i}]", f"{ns!r} is not a namespace name or '*'")


def check_relay_ca(name: str, pem: str) -> None:
    """Refuse what the agent's ssl.create_default_context(cadata=...) would refuse, at load time."""
    import ssl

    if len(pem.encode("utf-8", "replace")) > MAX_RELAY_CA_BYTES:
        raise SettingsError(name, f"the CA bundle is {len(pem)} bytes; at most {MAX_RELAY_CA_BYTES} (it travels in every pod's env)")
    if "PRIVATE KEY" in pem:  # e.g. a whole tls Secret pasted: a key must never reach every pod's env
        raise SettingsError(name, "contains a private key; give the CA certificate only (ca.crt, never a key)")
    if "-----BEGIN CERTIFICATE-----" not in pem or not pem.isascii():
        raise SettingsError(name, "is not a PEM CA certificate (-----BEGIN CERTIFICATE----- ...)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise SettingsError(name, "is not a PEM CA certificate the agents can load (a certificate block does not parse)") from None
