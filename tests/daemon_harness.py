"""A daemon on a fake clock, a real SQLite store and the simulated cloud, for end-to-end tests of the tick."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoscaler.clock import FakeClock
from autoscaler.config import SimulatedCloud
from autoscaler.daemon import Daemon
from autoscaler.lifecycle import InstanceState
from autoscaler.model import CloudState, InstanceRecord, Launch
from autoscaler.policyfile import LoadedPolicy, parse_policy
from autoscaler.store import Store
from providers.simulated import SimulatedProvider


@dataclass
class Harness:
    """The cloud outlives the daemon: a restart builds a new Daemon and Store on the same database and cloud."""

    loaded: LoadedPolicy
    url: str
    clock: FakeClock
    cloud: SimulatedProvider
    store: Store
    daemon: Daemon

    @classmethod
    def start(cls, policy_text: str, tmp_path: Path, **daemon_kwargs: object) -> Harness:
        loaded = parse_policy(policy_text, str(tmp_path / "policy.yaml"))
        clock = FakeClock()
        sim = loaded.policy.clouds.simulated
        assert isinstance(sim, SimulatedCloud)
        cloud = SimulatedProvider(sim, clock, loaded.policy.daemon.id)
        url = f"sqlite:///{tmp_path / 'state.db'}"
        store = Store.open(url)
        daemon = _daemon(loaded, store, clock, cloud, **daemon_kwargs)
        return cls(loaded, url, clock, cloud, store, daemon)

    def restart(self, *, fresh_database: bool = False, **daemon_kwargs: object) -> None:
        self.store.close()
        if fresh_database:
            self.url = self.url.replace("state.db", "state-new.db")
        self.store = Store.open(self.url)
        self.daemon = _daemon(self.loaded, self.store, self.clock, self.cloud, **daemon_kwargs)

    def run(self, ticks: int, seconds: float = 5.0) -> None:
        for _ in range(ticks):
            self.daemon.tick()
            self.clock.advance(seconds)

    def live_cloud_ids(self) -> set[str]:
        return {i.cloud_id for i in self.cloud.list_instances() if i.state not in (CloudState.TERMINATED,)}

    def live_records(self) -> list[InstanceRecord]:
        return self.store.instances(live_only=True)

    def ready_records(self) -> list[InstanceRecord]:
        return [r for r in self.live_records() if r.state == InstanceState.READY]


def _daemon(
    loaded: LoadedPolicy,
    store: Store,
    clock: FakeClock,
    cloud: SimulatedProvider,
    crash_hook: Callable[[str, Launch], None] | None = None,
    policy_path: Path | None = None,
    dry_run: bool = False,
) -> Daemon:
    return Daemon(
        loaded,
        store=store,
        clock=clock,
        provider_factory=lambda _p: {"simulated": cloud},
        crash_hook=crash_hook,
        policy_path=policy_path,
        dry_run=dry_run,
    )
