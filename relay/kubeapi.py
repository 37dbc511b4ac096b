"""The one Kubernetes API call the relay makes per new token (POST a TokenReview), over aiohttp.

Why not kubernetes-asyncio (webhook/kube.py): importing its client costs ~55 MiB of RSS in a
process whose budget is 200 MiB for 10,000 subscribers, for one POST. This reads the same two
configurations it would:
  - in a pod (KUBERNETES_SERVICE_HOST set): https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
    the service-account token (re-read on every call: the kubelet rotates it) and its ca.crt;
  - else the kubeconfig ($KUBECONFIG, first file, or ~/.kube/config): the current context's
    cluster server, certificate-authority(-data) or insecure-skip-tls-verify, and the user's
    token / tokenFile or client-certificate(-data) + client-key(-data). Exec plugins and auth
    providers are refused with a message naming them (the relay runs in a pod).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    """The API server's address or credentials cannot be read; the message names the field."""


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


@dataclass
class KubeTarget:
    server: str
    ssl: ssl.SSLContext | bool | None  # None: plain http; False: no verification (kubeconfig said so)
    token: str | None = None
    token_file: str | None = None

    def bearer(self) -> str | None:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise KubeConfigError(f"cannot read the token file {self.token_file}: {exc.strerror}") from None
        return self.token


def incluster(sa_dir: Path = SA_DIR) -> KubeTarget:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    try:
        ctx = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot read the in-cluster CA {sa_dir / 'ca.crt'}: {exc}") from None
    return KubeTarget(f"https://{host}:{port}", ctx, token_file=str(sa_dir / "token"))


def _data_file(data: str, suffix: str) -> str:
    fd, name = tempfile.mkstemp(prefix="kms-relay-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    return name


def from_kubeconfig(path: str | None = None) -> KubeTarget:
    import yaml  # noqa: PLC0415 (kubeconfig only)

    path = path or (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config"))
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read the kubeconfig {path}: {type(exc).__name__}") from None

    def named(kind: str, name: str) -> dict:
        for item in (doc or {}).get(kind + "s") or []:
            if isinstance(item, dict) and item.get("name") == name:
                return item.get(kind) or {}
        raise KubeConfigError(f"kubeconfig {path}: no {kind} named {name!r}")

    ctx_name = (doc or {}).get("current-context")
    if not ctx_name:
        raise KubeConfigError(f"kubeconfig {path}: no current-context")
    context = named("context", ctx_name)
    cluster, user = named("cluster", context.get("cluster", "")), named("user", context.get("user", ""))
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise KubeConfigError(f"kubeconfig {path}: cluster server {server!r} is not an http(s) URL")
    for unsupported in ("exec", "auth-provider"):
        if unsupported in user:
            raise KubeConfigError(f"kubeconfig {path}: user {unsupported!r} is not supported by the relay; "
                                  "use a token, tokenFile or client certificate")
    tls: ssl.SSLContext | bool | None = None
    if server.startswith("https://"):
        if cluster.get("insecure-skip-tls-verify"):
            tls = False
        else:
            ca = cluster.get("certificate-authority")
            ca_data = cluster.get("certificate-authority-data")
            tls = ssl.create_default_context(cafile=ca, cadata=base64.b64decode(ca_data).decode() if ca_data else None) \
                if ca or ca_data else ssl.create_default_context()
        cert = user.get("client-certificate") or (user.get("client-certificate-data") and _data_file(user["client-certificate-data"], ".crt"))
        key = user.get("client-key") or (user.get("client-key-data") and _data_file(user["client-key-data"], ".key"))
        if cert and key:
            if tls is False:
                tls = ssl.create_default_context()
                tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            assert isinstance(tls, ssl.SSLContext)
            tls.load_cert_chain(cert, key)
    return KubeTarget(server, tls, token=user.get("token"), token_file=user.get("tokenFile"))


def load_target() -> KubeTarget:
    return incluster() if os.environ.get("KUBERNETES_SERVICE_HOST") else from_kubeconfig()


class KubeApi:
    """POST JSON to the API server; answers as dicts. One aiohttp session, made on first use."""

    def __init__(self, target: KubeTarget, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._session: Any = None

    async def post(self, path: str, body: dict) -> dict:
        import aiohttp  # noqa: PLC0415

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        bearer = self.target.bearer()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        kwargs: dict[str, Any] = {"ssl": self.target.ssl} if self.target.ssl is not None else {}
        async with self._session.post(self.target.server + path, data=json.dumps(body), headers=headers, **kwargs) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise KubeApiError(resp.status, resp.reason or "")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise KubeApiError(resp.status, "the answer is not JSON") from None
        return doc if isinstance(doc, dict) else {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
