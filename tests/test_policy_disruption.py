"""Table-driven tests of policies.disruption.choose_removals: not-ready first, then cost per unit, then newest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.lifecycle import InstanceState
from autoscaler.model import InstanceRecord, Market, OfferingKey
from policies.disruption import choose_removals

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
S = InstanceState


def rec(
    token: str, state: InstanceState = S.READY, units: float = 8, price: float = 13.11, age: float = 3600
) -> InstanceRecord:
    """A record created `age` seconds before NOW."""
    created = NOW - timedelta(seconds=age)
    return InstanceRecord(
        token=token,
        pool="llm",
        offering=OfferingKey("simulated", "east", "east-a", "a100", Market.SPOT),
        state=state,
        capacity_units=units,
        gpus=8,
        price_usd_per_hour=price,
        created_at=created,
        state_since=created,
    )


CASES = [
    # (fleet, excess units, expected tokens in order, a fragment of the first removal's reason)
    pytest.param([rec("a")], 0, [], "", id="no-excess-no-removal"),
    pytest.param([rec("a")], -8, [], "", id="negative-excess-no-removal"),
    pytest.param([rec("a"), rec("b")], 7.9, [], "", id="excess-smaller-than-any-instance"),
    pytest.param(
        [rec("ready", price=40.0), rec("booting", S.PROVISIONING, price=1.0)],
        8,
        ["booting"],
        "not ready (provisioning), newest first",
        id="not-ready-before-expensive-ready",
    ),
    pytest.param(
        [rec("old", S.REQUESTED, age=600), rec("new", S.PENDING, age=10), rec("mid", S.RUNNING, age=300)],
        16,
        ["new", "mid"],
        "not ready (pending)",
        id="not-ready-newest-first",
    ),
    pytest.param(
        [rec("ready", age=10), rec("sick", S.UNHEALTHY, age=7200)],
        8,
        ["sick"],
        "not ready (unhealthy)",
        id="unhealthy-counts-as-not-ready",
    ),
    pytest.param(
        [rec("cheap", price=13.11), rec("dear", units=16, price=39.33), rec("mid", price=16.0)],
        24,
        ["dear", "mid"],
        "ready, most expensive per unit first: $2.458 per unit-hour ($39.33/h for 16 units)",
        id="most-expensive-per-unit-first",
    ),
    pytest.param(
        [rec("old", age=7200), rec("new", age=60), rec("mid", age=600)],
        8,
        ["new"],
        "created 2024-05-01T11:59:00+00:00",
        id="equal-cost-newest-first",
    ),
    pytest.param(
        [rec("big", S.PROVISIONING, units=16), rec("small", units=8)],
        8,
        ["small"],
        "ready, most expensive",
        id="too-big-passed-over-for-smaller",
    ),
    pytest.param(
        [
            rec("draining", S.DRAINING, age=1),
            rec("terminating", S.TERMINATING, age=1),
            rec("gone", S.TERMINATED, age=1),
            rec("failed", S.LAUNCH_FAILED, age=1),
            rec("ready"),
        ],
        40,
        ["ready"],
        "8 of 40 excess units",
        id="leaving-and-dead-records-skipped",
    ),
    pytest.param(
        [rec("booting", S.RUNNING, units=8), rec("dear", units=16, price=39.33), rec("cheap", units=8, price=1.0)],
        24,
        ["booting", "dear"],
        "8 of 24 excess units",
        id="mixed-stops-at-excess",
    ),
    pytest.param(
        [rec("b"), rec("a")],
        8,
        ["a"],
        "",
        id="full-tie-broken-by-token",
    ),
]


@pytest.mark.parametrize(("fleet", "excess", "expect", "reason"), CASES)
def test_choose_removals(fleet: list[InstanceRecord], excess: float, expect: list[str], reason: str) -> None:
    removals = choose_removals(fleet, excess)
    assert [r.record.token for r in removals] == expect, [r.reason for r in removals]
    assert sum(r.record.capacity_units for r in removals) <= max(excess, 0)
    if reason:
        assert reason in removals[0].reason
    assert choose_removals(list(reversed(fleet)), excess) == removals  # input order does not matter
