"""Kill the daemon with a real SIGKILL at random moments while it scales up and down on the three clouds' local
test servers, restart it, and check after each restart that nothing leaked, nothing was launched twice and the
fleet converges. Used by tests/test_kill_storm.py (CI, >= 50 kills) and benchmarks/kill_storm.py (hundreds).

How: this process (the parent) holds the three fake clouds (moto's EC2 server behind tests/aws_fake.py, the
Compute Engine fake, the HTTPS Resource Manager fake), so their state outlives every kill. It builds the
providers once, never uses them, and `os.fork()`s a child per run: the child inherits everything already
imported and a pristine copy of the providers, opens the SQLite store, and runs `Daemon.tick()` in a loop on a
fake clock that moves `tick_seconds` per tick. The parent SIGKILLs it after a random (seeded) delay: a real
process death, in whatever it was doing (a launch half sent, a transaction half written), then forks the next.

The restarted child reports each tick over a pipe (its clock, its live records) and waits; the parent checks,
after every tick, that every instance carrying our tags in any cloud is known to the store (by cloud id, or by
the intent tag of a live record); after each tick whether the fleet has converged to the desired capacity; and,
by the clouds' own creation logs, that no launch intent (token) ever made two instances. Then it picks a new
desired capacity (sent to the child, which sets it as an operator override in its store, as the admin API would)
and new stockouts (injected into the fakes), lets the child run free, and kills it again.

Desired capacity is an operator override so that "converged" is exact (no scaling windows to wait out). One
offering (Azure on-demand) is never stocked out, so a converged fleet is always possible; which offerings are
out changes at random (AWS and GCP answer at once, Azure at the end of the operation, leaving a Failed VM), and
now and then an Azure VM PUT's answer is lost. The Azure fake leaves a failed VM's NIC and disk behind when it is
deleted, so the provider's leftover sweep has work; after the last restart the storm ticks until it is done.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import random
import select
import signal
import socketserver
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from autoscaler.clock import FakeClock
from autoscaler.config import AzureCloud, Policy
from autoscaler.daemon import Daemon
from autoscaler.interfaces import Provider
from autoscaler.lifecycle import InstanceState
from autoscaler.model import TAG_DAEMON, TAG_INTENT, PoolControl
from autoscaler.policyfile import parse_policy
from autoscaler.store import Store
from providers import build_providers, candidate_types
from providers.azure import AzureProvider
from providers.azure_catalog import AzureCatalog
from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM
from tests.gcp_fake import FakeGCE

DAEMON_ID = "kill-storm"
POOL = "llm"
TICK_SECONDS = 15.0
AWS_TYPE, GCP_TYPE, AZURE_TYPE = "g5.xlarge", "g2-standard-8", "Standard_NC4as_T4_v3"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKillStormKey storm@test"
# (cloud, zone, market) that may run out of capacity; Azure on-demand never does (the last resort)
STOCKOUTABLE = [
    *[("aws", z, m) for z in ("us-east-1a", "us-east-1b") for m in ("spot", "on-demand")],
    *[("gcp", z, m) for z in ("us-central1-a", "us-central1-b") for m in ("spot", "on-demand")],
    *[("azure", z, "spot") for z in ("1", "2")],
]
BOOTING_OR_UP = {InstanceState.PROVISIONING.value, InstanceState.RUNNING.value, InstanceState.READY.value}


def policy_text(ec2: FakeEC2, gce: FakeGCE, arm: FakeARM, max_capacity: int) -> str:
    candidates = "\n".join(
        f"      - {{cloud: {cloud}, instance_type: {itype}, market: {market}, throughput: 1}}"
        for market in ("spot", "on-demand")
        for cloud, itype in (("aws", AWS_TYPE), ("gcp", GCP_TYPE), ("azure", AZURE_TYPE))
    )
    return f"""
daemon:
  id: {DAEMON_ID}
  tick_seconds: {TICK_SECONDS}
  fallback_rounds: 10
  launch_retry_seconds: 60
  untracked_grace_seconds: 300
