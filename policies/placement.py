"""Which offerings supply a pool's missing capacity: a filter chain, then rank and cost per unit. Pure.

Like Cluster Autoscaler's expanders, offerings pass a chain of filters (capacity memory, then the dollar, GPU
and instance budgets left under the global limits); every offering a filter drops is recorded as a Skipped so
the explain output can say why it was not used. The survivors are ordered by the pool's candidate rank, then by
dollars per capacity unit. Spot capacity is spread across zones (SkyPilot's spot spread): among the offerings of
one rank, the zone holding the fewest of the pool's instances of that candidate wins, so one zone's preemption
wave does not take the whole pool. Instances are chosen one at a time, each consuming budget.

The daemon calls place() again within the same tick after a capacity error, with the new block in `blocks`;
the blocked offering then drops out and the next one is chosen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import takewhile

from autoscaler.capacity import blocking
from autoscaler.config import Candidate, Pool
from autoscaler.lifecycle import InstanceState
from autoscaler.model import Block, InstanceRecord, Market, Offering, OfferingKey, Skipped
from policies.scaling import num

# Budgets are sums of float prices: a price equal to what is left must fit despite rounding noise.
_EPSILON = 1e-9
# Instances already on their way out do not hold a zone's share of the pool.
_LEAVING = frozenset({InstanceState.DRAINING, InstanceState.TERMINATING})


@dataclass(frozen=True)
class Budget:
    """What is LEFT under the global limits."""

    instances: int
    gpus: int
    usd_per_hour: float


@dataclass(frozen=True)
class Choice:
    offering: Offering
    capacity_units: float
    rank: int
    reason: str


@dataclass(frozen=True)
class Placement:
    choices: tuple[Choice, ...]
    skipped: tuple[Skipped, ...]
    budget: Budget
    shortfall: float


@dataclass(frozen=True)
class _Match:
    offering: Offering
    candidate: Candidate
    rank: int

    @property
    def per_unit(self) -> float:
        return self.offering.price_usd_per_hour / self.candidate.throughput

    @property
    def zone(self) -> tuple[str, str]:
        return (self.offering.key.region, self.offering.key.zone)


def matches(candidate: Candidate, key: OfferingKey) -> bool:
    if (candidate.cloud, candidate.instance_type, candidate.market) != (key.cloud, key.instance_type, key.market):
        return False
    if candidate.regions is not None and key.region not in candidate.regions:
        return False
    return candidate.zones is None or key.zone in candidate.zones


def place(
    pool: Pool,
    need_units: float,
    offerings: Sequence[Offering],
    blocks: Sequence[Block],
    fleet: Sequence[InstanceRecord],
    budget: Budget,
    now: datetime,
    worst_price: Mapping[OfferingKey, float] | None = None,
    zone_preemptions: Mapping[tuple[str, str], int] | None = None,
) -> Placement:
    """`worst_price`: the price each offering is counted at against the $/hour budget (the worst it can reach:
    a spot offering's max price, else its on-demand price); default its current price. `zone_preemptions`:
    recent spot preemptions per (region, zone) of this pool's offerings: each counts like one of the pool's
    instances already in the zone, so spot spreads away from the zones that have been taking instances back."""
    risk = zone_preemptions or {}
    worst = worst_price or {}
    if need_units <= 0:
        return Placement((), (), budget, 0.0)
    found = _matched(pool, offerings)
    skipped: dict[OfferingKey, str] = {}
    for m in found:
        block = blocking(blocks, m.offering.key, now)
        if block is not None:
            skipped[m.offering.key] = (
                f"blocked by capacity memory: {block.describe()} until {block.until.isoformat()} "
                f"after {block.failures} failure(s)" + (f": {block.reason}" if block.reason else "")
            )
    usable = [m for m in found if m.offering.key not in skipped]

    # Live instances of each candidate per zone: the fleet's, then each choice made here.
    spread: Counter[tuple[int, tuple[str, str]]] = Counter()
    for record in fleet:
        if record.pool != pool.name or not record.live or record.state in _LEAVING:
            continue
        for rank, candidate in enumerate(pool.candidates):
            if matches(candidate, record.offering):
                spread[(rank, (record.offering.region, record.offering.zone))] += 1
                break

    choices: list[Choice] = []
    covered = 0.0
    while covered < need_units - _EPSILON:
        # Budgets only shrink, so an offering over budget now stays over it: drop it for good.
        fitting = []
        for m in usable:
            o = m.offering
            counted = worst.get(o.key, o.price_usd_per_hour)
            if counted > budget.usd_per_hour + _EPSILON or o.gpus > budget.gpus or budget.instances < 1:
                skipped.setdefault(o.key, _over_budget(o, budget, counted))
            else:
                fitting.append(m)
        usable = fitting
        if not usable:
            break
        # `usable` is sorted by rank: only the best rank's offerings compete (spread and price within it).
        best = min(_best_rank(usable), key=lambda m: _order(m, spread, risk))
        count = spread[(best.rank, best.zone)]
        choices.append(Choice(best.offering, best.candidate.throughput, best.rank, _reason(best, count)))
        covered += best.candidate.throughput
        spread[(best.rank, best.zone)] += 1
        budget = replace(
            budget,
            instances=budget.instances - 1,
            gpus=budget.gpus - best.offering.gpus,
            usd_per_hour=budget.usd_per_hour - worst.get(best.offering.key, best.offering.price_usd_per_hour),
        )
    shortfall = max(need_units - covered, 0.0)
    return Placement(tuple(choices), tuple(Skipped(str(k), why) for k, why in skipped.items()), budget, shortfall)


def _matched(pool: Pool, offerings: Sequence[Offering]) -> list[_Match]:
    """Offerings some candidate accepts, each with its best rank; sorted, so the output never depends on the
    order the providers listed them in. A key listed twice keeps its cheapest price."""
    by_key: dict[OfferingKey, Offering] = {}
    for o in sorted(offerings, key=lambda o: (o.key, o.price_usd_per_hour, o.gpus)):
        by_key.setdefault(o.key, o)
    found: list[_Match] = []
    for key, offering in by_key.items():
        for rank, candidate in enumerate(pool.candidates):
            if matches(candidate, key):
                found.append(_Match(offering, candidate, rank))
                break
    found.sort(key=lambda m: (m.rank, m.per_unit, m.offering.key))
    return found


def _best_rank(usable: list[_Match]) -> list[_Match]:
    """The leading run of `usable` (sorted by rank) that shares its first rank."""
    top = usable[0].rank
    return list(takewhile(lambda m: m.rank == top, usable))


def _over_budget(offering: Offering, budget: Budget, counted: float) -> str:
    if counted > budget.usd_per_hour + _EPSILON:
        worst = "" if counted == offering.price_usd_per_hour else " (its worst price)"
        return (
            f"over the $/hour budget: ${num(counted)}/h needed{worst}, "
            f"${num(max(budget.usd_per_hour, 0.0))}/h left"
        )
    if offering.gpus > budget.gpus:
        return f"over the GPU budget: {offering.gpus} GPUs needed, {max(budget.gpus, 0)} left"
    if budget.instances < 1:
        return "over the instance budget: no instances left under max_instances"
    return ""


def _order(
    m: _Match, spread: Counter[tuple[int, tuple[str, str]]], risk: Mapping[tuple[str, str], int]
) -> tuple[int, int, float, OfferingKey]:
    # Spot spread only for spot: an on-demand instance is not taken back, so the cheapest zone is simply best.
    in_zone = spread[(m.rank, m.zone)] + risk.get(m.zone, 0) if m.candidate.market == Market.SPOT else 0
    return (m.rank, in_zone, m.per_unit, m.offering.key)


def _reason(m: _Match, in_zone: int) -> str:
    o, c = m.offering, m.candidate
    text = (
        f"candidate {m.rank} ({c.cloud}/{c.instance_type}/{c.market}) in {o.key.zone}: "
        f"${num(o.price_usd_per_hour)}/h for {num(c.throughput)} units (${num(m.per_unit)} per unit-hour)"
    )
    if c.market == Market.SPOT:
        text += f", spot spread: {in_zone} of the pool's already in this zone"
    return text
