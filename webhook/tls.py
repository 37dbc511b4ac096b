"""The webhook's serving certificate: load a cert/key pair from files and hot-reload it.

How the reload works (verified by tests/test_webhook_server.py): the listening socket keeps ONE
outer SSLContext for its whole life. Its SNI callback (OpenSSL calls it on every ClientHello, with
or without an SNI extension) switches each new handshake to the context built from the newest good
pair. A changed pair is loaded into a *fresh* context first, so a broken or half-written pair
(mismatched key, truncated PEM) never touches what is being served: the old one stays, an error is
logged. Established connections keep the context they handshook with; nothing restarts.

Watching and change detection are webhook.reload's (the settings file uses the same): the files'
directories through inotify, which also sees Kubernetes Secret volume updates (an atomic `..data`
symlink swap), plus a slow poll as a safety net.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from injector.log import Logger, get_logger
from webhook.reload import Reloader, bytes_digest


@dataclass(frozen=True)
class LoadedPair:
    context: ssl.SSLContext
    digest: str       # sha256 of cert + key bytes: cheap change detection
    serial: int
    not_after: float  # unix time


def new_server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def build_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> LoadedPair:
    """Read and validate a pair into a new context. Raises ValueError naming what is wrong.

    Blocking (file reads, key parsing): call it off the event loop.
    """
    from webhook import certs

    try:
        cert_bytes = Path(cert_path).read_bytes()
        key_bytes = Path(key_path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read certificate or key: {exc.strerror or exc} ({exc.filename})") from None
    try:
        cert = certs.load_cert(cert_bytes)
    except ValueError:
        raise ValueError(f"{cert_path}: not a PEM certificate") from None
    if not certs.key_matches_cert(cert_bytes, key_bytes):
        raise ValueError(f"{key_path}: not a PEM private key matching {cert_path}")
    ctx = new_server_context()
    # Load from private copies of the bytes we validated, so a file swapped between the check and
    # the load cannot slip in unchecked.
    with tempfile.TemporaryDirectory(prefix="kms-tls-") as tmp:
        c, k = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        c.write_bytes(cert_bytes)
        fd = os.open(k, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_bytes)
        try:
            ctx.load_cert_chain(c, k)
        except ssl.SSLError as exc:
            raise ValueError(f"{cert_path}/{key_path}: rejected by OpenSSL ({exc.reason or exc})") from None
    return LoadedPair(ctx, bytes_digest([cert_bytes, key_bytes]), cert.serial_number, cert.not_valid_after_utc.timestamp())


class CertReloader(Reloader[LoadedPair]):
    """Serves the newest good pair from `cert_path`/`key_path`; `loaded` once one was served."""

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
                 log: Logger | None = None, poll_interval: float = 10.0,
                 on_reload: Callable[[bool], Any] | None = None) -> None:
        super().__init__([cert_path, key_path], name="tls", log=log or get_logger("webhook.tls"), poll_interval=poll_interval)
        self.cert_path, self.key_path = self.paths
        self.on_reload = on_reload  # called with True (new pair served) or False (bad pair kept old)
        self.current: LoadedPair | None = None
        self.server_context = new_server_context()
        self.server_context.sni_callback = self._pick_context
        self._install_placeholder()

    # -- state --------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.current is not None

    def _pick_context(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        cur = self.current
        if cur is not None:
            sslobj.context = cur.context
        return None

    def _install_placeholder(self) -> None:
        """A throwaway self-signed cert so the port answers (liveness) before the real one exists.

        Not trusted by anyone; /readyz stays false until a real pair is loaded, so no admission is
        routed here meanwhile. Needs a writable temp dir; without one, handshakes simply fail.
        """
        from webhook import certs

        try:
            pair = certs.generate_ca("kms-injector-placeholder")
            with tempfile.TemporaryDirectory(prefix="kms-tls-") as tmp:
                c, k = Path(tmp, "p.crt"), Path(tmp, "p.key")
                c.write_bytes(pair.cert_pem)
                k.write_bytes(pair.key_pem)
                self.server_context.load_cert_chain(c, k)
        except OSError as exc:
            self.log.warning("tls_placeholder_unavailable", error=type(exc).__name__)

    # -- loading (webhook.reload calls these) ------------------------------------------------
    def load_now(self) -> bool:  # type: ignore[override]
        """Synchronous first load (before the loop serves). True when a pair is being served."""
        return not isinstance(super().load_now(), Exception)

    def parse(self) -> LoadedPair:
        return build_context(self.cert_path, self.key_path)

    def accepted(self, pair: LoadedPair, digest: str, first: bool) -> None:
        self.current = pair
        self.log.info("tls_cert_loaded" if first else "tls_cert_reloaded", cert=str(self.cert_path),
                      serial=f"{pair.serial:x}", not_after=int(pair.not_after))
        if self.on_reload:
            self.on_reload(True)

    def rejected(self, exc: Exception, digest: str, first: bool) -> None:
        # build_context's ValueError names the file and what is wrong; anything else is a bug: its type.
        reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        if self.current is None:
            self.log.warning("tls_cert_unavailable", reason=reason, cert=str(self.cert_path))
        else:
            self.log.error("tls_reload_failed", reason=reason, cert=str(self.cert_path), kept_serial=f"{self.current.serial:x}")
        if self.on_reload:
            self.on_reload(False)
