"""The API's per-tenant limits (qw_api/quotas.py) on a fake clock: buckets refill at their rate up to their burst,
a tenant's overrides apply, rate <= 0 means no limit, stream slots are counted and released once."""

from __future__ import annotations

import pytest
from qw_api.quotas import OverLimit, TenantQuotas, TokenBucket
from qw_core.settings import ApiSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token every 0.5 s
    clock.now = 0.5
    assert bucket.take() == 0.0
    clock.now = 100.0  # a long pause refills up to the burst only
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_each_tenant_has_its_own_bucket_and_overrides_apply() -> None:
    quotas = TenantQuotas(1.0, 1, {"big": (1000.0, 1000), "free": (0.0, 1)}, 5, 10, clock=Clock())
    quotas.admit("acme")
    with pytest.raises(OverLimit) as err:
        quotas.admit("acme")
    assert (err.value.status, err.value.retry_after) == (429, 1)
    quotas.admit("globex")  # not affected by acme
    for _ in range(500):
        quotas.admit("big")
        quotas.admit("free")  # rate 0: unlimited


def test_stream_slots_are_capped_and_released_once() -> None:
    quotas = TenantQuotas(1.0, 1, {}, streams_per_tenant=2, streams=3)
    first, _second = quotas.open_stream("acme"), quotas.open_stream("acme")
    with pytest.raises(OverLimit) as err:
        quotas.open_stream("acme")
    assert err.value.status == 429
    quotas.open_stream("globex")
    with pytest.raises(OverLimit) as err:
        quotas.open_stream("initech")
    assert err.value.status == 503
    first()
    first()  # released twice (the stream's end and the response's background task): counted once
    quotas.open_stream("initech")
    with pytest.raises(OverLimit):
        quotas.open_stream("acme2")


def test_overrides_are_parsed_and_a_bad_one_is_named() -> None:
    settings = ApiSettings(tenant_limits="big=500/5000, small=0.5")  # type: ignore[call-arg]
    assert settings.tenant_overrides() == {"big": (500.0, 5000), "small": (0.5, 1)}
    with pytest.raises(ValueError, match="QW_TENANT_LIMITS: big=fast is not rate/burst"):
        ApiSettings(tenant_limits="big=fast").tenant_overrides()  # type: ignore[call-arg]
