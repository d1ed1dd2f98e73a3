"""Kill the actuation at every step, restart, and check that the store and the cloud agree: nothing launched
twice, nothing left unknown, the pool at its size."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from autoscaler.lifecycle import InstanceState
from autoscaler.model import TAG_INTENT, CloudInstance, Launch
from tests.daemon_harness import Harness

POLICY = """
daemon: {id: crash-test, tick_seconds: 5}
clouds:
  simulated:
    boot_seconds: 10
pools:
  - name: web
    min_capacity: 3
    max_capacity: 10
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
"""


class Crash(BaseException):
    """A process death: not an Exception, so no handler in the daemon swallows it."""


def crash_once_at(point: str) -> object:
    fired = {"done": False}

    def hook(at: str, launch: Launch | CloudInstance) -> None:
        if at == point and not fired["done"]:
            fired["done"] = True
            raise Crash(point)

    return hook


def assert_store_and_cloud_agree(h: Harness, expected: int) -> None:
    listed = [i for i in h.cloud.list_instances() if i.state.value != "terminated"]
    records = h.live_records()
    by_cloud_id = {r.cloud_id: r for r in records}
    # nothing left unknown: every instance of ours in the cloud has a live record, and vice versa
    assert {i.cloud_id for i in listed} == set(by_cloud_id), (listed, records)
    # nothing launched twice: one instance per intent token, and no more instances than the pool needs
    tokens = [i.tags[TAG_INTENT] for i in listed]
    assert len(tokens) == len(set(tokens))
    assert len(listed) == expected
    assert all(r.state == InstanceState.READY for r in records)
    assert h.cloud.calls["launch"] >= expected
    assert len(h.cloud.all_instances()) == expected, "the cloud made more instances than were ever needed"


@pytest.mark.parametrize("point", ["before_intent", "after_intent", "after_requested", "after_answer"])
def test_crash_in_actuation_then_restart(tmp_path: Path, point: str) -> None:
    h = Harness.start(POLICY, tmp_path, crash_hook=crash_once_at(point))
    with pytest.raises(Crash):
        h.daemon.tick()
    h.restart()
    h.run(ticks=6)
    assert_store_and_cloud_agree(h, expected=3)


def test_crash_after_the_cloud_accepted_before_it_answered(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)

    def accepted(inst: CloudInstance) -> None:
        h.cloud.after_accept = None  # the process dies once
        raise Crash(f"after the cloud accepted {inst.cloud_id}")

    h.cloud.after_accept = accepted
    with pytest.raises(Crash):
        h.daemon.tick()
    made = h.cloud.all_instances()
    assert len(made) >= 1, "the cloud made the instance before the crash"
    h.restart()
    h.run(ticks=6)
    assert_store_and_cloud_agree(h, expected=3)
    # the instance made before the crash is one of the three: its record was found by its token
    assert made[0].cloud_id in {r.cloud_id for r in h.live_records()}


def test_every_point_in_one_run(tmp_path: Path) -> None:
    """Crash at each point in turn in the same deployment, restarting after each."""
    h = Harness.start(POLICY, tmp_path)
    for point in ["before_intent", "after_intent", "after_requested", "after_answer"]:
        h.restart(crash_hook=crash_once_at(point))
        # make room for new launches: terminate one ready instance by hand, the pool must refill it
        ready = h.ready_records()
        if ready:
            h.cloud.preempt(ready[0].cloud_id or "")
            h.clock.advance(1)
        with contextlib.suppress(Crash):
            h.run(ticks=3)
    h.restart()
    h.run(ticks=8)
    listed = [i for i in h.cloud.list_instances() if i.state.value != "terminated"]
    assert {i.cloud_id for i in listed} == {r.cloud_id for r in h.live_records()}
    assert len(listed) == 3


def test_lost_database_adopts_the_fleet(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)
    h.run(ticks=4)
    before = h.live_cloud_ids()
    assert len(before) == 3
    h.restart(fresh_database=True)
    h.run(ticks=3)
    # the same three instances, now on the books again; none launched, none terminated
    assert h.live_cloud_ids() == before
    assert {r.cloud_id for r in h.live_records()} == before
    assert len(h.cloud.all_instances()) == 3


def test_untracked_instance_of_unknown_pool_is_terminated(tmp_path: Path) -> None:
    h = Harness.start(POLICY, tmp_path)
    h.run(ticks=3)
    other = POLICY.replace("name: web", "name: api")
    from autoscaler.policyfile import parse_policy

    h.loaded = parse_policy(other, "p.yaml")
    h.restart(fresh_database=True)
    h.run(ticks=4, seconds=5)
    records = h.live_records()
    assert {r.pool for r in records} == {"api"}
    assert len(h.live_cloud_ids()) == 3
    assert {r.cloud_id for r in records} == h.live_cloud_ids()
