"""Who is subscribing: a projected service-account token checked with a TokenReview.

    POST /apis/authentication.k8s.io/v1/tokenreviews
    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
     "spec": {"token": "...", "audiences": ["<relay audience>"]}}
    -> 201 {"status": {"authenticated": true, "audiences": [...],
                       "user": {"username": "system:serviceaccount:NS:NAME", ...}}}

The API server answers `authenticated: false` (with `status.error`) for an expired, forged or
wrong-audience token; we also require the audience back in `status.audiences` and a
service-account username. Answers are cached by the token's sha256 (never the token) for a short
while, so a relay restart with 10,000 agents reconnecting costs one review per distinct token, and
concurrent reviews of one token share one request. The relay needs RBAC `create` on
`tokenreviews` (a ClusterRole; see the chart's relay-rbac.yaml).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SA_PREFIX = "system:serviceaccount:"
POSITIVE_TTL = 60.0
NEGATIVE_TTL = 5.0
MAX_CACHE = 50_000
MAX_INFLIGHT = 32  # reviews sent at once: a flood of made-up tokens must not flood the API server


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    service_account: str


class Unauthenticated(Exception):
    """The token was refused; the message says why (never the token)."""


class ReviewUnavailable(Exception):
    """The API server could not be asked (network, 5xx, RBAC): the subscriber should retry."""


class TokenReviewer:
    def __init__(self, audience: str, *, configuration: Any = None, timeout: float = 10.0) -> None:
        self.audience = audience
        self.configuration = configuration  # relay.kubeapi.KubeTarget; None = in-cluster/kubeconfig
        self.timeout = timeout
        self._api: Any = None
        self._cache: dict[str, tuple[float, PodIdentity | str]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._sem = asyncio.Semaphore(MAX_INFLIGHT)
        self.reviews = 0  # requests sent (metrics, tests)
        self.cache_hits = 0

    async def _client(self) -> Any:
        if self._api is None:
            from relay.kubeapi import KubeApi, load_target  # noqa: PLC0415

            self._api = KubeApi(self.configuration or load_target(), timeout=self.timeout)
        return self._api

    async def review(self, token: str) -> PodIdentity:
        if not token or len(token) > 16384 or any(c in token for c in "\r\n\x00 "):
            raise Unauthenticated("the bearer token is empty or malformed; send the projected service-account token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self.cache_hits += 1
            return _result(hit[1])
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                outcome = await self._ask(token)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody else may be waiting
                raise
            finally:
                self._inflight.pop(key, None)
            ttl = POSITIVE_TTL if isinstance(outcome, PodIdentity) else NEGATIVE_TTL
            if len(self._cache) >= MAX_CACHE:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= MAX_CACHE:
                    self._cache.clear()
            self._cache[key] = (now + ttl, outcome)
            fut.set_result(outcome)
            return _result(outcome)
        return _result(await asyncio.shield(fut))

    async def _ask(self, token: str) -> PodIdentity | str:
        """A PodIdentity, or the reason the API server (or we) refused the token."""
        async with self._sem:
            return await self._ask_now(token)

    async def _ask_now(self, token: str) -> PodIdentity | str:
        from relay.kubeapi import KubeApiError, KubeConfigError  # noqa: PLC0415

        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.audience]}}
        try:
            api = await self._client()
            self.reviews += 1
            doc = await api.post(REVIEW_PATH, body)
        except KubeConfigError as exc:
            raise ReviewUnavailable(str(exc)) from None
        except KubeApiError as exc:
            raise ReviewUnavailable(f"TokenReview answered {exc}"
                                    + ("; the relay's service account needs create on tokenreviews" if exc.status == 403 else "")) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise ReviewUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
        except Exception as exc:  # aiohttp client errors and the like: never their text (could echo the body)
            raise ReviewUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
        return judge(doc, self.audience, token)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None


def _result(outcome: PodIdentity | str) -> PodIdentity:
    if isinstance(outcome, PodIdentity):
        return outcome
    raise Unauthenticated(outcome)


def judge(doc: Any, audience: str, token: str = "") -> PodIdentity | str:
    """PURE: a TokenReview answer -> the pod identity, or why it is refused."""
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        return "the TokenReview answer has no status"
    if status.get("authenticated") is not True:
        err = status.get("error")
        err = err if isinstance(err, str) else "not authenticated"
        if token:
            err = err.replace(token, "<token>")
        return f"the token was not accepted by the Kubernetes API ({err[:200]}); send a projected token with audience {audience!r}"
    auds = status.get("audiences")
    if not isinstance(auds, list) or audience not in auds:
        return f"the token is not for audience {audience!r}; project it with that audience"
    user = status.get("user") if isinstance(status.get("user"), dict) else {}
    name = user.get("username") if isinstance(user.get("username"), str) else ""
    parts = name[len(SA_PREFIX):].split(":") if name.startswith(SA_PREFIX) else []
    if len(parts) != 2 or not all(parts):
        return f"the token belongs to {name[:100]!r}, not a service account; only pods may subscribe"
    return PodIdentity(parts[0], parts[1])
