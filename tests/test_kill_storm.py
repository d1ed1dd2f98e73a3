"""Crash safety under fire: the daemon is killed with a real SIGKILL at random (seeded) moments while it scales up
and down on the three clouds' local test servers with injected stockouts (see tests/kill_storm_rig.py). After
each restart: every instance carrying our tags is known to the store, no launch intent made two instances
(counted at the clouds), and the fleet is at the desired capacity within two ticks. benchmarks/kill_storm.py runs
the long version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM, fake_arm
from tests.gcp_fake import FakeGCE, fake_gce
from tests.kill_storm_rig import KillStorm

__all__ = ["fake_arm", "fake_gce"]  # fixtures used below

KILLS = int(os.environ.get("KILL_STORM_KILLS", "50"))


@pytest.mark.timeout(110)
def test_random_sigkills_while_scaling_on_three_clouds(
    fake_ec2: FakeEC2, fake_gce: FakeGCE, fake_arm: FakeARM, tmp_path: Path
) -> None:
    storm = KillStorm(fake_ec2, fake_gce, fake_arm, tmp_path, seed=7)
    report = storm.run(kills=KILLS, max_delay=0.3)
    print(report.as_json())
    assert report.kills == KILLS
    assert not report.tick_errors, report.tick_errors[:3]
    # a child that hung (a lock inherited held through fork: the rig's hazard) is killed like the others; it must
    # stay rare, or the restarts checked would be fewer than the kills say
    assert len(report.hung_restarts) <= 2, report.hung_restarts[:1]
    assert not report.leaks, report.leaks[:3]
    assert not report.double_launches, report.double_launches
    assert not report.not_converged, report.not_converged[:3]
    assert 1 <= report.max_ticks_to_converge <= 2
    # Azure's failed leftovers (Failed VMs, their NICs and disks) appeared, and none was left once the sweep ran
    assert report.orphans_seen, "the storm produced no leftovers to clean: it tests less than it says"
    assert not report.leftovers, report.leftovers
    # the storm did scale on every cloud (stockouts moved it around), not on one offering alone
    assert all(report.instances_made.get(cloud, 0) > 0 for cloud in ("aws", "gcp", "azure")), report.instances_made
