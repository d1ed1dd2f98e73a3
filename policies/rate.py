"""Rate-based need: the capacity that serves the arrivals and drains the backlog within the SLO. Pure.

Queue depth alone is a censored signal: while capacity keeps up the queue reads 0, whether the pool runs at 10%
or at 99% of what it can serve, so a pool that scales on it alone shrinks until a queue builds, grows, and
oscillates under steady load. A pool with a source of kind `arrivals` (requests per second) and
`targets.requests_per_unit_per_second` (mu) is sized on the rate instead:

    need = (rate + headroom x sqrt(rate / rate_window)) / mu  +  backlog / (mu x max(SLO, lead))

- rate: the level (the arrival rate over `scaling.level_window_seconds`), or the seasonal forecast of the
  coming lead when higher, or the recent rate (over `rate_window_seconds`) when it surges past the level by
  more than its noise explains (`SURGE_MARGIN`);
- headroom: the burstiness the pool has shown, in units of the level's Poisson noise: a robust
  `headroom_quantile` of how far the rate stood above the level one lead later (the lead: capacity asked for
  now is ready only then) over the last `history_seconds`; at most `max_headroom` x the rate; recomputed
  every `HEADROOM_EVERY`;
- backlog: served within max(latency SLO, lead) (capacity launched now serves nothing sooner than the lead).

Forecast (time-of-day seasonality, only where it pays): the pool's rate is kept per bucket of the season
(`forecast.period_seconds`, e.g. a day) for the last `forecast.periods` periods. The forecast for the next lead
is the highest bucket ahead, each bucket taken at its **lowest** over the periods seen: a surge is anticipated
only when it came back in every recent period, so one-off bursts and noise never buy capacity ahead of time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

from autoscaler.config import Pool
from autoscaler.model import Recommendation, ScalingState

HEADROOM_EVERY = timedelta(seconds=600)
DEFAULT_NOISE_Z = 1.645  # before any history: the 95% quantile of a normal
_UNSEEN = -1.0  # a bucket of the season profile seen in fewer than two periods
SURGE_MARGIN = 2.0  # noise sd beyond the headroom that make a recent rate a surge rather than noise


@dataclass(frozen=True)
class RateNeed:
    units: float
    rate: float  # req/s the need is sized on (after the forecast)
    headroom: float
    forecast: float | None
    reasons: tuple[str, ...]


def quantile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default), of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def smoothed(times: list[float], values: list[float], window: float) -> list[float]:
    """Each sample's trailing mean over `window` seconds (itself included), in one pass; times in seconds."""
    out: list[float] = []
    append = out.append
    start = 0
    total = 0.0
    for count, (t, value) in enumerate(zip(times, values, strict=True), 1):  # count: samples so far
        total += value
        edge = t - window
        while times[start] <= edge:
            total -= values[start]
            start += 1
        append(total / (count - start))
    return out


@lru_cache(maxsize=64)
def _normal_quantile(q: float) -> float:
    return NormalDist().inv_cdf(q)


@lru_cache(maxsize=64)
def _span(seconds: float) -> timedelta:
    """timedelta(seconds=...) of a setting, built once (each tick asks for the same few)."""
    return timedelta(seconds=seconds)


def burst_headroom(
    times: list[float], short: list[float], level: list[float], lead: float, q: float, window: float
) -> float:
    """How far above its level the rate has gone one lead later, in units of the level's Poisson noise:
    z = (short(t + lead) - level(t)) / sqrt(level(t) / window), over the history (t with level(t) > 0).

    Robust: the median z plus z_q robust standard deviations (1.4826 x the median absolute deviation), so the
    rare regime changes (a burst's onset, 10x in one lead) do not set the headroom of every other hour: those are
    met by the rate itself as it rises, and by the forecast when they recur. In noise units, one figure serves a
    quiet hour and a busy one alike (the relative noise of a rate falls as the rate grows)."""
    zs: list[float] = []
    append = zs.append
    sqrt = math.sqrt
    j = 0
    n = len(times)
    for i, rate in enumerate(level):
        if rate <= 0:
            continue
        if j < i:
            j = i
        ahead = times[i] + lead
        while j < n and times[j] < ahead:
            j += 1
        if j == n:
            break
        append((short[j] - rate) / sqrt(rate / window))
    if not zs:
        return DEFAULT_NOISE_Z
    mid = quantile(zs, 0.5)
    mad = quantile([abs(z - mid) for z in zs], 0.5)
    return max(mid + _normal_quantile(q) * 1.4826 * mad, 0.0)


