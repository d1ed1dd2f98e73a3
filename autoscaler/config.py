"""The policy file: the one YAML operators edit, as typed, validated pydantic models.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting. Loading from a
file (with file:line:column in every error) lives in `autoscaler.policyfile`; this module is only the shape.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from autoscaler.model import Market

CLOUDS = ("simulated", "aws", "gcp", "azure")


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf`, `.nan` and 1e400 (which YAML reads as inf) are refused with their line, rather
    # than accepted and crashing later (an infinite tick_seconds cannot be scheduled).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


NonNegFloat = Annotated[float, Field(ge=0)]


# ---------------------------------------------------------------- daemon


class AdminSettings(Strict):
    listen: str = Field("127.0.0.1:8321", description="HOST:PORT the admin API listens on")
    token_env: str = Field(
        "GPU_AUTOSCALER_TOKEN", description="environment variable holding the bearer token for mutating calls"
    )
    token_file: Path | None = Field(None, description="file holding the token; read when token_env is unset")

    @model_validator(mode="after")
    def _listen_has_port(self) -> AdminSettings:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return self


class Limits(Strict):
    """Hard limits across all pools: placement never plans past them."""

    max_instances: PositiveInt = 100
    max_gpus: PositiveInt = 800
    max_usd_per_hour: PositiveFloat = 1000.0


class PoolLimits(Strict):
    """Hard limits of one pool (none by default), on top of the global ones: instances, GPUs and $/hour, counted
    with booting capacity and at the worst price an offering can reach (spot: its max price, else on-demand)."""

    max_instances: PositiveInt | None = None
    max_gpus: PositiveInt | None = None
    max_usd_per_hour: PositiveFloat | None = None


# ---- high availability (see autoscaler.leader): a leader lease in PostgreSQL with a fencing token


class HaSettings(Strict):
    """Several daemons on one PostgreSQL database: the lease holder leads, the others follow (read-only API) and
    take over when its lease expires. Takeover comes within lease_seconds + renew_seconds of the leader's death.
    Ignored on SQLite, which is single-node."""

    lease_seconds: PositiveFloat = Field(
        15.0, description="how long a leader's lease lasts without renewal (the database's clock)"
    )
    renew_seconds: PositiveFloat = Field(
        5.0, description="how often the leader renews its lease and a follower tries to take it"
    )

    @model_validator(mode="after")
    def _renews_in_time(self) -> HaSettings:
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be at most half of lease_seconds "
                f"({self.lease_seconds:g}), or one slow renewal loses the lease"
            )
        return self


# ---- circuit breaker per provider (see autoscaler.breaker) ----
class CircuitBreakerSettings(Strict):
    """When a cloud that keeps failing (throttling, 5xx, timeouts, garbage) is left alone: its offerings count as
    unavailable, so pools fail over to the other clouds, and one probe call is let through after the cool-down."""

    enabled: bool = True
    failures_to_open: PositiveInt = Field(5, description="consecutive failed calls that open the breaker")
    failure_ratio: float = Field(
        0.7, gt=0.0, le=1.0, description="or this share of failed calls among the last window_calls calls"
    )
    window_calls: PositiveInt = Field(20, description="how many recent calls the failure ratio looks at")
    min_calls: PositiveInt = Field(20, description="the ratio counts once the window holds this many calls")
    cooldown_seconds: PositiveFloat = Field(60.0, description="open this long, then one probe call (half-open)")


# ---- end of the circuit breaker block ----


class DaemonSettings(Strict):
    id: str = Field(
        "default",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
        description="this daemon's name; every instance it launches is tagged with it",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the state directory")
    tick_seconds: PositiveFloat = 15.0
    max_parallel_cloud_calls: PositiveInt = 8
    fallback_rounds: PositiveInt = Field(
        3, description="within one tick, how many times to re-place after capacity errors"
    )
    launch_retry_seconds: PositiveFloat = Field(
        60.0, description="how long a requested launch may stay unseen before it is retried with its token"
    )
    untracked_grace_seconds: NonNegFloat = Field(
        300.0,
        description="a tagged instance with no record that its pool does not need is terminated after this long",
    )
    history_retention_days: PositiveFloat = Field(
        14.0, description="decisions, capacity events and ended instances older than this are pruned hourly"
    )
    admin: AdminSettings = AdminSettings()
    limits: Limits = Limits()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    ha: HaSettings = HaSettings()


# ---------------------------------------------------------------- clouds


class CloudBase(Strict):
    enabled: bool = True
    regions: dict[str, list[str]] = Field(
        default_factory=dict, description="region -> zones to use (empty list: every zone of the region)"
    )


class SimInstanceType(Strict):
    gpus: PositiveInt
    on_demand_usd_per_hour: PositiveFloat
    spot_usd_per_hour: PositiveFloat | None = None


class SimCapacity(Strict):
    """How many instances of an offering the simulated cloud will hand out (0 = out of capacity)."""

    instance_type: str
    market: Market | None = None
    zone: str | None = None
    available: Annotated[int, Field(ge=0)]


class SimFault(Strict):
    """An injected error: the next `times` launches matching this raise `error`."""

    instance_type: str | None = None
    zone: str | None = None
    market: Market | None = None
    error: Literal["capacity", "quota", "transient", "auth", "config"]
    times: PositiveInt = 1


class SimulatedCloud(CloudBase):
    regions: dict[str, list[str]] = Field(
        default_factory=lambda: {"sim-east": ["sim-east-a", "sim-east-b"]},
        description="region -> zones of the simulated cloud",
    )
    boot_seconds: NonNegFloat = Field(20.0, description="pending -> running delay of every simulated instance")
    instance_types: dict[str, SimInstanceType] = Field(
        default_factory=lambda: {
            "sim.h100x8": SimInstanceType(gpus=8, on_demand_usd_per_hour=98.32, spot_usd_per_hour=39.33),
            "sim.a100x8": SimInstanceType(gpus=8, on_demand_usd_per_hour=32.77, spot_usd_per_hour=13.11),
            "sim.l4x1": SimInstanceType(gpus=1, on_demand_usd_per_hour=0.80, spot_usd_per_hour=0.32),
        }
    )
    capacity: list[SimCapacity] = Field(default_factory=list)
    faults: list[SimFault] = Field(default_factory=list)
    preempt_spot_after_seconds: PositiveFloat | None = Field(
        None, description="every spot instance is preempted this long after it starts (None: never)"
    )


class AwsCloud(CloudBase):
    profile: str | None = Field(None, description="a named profile of the shared AWS config; default: the chain")
    role_arn: str | None = Field(None, description="a role to assume with the base credentials")
    endpoint_url: str | None = Field(None, description="an EC2-compatible endpoint (tests: a local moto server)")
    max_attempts: PositiveInt = Field(
        3, description="botocore attempts for reads (standard mode); launches are never retried within a tick"
    )
    connect_timeout_seconds: PositiveFloat = 5.0
    read_timeout_seconds: PositiveFloat = 30.0


class GcpCloud(CloudBase):
    project: str = Field("", description="the GCP project id")
    credentials_file: Path | None = Field(
        None, description="a service-account JSON key; default: application default credentials"
    )
    endpoint: str | None = Field(
        None,
        description="a Compute Engine API endpoint (tests: a local server; a plain-http one is called without "
        "credentials, so that no token is ever sent in clear text)",
    )
    timeout_seconds: PositiveFloat = Field(30.0, description="every API call's timeout")
    operation_timeout_seconds: PositiveFloat = Field(
        120.0, description="how long a launch waits for its zone operation before the next tick takes over"
    )
    read_retry_seconds: NonNegFloat = Field(
        10.0,
        description="how long one read (list, get, operation wait) retries 429 and 5xx answers; 0: not at all. "
        "Inserts and deletes are never retried within a tick: the next tick retries them with the same request",
    )


class AzureCloud(CloudBase):
    regions: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Azure location -> availability zones to use ("1", "2", "3"); an empty list: regional VMs '
        "(no zone; their offerings name the location as the zone)",
    )
    subscription_id: str = Field("", description="the Azure subscription id")
    resource_group: str = Field("", description="the resource group the daemon's VMs and NICs live in")
    endpoint: str | None = Field(None, description="a Resource Manager endpoint (sovereign clouds; tests)")
    ca_bundle: Path | None = Field(None, description="a CA bundle to trust for `endpoint` (tests, private CAs)")
    timeout_seconds: PositiveFloat = Field(30.0, description="every API call's timeout")
    operation_timeout_seconds: PositiveFloat = Field(
        300.0, description="how long a launch polls its VM creation before the next tick takes over"
    )
    polling_interval_seconds: NonNegFloat = Field(
        5.0, description="seconds between polls of a long-running operation that sends no Retry-After"
    )
    retry_total: Annotated[int, Field(ge=0, le=10)] = Field(
        2,
        description="azure-core retries of a read (429, 5xx, connection errors); creates and deletes are "
        "sent once: the next tick is their retry",
    )
    leftover_grace_seconds: PositiveFloat = Field(
        600.0,
        description="a NIC of ours with no VM (and its OS disk), left by a failed or interrupted launch, is "
        "deleted once seen orphaned this long",
    )


class Clouds(Strict):
    simulated: SimulatedCloud | None = None
    aws: AwsCloud | None = None
    gcp: GcpCloud | None = None
    azure: AzureCloud | None = None

    def enabled(self) -> dict[str, CloudBase]:
        out: dict[str, CloudBase] = {}
        for name in CLOUDS:
            cloud = getattr(self, name)
            if cloud is not None and cloud.enabled:
                out[name] = cloud
        return out


# ---------------------------------------------------------------- metric sources


class SourceBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["queue", "latency", "arrivals"] = Field(
        "queue",
        description="queue: items waiting; latency: seconds; arrivals: requests per second arriving (needs "
        "targets.requests_per_unit_per_second; the pool then scales on the arrival rate)",
    )
    timeout_seconds: PositiveFloat = 5.0


class Burst(Strict):
    after_seconds: NonNegFloat = Field(description="seconds after the daemon starts")
    duration_seconds: PositiveFloat
    value: float = Field(description="added to the curve during the burst")


class SyntheticSource(SourceBase):
    type: Literal["synthetic"]
    base: NonNegFloat = 0.0
    amplitude: NonNegFloat = 0.0
    period_seconds: PositiveFloat = 3600.0
    bursts: list[Burst] = Field(default_factory=list)


class PrometheusSource(SourceBase):
    type: Literal["prometheus"]
    url: str = Field(description="base URL of the Prometheus server, e.g. http://127.0.0.1:9090")
    query: str = Field(description="instant PromQL query returning one scalar or one-element vector")
    bearer_token_env: str | None = Field(None, description="environment variable holding a bearer token")
    bearer_token_file: Path | None = Field(None, description="file holding a bearer token (read at every query)")
    ca_file: Path | None = Field(None, description="CA bundle for an https url with a private CA")
    verify_tls: bool = True


class HttpSource(SourceBase):
    type: Literal["http"]
    url: str
    field: str = Field(description="dotted path to the number in the JSON answer, e.g. data.queue.depth")
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True


class Secret(Strict):
    """Where a password or token comes from: never the policy file itself."""

    env: str | None = Field(None, description="an environment variable holding it")
    file: Path | None = Field(None, description="a file holding it (e.g. $CREDENTIALS_DIRECTORY/...)")


class RedisSource(SourceBase):
    type: Literal["redis"]
    url: str = Field(
        "redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS) URL, without a password in it"
    )
    mode: Literal["list", "celery", "stream", "zset"] = Field(
        "list",
        description="list: LLEN key; celery: LLEN of key and its priority lists (Celery's Redis broker); "
        "stream: XINFO GROUPS lag + pending of `group`; zset: ZCARD key",
    )
    key: str = Field(description="the list, stream or sorted set (for celery: the queue name)")
    group: str | None = Field(None, description="the stream's consumer group (mode stream)")
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = Field(None, description="CA bundle for rediss:// with a private CA")
    verify_tls: bool = True


class RabbitMQSource(SourceBase):
    type: Literal["rabbitmq"]
    queue: str
    via: Literal["amqp", "management"] = Field(
        "amqp", description="amqp: a passive queue declare (ready count only); management: the HTTP API"
    )
    url: str = Field(
        "amqp://guest@127.0.0.1:5672/%2F", description="amqp(s):// URL (via amqp), without a password in it"
    )
    management_url: str = Field("http://127.0.0.1:15672", description="the management API's base URL")
    vhost: str = "/"
    username: str = "guest"
    password: Secret | None = Field(None, description="default: the guest account's well-known password")
    include_unacked: bool = Field(True, description="count delivered-but-unacknowledged messages (management)")
    verify_tls: bool = True


class SqsSource(SourceBase):
    type: Literal["sqs"]
    queue: str = Field(description="the queue's URL, or its name (looked up once)")
    region: str = "us-east-1"
    endpoint_url: str | None = Field(None, description="an SQS-compatible endpoint (tests: moto)")
    profile: str | None = None
    include_in_flight: bool = Field(True, description="add ApproximateNumberOfMessagesNotVisible")
    include_delayed: bool = Field(False, description="add ApproximateNumberOfMessagesDelayed")


MetricSourceConfig = Annotated[
    SyntheticSource | PrometheusSource | HttpSource | RedisSource | RabbitMQSource | SqsSource,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------- pools


class Targets(Strict):
    queue_per_unit: PositiveFloat | None = Field(
        None, description="queue items one capacity unit should hold at most"
    )
    latency_slo_seconds: PositiveFloat | None = Field(None, description="latency the pool must stay under")
    requests_per_unit_per_second: PositiveFloat | None = Field(
        None, description="requests one capacity unit serves per second (for sources of kind arrivals)"
    )
    slo_breach_alert_seconds: PositiveFloat = Field(
        300.0, description="alert (see alerts:) when latency stays above latency_slo_seconds longer than this"
    )


class Forecast(Strict):
    """Seasonality learned from the pool's own arrival-rate history, used only where it would have paid."""

    enabled: bool = Field(True, description="learn the pool's seasonality (arrivals sources only)")
    period_seconds: PositiveFloat = Field(86400.0, description="the season: a day (time of day), or e.g. 3600")
    bucket_seconds: PositiveFloat = Field(300.0, description="resolution of the seasonal profile")
    periods: Annotated[int, Field(ge=2, le=14)] = Field(
        3, description="the profile is the mean of the last this many periods; it is used once two are seen"
    )


