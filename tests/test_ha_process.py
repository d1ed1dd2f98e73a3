"""High availability with real daemon processes on this machine's PostgreSQL and the fake EC2 server: the
leader killed (SIGKILL), paused at the worst moment (SIGSTOP just before it writes a launch intent) and resumed,
and cut off from the database (a loopback proxy cut); takeover times; launches counted at the cloud.
Also: SQLite is single-node, a second daemon on the same file is refused. Talks only to 127.0.0.1."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from autoscaler.cli import main
from autoscaler.leader import SingleNodeLock
from autoscaler.store import Store
from tests.aws_fake import FakeEC2
from tests.ha_cluster import TOKEN, Cluster, cluster
from tests.ha_daemon import MARKER

LEASE, RENEW = 2.0, 0.5
# A follower sees the lease expire within one renew interval of its end; the rest is process and HTTP slack.
TAKEOVER_LIMIT = LEASE + RENEW + 2.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ha(fake_ec2: FakeEC2, postgres_url: str, tmp_path: Path) -> Iterator[tuple[Cluster, Store]]:
    with (
        Store.open(postgres_url) as store,
        cluster(fake_ec2, postgres_url, tmp_path, lease=LEASE, renew=RENEW) as c,
    ):
        yield c, store


def assert_no_double_launch(c: Cluster, expected: int) -> None:
    """Every instance the cloud made came from a distinct launch intent, and no more were made than needed."""
    made = c.instances()
    tokens = set(c.launch_tokens())
    assert len(made) == expected, [(i["InstanceId"], i["State"]["Name"]) for i in made]
    assert len(tokens) == expected, c.launch_tokens()


def test_three_daemons_survive_a_kill_a_pause_mid_launch_and_a_cut_from_the_database(
    ha: tuple[Cluster, Store],
) -> None:
    """One cluster, three forced failovers (one process start-up is most of a test's time):
    1. the leader is killed (SIGKILL): a follower takes over once the lease expires, with a new fencing token;
    2. the new leader stops (SIGSTOP) just before writing a launch intent it decided; the third daemon takes over
       and launches instead; woken (SIGCONT), the old leader's intent write is refused by the store: its launch
       never reaches the cloud;
    3. the third leader is cut off from the database (its proxy cut): it stops believing it leads, the woken one
       takes over, and once the link is back the cut one follows.
    Launches are counted at the cloud: one instance per intent, never more than the desired capacity."""
    c, store = ha
    for name in ("a", "b", "c"):
        c.start(name, proxied=True)
    first = c.one_leader(timeout=40)
    c.wait("the initial fleet of 2", lambda: c.running() == 2)
    followers = [n for n in c.nodes if n is not first]
    for n in followers:
        assert n.health()["leader"] == first.health()["leader"]
        answer = httpx.post(f"{n.url}/v1/pools/llm/pause", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert answer.status_code == 409, answer.text
        assert "follower" in answer.json()["error"] and first.health()["leader"] in answer.json()["error"]
        assert n.metric("gpu_autoscaler_leader") == 0
    assert first.metric("gpu_autoscaler_leader") == 1
    takeovers: dict[str, float] = {}

    # 1. SIGKILL
    token = first.health()["fencing_token"]
    first.proc.send_signal(signal.SIGKILL)
    takeovers["kill"] = c.wait("a new leader", lambda: [n for n in c.leaders() if n is not first], TAKEOVER_LIMIT)
    second = c.one_leader()
    assert second.health()["fencing_token"] > token
    c.set_capacity(store, 3)
    c.wait("the new leader to launch the third instance", lambda: c.running() == 3)

    # 2. SIGSTOP at the worst moment: a launch decided, its intent not yet written.
    (second.state / MARKER).write_text("")
    c.set_capacity(store, 4)
    c.wait("the leader to stop itself before its launch intent", lambda: second.stopped)
    stale_token = (second.state / "stopped-before-launch").read_text()
    takeovers["pause"] = c.wait("the third daemon to take over", lambda: len(c.leaders()) == 1, TAKEOVER_LIMIT + 1)
    third = c.one_leader()
    assert third not in (first, second)
    c.wait("the fourth instance, launched by the third daemon", lambda: c.running() == 4)
    calls_before = len(c.launch_tokens())
    second.proc.send_signal(signal.SIGCONT)
    c.wait("the woken leader to be fenced off", lambda: "fenced off" in second.text())
    c.wait("the woken daemon to follow", lambda: second.role == "follower")
    assert second.metric("gpu_autoscaler_stale_leader_rejections_total") == 1
    assert stale_token not in c.launch_tokens()  # its decided launch never reached the cloud
    assert store.get_instance(stale_token) is None  # nor the store
    ticks = third.metric("gpu_autoscaler_tick_duration_seconds_count")
    c.wait(
        "two more leader ticks", lambda: third.metric("gpu_autoscaler_tick_duration_seconds_count") >= ticks + 2
    )
    assert len(c.launch_tokens()) == calls_before
    assert_no_double_launch(c, 4)

    # 3. The leader cut off from the database.
    assert third.proxy is not None
    third.proxy.cut()
    takeovers["cut"] = c.wait("the woken daemon to take over", lambda: second.role == "leader", TAKEOVER_LIMIT)
    c.wait("the cut one to stop believing it leads", lambda: third.role == "follower", LEASE + 1)
    c.set_capacity(store, 5)
    c.wait("the fifth instance", lambda: c.running() == 5)
    third.proxy.restore()
    c.wait("the cut one back, following", lambda: third.health().get("leader") == second.health()["leader"])
    assert second.role == "leader" and third.role == "follower"
    assert_no_double_launch(c, 5)
    assert "Traceback" not in second.text()
    print(f"takeover seconds (lease {LEASE:g} s, renew {RENEW:g} s):", takeovers)
    assert all(t <= TAKEOVER_LIMIT for t in takeovers.values()), takeovers


def test_a_second_daemon_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    """In process (`run` stops before opening the database, so a CliRunner sees the whole path cheaply)."""
    state = tmp_path / "state"
    held = SingleNodeLock(state / "autoscaler.db")  # what the first daemon holds for its lifetime
    try:
        result = CliRunner().invoke(main, ["run", "--state-dir", str(state), "--admin", "127.0.0.1:0"])
    finally:
        held.release()
    assert result.exit_code == 2, result.output
    assert f"another gpu-autoscaler (pid {os.getpid()}) is already running on {state / 'autoscaler.db'}" in (
        result.stderr
    )
    assert "SQLite is single-node" in result.stderr and "PostgreSQL" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    again = SingleNodeLock(state / "autoscaler.db")  # released with its holder: the next daemon may start
    again.release()


def test_two_daemons_a_clean_stop_hands_the_lease_over_at_once(
    fake_ec2: FakeEC2, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM: the leader finishes its tick, releases the lease and exits 0; the follower takes over at its next
    try, long before the 10 s lease would have expired. The stopped one, started again, follows."""
    with Store.open(postgres_url) as store, cluster(fake_ec2, postgres_url, tmp_path, lease=10, renew=0.5) as c:
        a = c.start("a")
        c.wait("a to lead", lambda: a.role == "leader", 40)
        b = c.start("b")
        c.wait("the fleet of 2 and b following", lambda: c.running() == 2 and b.role == "follower", 40)
        a.proc.send_signal(signal.SIGTERM)
        took = c.wait("b to take over", lambda: b.role == "leader", 5)
        assert a.proc.wait(timeout=20) == 0
        assert "leader lease released" in a.text() and "Traceback" not in a.text()
        c.set_capacity(store, 3)
        c.wait("b to launch the third", lambda: c.running() == 3)
        again = c.start("a")
        c.wait("the restarted one to follow", lambda: again.role == "follower", 40)
        assert_no_double_launch(c, 3)
        print(f"takeover after SIGTERM: {took:.2f} s (lease 10 s)")
        assert took < 3
