"""How much capacity a pool needs: target tracking on queue depth and latency, with windows and panic. Pure.

Capacity is counted in units (an instance supplies its candidate's `throughput` units) and compared against
the pool's *live* units (ready + booting), so capacity that is still booting is not launched a second time.

Stabilization follows the Kubernetes HPA: every tick's raw recommendation is remembered; a scale-up goes only
to the lowest recommendation of the up-window and a scale-down only to the highest of the down-window, so a
single spike or dip does not move the pool. A burst (Knative's panic mode) skips the up-window: a need of
`panic_threshold` times the live capacity is met at once, and nothing is removed until the panic window ends.

A pool with an `arrivals` source and `targets.requests_per_unit_per_second` is sized on the arrival rate and the
backlog instead (`policies.rate`: learned headroom, seasonal forecast), with scale-up and scale-down tolerances
for hysteresis; the windows and the panic rule above still apply to that recommendation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from functools import lru_cache
from operator import attrgetter

from autoscaler.config import Pool
from autoscaler.model import Demand, Recommendation, ScalingState
from policies.rate import rate_need

# Float noise (0.1 * 3 = 0.30000000000000004) must not add a whole unit when rounding up.
_EPSILON = 1e-9


@dataclass(frozen=True)
class ScalingResult:
    desired: float
    raw: float
    signal: str  # "rate" / "queue" / "latency" / "min" / "max" / "hold"
    reasons: tuple[str, ...]


@lru_cache(maxsize=4096)  # reasons repeat the same few numbers every tick (equal numbers print alike: 1 == 1.0)
def num(x: float) -> str:
    """A number for a human sentence: 96 rather than 96.0, at most three decimals."""
    if math.isfinite(x) and float(x).is_integer():
        return str(int(x))
    return str(round(x, 3))


def ceil_units(x: float) -> float:
    return float(math.ceil(x - _EPSILON))


@lru_cache(maxsize=64)
def _span(seconds: float) -> timedelta:
    """timedelta(seconds=...) of a window setting, built once (every tick asks for the same few)."""
    return timedelta(seconds=seconds)


def desired_capacity(
    pool: Pool,
    demand: Demand,
    live_units: float,
    ready_units: float,
    state: ScalingState,
    now: datetime,
    lead_seconds: float | None = None,
) -> tuple[ScalingResult, ScalingState]:
    """`lead_seconds`: how long capacity asked for now takes to be ready (the pool's learned boot time; default
    `scaling.boot_seconds`), the horizon of the rate rule's headroom and forecast."""
    sc = pool.scaling
    longest = max(sc.scale_up_window_seconds, sc.scale_down_window_seconds)
    # Recommendations from the future (a clock stepped back) cannot be placed in any window: drop them.
    oldest = now - _span(longest)
    kept = tuple([r for r in state.recommendations if oldest <= r.at <= now])

    if not pool.metrics:
        desired = clamp(pool, pool.min_capacity)
        reason = f"no metric sources: holding min_capacity {num(desired)}"
        return (
            ScalingResult(desired, pool.min_capacity, "min", (reason,)),
            replace(state, recommendations=kept, last_desired=desired),
        )

    distrust = demand.hold_reason or _garbage(demand)
    if distrust:
        return _hold(pool, live_units, state, kept, now, [f"metrics not trusted ({distrust})"])

    rate_mode = demand.arrival_rate is not None and pool.targets.requests_per_unit_per_second is not None
    raw: float | None
    if rate_mode:
        assert demand.arrival_rate is not None
        lead = lead_seconds if lead_seconds is not None else sc.boot_seconds
        need, state = rate_need(pool, demand.arrival_rate, demand.queue_depth or 0.0, state, now, lead)
        # The rate and the backlog say all the queue and latency readings would: the latency rule in particular
        # multiplies what is ready by how late it is, and with capacity already on its way it overshoots.
        raw, signal, reasons = ceil_units(need.units), "rate", list(need.reasons)
    else:
        raw, signal, reasons = _signals(pool, demand, ready_units)
    if raw is None:
        return _hold(pool, live_units, state, kept, now, reasons)

    recs = (*kept, Recommendation(now, raw))
    up_since = now - _span(sc.scale_up_window_seconds)
    down_since = now - _span(sc.scale_down_window_seconds)
    up_min = min([r.capacity for r in recs if r.at >= up_since])
    down_max = max([r.capacity for r in recs if r.at >= down_since])
    # The HPA rule: start from what is there, go up no further than every recent recommendation agrees,
    # and down no further than every recent recommendation agrees.
    desired = live_units
    if desired < up_min:
        desired = up_min
    if desired > down_max:
        desired = down_max

    panic_until = state.panic_until
    burst = raw >= sc.panic_threshold * live_units if live_units > 0 else raw > 0
    if burst:
        desired = max(desired, raw)
        panic_until = now + _span(sc.panic_window_seconds)
        reasons.append(
            f"burst: need {num(raw)} >= {num(sc.panic_threshold)}x live {num(live_units)} units, "
            f"scaling at once; no scale-down until {panic_until.isoformat()}"
        )
    elif raw > live_units and desired < raw:
        reasons.append(
            f"scale-up held by {num(sc.scale_up_window_seconds)}s window (min recommendation {num(up_min)})"
        )
    elif raw < live_units and desired > raw:
        reasons.append(
            f"scale-down held by {num(sc.scale_down_window_seconds)}s window (max recommendation {num(down_max)})"
        )
    if rate_mode and not burst and live_units < desired <= live_units * (1 + sc.scale_up_tolerance):
        reasons.append(
            f"within the {num(sc.scale_up_tolerance)} scale-up tolerance of live {num(live_units)}: kept"
        )
        desired = live_units
    if rate_mode and live_units > desired >= live_units * (1 - sc.scale_down_tolerance):
        # Hysteresis: a rate-sized need wobbles with the noise of the arrivals; shrink only on a clear drop.
        reasons.append(
            f"within the {num(sc.scale_down_tolerance)} scale-down tolerance of live {num(live_units)}: kept"
        )
        desired = live_units
    if not burst and panic_until is not None and now < panic_until:
        # Knative's panic mode: the pool only grows until the burst has been over for a whole window.
        floor = max(live_units, state.last_desired or 0.0)
        if desired < floor:
            desired = floor
            reasons.append(f"in panic until {panic_until.isoformat()}: no scale-down (keeping {num(floor)})")
    if panic_until is not None and now >= panic_until:
        panic_until = None

    final = clamp(pool, desired)
    if final != desired:
        signal = "max" if final < desired else "min"
        bound = "max_capacity" if signal == "max" else "min_capacity"
        reasons.append(f"clamped to {bound} {num(final)} (wanted {num(desired)})")
    reasons.append(f"desired {num(final)} units (live {num(live_units)}, ready {num(ready_units)})")
    return ScalingResult(final, raw, signal, tuple(reasons)), _remember(state, recs, panic_until, final)