class Scaling(Strict):
    scale_up_window_seconds: NonNegFloat = Field(
        0.0, description="scale up to the lowest recommendation of this window"
    )
    scale_down_window_seconds: NonNegFloat = Field(
        300.0, description="scale down to the highest recommendation of this window"
    )
    panic_threshold: float = Field(
        2.0, gt=1.0, description="a need this many times the live capacity is a burst: scale at once"
    )
    panic_window_seconds: NonNegFloat = Field(60.0, description="no scale-down for this long after a burst")
    max_metric_age_seconds: PositiveFloat = Field(
        120.0, description="older samples make the pool hold its capacity"
    )
    # ---- rate-based scaling (a source of kind arrivals; see policies/scaling.py)
    rate_window_seconds: PositiveFloat = Field(
        60.0, description="the arrival rate is averaged over this long (default: at least the latency SLO)"
    )
    level_window_seconds: PositiveFloat = Field(
        120.0, description="the rate's level (what the headroom is added to) is averaged over this long"
    )
    headroom_quantile: float = Field(
        0.8, ge=0.5, le=1.0, description="headroom = this quantile of how much demand grew within a boot time"
    )
    max_headroom: float = Field(3.0, ge=1.0, description="the headroom factor never exceeds this")
    history_seconds: PositiveFloat = Field(
        3600.0, description="how much of the pool's own demand history the headroom is learned from"
    )
    boot_seconds: PositiveFloat = Field(
        120.0, description="boot-to-ready time assumed until the pool's offerings have shown their own"
    )
    scale_up_tolerance: float = Field(
        0.05, ge=0.0, lt=1.0, description="no scale-up while the need is within this fraction above live capacity"
    )
    scale_down_tolerance: float = Field(
        0.1, ge=0.0, lt=1.0, description="no scale-down while the need is within this fraction of live capacity"
    )
    spot_spare: bool = Field(
        True, description="keep one spare spot instance while the pool's spot offerings are preempted often"
    )
    spare_after_preemptions: PositiveInt = Field(
        2,
        description="the spare is kept while preemptions happened at this many moments within spare_memory_seconds "
        "(instances taken back together count once)",
    )
    rebalance: bool = Field(
        True,
        description="with capacity enough, replace a ready worse-ranked instance (an on-demand fallback) with a "
        "better-ranked, cheaper one, one at a time; the old one is removed once the new one is ready",
    )
    spare_memory_seconds: PositiveFloat = Field(
        3600.0, description="how long a preemption keeps the spare (and counts toward the preemption rate)"
    )
    forecast: Forecast = Forecast()


