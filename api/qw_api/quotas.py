"""Per-tenant limits, so one API key cannot use up what every tenant shares: the rate at which it creates tasks
(a token bucket per tenant: `429` + Retry-After when empty) and the event streams it holds open (each polls the
store; `429` over the tenant's cap, `503` over the server's).

Limits are per API process (each replica counts its own), like the upload budgets: with N replicas behind a
Service a tenant gets up to N times the rate. They need no shared state and never add a round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: int  # bucket size
    tokens: float = field(init=False)
    stamp: float = field(init=False)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = self.clock()

    def take(self) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is (nothing taken)."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class OverLimit(Exception):
    def __init__(self, status: int, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class TenantQuotas:
    def __init__(
        self,
        rate: float,
        burst: int,
        overrides: dict[str, tuple[float, int]],
        streams_per_tenant: int,
        streams: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.overrides = rate, burst, overrides
        self.streams_per_tenant, self.max_streams = streams_per_tenant, streams
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._open: dict[str, int] = {}

    def admit(self, tenant: str) -> None:
        """One task created by `tenant`, or OverLimit(429). A rate of 0 or less means no limit."""
        rate, burst = self.overrides.get(tenant, (self.rate, self.burst))
        if rate <= 0:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(rate, burst, clock=self.clock)
        wait = bucket.take()
        if wait:
            raise OverLimit(
                429,
                f"too many tasks: this API server takes {rate:g} per second from your tenant (bursts of {burst}); "
                "retry after the Retry-After seconds",
                max(1, math.ceil(wait)),
            )

    def open_stream(self, tenant: str) -> Callable[[], None]:
        """A slot for one event stream of `tenant`, or OverLimit; returns its release (safe to call twice)."""
        if self._open.get(tenant, 0) >= self.streams_per_tenant:
            raise OverLimit(
                429, f"your tenant already has {self.streams_per_tenant} event streams open on this server", 5
            )
        if sum(self._open.values()) >= self.max_streams:
            raise OverLimit(503, f"this server already serves {self.max_streams} event streams", 5)
        self._open[tenant] = self._open.get(tenant, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[tenant] -= 1

        return release
