"""The admin HTTP API: what the daemon is doing, why, and the few levers an operator may pull.

Reads are open; mutating calls need the bearer token (see errors.BearerTokenGate). Every handler is a plain
`def`, so FastAPI runs it in its thread pool: the store and the daemon's control calls block, and the event
loop must stay free to answer /healthz while a slow query runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Query, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

import autoscaler
from autoscaler import config, discovery
from autoscaler.api import schemas as s
from autoscaler.api.control import DaemonControl
from autoscaler.api.errors import (
    MUTATING_METHODS,
    BearerTokenGate,
    ControlCharacterGate,
    document_gates,
    error,
    install_error_handlers,
)
from autoscaler.api.status_page import install_status_page
from autoscaler.leader import Leadership
from autoscaler.lifecycle import InstanceState
from autoscaler.model import PoolControl
from autoscaler.store import DecisionRow

POOL_PATTERN = r"^[a-z0-9][a-z0-9-]{0,40}$"
EXPLAIN_EVENTS = 20
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": s.ErrorOut}}
AUTH: Responses = {401: {"model": s.ErrorOut}, 403: {"model": s.ErrorOut}, 409: {"model": s.ErrorOut}}
REJECTED: Responses = {422: {"model": s.ReloadRejectedOut}}

# Only documents the scheme in OpenAPI; BearerTokenGate enforces it before the body is even read.
_bearer = HTTPBearer(auto_error=False, description="the admin token (needed for every mutating call)")
_admin = [Security(_bearer)]

PoolFilter = Annotated[str | None, Query(pattern=POOL_PATTERN, description="only this pool")]


def short(text: str, limit: int = 80) -> str:
    """Echo at most `limit` characters of a caller's input back in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


# ---- high availability (autoscaler.leader): a follower serves reads only


def _leadership(control: DaemonControl) -> Leadership | None:
    """The daemon's role, when it has one (a DaemonControl without leadership() is a single node)."""
    get = getattr(control, "leadership", None)
    return get() if callable(get) else None


def _role(control: DaemonControl) -> dict[str, object]:
    lead = _leadership(control)
    if lead is None:
        return {}
    leader = lead.me if lead.role == "leader" else lead.leader
    return {"role": lead.role, "leader": leader, "fencing_token": lead.token}