class HealthCheck(Strict):
    type: Literal["none", "http"] = "none"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    path: str = "/health"
    timeout_seconds: PositiveFloat = 2.0
    unhealthy_after: PositiveInt = Field(
        3, description="consecutive failures before a ready instance is unhealthy"
    )


class LaunchTemplateConfig(Strict):
    image: str = ""
    user_data: str = ""
    disk_gb: PositiveInt | None = None
    network: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, str | int | float | bool | list[str]] = Field(
        default_factory=dict, description="cloud-specific settings the provider documents"
    )


class Candidate(Strict):
    cloud: Literal["simulated", "aws", "gcp", "azure"]
    instance_type: str
    market: Market
    throughput: PositiveFloat = Field(description="capacity units one instance supplies")
    regions: list[str] | None = None
    zones: list[str] | None = None


# ---------------------------------------------------------------- service discovery (see autoscaler.discovery)


class Discovery(Strict):
    """Where a pool's ready instances are published for load balancers and Prometheus (besides the admin API's
    /v1/endpoints, which always lists them). Files are written atomically after a tick that changed them."""

    port: Annotated[int, Field(gt=0, lt=65536)] = Field(8000, description="the port the pool's servers listen on")
    metrics_port: Annotated[int, Field(gt=0, lt=65536)] = Field(
        9400, description="the port of the instances' GPU exporter, scraped via file_sd (dcgm-exporter: 9400)"
    )
    file_sd_path: Path | None = Field(None, description="write a Prometheus file_sd JSON here; null: do not")
    file_sd_labels: dict[Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")], str] = Field(
        default_factory=dict, description="extra labels on every file_sd target"
    )
    nginx_upstream_path: Path | None = Field(
        None, description="write an nginx `upstream` block here (include it in the http block); null: do not"
    )
    nginx_upstream_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+$", description="the upstream's name; default gpu_autoscaler_<pool>"
    )
    nginx_server_options: str = Field(
        "", pattern=r"^[A-Za-z0-9_=. ]*$", description="appended to each server line, e.g. max_fails=3"
    )
    reload_command: list[str] = Field(
        default_factory=list,
        description="run (no shell) after a file changed, e.g. [nginx, -s, reload]; failure is logged, not fatal",
    )
    reload_timeout_seconds: PositiveFloat = Field(10.0, description="the reload command is killed after this")


