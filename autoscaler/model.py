"""The daemon's data: frozen values passed between gather, reconcile and actuate.

Everything here is immutable and free of I/O, so a Snapshot can be saved, replayed and compared, and a
Plan can be read by the API, the dry run, the simulator and the tests alike.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from autoscaler.lifecycle import InstanceState


class Market(enum.StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class Scope(enum.StrEnum):
    """How wide a capacity or quota failure reaches."""

    ZONE = "zone"
    REGION = "region"
    CLOUD = "cloud"


class FailureKind(enum.StrEnum):
    """Why an offering was blocked in capacity memory."""

    CAPACITY = "capacity"  # stockout
    QUOTA = "quota"  # an account limit
    PREEMPTION = "preemption"  # a spot instance was taken back
    CONFIG = "config"  # the cloud refused the request itself (bad image, unknown type): an operator must act
    AUTH = "auth"  # credentials missing or refused: an operator must act
    UNRESPONSIVE = "unresponsive"  # launches kept failing transiently (throttling, timeouts, 5xx)


@dataclass(frozen=True, order=True)
class OfferingKey:
    """One purchasable thing: an instance type in a zone, in a market, on a cloud."""

    cloud: str
    region: str
    zone: str
    instance_type: str
    market: Market

    def __str__(self) -> str:
        # AWS and GCE zone names contain their region ("us-east-1a"); Azure's do not ("1"): name the region too.
        where = self.zone if self.zone.startswith(self.region) else f"{self.region}/{self.zone}"
        return f"{self.cloud}/{where}/{self.instance_type}/{self.market}"

    def as_labels(self) -> dict[str, str]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "instance_type": self.instance_type,
            "market": str(self.market),
        }


@dataclass(frozen=True)
class Offering:
    key: OfferingKey
    price_usd_per_hour: float
    gpus: int
    price_observed_at: datetime | None = None
    price_source: str = "catalog"


class CloudState(enum.StrEnum):
    """What a cloud says about an instance, reduced to what the lifecycle needs."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class CloudInstance:
    """An instance as a provider lists it: the truth about existence."""

    cloud_id: str
    offering: OfferingKey
    state: CloudState
    launched_at: datetime
    tags: Mapping[str, str]
    state_reason: str = ""
    address: str | None = None

    @property
    def pool(self) -> str | None:
        return self.tags.get(TAG_POOL)

    @property
    def token(self) -> str | None:
        return self.tags.get(TAG_INTENT)

    @property
    def preempted(self) -> bool:
        return (
            self.state in (CloudState.STOPPING, CloudState.TERMINATED) and "preempt" in self.state_reason.lower()
        )


# Tags (labels on GCP) that every instance we launch carries, so that a restart can rebuild state from the
# clouds alone. Kept lower-case with dashes: the one spelling valid as an AWS tag, a GCE label and an Azure tag.
TAG_DAEMON = "gpu-autoscaler-daemon"
TAG_POOL = "gpu-autoscaler-pool"
TAG_INTENT = "gpu-autoscaler-intent"


@dataclass(frozen=True)
class LaunchTemplate:
    image: str = ""
    user_data: str = ""
    disk_gb: int | None = None
    network: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchRequest:
    token: str
    pool: str
    offering: OfferingKey
    template: LaunchTemplate
    tags: Mapping[str, str]


@dataclass(frozen=True)
class InstanceRecord:
    """The daemon's own record of an instance, keyed by the launch intent's token."""

    token: str
    pool: str
    offering: OfferingKey
    state: InstanceState
    capacity_units: float
    gpus: int
    price_usd_per_hour: float
    created_at: datetime
    state_since: datetime
    cloud_id: str | None = None
    reason: str = ""
    address: str | None = None  # the instance's IP as its provider lists it (service discovery); None: unknown

    @property
    def live(self) -> bool:
        return self.state.live


@dataclass(frozen=True)
class Sample:
    """One reading of one metric source. `value` is None when the source could not be read."""

    source: str
    kind: str  # "queue" or "latency"
    value: float | None
    observed_at: datetime | None
    error: str = ""


@dataclass(frozen=True)
class Demand:
    """What a pool's metric sources said, combined; `hold` is set when the data cannot be trusted."""

    queue_depth: float | None
    latency_seconds: float | None
    samples: tuple[Sample, ...] = ()
    hold_reason: str = ""
    arrival_rate: float | None = None  # requests per second arriving (sources of kind "arrivals", summed)

    @property
    def hold(self) -> bool:
        return bool(self.hold_reason)


@dataclass(frozen=True)
class Block:
    """A capacity-memory entry: an offering (or a wider scope) that must not be tried until `until`."""

    cloud: str
    region: str  # "" when scope is CLOUD
    zone: str  # "" when scope is REGION or CLOUD
    instance_type: str
    market: Market
    scope: Scope
    kind: FailureKind
    failures: int
    until: datetime
    last_failure_at: datetime
    reason: str = ""

    def covers(self, key: OfferingKey) -> bool:
        if (key.cloud, key.instance_type, key.market) != (self.cloud, self.instance_type, self.market):
            return False
        if self.scope == Scope.CLOUD:
            return True
        if key.region != self.region:
            return False
        return self.scope == Scope.REGION or key.zone == self.zone

    def describe(self) -> str:
        where = {Scope.ZONE: self.zone, Scope.REGION: self.region, Scope.CLOUD: self.cloud}[self.scope]
        return f"{self.cloud}/{where}/{self.instance_type}/{self.market} ({self.kind}, {self.scope} scope)"


@dataclass(frozen=True)
class PoolControl:
    """Operator overrides from the admin API."""

    paused: bool = False
    override_capacity: float | None = None
    override_until: datetime | None = None


