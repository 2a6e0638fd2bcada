"""Retries with exponential backoff and full jitter (a random wait in [0, base * 2^attempt],
capped): concurrent clients that failed together do not retry together."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying: the server was busy or unreachable, a deadline passed."""


class BadInput(Exception):
    """A permanent failure caused by the items sent: retrying the same request cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # calls in all, the first included
    base_s: float = 0.1
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.base_s < 0 or self.max_s < self.base_s:
            raise ValueError(f"need 0 <= base_s <= max_s, got {self.base_s}, {self.max_s}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        return rng.uniform(0.0, min(self.max_s, self.base_s * 2.0**attempt))


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> T:
    """`fn()`, called again after a `Transient` failure until `policy.attempts` calls have
    been made; the last failure is re-raised. Any other exception propagates at once."""
    rng = rng or random.Random()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Transient as exc:
            if attempt == policy.attempts - 1:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")
