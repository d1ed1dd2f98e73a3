"""The scenario file: which policy, which demand and capacity traces, how long, as validated pydantic models.

Loaded like the policy file: every error becomes one line with file:line:column (autoscaler.policyfile's
machinery). Paths in a scenario are relative to the scenario file. docs/simulation.md documents every key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from autoscaler.config import NonNegFloat, Strict
from autoscaler.model import Market
from autoscaler.policyfile import (
    LoadedPolicy,
    PolicyError,
    PolicyIssue,
    _Builder,
    _message,
    format_loc,
    load_policy,
)
from autoscaler.sim.traces import DemandFormat


class DemandTrace(Strict):
    file: Path
    format: DemandFormat
    scale: PositiveFloat = Field(1.0, description="multiplies the request rate")
    offset_seconds: NonNegFloat = Field(0.0, description="the run starts this far into the trace")
    loop: bool = Field(False, description="repeat the trace when the run outlasts it (else: no more requests)")


class QueueSettings(Strict):
    requests_per_unit_per_second: PositiveFloat = Field(description="what one ready capacity unit serves")
    service_seconds: NonNegFloat = Field(0.0, description="added to a request's wait to make its latency")
    timeout_seconds: PositiveFloat = Field(300.0, description="a request waiting longer is dropped")
    latency_slo_seconds: PositiveFloat | None = Field(
        None, description="a request served within this counts toward SLO attainment (default: the pool's)"
    )


class CapacityTrace(Strict):
    """A spot-traces JSON file that sets how many instances of the matching offerings the cloud hands out."""

    file: Path
    instance_type: str
    market: Market = Market.SPOT
    zone: str | None = Field(None, description="one zone (default: every zone, each with the trace's count)")
    offset_seconds: NonNegFloat = 0.0
    gap_seconds: PositiveFloat | None = Field(None, description="overrides the file's metadata.gap_seconds")


class Stockout(Strict):
    """A window in which an offering has no capacity at all (an on-demand stockout)."""

    instance_type: str
    market: Market = Market.ON_DEMAND
    zone: str | None = None
    start_seconds: NonNegFloat
    end_seconds: PositiveFloat

    @model_validator(mode="after")
    def _ordered(self) -> Stockout:
        if self.end_seconds <= self.start_seconds:
            raise ValueError("end_seconds must be after start_seconds")
        return self


class Price(Strict):
    on_demand_usd_per_hour: PositiveFloat
    spot_usd_per_hour: PositiveFloat | None = None


class BootDelay(Strict):
    """Boot-to-ready delay of the matching offerings: exactly one of fixed, uniform, lognormal."""

    instance_type: str | None = None
    market: Market | None = None
    zone: str | None = None
    fixed: NonNegFloat | None = None
    uniform: Annotated[list[NonNegFloat], Field(min_length=2, max_length=2)] | None = None
    lognormal_median: PositiveFloat | None = None
    lognormal_sigma: PositiveFloat = 0.3

    @model_validator(mode="after")
    def _one(self) -> BootDelay:
        given = [x for x in (self.fixed, self.uniform, self.lognormal_median) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of fixed, uniform or lognormal_median")
        if self.uniform is not None and self.uniform[0] > self.uniform[1]:
            raise ValueError("uniform is [low, high] with low <= high")
        return self

    def matches(self, instance_type: str, market: Market, zone: str) -> bool:
        return (
            self.instance_type in (None, instance_type)
            and self.market in (None, market)
            and self.zone in (None, zone)
        )


PolicyName = Literal["daemon", "static", "keda", "spothedge"]


def _daemon_only() -> list[PolicyName]:
    return ["daemon"]


class Scenario(Strict):
    policy: Path = Field(description="the policy YAML (its simulated cloud supplies the offerings)")
    pool: str | None = Field(None, description="the pool the demand feeds (default: the policy's only pool)")
    policies: list[PolicyName] = Field(
        default_factory=_daemon_only, description="what to run: daemon, static, keda, spothedge"
    )
    start: datetime = Field(datetime(2025, 1, 1, tzinfo=UTC), description="the simulated clock's start")
    tick_seconds: PositiveFloat | None = Field(None, description="default: the policy's daemon.tick_seconds")
    duration_seconds: PositiveFloat
    seed: int = 0
    demand: DemandTrace
    queue: QueueSettings
    capacity: list[CapacityTrace] = Field(default_factory=list)
    stockouts: list[Stockout] = Field(default_factory=list)
    prices: dict[str, Price] = Field(default_factory=dict, description="instance type -> prices (default: policy)")
    boot: list[BootDelay] = Field(default_factory=list, description="first match wins (default: the policy's)")
    progress_every: PositiveInt = Field(2000, description="ticks between progress bar updates")

    @model_validator(mode="after")
    def _aware(self) -> Scenario:
        if self.start.tzinfo is None:
            raise ValueError("start needs a time zone (e.g. 2025-01-01T00:00:00Z)")
        return self


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    source: str
    base_dir: Path
    policy: LoadedPolicy

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base_dir / p


class ScenarioError(PolicyError):
    """A scenario that cannot be run; `issues` holds one line per problem (file:line:column)."""


def load_scenario(path: Path) -> LoadedScenario:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([PolicyIssue(name, 1, 1, "", f"cannot read the file: {exc}")]) from None
    builder = _Builder(name)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ScenarioError([PolicyIssue(name, line, col, "", f"invalid YAML: {exc.problem}")]) from None
    data = {} if node is None else builder.build(node, ())
    if builder.issues:
        raise ScenarioError(builder.issues)
    if not isinstance(data, dict):
        raise ScenarioError([PolicyIssue(name, 1, 1, "", "the scenario must be a mapping at the top level")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            message = f"unknown key {loc[-1]!r}" if err["type"] == "extra_forbidden" else _message(err)
            issues.append(PolicyIssue(name, *builder.mark_for(loc), format_loc(loc), message))
        raise ScenarioError(sorted(issues, key=lambda i: (i.line, i.column))) from None

    base = path.parent
    problems: list[tuple[tuple[str | int, ...], str]] = []

    def exists(loc: tuple[str | int, ...], p: Path) -> None:
        full = p if p.is_absolute() else base / p
        if not full.is_file():
            problems.append((loc, f"no such file: {full}"))

    exists(("policy",), scenario.policy)
    exists(("demand", "file"), scenario.demand.file)
    for i, cap in enumerate(scenario.capacity):
        exists(("capacity", i, "file"), cap.file)
    if problems:
        raise ScenarioError([PolicyIssue(name, *builder.mark_for(loc), format_loc(loc), m) for loc, m in problems])
    policy_path = scenario.policy if scenario.policy.is_absolute() else base / scenario.policy
    loaded_policy = load_policy(policy_path)  # raises PolicyError with its own file:line:column
    problems = _semantic(scenario, loaded_policy)
    if problems:
        raise ScenarioError([PolicyIssue(name, *builder.mark_for(loc), format_loc(loc), m) for loc, m in problems])
    return LoadedScenario(scenario, name, base, loaded_policy)


def _semantic(scenario: Scenario, loaded: LoadedPolicy) -> list[tuple[tuple[str | int, ...], str]]:
    policy = loaded.policy
    out: list[tuple[tuple[str | int, ...], str]] = []
    sim = policy.clouds.simulated
    if sim is None or not sim.enabled:
        out.append((("policy",), f"{loaded.source}: the simulator needs the simulated cloud enabled"))
        return out
    names = [p.name for p in policy.pools]
    if scenario.pool is None and len(names) != 1:
        out.append((("pool",), f"name the pool the demand feeds (the policy has {len(names)}: {names})"))
    elif scenario.pool is not None and scenario.pool not in names:
        out.append((("pool",), f"no pool {scenario.pool!r} in {loaded.source} (it has {names})"))
    types = set(sim.instance_types) | set(scenario.prices)
    for i, cap in enumerate(scenario.capacity):
        if cap.instance_type not in types:
            out.append(
                (("capacity", i, "instance_type"), f"{cap.instance_type!r} is not a simulated instance type")
            )
    for i, so in enumerate(scenario.stockouts):
        if so.instance_type not in types:
            out.append(
                (("stockouts", i, "instance_type"), f"{so.instance_type!r} is not a simulated instance type")
            )
    pool = policy.pool(scenario.pool or (names[0] if names else ""))
    if (
        pool is not None
        and scenario.queue.latency_slo_seconds is None
        and pool.targets.latency_slo_seconds is None
    ):
        out.append(
            (
                ("queue", "latency_slo_seconds"),
                "set it (the pool has no targets.latency_slo_seconds to default to)",
            )
        )
    return out