class FollowerGate:
    """A follower answers every mutating call 409, naming the leader: the operator's lever belongs to the daemon
    that acts (a reload on a follower would change nothing that runs)."""

    def __init__(self, app: ASGIApp, control: DaemonControl) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in MUTATING_METHODS:
            lead = _leadership(self.control)
            if lead is not None and not lead.acts:
                who = f"{lead.leader} (fencing token {lead.token})" if lead.leader else "unknown (no lease held)"
                message = f"this daemon is a follower; the leader is {who}: send mutating calls to the leader"
                await error(409, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- end of the high availability block


def create_app(control: DaemonControl, token: str | None) -> FastAPI:
    app = FastAPI(
        title="gpu-autoscaler admin API",
        version=autoscaler.__version__,
        description="Read what the daemon does and why; pause, override, reload the policy, unblock offerings.",
    )
    # The last added runs first: the token is checked before anything else about the request.
    app.add_middleware(FollowerGate, control=control)  # innermost: after the token check
    app.add_middleware(ControlCharacterGate)
    app.add_middleware(BearerTokenGate, token=token)
    install_error_handlers(app)
    document_gates(app)  # the OpenAPI document states the token and control-character gates on every route
    install_status_page(app)
    # Pause/resume/override are read-modify-write on one row: serialise them within this process.
    controls_lock = threading.Lock()

    def pool_config(name: str) -> config.Pool | None:
        return control.policy().policy.pool(name)

    def unknown_pool(name: str) -> JSONResponse:
        return error(404, f"unknown pool {short(name)!r} (not in the policy in force)")

    def last_decision(name: str) -> DecisionRow | None:
        rows = control.store.decisions(pool=name, limit=1)
        return rows[0] if rows else None

    def signals(pool: config.Pool, now: datetime) -> dict[str, object]:
        """The pool's metric sources and hold, from the daemon's last snapshot (and, for a source that is down,
        the metrics' memory of its last usable reading)."""
        snapshot = control.last_snapshot
        demand = snapshot.demand.get(pool.name) if snapshot is not None else None
        read_at = snapshot.now if snapshot is not None and demand is not None else None
        samples = {sample.source: sample for sample in demand.samples} if demand is not None else {}
        limit = pool.scaling.max_metric_age_seconds
        sources = [
            s.SourceOut.of(
                cfg,
                samples.get(cfg.name),
                control.metrics.last_good_reading(pool.name, cfg.name),
                read_at,
                now,
                limit,
            )
            for cfg in pool.metrics
        ]
        return s.signal_fields(demand, read_at, sources)

    def pool_out(pool: config.Pool, controls: dict[str, PoolControl], live: Counter[str]) -> s.PoolOut:
        now = control.clock.now()
        row = last_decision(pool.name)
        ctl = s.ControlOut.of(pool.name, controls.get(pool.name, PoolControl()), now)
        d = row.decision if row else None
        return s.PoolOut(
            name=pool.name,
            min_capacity=pool.min_capacity,
            max_capacity=pool.max_capacity,
            desired=d.desired if d else None,
            ready=d.ready if d else None,
            booting=d.booting if d else None,
            draining=d.draining if d else None,
            spend_usd_per_hour=d.spend_usd_per_hour if d else None,
            live_instances=live[pool.name],
            paused=ctl.paused,
            override=ctl.override,
            last_decision_at=row.at if row else None,
            last_decision_age_seconds=max((now - row.at).total_seconds(), 0.0) if row else None,
            signal=d.signal if d else "",
            reasons=list(d.reasons) if d else [],
            **signals(pool, now),
        )

    def control_out(name: str) -> s.ControlOut:
        return s.ControlOut.of(name, control.store.controls().get(name, PoolControl()), control.clock.now())

    # ------------------------------------------------------------ health and metrics

    @app.get("/healthz", response_model=s.Health, responses={503: {"model": s.Health}}, tags=["health"])
    def healthz() -> JSONResponse:
        ok, reason = control.health()
        return JSONResponse({"ok": ok, "reason": reason, **_role(control)}, status_code=200 if ok else 503)

    @app.get("/readyz", response_model=s.Health, responses={503: {"model": s.Health}}, tags=["health"])
    def readyz() -> JSONResponse:
        ok, reason = control.readiness()
        return JSONResponse({"ok": ok, "reason": reason, **_role(control)}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response, tags=["health"])
    def metrics() -> Response:
        body, content_type = control.metrics.render()
        return Response(content=body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------ pools

    @app.get("/v1/pools", tags=["pools"])
    def list_pools() -> list[s.PoolOut]:
        controls = control.store.controls()
        live = Counter(r.pool for r in control.store.instances(live_only=True))
        return [pool_out(p, controls, live) for p in control.policy().policy.pools]

    @app.get("/v1/pools/{pool}", response_model=s.PoolDetailOut, responses=NOT_FOUND, tags=["pools"])
    def get_pool(pool: str) -> s.PoolDetailOut | JSONResponse:
        cfg = pool_config(pool)
        if cfg is None:
            return unknown_pool(pool)
        records = control.store.instances(live_only=True, pool=pool)
        base = pool_out(cfg, control.store.controls(), Counter(r.pool for r in records))
        return s.PoolDetailOut(
            **base.model_dump(),
            candidates=[
                s.CandidateOut(
                    cloud=c.cloud, instance_type=c.instance_type, market=str(c.market), throughput=c.throughput
                )
                for c in cfg.candidates
            ],
            instances_by_state=dict(Counter(str(r.state) for r in records)),
        )

    @app.get("/v1/pools/{pool}/explain", response_model=s.ExplainOut, responses=NOT_FOUND, tags=["pools"])
    def explain(pool: str) -> s.ExplainOut | JSONResponse:
        cfg = pool_config(pool)
        if cfg is None:
            return unknown_pool(pool)
        now = control.clock.now()
        row = last_decision(pool)
        # Events name their pool when a launch for it failed; a preemption seen without a record may not,
        # so an event on one of the pool's candidates counts too.
        wanted = {(c.cloud, c.instance_type, str(c.market)) for c in cfg.candidates}
        events = [
            e
            for e in control.store.capacity_events(limit=200)
            if e.pool == pool
            or (e.pool is None and (e.offering.cloud, e.offering.instance_type, str(e.offering.market)) in wanted)
        ][:EXPLAIN_EVENTS]
        return s.ExplainOut(
            pool=pool,
            decision=s.DecisionOut.of(row, now) if row else None,
            control=control_out(pool),
            capacity_events=[s.CapacityEventOut.of(e) for e in events],
            **signals(cfg, now),
        )

    @app.post(
        "/v1/pools/{pool}/pause",
        response_model=s.ControlOut,
        responses=NOT_FOUND | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def pause(pool: str) -> s.ControlOut | JSONResponse:
        return update_control(pool, lambda c: replace(c, paused=True))

    @app.post(
        "/v1/pools/{pool}/resume",
        response_model=s.ControlOut,
        responses=NOT_FOUND | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def resume(pool: str) -> s.ControlOut | JSONResponse:
        return update_control(pool, lambda c: replace(c, paused=False))

    @app.post(
        "/v1/pools/{pool}/override",
        response_model=s.ControlOut,
        responses=NOT_FOUND | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def set_override(pool: str, body: s.OverrideIn) -> s.ControlOut | JSONResponse:
        cfg = pool_config(pool)
        if cfg is None:
            return unknown_pool(pool)
        if body.capacity > cfg.max_capacity:
            return error(422, f"capacity {body.capacity:g} is above the pool's max_capacity {cfg.max_capacity:g}")
        until = control.clock.now() + timedelta(seconds=body.ttl_seconds)
        return update_control(pool, lambda c: replace(c, override_capacity=body.capacity, override_until=until))

    @app.delete(
        "/v1/pools/{pool}/override",
        response_model=s.ControlOut,
        responses=NOT_FOUND | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def clear_override(pool: str) -> s.ControlOut | JSONResponse:
        return update_control(pool, lambda c: replace(c, override_capacity=None, override_until=None))

    def update_control(pool: str, change: Callable[[PoolControl], PoolControl]) -> s.ControlOut | JSONResponse:
        if pool_config(pool) is None:
            return unknown_pool(pool)
        with controls_lock:
            current = control.store.controls().get(pool, PoolControl())
            updated = change(current)
            control.store.set_control(pool, updated)
        return s.ControlOut.of(pool, updated, control.clock.now())

    # ------------------------------------------------------------ instances, capacity, decisions, prices

    @app.get("/v1/instances", tags=["fleet"])
    def list_instances(
        pool: PoolFilter = None,
        state: Annotated[InstanceState | None, Query(description="only this lifecycle state")] = None,
        include_terminated: Annotated[bool, Query(description="include records in final states")] = False,
        limit: Annotated[int, Query(ge=1, le=10000, description="at most this many, the newest")] = 1000,
    ) -> list[s.InstanceOut]:
        # Asking for a final state is asking for finished records, whatever include_terminated says.
        live_only = not include_terminated and (state is None or state.live)
        records = control.store.instances(live_only=live_only, pool=pool)
        if state is not None:
            records = [r for r in records if r.state == state]
        now = control.clock.now()
        return [s.InstanceOut.of(r, now) for r in records[-limit:]]

    @app.get("/v1/instances/{token}", response_model=s.InstanceDetailOut, responses=NOT_FOUND, tags=["fleet"])
    def get_instance(token: str) -> s.InstanceDetailOut | JSONResponse:
        record = control.store.get_instance(token)
        if record is None:
            return error(404, f"no instance record with token {short(token)!r}")
        history = [s.HistoryOut.of(h) for h in control.store.history(token)]
        return s.InstanceDetailOut.model_validate(
            {**s.InstanceOut.fields_of(record, control.clock.now()), "history": history}
        )

    @app.get("/v1/capacity", tags=["capacity"])
    def capacity(
        limit: Annotated[int, Query(ge=1, le=500, description="how many recent capacity events")] = 50,
    ) -> s.CapacityOut:
        now = control.clock.now()
        return s.CapacityOut(
            blocked=[s.BlockOut.of(b, now) for b in control.store.blocks(now=now)],
            events=[s.CapacityEventOut.of(e) for e in control.store.capacity_events(limit=limit)],
        )

    # ---- circuit breakers per provider (autoscaler.breaker)
    @app.get("/v1/providers", tags=["capacity"])
    def providers() -> list[s.BreakerOut]:
        """Each cloud's circuit breaker: an open one takes the cloud's offerings out of placement."""
        status = getattr(control, "breaker_status", None)
        if not callable(status):
            return []
        return [
            s.BreakerOut(
                cloud=b.cloud,
                state=b.state.value,
                consecutive_failures=b.consecutive_failures,
                window_failures=b.window_failures,
                window_calls=b.window_calls,
                opened_at=b.opened_at,
                retry_at=b.retry_at,
                times_opened=b.times_opened,
                last_error=b.last_error,
            )
            for b in status()
        ]

    @app.post(
        "/v1/capacity/unblock",
        response_model=s.UnblockOut,
        responses=NOT_FOUND | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def unblock(body: s.UnblockIn) -> s.UnblockOut | JSONResponse:
        removed = control.store.unblock(body.cloud, body.instance_type, body.market, body.region, body.zone)
        if removed == 0:
            return error(404, "no capacity block matched")
        now = control.clock.now()
        control.metrics.set_blocks(control.store.blocks(now=now), now)  # so /metrics agrees at once
        return s.UnblockOut(unblocked=removed)

    @app.get("/v1/decisions", tags=["pools"])
    def decisions(
        pool: PoolFilter = None,
        limit: Annotated[int, Query(ge=1, le=500, description="newest first")] = 50,
    ) -> list[s.DecisionOut]:
        now = control.clock.now()
        return [s.DecisionOut.of(row, now) for row in control.store.decisions(pool=pool, limit=limit)]

    @app.get("/v1/prices", tags=["capacity"])
    def prices() -> list[s.PriceOut]:
        now = control.clock.now()
        return [s.PriceOut.of(p, now) for p in control.store.prices()]

    # ------------------------------------------------------------ service discovery and the status page's chart

    @app.get("/v1/endpoints", tags=["discovery"])
    def list_endpoints(pool: PoolFilter = None) -> list[s.EndpointOut]:
        """Every pool's ready instances (READY and with an address): what a load balancer may send work to. A
        draining instance is not listed."""
        by_pool = discovery.endpoints(control.policy().policy, control.store.instances(live_only=True, pool=pool))
        return [s.EndpointOut.of(ep) for name, eps in by_pool.items() if pool in (None, name) for ep in eps]

    @app.get(
        "/v1/pools/{pool}/endpoints", response_model=list[s.EndpointOut], responses=NOT_FOUND, tags=["discovery"]
    )
    def pool_endpoints(pool: str) -> list[s.EndpointOut] | JSONResponse:
        if pool_config(pool) is None:
            return unknown_pool(pool)
        return list_endpoints(pool)

    @app.get("/v1/history", tags=["pools"])
    def capacity_history(
        pool: PoolFilter = None,
        hours: Annotated[float, Query(ge=0.01, le=168, description="how far back, by the daemon's clock")] = 3.0,
        max_points: Annotated[int, Query(ge=2, le=2000, description="per pool, at most")] = 360,
    ) -> s.CapacityHistoryOut:
        """Desired, ready, booting and draining capacity and spend per pool over time, from the decisions (for the
        status page's chart). Thinned to the last decision of each of `max_points` equal time buckets."""
        now = control.clock.now()
        since = now - timedelta(hours=hours)
        rows = control.store.decision_history(since=since, pool=pool)
        bucket = hours * 3600.0 / max_points
        thinned: dict[str, dict[int, DecisionRow]] = {}
        for row in rows:  # oldest first: the last of a bucket wins
            thinned.setdefault(row.decision.pool, {})[int((row.at - since).total_seconds() // bucket)] = row
        names = [p.name for p in control.policy().policy.pools if pool in (None, p.name)]
        return s.CapacityHistoryOut(
            since=since,
            now=now,
            pools=[
                s.PoolHistoryOut(
                    pool=name,
                    points=[s.HistoryPointOut.of(r) for _, r in sorted(thinned.get(name, {}).items())],
                )
                for name in names
            ],
        )

    # ------------------------------------------------------------ policy

    @app.get("/v1/policy", tags=["policy"])
    def policy() -> s.PolicyOut:
        loaded = control.policy()
        return s.PolicyOut(
            source=loaded.source,
            sha256=loaded.sha256,
            pools=[p.name for p in loaded.policy.pools],
            dry_run=control.dry_run,
            revisions=[s.RevisionOut.of(r) for r in control.store.policy_revisions(limit=20)],
        )

    @app.post(
        "/v1/policy/reload",
        response_model=s.ReloadOut,
        responses=REJECTED | AUTH,
        tags=["admin"],
        dependencies=_admin,
    )
    def reload() -> s.ReloadOut | JSONResponse:
        accepted, message = control.reload_policy()
        if not accepted:
            return JSONResponse({"accepted": False, "error": message}, status_code=422)
        loaded = control.policy()
        return s.ReloadOut(accepted=True, message=message, source=loaded.source, sha256=loaded.sha256)

    return app
