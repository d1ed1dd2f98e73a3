"""status/explain against a real uvicorn serving the admin API on a free local port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from autoscaler.api.app import create_app
from autoscaler.cli import main
from autoscaler.cli_client import explain, status_table
from autoscaler.model import PoolControl
from tests.api_support import POOL, T0, TOKEN, TestControl, make_control, seed, serve


@pytest.fixture
def control(tmp_path: Path) -> Iterator[TestControl]:
    c = make_control(tmp_path)
    yield c
    c.store.close()


@pytest.fixture
def base_url(control: TestControl) -> Iterator[str]:
    with serve(create_app(control, TOKEN)) as url:
        yield url


def console() -> Console:
    return Console(record=True, width=200, color_system=None)


def test_status_table_shows_pools_and_blocks(base_url: str, control: TestControl) -> None:
    seed(control)
    control.store.set_control(
        POOL, PoolControl(paused=True, override_capacity=16, override_until=T0 + timedelta(minutes=30))
    )
    out = console()
    assert status_table(base_url, out) == 0
    text = out.export_text()
    row = next(line for line in text.splitlines() if POOL in line)
    for word in ("24", "8", "26.22", "queue request-queue=120", "paused, override 16 (30m left)", "5s ago"):
        assert word in row, word
    assert "Blocked offerings" in text
    blocked = next(line for line in text.splitlines() if "sim.h100x8" in line)
    for word in (
        "simulated/sim-east-a/sim.h100x8/spot",
        "zone",
        "capacity",
        "2m",
        "InsufficientInstanceCapacity",
    ):
        assert word in blocked, word


def test_status_table_before_the_first_tick(base_url: str) -> None:
    out = console()
    assert status_table(base_url, out) == 0
    text = out.export_text()
    assert POOL in text and "never" in text
    assert "No offerings are blocked." in text


def test_explain_says_why_in_words(base_url: str, control: TestControl) -> None:
    seed(control)
    out = console()
    assert explain(base_url, POOL, out) == 0
    text = out.export_text()
    for words in (
        f"Pool {POOL}: last decision 5s ago",
        "It wants 24 capacity units: 8 ready, 8 booting, 0 draining, costing $26.22/h.",
        "Signal that drove it: queue request-queue=120",
        "  - queue 120 / 5 per unit needs 24 units",
        "  - burst: scaling up at once [panic window 60s]",  # printed as written, not eaten as markup
        "Chosen:\n  - simulated/sim-east-b/sim.a100x8/spot x1 (rank 2)",
        "Skipped:\n  - simulated/sim-east-a/sim.h100x8/spot: blocked: capacity until 12:03:00",
        "Operator controls: none.",
        "capacity failure on simulated/sim-east-a/sim.h100x8/spot (zone scope): InsufficientInstanceCapacity",
    ):
        assert words in text, words


def test_explain_before_any_decision_and_for_an_unknown_pool(base_url: str) -> None:
    out = console()
    assert explain(base_url, POOL, out) == 0
    assert "no decision recorded yet" in out.export_text()
    out = console()
    assert explain(base_url, "no-such-pool", out) == 1
    assert "unknown pool 'no-such-pool'" in out.export_text()
    out = console()
    assert explain(base_url, "demo\x00llm", out) == 1  # over real HTTP too: refused by the API, not a 500
    assert "must not contain a control character (found U+0000)" in out.export_text()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A local port that refuses connections: bound but not listening, and held so that nothing else takes it
    while the test runs (a port closed again right after bind-to-0 could be reused by a parallel server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["status", "explain"])
def test_unreachable_api_is_one_clear_line_and_exit_2(command: str, refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}"
    out = console()
    code = status_table(url, out) if command == "status" else explain(url, POOL, out)
    assert code == 2
    lines = out.export_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot reach the gpu-autoscaler admin API at {url}")


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",  # unclosed IPv6 bracket
        ":::",
        "http://127.0.0.1:port",
        "http://999.1.1.1",
        "http://admin\x00.local",
        "http://" + "a" * 70 + ".example",  # a DNS label longer than 63 characters
        "ftp://127.0.0.1",
        "",
    ],
)
@pytest.mark.parametrize("command", ["status", "explain"])
def test_a_bad_admin_url_is_one_clear_line_and_exit_2(command: str, url: str) -> None:
    out = console()
    code = status_table(url, out) if command == "status" else explain(url, POOL, out)
    assert code == 2
    lines = out.export_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot reach the gpu-autoscaler admin API"), lines
    assert "Traceback" not in lines[0]


def test_the_cli_command_with_a_bad_url_exits_2_without_a_traceback() -> None:
    result = CliRunner().invoke(main, ["status", "--admin", "http://[::1"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "is not a valid URL" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://x/y", "daemon.database_url: unsupported database 'mysql'"),
        ("not a url", "daemon.database_url: Could not parse SQLAlchemy URL"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/x", "cannot open the state database: connection failed"),
    ],
)
def test_run_says_in_one_line_what_is_wrong_with_the_database(tmp_path: Path, url: str, expected: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f'daemon: {{database_url: "{url}"}}\n')
    result = CliRunner().invoke(
        main, ["run", "--policy", str(policy), "--state-dir", str(tmp_path), "--admin", "127.0.0.1:0"]
    )
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