@dataclass(frozen=True)
class Recommendation:
    at: datetime
    capacity: float


@dataclass(frozen=True)
class ScalingState:
    """What the scaling policy remembers between ticks (persisted, so a restart does not forget windows)."""

    recommendations: tuple[Recommendation, ...] = ()
    panic_until: datetime | None = None
    last_desired: float | None = None
    # ---- rate-based scaling (policies.scaling): the pool's own demand history
    # (at, arrival rate smoothed over the rate window, req/s), the last `scaling.history_seconds`
    rates: tuple[Recommendation, ...] = ()
    headroom: float | None = None  # the burstiness factor last computed, and when (recomputed now and then)
    headroom_at: datetime | None = None
    # time-of-day seasonality: per phase bucket of `forecast.period_seconds`, the mean rate seen in each of the
    # last periods, as (period index, bucket index, rate sum, samples); the bucket being filled is kept apart in
    # `season_open` (its entry comes after these), so a tick updates one small tuple instead of copying ~1,000
    seasonal: tuple[tuple[int, int, float, int], ...] = ()
    # derived from `seasonal` once per period: per bucket, the lowest mean rate over the completed periods
    # (-1: seen in fewer than two)
    season_profile: tuple[float, ...] = ()
    season_profile_period: int | None = None
    # the current bucket's accumulator (period, bucket, rate sum, samples): the season's newest entry, or None
    season_open: tuple[int, int, float, int] | None = None


@dataclass(frozen=True)
class BootStats:
    """Boot-to-ready times an offering has shown (launch to READY), learned from the instance history."""

    samples: int
    median_seconds: float
    p90_seconds: float


@dataclass(frozen=True)
class Preemption:
    """A spot instance taken back, as capacity memory recorded it."""

    offering: OfferingKey
    at: datetime


@dataclass(frozen=True)
class Snapshot:
    """Everything one tick observed. reconcile() reads nothing else."""

    now: datetime
    records: tuple[InstanceRecord, ...]
    cloud_instances: Mapping[str, tuple[CloudInstance, ...]]  # by cloud; a cloud absent here failed to list
    offerings: tuple[Offering, ...]
    blocks: tuple[Block, ...]
    demand: Mapping[str, Demand]
    scaling_state: Mapping[str, ScalingState]
    controls: Mapping[str, PoolControl]
    health: Mapping[str, bool] = field(default_factory=dict)  # cloud_id -> health check passed
    # token -> when its instance was first missing from a listing that succeeded (a listing may lag or miss an
    # instance once: a record is taken for lost only after it has been missing for a while)
    missing_since: Mapping[str, datetime] = field(default_factory=dict)
    tick: str = ""  # names this tick (and fallback round): launch tokens are derived from it
    # ---- learned from the pool's own history (policies.boot; gather and the simulator fill them)
    boot_times: Mapping[OfferingKey, BootStats] = field(default_factory=dict)  # boot-to-ready per offering
    preemptions: tuple[Preemption, ...] = ()  # recent spot preemptions (capacity memory's events), oldest first


# ---- the Plan: decisions as data ----


@dataclass(frozen=True)
class Launch:
    token: str
    pool: str
    offering: OfferingKey
    capacity_units: float
    gpus: int
    price_usd_per_hour: float
    reason: str
    retry: bool = False  # the record exists already (a crash or a transient error): same token, same instance


@dataclass(frozen=True)
class Terminate:
    token: str | None  # None for an untracked (leaked) cloud instance
    pool: str | None
    cloud: str
    cloud_id: str
    reason: str


@dataclass(frozen=True)
class Transition:
    """An observed or decided change of a record's state that needs no cloud call."""

    token: str
    to: InstanceState
    reason: str
    observed: bool
    cloud_id: str | None = None


@dataclass(frozen=True)
class Adopt:
    """A tagged cloud instance with no record, taken into the books under a new token (not the instance's intent
    tag: that token may name a record that already ended, e.g. a launch we took for failed)."""

    token: str
    pool: str
    instance: CloudInstance
    capacity_units: float
    gpus: int
    price_usd_per_hour: float
    state: InstanceState
    reason: str

    def record(self, now: datetime) -> InstanceRecord:
        return InstanceRecord(
            token=self.token,
            pool=self.pool,
            offering=self.instance.offering,
            state=self.state,
            capacity_units=self.capacity_units,
            gpus=self.gpus,
            price_usd_per_hour=self.price_usd_per_hour,
            created_at=now,
            state_since=now,
            cloud_id=self.instance.cloud_id,
            reason=self.reason,
            address=self.instance.address,
        )


@dataclass(frozen=True)
class CapacityEvent:
    offering: OfferingKey
    scope: Scope
    kind: FailureKind
    message: str
    pool: str | None = None


@dataclass(frozen=True)
class Skipped:
    offering: str
    reason: str


@dataclass(frozen=True)
class PoolDecision:
    """Why a pool got what it got: read by the API's explain, the log and the store."""

    pool: str
    desired: float
    ready: float
    booting: float
    draining: float
    spend_usd_per_hour: float
    reasons: tuple[str, ...]
    chosen: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    signal: str = ""


Intent = Launch | Terminate | Transition | Adopt
_I = TypeVar("_I", Launch, Terminate, Transition, Adopt)


@dataclass(frozen=True)
class Plan:
    now: datetime
    intents: tuple[Intent, ...]
    decisions: Mapping[str, PoolDecision]
    scaling_state: Mapping[str, ScalingState]
    capacity_events: tuple[CapacityEvent, ...] = ()
    missing_since: Mapping[str, datetime] = field(default_factory=dict)

    def of_type(self, kind: type[_I]) -> list[_I]:
        return [i for i in self.intents if isinstance(i, kind)]
