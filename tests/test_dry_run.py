"""`run --dry-run` (shadow mode): the daemon plans, explains and records decisions, but calls no cloud to launch or
terminate and writes no instance record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autoscaler.api.app import create_app
from autoscaler.policyfile import parse_policy
from tests.daemon_harness import Harness
from tests.test_daemon import SYNTHETIC


def test_dry_run_launches_nothing_and_records_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness.start(SYNTHETIC, tmp_path, dry_run=True)
    with caplog.at_level(logging.INFO, logger="autoscaler"):
        h.run(ticks=5)
    assert h.cloud.all_instances() == []
    assert h.cloud.calls["launch"] == 0
    assert h.store.instances(live_only=False) == []
    rows = h.store.decisions(pool="llm", limit=10)
    assert len(rows) == 5
    for row in rows:
        assert row.decision.desired == 16  # 80 / 5: the plan is the real one
        # one h100x8 (16 units): the stockout that would make a real run fall back is never learnt without a call
        assert "dry run: 1 launch(es) not sent" in row.decision.reasons
    assert "dry run: would launch" in caplog.text
    policy = TestClient(create_app(h.daemon, None)).get("/v1/policy").json()
    assert policy["dry_run"] is True


def test_dry_run_leaves_an_existing_fleet_alone(tmp_path: Path) -> None:
    h = Harness.start(SYNTHETIC, tmp_path)
    h.run(ticks=6)
    fleet = h.live_cloud_ids()
    assert len(fleet) == 2
    records = h.store.instances(live_only=False)
    assert TestClient(create_app(h.daemon, None)).get("/v1/policy").json()["dry_run"] is False

    h.loaded = parse_policy(SYNTHETIC.replace("base: 80", "base: 0"), str(tmp_path / "policy.yaml"))
    h.restart(dry_run=True)
    h.run(ticks=40)  # well past the scale-down window and the drain time
    assert h.daemon.last_plan is not None
    assert h.daemon.last_plan.decisions["llm"].desired == 0
    assert h.cloud.calls["terminate"] == 0
    assert h.live_cloud_ids() == fleet
    assert h.store.instances(live_only=False) == records
