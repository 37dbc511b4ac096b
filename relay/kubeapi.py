"""The relay's Kubernetes API calls: POST a TokenReview per new token; in `--tls-mode auto`, GET
the webhook's TLS Secret (relay/autotls.py).

Why not kubernetes-asyncio (webhook/kube.py): importing its client costs ~55 MiB of RSS in a
process whose budget is 200 MiB for 10,000 subscribers, for one POST and one GET (and aiohttp
another ~11 MiB). The requests go over injector/kms/http.py's h11 client, which the relay loads
anyway for KMS; only a kubeconfig with a client certificate or insecure-skip-tls-verify falls back
to aiohttp. This reads the same two configurations kubernetes-asyncio would:
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
    ca_file: str | None = None  # None: the system CAs
    verify: bool = True  # False: kubeconfig's insecure-skip-tls-verify
    client_cert: tuple[str, str] | None = None  # (cert file, key file)
    token: str | None = None
    token_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if self.client_cert:
            ctx.load_cert_chain(*self.client_cert)
        return ctx

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
    return KubeTarget(f"https://{host}:{port}", ca_file=str(sa_dir / "ca.crt"), token_file=str(sa_dir / "token"))


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
    target = KubeTarget(server, token=user.get("token"), token_file=user.get("tokenFile"))
    if server.startswith("https://"):
        target.verify = not cluster.get("insecure-skip-tls-verify")
        target.ca_file = cluster.get("certificate-authority") or (
            cluster.get("certificate-authority-data") and _data_file(cluster["certificate-authority-data"], ".crt")) or None
        cert = user.get("client-certificate") or (user.get("client-certificate-data") and _data_file(user["client-certificate-data"], ".crt"))
        key = user.get("client-key") or (user.get("client-key-data") and _data_file(user["client-key-data"], ".key"))
        if cert and key:
            target.client_cert = (cert, key)
    return target


def load_target() -> KubeTarget:
    return incluster() if os.environ.get("KUBERNETES_SERVICE_HOST") else from_kubeconfig()


class KubeApi:
    """JSON to and from the API server; answers as dicts. The HTTP client is made on first use."""

    def __init__(self, target: KubeTarget, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._http: Any = None
        self._session: Any = None

    async def post(self, path: str, body: dict) -> dict:
        return await self._call("POST", path, body)

    async def get_json(self, path: str) -> dict:
        return await self._call("GET", path, None)

    async def _call(self, method: str, path: str, body: dict | None) -> dict:
        headers = {}  # HttpClient sends Accept (and Content-Type for a JSON body)
        bearer = self.target.bearer()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        t = self.target
        if t.verify and not t.client_cert:
            from injector.kms.http import HttpClient  # noqa: PLC0415

            if self._http is None:
                self._http = HttpClient(t.server, timeout=self.timeout, ca_file=t.ca_file, user_agent="kms-injector-relay")
            resp = await self._http.request(method, path, json=body, headers=headers)
            status, reason, raw = resp.status, resp.reason, resp.body
        else:
            status, reason, raw = await self._call_aiohttp(method, path, body, headers)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if status >= 300:  # a Status object names why (NotFound, Forbidden, ...): prefer it to the HTTP reason
            status_reason = doc.get("reason") if isinstance(doc, dict) and doc.get("kind") == "Status" else None
            raise KubeApiError(status, str(status_reason or reason or ""))
        if doc is None:
            raise KubeApiError(status, "the answer is not JSON")
        return doc if isinstance(doc, dict) else {}

    async def _call_aiohttp(self, method: str, path: str, body: dict | None,
                            headers: dict[str, str]) -> tuple[int, str, bytes]:
        import aiohttp  # noqa: PLC0415 (client certificates, no verification: kubeconfigs outside a pod)

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {**headers, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(method, self.target.server + path, headers=headers, ssl=self.target.ssl_context(),
                                         data=None if body is None else json.dumps(body)) as resp:
            return resp.status, resp.reason or "", await resp.read()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None