def with_headroom(rate: float, noise_z: float, window: float, cap: float) -> float:
    """The rate plus `noise_z` of its Poisson noise over `window`, at most `cap` times the rate."""
    if rate <= 0:
        return 0.0
    return min(rate + noise_z * math.sqrt(rate / window), rate * cap)


def _mean_since(rates: tuple[Recommendation, ...], since: datetime) -> float:
    """Mean of the rates after `since` (the newest is always included); scans from the newest end."""
    total, n = 0.0, 0
    for r in reversed(rates):
        if r.at <= since and n:
            break
        total += r.capacity
        n += 1
    return total / n


class _Rates(NamedTuple):  # (a NamedTuple: built every tick, cheaper than a frozen dataclass)
    rates: tuple[Recommendation, ...]
    short: float  # over the rate window
    level: float  # over the level window
    headroom: float
    headroom_at: datetime


def record_rate(pool: Pool, state: ScalingState, rate: float, now: datetime, lead: float) -> _Rates:
    """Remember this tick's rate (returned, with the means and the headroom; the state is not changed)."""
    sc = pool.scaling
    oldest = now - _span(sc.history_seconds)
    old = state.rates
    first = 0
    while first < len(old) and old[first].at < oldest:
        first += 1
    if old and old[-1].at >= now:  # a clock stepped back, or a second call at the same instant: start afresh
        old, first = tuple(r for r in old if r.at < now), 0
    rates = old[first:] + (Recommendation(now, rate),)  # noqa: RUF005 (one copy; (*a, x) makes two)
    short = _mean_since(rates, now - _span(sc.rate_window_seconds))
    level = _mean_since(rates, now - _span(sc.level_window_seconds))
    headroom, at = state.headroom, state.headroom_at
    if headroom is None or at is None or not (now - HEADROOM_EVERY < at <= now):
        times = [(r.at - now).total_seconds() for r in rates]
        values = [r.capacity for r in rates]
        shorts = smoothed(times, values, sc.rate_window_seconds)
        levels = smoothed(times, values, sc.level_window_seconds)
        headroom = burst_headroom(times, shorts, levels, lead, sc.headroom_quantile, sc.rate_window_seconds)
        at = now
    return _Rates(rates, short, level, headroom, at)


