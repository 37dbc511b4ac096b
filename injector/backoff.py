"""The one retry policy of the agent: capped exponential backoff with full jitter (AWS
architecture blog's "Full Jitter"), a server's Retry-After as a floor, and parking of refused
credentials. Pure: no clock, no I/O; the loops (init, sidecar, event stream reconnects, the
supervisor's restarts) ask it for a delay and do the waiting themselves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Wrong credentials are not retried sooner than this unless the credential files change: KMS may
# lock an identity after a few bad logins in a row, which would hurt every pod sharing it.
AUTH_RETRY_FLOOR = 5.0
# KMS locks an identity after 3 wrong logins in a row, for every pod that shares it. So the same
# credentials are tried at most AUTH_MAX_TRIES times (counted across restarts, see
# injector.refusals); then the agent waits for the credential files to change (the watch wakes it
# at once) and only re-tries every AUTH_PARK seconds.
AUTH_MAX_TRIES = 2
AUTH_PARK = 600.0


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self, floor: float = 0.0) -> float:
        """Delay before the next attempt: uniform in [0, min(cap, base * 2**attempt)].

        `floor` (e.g. a server's Retry-After) is a lower bound that the jitter never undercuts.
        """
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return max(floor, self.rng.uniform(0.0, ceiling))

    def delay_after(self, exc: BaseException, refusals: int = 0) -> float:
        """Delay before retrying after `exc`. `refusals`: how often the credentials in use now
        were refused in a row (only for InvalidCredentials)."""
        floor = retry_after(exc)
        kind = _kind(exc)
        if kind == "invalid-credentials":
            if refusals >= AUTH_MAX_TRIES:
                return max(floor, AUTH_PARK)
            floor = max(floor, AUTH_RETRY_FLOOR)
        elif kind == "credentials-unavailable":
            floor = max(floor, AUTH_RETRY_FLOOR)
        return self.next_delay(floor=floor)

    def reset(self) -> None:
        self.attempt = 0


def retry_after(exc: BaseException) -> float:
    """The server's Retry-After carried by a KMS error, in seconds (0 when none)."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def parked(refusals: int) -> bool:
    """True when credentials refused this often must not be tried again before they change."""
    return refusals >= AUTH_MAX_TRIES


def _kind(exc: BaseException) -> str:
    # Lazy: injector.kms.errors is on every failing path anyway, and this module stays importable
    # without it (the webhook's reloaders may reuse the backoff).
    from injector.kms.errors import CredentialsUnavailable, InvalidCredentials

    if isinstance(exc, InvalidCredentials):
        return "invalid-credentials"
    if isinstance(exc, CredentialsUnavailable):
        return "credentials-unavailable"
    return ""
