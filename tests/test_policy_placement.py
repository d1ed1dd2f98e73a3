"""Table-driven tests of policies.placement.place: filter chain, rank and cost order, spot spread, budgets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.capacity import record_failure
from autoscaler.config import Candidate, Pool
from autoscaler.lifecycle import InstanceState
from autoscaler.model import (
    Block,
    CapacityEvent,
    FailureKind,
    InstanceRecord,
    Market,
    Offering,
    OfferingKey,
    Scope,
)
from policies.placement import Budget, place

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPOT, OD = Market.SPOT, Market.ON_DEMAND
PLENTY = Budget(instances=100, gpus=800, usd_per_hour=1000.0)


def key(
    zone: str, itype: str = "h100", market: Market = SPOT, region: str = "east", cloud: str = "simulated"
) -> OfferingKey:
    return OfferingKey(cloud, region, zone, itype, market)


def off(
    zone: str, itype: str = "h100", market: Market = SPOT, price: float = 40.0, gpus: int = 8, **kw: str
) -> Offering:
    return Offering(key(zone, itype, market, **kw), price, gpus)


def cand(itype: str, market: Market, throughput: float, **kw: list[str]) -> Candidate:
    return Candidate(cloud="simulated", instance_type=itype, market=market, throughput=throughput, **kw)


def make_pool(*candidates: Candidate) -> Pool:
    return Pool(name="llm", max_capacity=1000, candidates=list(candidates))


def block(k: OfferingKey, scope: Scope = Scope.ZONE, until_in: float = 180) -> Block:
    b = record_failure(None, CapacityEvent(k, scope, FailureKind.CAPACITY, "InsufficientInstanceCapacity"), NOW)
    return Block(**{**b.__dict__, "until": NOW + timedelta(seconds=until_in)})


def record(
    zone: str,
    itype: str = "h100",
    market: Market = SPOT,
    state: InstanceState = InstanceState.READY,
    pool: str = "llm",
) -> InstanceRecord:
    return InstanceRecord(
        token=f"{pool}-{zone}-{itype}-{state}",
        pool=pool,
        offering=key(zone, itype, market),
        state=state,
        capacity_units=16,
        gpus=8,
        price_usd_per_hour=40.0,
        created_at=NOW - timedelta(hours=1),
        state_since=NOW - timedelta(hours=1),
    )


H100_SPOT = cand("h100", SPOT, 16)
A100_SPOT = cand("a100", SPOT, 8)
A100_OD = cand("a100", OD, 8)
STANDARD = make_pool(H100_SPOT, A100_SPOT, A100_OD)
STANDARD_OFFERINGS = (
    off("east-a", "h100", SPOT, 39.33),
    off("east-b", "h100", SPOT, 39.33),
    off("east-a", "a100", SPOT, 13.11),
    off("east-b", "a100", SPOT, 13.11),
    off("east-a", "a100", OD, 32.77),
    off("east-b", "a100", OD, 32.77),
)


@dataclass(frozen=True)
class Case:
    need: float
    expect: tuple[str, ...]  # str(OfferingKey) of each choice, in order
    pool: Pool = STANDARD
    offerings: tuple[Offering, ...] = STANDARD_OFFERINGS
    blocks: tuple[Block, ...] = ()
    fleet: tuple[InstanceRecord, ...] = ()
    budget: Budget = PLENTY
    expect_shortfall: float = 0.0
    expect_skipped: dict[str, str] = field(default_factory=dict)  # str(key) -> reason fragment
    expect_budget: Budget | None = None


def k(zone: str, itype: str = "h100", market: Market = SPOT, region: str = "east") -> str:
    return str(key(zone, itype, market, region))


CASES = [
    pytest.param(Case(need=0, expect=()), id="no-need-no-choices"),
    pytest.param(Case(need=-8, expect=()), id="negative-need-no-choices"),
    pytest.param(Case(need=16, expect=(k("east-a"),)), id="rank-beats-cheaper-per-unit"),
    pytest.param(Case(need=20, expect=(k("east-a"), k("east-b"))), id="last-instance-overshoots"),
    pytest.param(
        Case(
            need=16,
            expect=(k("east-a", "a100"), k("east-b", "a100")),
            blocks=(block(key("east-a"), Scope.REGION),),
            expect_skipped={
                k("east-a"): "blocked by capacity memory: simulated/east/h100/spot (capacity, region scope) until "
                "2024-05-01T12:03:00+00:00",
                k("east-b"): "InsufficientInstanceCapacity",
            },
        ),
        id="top-blocked-region-falls-to-next-rank",
    ),
    pytest.param(
        Case(
            need=16,
            expect=(k("east-b"),),
            blocks=(block(key("east-a")),),
            expect_skipped={k("east-a"): "zone scope"},
        ),
        id="zone-block-leaves-other-zone",
    ),
    pytest.param(
        Case(need=16, expect=(k("east-a"),), blocks=(block(key("east-a"), until_in=-1),)),
        id="expired-block-ignored",
    ),
    pytest.param(
        Case(
            need=8,
            expect=(k("east-a", "a100", OD),),
            blocks=(block(key("east-a"), Scope.CLOUD), block(key("e", "a100"), Scope.CLOUD)),
        ),
        id="cloud-wide-blocks-fall-to-on-demand",
    ),
    pytest.param(
        Case(need=48, expect=(k("east-a"), k("east-b"), k("east-a"))),
        id="spot-spread-alternates-zones",
    ),
    pytest.param(
        Case(need=48, expect=(k("east-b"), k("east-b"), k("east-a")), fleet=(record("east-a"), record("east-a"))),
        id="spot-spread-counts-fleet",
    ),
    pytest.param(
        Case(
            need=16,
            expect=(k("east-a"),),
            fleet=(
                record("east-a", state=InstanceState.DRAINING),
                record("east-a", state=InstanceState.TERMINATED),
                record("east-a", pool="other"),
                record("east-a", "a100"),
            ),
        ),
        id="spread-ignores-leaving-dead-other-pool-other-candidate",
    ),
    pytest.param(
        Case(
            need=32,
            expect=(k("east-b"), k("east-a")),
            offerings=(off("east-a", price=40.0), off("east-b", price=39.0)),
        ),
        id="spread-ties-broken-by-price",
    ),
    pytest.param(
        Case(
            need=16,
            pool=make_pool(A100_OD),
            expect=(k("east-a", "a100", OD), k("east-a", "a100", OD)),
        ),
        id="on-demand-not-spread",
    ),
    pytest.param(
        Case(
            need=16,
            pool=make_pool(A100_OD),
            offerings=(off("west-a", "a100", OD, 30.0, region="west"), off("east-a", "a100", OD, 32.77)),
            expect=(k("west-a", "a100", OD, "west"), k("west-a", "a100", OD, "west")),
        ),
        id="cheapest-per-unit-within-rank",
    ),
    pytest.param(
        Case(
            need=32,
            pool=make_pool(H100_SPOT),
            budget=Budget(instances=10, gpus=80, usd_per_hour=50.0),
            expect=(k("east-a"),),
            expect_shortfall=16,
            expect_skipped={k("east-a"): "over the $/hour budget: $39.33/h needed, $10.67/h left"},
            expect_budget=Budget(instances=9, gpus=72, usd_per_hour=50.0 - 39.33),
        ),
        id="dollar-budget-stops",
    ),
    pytest.param(
        Case(
            need=32,
            pool=make_pool(H100_SPOT),
            budget=Budget(instances=10, gpus=12, usd_per_hour=1000.0),
            expect=(k("east-a"),),
            expect_shortfall=16,
            expect_skipped={k("east-a"): "over the GPU budget: 8 GPUs needed, 4 left"},
        ),
        id="gpu-budget-stops",
    ),
    pytest.param(
        Case(
            need=32,
            pool=make_pool(H100_SPOT),
            budget=Budget(instances=1, gpus=800, usd_per_hour=1000.0),
            expect=(k("east-a"),),
            expect_shortfall=16,
            expect_skipped={k("east-b"): "over the instance budget"},
            expect_budget=Budget(instances=0, gpus=792, usd_per_hour=1000.0 - 39.33),
        ),
        id="instance-budget-stops",
    ),
    pytest.param(
        Case(
            need=8,
            budget=Budget(instances=10, gpus=80, usd_per_hour=20.0),
            expect=(k("east-a", "a100"),),
            expect_skipped={k("east-a"): "over the $/hour budget"},
        ),
        id="budget-falls-to-cheaper-rank",
    ),
    pytest.param(
        Case(
            need=32,
            pool=make_pool(H100_SPOT),
            # 0.3 - 0.1 is 0.19999999999999998 in floats: the second instance must still fit.
            offerings=(off("east-a", price=0.1), off("east-b", price=0.2)),
            budget=Budget(instances=10, gpus=80, usd_per_hour=0.3),
            expect=(k("east-a"), k("east-b")),
        ),
        id="exact-budget-fits-despite-float-noise",
    ),
    pytest.param(
        Case(need=32, pool=make_pool(cand("h100", SPOT, 16, zones=["east-b"])), expect=(k("east-b"), k("east-b"))),
        id="candidate-zone-restriction",
    ),
    pytest.param(
        Case(
            need=16,
            pool=make_pool(cand("h100", SPOT, 16, regions=["west"])),
            offerings=(*STANDARD_OFFERINGS, off("west-a", region="west")),
            expect=(k("west-a", region="west"),),
        ),
        id="candidate-region-restriction",
    ),
    pytest.param(
        Case(
            need=16,
            pool=make_pool(H100_SPOT),
            offerings=(off("east-a", "h100", OD), off("east-a", "h200"), off("east-a", cloud="aws")),
            expect=(),
            expect_shortfall=16,
        ),
        id="unmatched-offerings-ignored",
    ),
    pytest.param(
        Case(
            need=16,
            pool=make_pool(H100_SPOT),
            offerings=(off("east-a", price=45.0), off("east-a", price=41.0), off("east-b", price=42.0)),
            expect=(k("east-a"),),
            expect_budget=Budget(instances=99, gpus=792, usd_per_hour=1000.0 - 41.0),
        ),
        id="duplicate-offering-keeps-cheapest",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_place(case: Case) -> None:
    result = place(case.pool, case.need, case.offerings, case.blocks, case.fleet, case.budget, NOW)
    assert tuple(str(c.offering.key) for c in result.choices) == case.expect, [c.reason for c in result.choices]
    assert result.shortfall == pytest.approx(case.expect_shortfall)
    skipped = {s.offering: s.reason for s in result.skipped}
    for offering, fragment in case.expect_skipped.items():
        assert fragment in skipped.get(offering, ""), skipped
    if case.expect_budget is not None:
        assert result.budget.instances == case.expect_budget.instances
        assert result.budget.gpus == case.expect_budget.gpus
        assert result.budget.usd_per_hour == pytest.approx(case.expect_budget.usd_per_hour)
    for choice in result.choices:
        assert choice.capacity_units == case.pool.candidates[choice.rank].throughput
        assert choice.reason.startswith(f"candidate {choice.rank} ")


def test_capacity_error_then_replace_in_same_tick() -> None:
    """The daemon's fallback: a launch fails for capacity, the block is added, place() runs again."""
    offerings = STANDARD_OFFERINGS
    first = place(STANDARD, 16, offerings, [], [], PLENTY, NOW)
    assert [str(c.offering.key) for c in first.choices] == [k("east-a")]
    failed = first.choices[0].offering.key
    new_block = record_failure(None, CapacityEvent(failed, Scope.ZONE, FailureKind.CAPACITY, "stockout"), NOW)
    second = place(STANDARD, 16, offerings, [new_block], [], PLENTY, NOW)
    assert [str(c.offering.key) for c in second.choices] == [k("east-b")]
    assert [s.offering for s in second.skipped] == [k("east-a")]
    assert "stockout" in second.skipped[0].reason
    # The block ran out three minutes later: the offering is back.
    later = place(STANDARD, 16, offerings, [new_block], [], PLENTY, NOW + timedelta(minutes=3))
    assert [str(c.offering.key) for c in later.choices] == [k("east-a")]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(p, id="-".join(map(str, p)))
        for p in itertools.islice(itertools.permutations(range(6)), 0, 720, 97)
    ],
)
def test_deterministic_for_any_input_order(order: Sequence[int]) -> None:
    offerings = STANDARD_OFFERINGS
    shuffled = [offerings[i] for i in order]
    fleet = [record("east-a")]
    budget = Budget(instances=5, gpus=40, usd_per_hour=150.0)
    blocks = [block(key("east-b", "a100"))]
    baseline = place(STANDARD, 80, offerings, blocks, fleet, budget, NOW)
    assert place(STANDARD, 80, shuffled, blocks, fleet, budget, NOW) == baseline
    assert baseline.choices  # the comparison is not between two empty answers