class Pool(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    min_capacity: NonNegFloat = 0.0
    max_capacity: PositiveFloat
    metrics: list[MetricSourceConfig] = Field(default_factory=list)
    targets: Targets = Targets()
    scaling: Scaling = Scaling()
    boot_timeout_seconds: PositiveFloat = 900.0
    drain_seconds: NonNegFloat = 60.0
    health_check: HealthCheck = HealthCheck()
    launch_templates: dict[Literal["simulated", "aws", "gcp", "azure"], LaunchTemplateConfig] = Field(
        default_factory=dict
    )
    candidates: list[Candidate] = Field(min_length=1, description="ranked: the first is preferred")
    limits: PoolLimits = PoolLimits()
    discovery: Discovery = Discovery()


# ---------------------------------------------------------------- alerts (webhooks; see autoscaler.alerts)


class Webhook(Strict):
    name: str = Field("webhook", pattern=r"^[A-Za-z0-9_.-]+$", description="names the receiver in the log")
    url: Secret = Field(description="where the URL comes from (env or file): a Slack webhook URL is a secret")


class PreemptionStorm(Strict):
    count: PositiveInt = Field(5, description="this many spot preemptions ...")
    window_seconds: PositiveFloat = Field(600.0, description="... within this long is a storm")


class AlertSettings(Strict):
    webhooks: list[Webhook] = Field(default_factory=list, description="every alert goes to each of them")
    repeat_seconds: PositiveFloat = Field(
        14400.0, description="an alert still active is sent again after this long (never more often)"
    )
    send_resolved: bool = Field(True, description="send a 'resolved' notice when an alert clears")
    timeout_seconds: PositiveFloat = Field(5.0, description="each POST's timeout")
    max_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        5, description="tries per notice (connection errors, 429 and 5xx are retried)"
    )
    backoff_seconds: PositiveFloat = Field(1.0, description="first retry delay; doubled each retry, max 60 s")
    queue_size: PositiveInt = Field(
        100, description="notices waiting to be sent; when full, new ones are dropped (and logged)"
    )
    preemption_storm: PreemptionStorm = PreemptionStorm()