clouds:
  aws:
    regions: {{us-east-1: [us-east-1a, us-east-1b]}}
    endpoint_url: {ec2.endpoint_url}
  gcp:
    project: {gce.project}
    regions: {{us-central1: [us-central1-a, us-central1-b]}}
    endpoint: {gce.endpoint}
    read_retry_seconds: 0
    operation_timeout_seconds: 5
  azure:
    regions: {{eastus: ["1", "2"]}}
    subscription_id: {arm.subscription}
    resource_group: {arm.resource_group}
    endpoint: {arm.url}
    ca_bundle: {arm.ca_path}
    polling_interval_seconds: 0
    retry_total: 0
    timeout_seconds: 5
    operation_timeout_seconds: 10
    leftover_grace_seconds: 60
pools:
  - name: {POOL}
    min_capacity: 0
    max_capacity: {max_capacity}
    drain_seconds: 0
    scaling: {{rebalance: false}}  # a rebalance overshoots by one on purpose; "converged" here means exactly
    launch_templates:
      aws: {{image: {ec2.ami("us-east-1")}}}
      gcp: {{image: projects/debian-cloud/global/images/family/debian-12}}
      azure:
        image: "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
        network: {arm.subnet_id("eastus")}
        extra: {{ssh_public_key: "{SSH_KEY}"}}
    candidates:
{candidates}
"""


@dataclass
class StormReport:
    seed: int
    kills: int = 0
    ticks_checked: int = 0
    leaks: list[str] = field(default_factory=list)  # a tagged instance the store did not know, after a tick
    double_launches: list[str] = field(default_factory=list)  # an intent token that made two instances
    not_converged: list[str] = field(default_factory=list)  # restarts not converged within `converge_ticks`
    ticks_to_converge: Counter[int] = field(default_factory=Counter)  # ticks after a restart -> restarts
    tick_errors: list[str] = field(default_factory=list)
    instances_made: dict[str, int] = field(default_factory=dict)  # by cloud, over the whole storm
    leftovers: dict[str, list[str]] = field(default_factory=dict)  # Azure leftovers left once the storm ended
    orphans_seen: set[str] = field(default_factory=set)  # Failed VMs, NICs and disks with no VM, seen during it
    ticks_to_clean_leftovers: int | None = None  # after the last restart
    hung_restarts: list[str] = field(default_factory=list)  # children that hung (killed, not checked): the stacks
    seconds: float = 0.0
    restart_seconds: list[float] = field(default_factory=list)  # store opened + first tick done, per restart

    @property
    def max_ticks_to_converge(self) -> int:
        return max(self.ticks_to_converge, default=0)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "kills": self.kills,
            "ticks_checked": self.ticks_checked,
            "leaks_found": len(self.leaks),
            "double_launches": len(self.double_launches),
            "not_converged": len(self.not_converged),
            "max_ticks_to_converge": self.max_ticks_to_converge,
            "ticks_to_converge_histogram": {str(k): v for k, v in sorted(self.ticks_to_converge.items())},
            "tick_errors": len(self.tick_errors),
            "hung_restarts": len(self.hung_restarts),
            "instances_made": self.instances_made,
            "azure_leftovers_seen": len(self.orphans_seen),
            "azure_leftovers_after": self.leftovers,
            "ticks_to_clean_leftovers": self.ticks_to_clean_leftovers,
            "seconds": round(self.seconds, 1),
            "restart_to_first_tick_done_seconds": _spread(self.restart_seconds),
            "examples": (self.leaks + self.double_launches + self.not_converged + self.tick_errors)[:5],
        }


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "median": round(ordered[len(ordered) // 2], 3),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
        "max": round(ordered[-1], 3),
    }


class KillStorm:
    def __init__(
        self, ec2: FakeEC2, gce: FakeGCE, arm: FakeARM, workdir: Path, *, seed: int, max_capacity: int = 6
    ) -> None:
        self.ec2, self.gce, self.arm = ec2, gce, arm
        self.rng = random.Random(seed)
        self.report = StormReport(seed)
        self.max_capacity = max_capacity
        self.url = f"sqlite:///{workdir / 'state.db'}"
        self.loaded = parse_policy(policy_text(ec2, gce, arm, max_capacity), str(workdir / "policy.yaml"))
        self.clock = FakeClock()
        self.now = self.clock.now()
        # Built once here and never called here: every child gets an untouched copy (no connection shared).
        self.providers = self._build_providers(self.loaded.policy)
        _warm_without_calls(self.providers)
        self._threads = threading.active_count()  # the servers' own; each request they serve adds one for a while
        self.desired = 0

    def _build_providers(self, policy: Policy) -> dict[str, Provider]:
        built = build_providers(policy, self.clock)
        azure = policy.clouds.azure
        assert isinstance(azure, AzureCloud)
        built["azure"] = AzureProvider(
            azure,
            self.clock,
            policy.daemon.id,
            candidate_types(policy, "azure"),
            AzureCatalog.load(None),
            credential=self.arm.credential,
        )
        return built

    # ------------------------------------------------------------------ the storm

    def run(
        self,
        kills: int,
        *,
        converge_ticks: int = 2,
        max_delay: float = 0.6,
        on_kill: Callable[[int], None] | None = None,
    ) -> StormReport:
        started = time.perf_counter()
        with _quiet_servers():
            self._storm(kills, converge_ticks, max_delay, on_kill)
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _storm(
        self, kills: int, converge_ticks: int, max_delay: float, on_kill: Callable[[int], None] | None
    ) -> None:
        # a failed VM's NIC and disk stay when it is deleted: the sweep must find them
        self.arm.leave_leftovers = True
        self.desired = self.rng.randint(1, self.max_capacity)
        for n in range(kills):
            with _Child(self, set_desired=self.desired if n == 0 else None) as child:
                if not self._check_restart(child, converge_ticks):
                    continue  # it hung (see _Hung): killed like any other, and the next restart is checked
                self.desired = self.rng.randint(0, self.max_capacity)
                self._stock_out(self.rng.sample(STOCKOUTABLE, self.rng.randint(0, len(STOCKOUTABLE) - 1)))
                if self.rng.random() < 0.25 and not self.arm._lose:
                    # the next VM PUT takes effect but its answer is lost, as when the daemon dies right after
                    # sending it; if that VM then fails (a stockout), only the listing finds it, Failed
                    self.arm.lose_next_answer("vm.put")
                child.send(f"g {self.desired}")
                child.wait_ack()  # the override is committed (as the admin API answers once it is)
                time.sleep(self.rng.uniform(0.0, max_delay))
            self.report.kills += 1
            if on_kill is not None:
                on_kill(self.report.kills)
        self._stock_out([])
        for _ in range(3):  # the last restart: converge, then let the sweep finish
            with _Child(self, set_desired=None) as child:
                if self._check_restart(child, converge_ticks):
                    try:
                        self._settle(child)
                        break
                    except _Hung as exc:
                        self.report.hung_restarts.append(str(exc)[-3000:])
        self.report.double_launches = self._double_launches()
        self.report.instances_made = self._made()
        self.report.leftovers = {k: v for k, v in self.arm.orphans().items() if v}

    def quiesce(self, most: float = 5.0, calm: float = 0.03) -> None:
        """Wait until the servers have had no request thread for `calm` seconds (a killed child's connections end
        as soon as they read the reset; one still in the accept backlog gets its thread within that time). A fork
        while one of the parent's threads holds a lock (OpenSSL's, in a TLS handshake) leaves the child's copy of
        that lock held forever: its first TLS connection hangs. This makes that unlikely; _Hung handles the rest."""
        deadline = time.monotonic() + most
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if threading.active_count() > self._threads:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= calm:
                return
            time.sleep(0.005)

    def _settle(self, child: _Child, most: int = 20) -> None:
        """Tick until no Azure leftover is left (the sweep deletes one seen orphaned for its grace period)."""
        for tick in range(most):
            self._note_orphans()
            if not any(self.arm.orphans().values()):
                self.report.ticks_to_clean_leftovers = tick
                return
            child.send("t")
            self._check_leaks(child.tick_report()["records"], tick)

    def _note_orphans(self) -> None:
        orphans = self.arm.orphans()
        self.report.orphans_seen |= {f"azure {kind} {name}" for kind, names in orphans.items() for name in names}

    def _check_restart(self, child: _Child, converge_ticks: int) -> bool:
        """Tick by tick after a restart: no leak after any tick; converged within `converge_ticks`? False if the
        child hung (a lock inherited locked through the fork: the rig's hazard, not the daemon's)."""
        try:
            self._follow_restart(child, converge_ticks)
        except _Hung as exc:
            self.report.hung_restarts.append(str(exc)[-3000:])
            return False
        return True

    def _follow_restart(self, child: _Child, converge_ticks: int) -> None:
        limit = converge_ticks + 4  # a restart that misses the bound is followed a little further, for the record
        story: list[str] = []  # what each tick of this restart saw and decided, for a restart that misses
        for tick in range(1, limit + 1):
            report = child.tick_report()
            if tick == 1:
                self.report.restart_seconds.append(report["t_open"] + report["t_tick"])
            self.report.ticks_checked += 1
            if report["error"]:
                self.report.tick_errors.append(f"kill {self.report.kills} tick {tick}: {report['error']}")
            records = report["records"]
            self._check_leaks(records, tick)
            self._note_orphans()
            story.append(f"tick {tick}: {self._summary(records)}; decided: {report.get('why', '')}")
            if self._converged(records):
                self.report.ticks_to_converge[tick] += 1
                if tick > converge_ticks:
                    self.report.not_converged.append(
                        f"kill {self.report.kills}: converged to {self.desired} only after {tick} ticks: "
                        + " | ".join(story)
                    )
                return
            if tick < limit:
                child.send("t")
        self.report.not_converged.append(
            f"kill {self.report.kills}: not converged to {self.desired} in {limit} ticks: " + " | ".join(story)
        )

    def _check_leaks(self, records: list[dict[str, Any]], tick: int) -> None:
        cloud_ids = {r["cloud_id"] for r in records if r["cloud_id"]}
        tokens = {r["token"] for r in records}
        for cloud, cloud_id, intent in self._alive():
            if cloud_id not in cloud_ids and intent not in tokens:
                self.report.leaks.append(
                    f"kill {self.report.kills} tick {tick}: {cloud} {cloud_id} (intent {intent}) has no live record"
                )

    def _converged(self, records: list[dict[str, Any]]) -> bool:
        up = [r for r in records if r["state"] in BOOTING_OR_UP]
        if sum(r["units"] for r in up) != self.desired:
            return False
        alive = {cloud_id for _, cloud_id, _ in self._alive()}
        return all(r["cloud_id"] in alive for r in up)

    def _summary(self, records: list[dict[str, Any]]) -> str:
        states = Counter(f"{r['offering']} {r['state']}" for r in records)
        return f"records {dict(states)}, alive in the clouds {len(self._alive())}"

    # ------------------------------------------------------------------ the clouds' side

    def _stock_out(self, offerings: list[tuple[str, str, str]]) -> None:
        self.ec2.restore()
        self.gce.restore()
        self.arm.restore()
        for cloud, zone, market in offerings:
            if cloud == "aws":
                self.ec2.exhaust(AWS_TYPE, zone, market)
            elif cloud == "gcp":
                self.gce.exhaust(GCP_TYPE, zone, market)
            else:
                self.arm.exhaust(AZURE_TYPE, zone, "Spot" if market == "spot" else "Regular")

    def _aws_instances(self) -> Iterator[dict[str, Any]]:
        ec2 = self.ec2.client("us-east-1")
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{TAG_DAEMON}", "Values": [DAEMON_ID]}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                yield from reservation["Instances"]

    def _alive(self) -> list[tuple[str, str, str]]:
        """(cloud, cloud id, intent tag) of every instance of ours that exists and is not on its way out."""
        out = []
        for inst in self._aws_instances():
            if inst["State"]["Name"] in ("pending", "running", "stopping", "stopped"):
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                out.append(("aws", inst["InstanceId"], tags.get(TAG_INTENT, "")))
        with self.gce._lock:
            for (zone, name), inst in self.gce.instances.items():
                labels = inst.get("labels") or {}
                if labels.get(TAG_DAEMON) == DAEMON_ID and inst["status"] not in ("TERMINATED", "STOPPING"):
                    out.append(("gcp", f"{zone}/{name}", labels.get(TAG_INTENT, "")))
        with self.arm._lock:
            for name, vm in self.arm.vms.items():
                tags = vm.get("tags") or {}
                state = vm["properties"]["provisioningState"]
                if tags.get(TAG_DAEMON) == DAEMON_ID and state not in ("Deleting", "Failed", "Canceled"):
                    out.append(("azure", name, tags.get(TAG_INTENT, "")))
        return out

    def _creations(self) -> dict[str, list[str]]:
        """cloud -> the intent token of every instance the cloud ever made (failed creations left out)."""
        made: dict[str, list[str]] = defaultdict(list)
        for inst in self._aws_instances():
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            made["aws"].append(tags.get(TAG_INTENT, ""))
        with self.gce._lock:
            # GCE names an instance after its token: one successful insert operation per instance made
            for op in self.gce._ops.values():
                if op.body["operationType"] == "insert" and op.instance and op.error is None:
                    made["gcp"].append(op.instance)
        with self.arm._lock:
            made["azure"] = [tags.get(TAG_INTENT, "") for _, tags, failed in self.arm.created if not failed]
        return made

    def _double_launches(self) -> list[str]:
        out = []
        for cloud, tokens in self._creations().items():
            out += [f"{cloud}: intent {t} made {n} instances" for t, n in Counter(tokens).items() if n > 1]
        return out

    def _made(self) -> dict[str, int]:
        return {cloud: len(tokens) for cloud, tokens in sorted(self._creations().items())}


@contextlib.contextmanager
def _quiet_servers() -> Iterator[None]:
    """The fake servers' threads print a traceback for every connection a killed child leaves half done. Besides
    the noise, a fork while one of them holds stderr's lock would leave the child's stderr locked for good."""
    saved = socketserver.BaseServer.handle_error
    socketserver.BaseServer.handle_error = lambda self, request, client_address: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        socketserver.BaseServer.handle_error = saved  # type: ignore[method-assign]


def _warm_without_calls(providers: dict[str, Provider]) -> None:
    """Make, before any fork, what the SDKs make lazily on a first call but without any I/O (boto3 clients, their
    service models): restarting then costs what a real restart of an already-imported daemon costs, not imports."""
    aws: Any = providers["aws"]
    for region in aws.cfg.regions:
        for launch in (False, True):
            client = aws._client(region, launch=launch)
            model = client.meta.service_model
            for operation in model.operation_names:
                if operation in _AWS_OPERATIONS:
                    model.operation_model(operation)
            client.get_paginator("describe_instances")


_AWS_OPERATIONS = {
    "DescribeInstances", "RunInstances", "TerminateInstances", "DescribeInstanceTypeOfferings",
    "DescribeInstanceTypes", "DescribeSpotPriceHistory",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the child


class _Hung(Exception):
    """A child that did not report a tick in time."""


class _Child:
    """A forked daemon process. Lines to it: "t" (tick once more, report, wait), "g N" (set the desired capacity
    to N, acknowledge, and tick freely until killed). Lines from it: one JSON report per tick, and the acks."""

    def __init__(self, storm: KillStorm, *, set_desired: int | None) -> None:
        self.storm = storm
        self.set_desired = set_desired
        self.start = storm.now + timedelta(seconds=TICK_SECONDS)  # a restart takes a while
        self.pid = 0
        self._buffer = b""

    def __enter__(self) -> _Child:
        self.storm.quiesce()
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(self._to_child)
            os.close(self._from_child)
            code = 0
            try:
                _child_main(self.storm, self.start, self.set_desired, to_child_r, from_child_w)
            except BaseException:  # the parent raises it with this traceback
                os.write(from_child_w, (json.dumps({"fatal": traceback.format_exc()}) + "\n").encode())
                code = 3
            os._exit(code)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid = pid
        return self

    def send(self, line: str) -> None:
        os.write(self._to_child, f"{line}\n".encode())

    def wait_ack(self, timeout: float = 30.0) -> None:
        line = self._line(timeout)
        if line is not None and "fatal" in json.loads(line):
            raise RuntimeError(f"the daemon process {self.pid} failed:\n{json.loads(line)['fatal']}")
        if line is None or "ack" not in json.loads(line):
            raise RuntimeError(f"the daemon process {self.pid} did not acknowledge a command: {line!r}")

    def tick_report(self, timeout: float = 15.0) -> dict[str, Any]:
        line = self._line(timeout)
        if line is None:
            stacks = ""
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGUSR1)
                time.sleep(1.0)
                stacks = Path(_stack_file(self.pid)).read_text()
            raise _Hung(f"the daemon process {self.pid} died or hung before reporting a tick:\n{stacks}")
        report: dict[str, Any] = json.loads(line)
        if "fatal" in report:
            raise RuntimeError(f"the daemon process {self.pid} failed:\n{report['fatal']}")
        self.storm.now = max(self.storm.now, datetime.fromisoformat(report["now"]))
        return report

    def _line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                return None
            chunk = os.read(self._from_child, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.unlink(_stack_file(self.pid))
        os.close(self._to_child)
        while (line := self._line(0.0)) is not None:  # the ticks it finished while running free
            report = json.loads(line)
            if "now" in report:
                self.storm.now = max(self.storm.now, datetime.fromisoformat(report["now"]))
            problem = report.get("fatal") or report.get("error")
            if problem:
                self.storm.report.tick_errors.append(f"kill {self.storm.report.kills}, running free: {problem}")
        os.close(self._from_child)


def _stack_file(pid: int) -> str:
    return f"/tmp/kill-storm-{pid}.stacks"


def _child_main(storm: KillStorm, start: datetime, set_desired: int | None, commands: int, reports: int) -> None:
    # Fresh stdout/stderr objects: one inherited from the parent may have had its lock held by one of the parent's
    # threads at the moment of the fork (a lock no thread of this process will ever release).
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as this process
    # Should it ever hang, the parent asks for every thread's stack with SIGUSR1 (see _Child.tick_report).
    faulthandler.register(signal.SIGUSR1, file=open(_stack_file(os.getpid()), "w"), all_threads=True)  # noqa: SIM115
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.CRITICAL + 1)
    clock = storm.clock  # the child's own copy, shared with its copy of the providers
    clock.advance((start - clock.now()).total_seconds())
    t0 = time.perf_counter()
    store = Store.open(storm.url)
    daemon = Daemon(storm.loaded, store=store, clock=clock, provider_factory=lambda _p: storm.providers)
    if set_desired is not None:
        store.set_control(POOL, PoolControl(override_capacity=set_desired))
    incoming = os.fdopen(commands, "r")
    free = False
    t_open = time.perf_counter() - t0
    while True:
        error = ""
        t1 = time.perf_counter()
        try:
            plan = daemon.tick()
        except Exception as exc:  # reported, and the loop goes on, as the scheduler's run_tick does
            error = f"{type(exc).__name__}: {exc}"
        report: dict[str, Any] = {
            "now": clock.now().isoformat(),
            "error": error,
            "t_open": t_open,  # opening the store and building the daemon
            "t_tick": time.perf_counter() - t1,
        }
        if not free:
            report["records"] = [
                {"token": r.token, "cloud_id": r.cloud_id, "state": r.state.value, "units": r.capacity_units,
                 "offering": str(r.offering)}
                for r in store.instances(live_only=True)
            ]  # fmt: skip
            if not error:
                decision = plan.decisions[POOL]
                report["why"] = "; ".join([*decision.reasons, *decision.chosen])
        clock.advance(TICK_SECONDS)
        os.write(reports, (json.dumps(report) + "\n").encode())
        if free:
            continue
        command = incoming.readline().split()
        if not command:
            return  # the parent went away
        if command[0] == "g":
            store.set_control(POOL, PoolControl(override_capacity=float(command[1])))
            os.write(reports, b'{"ack": true}\n')
            free = True