_STATE_FIELDS = tuple(f.name for f in fields(ScalingState))
assert _STATE_FIELDS[:3] == ("recommendations", "panic_until", "last_desired") and len(_STATE_FIELDS) > 4
_OTHER_FIELDS = attrgetter(*_STATE_FIELDS[3:])  # ScalingState's fields after those three, as a tuple


def _remember(
    state: ScalingState, recs: tuple[Recommendation, ...], panic_until: datetime | None, last_desired: float
) -> ScalingState:
    """replace(state, recommendations=recs, panic_until=..., last_desired=...), without replace()'s field scan
    (a tick's cost): the other fields are copied in their order."""
    return ScalingState(recs, panic_until, last_desired, *_OTHER_FIELDS(state))


def clamp(pool: Pool, units: float) -> float:
    return min(max(units, pool.min_capacity), pool.max_capacity)


def _garbage(demand: Demand) -> str:
    """A value no source should produce (NaN, infinite, negative): never scale out on it."""
    for name, value in (
        ("queue depth", demand.queue_depth),
        ("latency", demand.latency_seconds),
        ("arrival rate", demand.arrival_rate),
    ):
        if value is not None and (not math.isfinite(value) or value < 0):
            return f"{name} {value} is not a usable number"
    return ""


def _signals(pool: Pool, demand: Demand, ready_units: float) -> tuple[float | None, str, list[str]]:
    """(raw recommendation or None when nothing usable, the signal that drove it, reasons)."""
    targets = pool.targets
    reasons: list[str] = []
    queue: float | None = None
    latency: float | None = None
    if demand.queue_depth is not None and targets.queue_per_unit is not None:
        queue = ceil_units(demand.queue_depth / targets.queue_per_unit)
        reasons.append(
            f"queue {num(demand.queue_depth)} / {num(targets.queue_per_unit)} per unit -> {num(queue)} units"
        )
    lat, slo = demand.latency_seconds, targets.latency_slo_seconds
    if lat is not None and slo is not None:
        if ready_units <= 0:
            reasons.append(f"latency {num(lat)}s not used: no ready capacity to measure it against")
        else:
            sized = ceil_units(ready_units * lat / slo)
            if lat > slo:
                latency = sized
                reasons.append(
                    f"latency {num(lat)}s over SLO {num(slo)}s with {num(ready_units)} ready units "
                    f"-> {num(sized)} units"
                )
            elif queue is None:
                # The only signal: let an over-provisioned pool shrink in proportion, slowly (down-window).
                latency = sized
                reasons.append(
                    f"latency {num(lat)}s within SLO {num(slo)}s with {num(ready_units)} ready units "
                    f"-> {num(sized)} units"
                )
            else:
                reasons.append(f"latency {num(lat)}s within SLO {num(slo)}s: the queue decides")
    if queue is None and latency is None:
        reasons.append("no usable signal (no queue reading, latency needs ready capacity)")
        return None, "hold", reasons
    if latency is not None and (queue is None or latency > queue):
        return latency, "latency", reasons
    assert queue is not None
    return queue, "queue", reasons


def _hold(
    pool: Pool,
    live_units: float,
    state: ScalingState,
    kept: tuple[Recommendation, ...],
    now: datetime,
    why: list[str],
) -> tuple[ScalingResult, ScalingState]:
    """Keep the previous desired capacity: no scale-in on missing data, no scale-out on bad data."""
    previous = state.last_desired if state.last_desired is not None else live_units
    desired = clamp(pool, previous)
    source = "previous desired" if state.last_desired is not None else "live capacity"
    reasons = (
        *why,
        f"holding {num(desired)} units ({source}): no scale-in on missing data, no scale-out on bad data",
    )
    # Nothing is recommended while holding: untrusted data must not fill the windows.
    panic_until = state.panic_until if state.panic_until is not None and now < state.panic_until else None
    return ScalingResult(desired, previous, "hold", reasons), replace(
        state, recommendations=kept, panic_until=panic_until, last_desired=desired
    )