class Policy(Strict):
    daemon: DaemonSettings = DaemonSettings()
    clouds: Clouds = Clouds(simulated=SimulatedCloud())
    pools: list[Pool] = Field(default_factory=list)
    alerts: AlertSettings = AlertSettings()

    def pool(self, name: str) -> Pool | None:
        return self._pools_by_name.get(name)

    @cached_property
    def _pools_by_name(self) -> dict[str, Pool]:
        return {p.name: p for p in reversed(self.pools)}  # reversed: the first of duplicate names wins


def semantic_errors(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span fields, as (path, message) pairs so the loader can point at the line."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    enabled = policy.clouds.enabled()
    for name, settings in enabled.items():
        if name != "simulated" and not settings.regions:
            errors.append((("clouds", name, "regions"), f"name at least one region for {name}"))
    seen: set[str] = set()
    for i, pool in enumerate(policy.pools):
        if pool.name in seen:
            errors.append((("pools", i, "name"), f"duplicate pool name {pool.name!r}"))
        seen.add(pool.name)
        if pool.min_capacity > pool.max_capacity:
            errors.append(
                (
                    ("pools", i, "min_capacity"),
                    f"min_capacity {pool.min_capacity} > max_capacity {pool.max_capacity}",
                )
            )
        t = pool.targets
        untargeted = t.queue_per_unit is None and t.latency_slo_seconds is None
        if pool.metrics and untargeted and t.requests_per_unit_per_second is None:
            errors.append(
                (("pools", i, "targets"), "metrics are set but no target (queue_per_unit or latency_slo)")
            )
        names = [m.name for m in pool.metrics]
        for j, m in enumerate(pool.metrics):
            if names.count(m.name) > 1:
                errors.append((("pools", i, "metrics", j, "name"), f"duplicate metric source name {m.name!r}"))
            if m.kind == "queue" and pool.targets.queue_per_unit is None:
                errors.append((("pools", i, "metrics", j, "kind"), "a queue source needs targets.queue_per_unit"))
            if m.kind == "arrivals" and pool.targets.requests_per_unit_per_second is None:
                errors.append(
                    (
                        ("pools", i, "metrics", j, "kind"),
                        "an arrivals source needs targets.requests_per_unit_per_second",
                    )
                )
            if m.kind == "latency" and pool.targets.latency_slo_seconds is None:
                errors.append(
                    (("pools", i, "metrics", j, "kind"), "a latency source needs targets.latency_slo_seconds")
                )
        for j, cand in enumerate(pool.candidates):
            where = ("pools", i, "candidates", j)
            cloud = enabled.get(cand.cloud)
            if cloud is None:
                errors.append(((*where, "cloud"), f"cloud {cand.cloud!r} is not enabled under clouds:"))
                continue
            known_regions = set(cloud.regions)
            for r in cand.regions or []:
                if known_regions and r not in known_regions:
                    errors.append(((*where, "regions"), f"region {r!r} is not configured for {cand.cloud}"))
            known_zones = {z for zs in cloud.regions.values() for z in zs}
            for z in cand.zones or []:
                if known_zones and z not in known_zones:
                    errors.append(((*where, "zones"), f"zone {z!r} is not configured for {cand.cloud}"))
            if isinstance(cloud, SimulatedCloud) and cand.instance_type not in cloud.instance_types:
                errors.append(
                    ((*where, "instance_type"), f"{cand.instance_type!r} is not a simulated instance type")
                )
    errors.extend(_discovery_errors(policy))
    return errors


def _discovery_errors(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Two pools must not write the same discovery file (each would overwrite the other's every tick)."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    written: dict[Path, str] = {}
    for i, pool in enumerate(policy.pools):
        for field_name in ("file_sd_path", "nginx_upstream_path"):
            path = getattr(pool.discovery, field_name)
            if path is None:
                continue
            if path in written:
                errors.append(
                    (("pools", i, "discovery", field_name), f"{path} is already written by {written[path]}")
                )
            written[path] = f"pool {pool.name!r}"
    return errors
