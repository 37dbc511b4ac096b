"""Retry a KMS call with capped exponential backoff + full jitter, honouring Retry-After.

By default only `err.retryable` errors are retried (Unreachable, RateLimited, ServerError,
BadResponse); InvalidCredentials, PermissionDenied, NotFound, BadRequest raise at once. Init mode
passes `should_retry=lambda e: True` to keep trying everything until its deadline (a Secret may
be mounted late, an access policy granted a moment after the pod starts).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

from injector.backoff import Backoff
from injector.kms.errors import KmsError

T = TypeVar("T")


def _default_should_retry(err: KmsError) -> bool:
    return err.retryable


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff | None = None,
    deadline: float | None = None,
    on_error: Callable[[KmsError, float], None] | None = None,
    should_retry: Callable[[KmsError], bool] = _default_should_retry,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `call()` until it succeeds, an error is not to be retried, or `deadline` would pass.

    `deadline` is a `time.monotonic()` instant (None = no deadline). The delay before the next
    attempt is the backoff's full-jitter draw, never less than a RateLimited's Retry-After. When
    that sleep would end past the deadline, the last error is raised now instead.
    `on_error(err, delay)` is called before each sleep (log state changes there).
    """
    backoff = backoff or Backoff()
    while True:
        try:
            result = await call()
        except KmsError as err:
            if not should_retry(err):
                raise
            floor = getattr(err, "retry_after", None) or 0.0
            delay = backoff.next_delay(floor=floor)
            if deadline is not None and clock() + delay > deadline:
                raise
            if on_error is not None:
                on_error(err, delay)
            await asyncio.sleep(delay)
        else:
            backoff.reset()
            return result
