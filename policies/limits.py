"""What the global and per-pool limits leave, counted at the worst price each instance can reach. Pure.

A spot instance is billed at the market price, which moves, up to its max price: the $/hour caps count it at
that ceiling (the launch template's `extra.spot_max_price` when set and positive), else at the on-demand price
of the same type in the same zone (AWS's and Azure's default ceiling), so no rise of the spot market can push
the fleet over a cap. Booting instances count like running ones: they are billed from launch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from autoscaler.config import Limits, Policy, PoolLimits
from autoscaler.model import InstanceRecord, Market, Offering, OfferingKey
from policies.placement import Budget


class WorstPrices:
    """The ceiling price of an offering for a pool: see the module doc."""

    def __init__(self, policy: Policy, offerings: Sequence[Offering]) -> None:
        self._max_price: dict[tuple[str, str], float] = {}
        for pool in policy.pools:
            for cloud, tpl in pool.launch_templates.items():
                value = tpl.extra.get("spot_max_price")
                if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                    self._max_price[(pool.name, cloud)] = float(value)
        self._offerings = offerings
        # The on-demand prices, indexed on first need (with every spot max price set, never: reconcile builds a
        # WorstPrices every tick).
        self._on_demand: dict[tuple[str, str, str, str], float] | None = None
        self._on_demand_any: dict[tuple[str, str], float] = {}

    def _index_on_demand(self) -> dict[tuple[str, str, str, str], float]:
        on_demand: dict[tuple[str, str, str, str], float] = {}
        for o in self._offerings:
            k = o.key
            if k.market == Market.ON_DEMAND:
                on_demand[(k.cloud, k.region, k.zone, k.instance_type)] = o.price_usd_per_hour
                kind = (k.cloud, k.instance_type)
                self._on_demand_any[kind] = max(self._on_demand_any.get(kind, 0.0), o.price_usd_per_hour)
        self._on_demand = on_demand
        return on_demand

    def of(self, pool: str | None, key: OfferingKey, price: float) -> float:
        if key.market != Market.SPOT:
            return price
        ceiling = self._max_price.get((pool or "", key.cloud))
        if ceiling is None:
            on_demand = self._on_demand if self._on_demand is not None else self._index_on_demand()
            ceiling = on_demand.get((key.cloud, key.region, key.zone, key.instance_type))
            if ceiling is None:
                ceiling = self._on_demand_any.get((key.cloud, key.instance_type))
        return max(price, ceiling) if ceiling is not None else price

    def of_record(self, rec: InstanceRecord) -> float:
        return self.of(rec.pool, rec.offering, rec.price_usd_per_hour)

    def for_pool(self, pool: str, offerings: Iterable[Offering]) -> dict[OfferingKey, float]:
        return {o.key: self.of(pool, o.key, o.price_usd_per_hour) for o in offerings}


_UNLIMITED = 10**9


def left_under(limits: Limits | PoolLimits, records: Iterable[InstanceRecord], worst: WorstPrices) -> Budget:
    """What `limits` leave after `records` (a limit that is not set leaves an unlimited budget)."""
    max_instances = limits.max_instances if limits.max_instances is not None else _UNLIMITED
    max_gpus = limits.max_gpus if limits.max_gpus is not None else _UNLIMITED
    max_usd = limits.max_usd_per_hour if limits.max_usd_per_hour is not None else float(_UNLIMITED)
    recs = records if isinstance(records, list | tuple) else list(records)
    of = worst.of
    return Budget(
        instances=max_instances - len(recs),
        gpus=max_gpus - sum([r.gpus for r in recs]),
        usd_per_hour=max_usd - sum([of(r.pool, r.offering, r.price_usd_per_hour) for r in recs]),
    )


def tighter(a: Budget, b: Budget) -> Budget:
    return Budget(min(a.instances, b.instances), min(a.gpus, b.gpus), min(a.usd_per_hour, b.usd_per_hour))


def charge(before: Budget, after: Budget, of: Budget) -> Budget:
    """`of` less what was taken from `before` to leave `after`."""
    if after is before:
        return of  # nothing taken (most ticks)
    return replace(
        of,
        instances=of.instances - (before.instances - after.instances),
        gpus=of.gpus - (before.gpus - after.gpus),
        usd_per_hour=of.usd_per_hour - (before.usd_per_hour - after.usd_per_hour),
    )
