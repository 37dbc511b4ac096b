"""KMS API client for the agent (stdlib + asyncio only: it is on the agent's start-up path).

    from injector.kms import KmsClient, FetchResult, build_client
    from injector.kms.events import EventSubscriber      (change events; canonical.py: the /v1/kms backend)
    from injector.kms.auth import UniversalAuthFiles, KubernetesAuthFile
    from injector.kms.errors import KmsError, InvalidCredentials, PermissionDenied, NotFound,
        Unreachable, RateLimited, BadResponse, BadRequest, ServerError, CredentialsUnavailable
"""

from __future__ import annotations

from typing import Any

_LAZY = {"KmsClient": "client", "FetchResult": "secrets", "build_client": "client"}


def __getattr__(name: str) -> Any:  # lazy, so `import injector.kms.errors` stays tiny
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"injector.kms.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'injector.kms' has no attribute {name!r}")
