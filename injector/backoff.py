"""Capped exponential backoff with full jitter (AWS architecture blog's "Full Jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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

    def reset(self) -> None:
        self.attempt = 0