def _phase(pool: Pool, t: float) -> tuple[int, int]:
    fc = pool.scaling.forecast
    return int(t // fc.period_seconds), int((t % fc.period_seconds) // fc.bucket_seconds)


Season = tuple[int, int, float, int]  # (period index, bucket index, rate sum, samples)


def season_entries(state: ScalingState) -> tuple[Season, ...]:
    """The season's entries, oldest first: the closed ones (`state.seasonal`), then the open bucket's."""
    opened = state.season_open
    return state.seasonal if opened is None else (*state.seasonal, opened)


def record_season(
    pool: Pool, seasonal: tuple[Season, ...], season_open: Season | None, rate: float, now: datetime
) -> tuple[tuple[Season, ...], Season]:
    """Add this tick's rate to its bucket of the current period (the open entry, `season_open`); when a new
    bucket starts, close the open one (append it to `seasonal`), and when a new period starts, also forget the
    periods older than the profile needs. Returns (seasonal, season_open)."""
    return _record_season(pool, seasonal, season_open, rate, _phase(pool, now.timestamp()))


def _record_season(
    pool: Pool, seasonal: tuple[Season, ...], opened: Season | None, rate: float, phase: tuple[int, int]
) -> tuple[tuple[Season, ...], Season]:
    # The closed entries are copied once per bucket, not every tick (a day of 5-minute buckets over 3 periods
    # is ~1,150 of them); the open bucket's accumulator is a 4-tuple of its own.
    period, bucket = phase
    if opened is None and seasonal:  # every entry closed (a state built whole): its newest is the open one
        seasonal, opened = seasonal[:-1], seasonal[-1]
    if opened is not None and opened[0] == period:
        if opened[1] == bucket:
            p, b, total, n = opened
            return seasonal, (p, b, total + rate, n + 1)
        return seasonal + (opened,), (period, bucket, rate, 1)  # noqa: RUF005 (one copy; (*a, x) makes two)
    # a new period (or the first entry): forget the periods older than the profile needs
    keep_from = period - pool.scaling.forecast.periods
    entries = seasonal if opened is None else (*seasonal, opened)
    return tuple(e for e in entries if keep_from <= e[0] <= period), (period, bucket, rate, 1)


def season_profile(pool: Pool, state: ScalingState, period: int) -> ScalingState:
    """Each bucket's lowest mean rate over the completed periods that saw it, for buckets seen in two or more;
    recomputed once per period (it changes only when a period completes)."""
    if state.season_profile_period == period:
        return state
    by_bucket: dict[int, list[float]] = {}
    for p, b, total, n in season_entries(state):
        if p < period and n:
            by_bucket.setdefault(b, []).append(total / n)
    buckets = math.ceil(pool.scaling.forecast.period_seconds / pool.scaling.forecast.bucket_seconds)
    profile = tuple(min(seen) if len(seen := by_bucket.get(b, [])) >= 2 else _UNSEEN for b in range(buckets))
    return replace(state, season_profile=profile, season_profile_period=period)


def seasonal_forecast(pool: Pool, state: ScalingState, now: datetime, lead: float) -> float | None:
    """The rate the season says the next `lead` seconds bring (see the module doc), or None unless two earlier
    periods were seen in every bucket ahead. `state` must carry the profile of the current period."""
    t = now.timestamp()
    return _seasonal_forecast(pool, state, t, _phase(pool, t), lead)


def _seasonal_forecast(
    pool: Pool, state: ScalingState, t: float, phase: tuple[int, int], lead: float
) -> float | None:
    period, b = phase  # _phase(pool, t)
    profile = season_profile(pool, state, period).season_profile
    buckets = len(profile)
    last = _phase(pool, t + lead)[1]
    if not buckets or b >= buckets or profile[b] < 0:
        return None
    best = profile[b]
    for _ in range(buckets):
        if b == last:
            break
        b = (b + 1) % buckets
        if profile[b] < 0:
            return None
        best = max(best, profile[b])
    return best


def rate_need(
    pool: Pool, rate: float, backlog: float, state: ScalingState, now: datetime, lead: float
) -> tuple[RateNeed, ScalingState]:
    """The units needed now (see the module doc), and the state with this tick's rate remembered."""
    mu = pool.targets.requests_per_unit_per_second
    assert mu is not None  # the caller checks
    sc = pool.scaling
    r = record_rate(pool, state, rate, now, lead)
    short, level, headroom = r.short, r.level, r.headroom
    forecast: float | None = None
    seasonal, season_open = state.seasonal, state.season_open
    if sc.forecast.enabled:
        t = now.timestamp()
        phase = _phase(pool, t)
        state = season_profile(pool, state, phase[0])
        forecast = _seasonal_forecast(pool, state, t, phase, lead)
        seasonal, season_open = _record_season(pool, seasonal, season_open, rate, phase)
    state = ScalingState(
        recommendations=state.recommendations,
        panic_until=state.panic_until,
        last_desired=state.last_desired,
        rates=r.rates,
        headroom=headroom,
        headroom_at=r.headroom_at,
        seasonal=seasonal,
        season_profile=state.season_profile,
        season_profile_period=state.season_profile_period,
        season_open=season_open,
    )
    # The level with the headroom its history asks for; the recent rate itself when it is above that (a surge
    # under way is served at once); the season's forecast when it expects more.
    w, cap = sc.rate_window_seconds, sc.max_headroom
    sized = max(with_headroom(level, headroom, w, cap), with_headroom(forecast or 0.0, headroom, w, cap))
    if short > with_headroom(level, headroom + SURGE_MARGIN, w, cap):
        # Beyond what the level's noise explains (by SURGE_MARGIN noise sd more than the headroom allows): a
        # surge under way, sized on the recent rate at once rather than when the level catches up.
        sized = max(sized, with_headroom(short, headroom, w, cap))
    slo = pool.targets.latency_slo_seconds
    drain = max(slo or 0.0, lead, 1.0)
    units = sized / mu + backlog / (mu * drain)
    over_rate, over_level, quantile_of, per_unit = _settings_text(
        sc.rate_window_seconds, sc.level_window_seconds, sc.headroom_quantile, mu
    )
    reason = (
        f"arrivals {short:.4g} req/s over {over_rate}s, level {level:.4g} req/s over "
        f"{over_level}s + headroom {headroom:.3g} noise sd (q{quantile_of} of the rate one "
        f"{lead:.0f}s boot lead later over the level, in the level's noise)"
        + (f", seasonal forecast {forecast:.4g} req/s for the next {lead:.0f}s" if forecast is not None else "")
        + f" -> {sized:.4g} req/s / {per_unit} per unit + backlog {backlog:g} drained within {drain:.0f}s "
        f"-> {units:.4g} units"
    )
    return RateNeed(units, sized, headroom, forecast, (reason,)), state


@lru_cache(maxsize=64)
def _settings_text(rate_window: float, level_window: float, q: float, mu: float) -> tuple[str, str, str, str]:
    """The settings in rate_need's reason, formatted once (every tick repeats them)."""
    return f"{rate_window:g}", f"{level_window:g}", f"{q:g}", f"{mu:g}"
