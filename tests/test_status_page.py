"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright through
executable_path; nothing is downloaded), against a running daemon on the simulated cloud served by uvicorn.

Set GPU_AUTOSCALER_SCREENSHOT=docs/img/status-page.png to also refresh the screenshot committed in docs.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shutil
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from autoscaler.api.app import create_app
from tests.api_support import TOKEN, serve
from tests.daemon_harness import Harness

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

POLICY = """
daemon: {id: page, tick_seconds: 5}
clouds:
  simulated:
    boot_seconds: 10
    capacity:
      - {instance_type: sim.h100x8, market: spot, available: 0}
pools:
  - name: llm
    min_capacity: 0
    max_capacity: 64
    metrics:
      - {name: queue, type: http, kind: queue, url: "URL", field: depth, timeout_seconds: 2}
    targets: {queue_per_unit: 5}
    candidates:
      - {cloud: simulated, instance_type: sim.h100x8, market: spot, throughput: 16}
      - {cloud: simulated, instance_type: sim.a100x8, market: spot, throughput: 8}
  - name: embed
    max_capacity: 8
    min_capacity: 1
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: on-demand, throughput: 1}
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium browser, or a skip (a failure under GPU_AUTOSCALER_REQUIRE_SERVICES=1)."""
    path = shutil.which("chromium")
    if path is None:
        _unavailable("chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed (the dev extra): {exc}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def demand() -> Iterator[tuple[dict[str, float], str]]:
    """A tiny HTTP stats endpoint the pool's metric source reads; the test sets its queue depth."""
    state = {"depth": 40.0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/stats"
    finally:
        server.shutdown()
        server.server_close()


def test_status_page_shows_the_running_daemon_and_follows_a_scale_up(
    chromium: Any, demand: tuple[dict[str, float], str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    state, url = demand
    h = Harness.start(POLICY.replace("URL", url), tmp_path)
    h.run(ticks=12)  # 40 queued / 5 per unit = 8 units: one A100 node (H100 spot is refused and blocked), booted
    assert sum(r.capacity_units for r in h.ready_records() if r.pool == "llm") == 8

    problems: list[str] = []
    with serve(create_app(h.daemon, TOKEN)) as base:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
        page.goto(f"{base}/?refresh=0.5&hours=0.05", wait_until="load")  # 3 min of history, 0.5 s buckets

        llm = page.locator('#pools tr[data-pool="llm"]')
        expect(llm.locator('[data-field="ready"]')).to_have_text("8", timeout=10_000)
        expect(llm.locator('[data-field="desired"]')).to_have_text("8")
        expect(llm.locator('[data-field="endpoints"]')).to_have_text("1")
        expect(page.locator('#pools tr[data-pool="embed"] [data-field="ready"]')).to_have_text("1")
        # the chart drew the pool's history as SVG paths, from the decisions of the ticks so far
        chart = page.locator('#charts .chart[data-pool="llm"]')
        expect(chart.locator("svg path")).to_have_count(4)
        assert int(chart.get_attribute("data-points") or 0) == 12, "one point per tick"
        # instances by cloud/market/state, the blocked offering and why, the decisions and their reasons
        spot = page.locator('#instances tr[data-cloud="simulated"][data-market="spot"]')
        expect(spot.locator('[data-field="ready"]')).to_have_text("1")
        expect(page.locator("#blocked tbody")).to_contain_text("sim.h100x8")
        expect(page.locator("#blocked tbody")).to_contain_text("capacity")
        expect(page.locator("#decisions tbody")).to_contain_text("llm")
        expect(page.locator("#endpoints tbody")).to_contain_text("127.0.0.")
        page.screenshot(path=str(tmp_path / "status-page-before.png"), full_page=True)

        # Demand rises fivefold: the daemon scales up (a burst: at once) and the new nodes boot.
        state["depth"] = 200.0
        h.run(ticks=1)
        expect(llm.locator('[data-field="desired"]')).to_have_text("40", timeout=10_000)
        h.run(ticks=8)
        expect(llm.locator('[data-field="ready"]')).to_have_text("40", timeout=10_000)
        expect(chart).to_have_attribute("data-points", "21", timeout=10_000)
        expect(llm.locator('[data-field="endpoints"]')).to_have_text("5")
        expect(spot.locator('[data-field="ready"]')).to_have_text("5")
        refreshed = int(page.locator("#refreshed").get_attribute("data-count") or 0)
        assert refreshed >= 2, "the page refreshed itself"

        shot = tmp_path / "status-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if target := os.environ.get("GPU_AUTOSCALER_SCREENSHOT"):
            (REPO / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, REPO / target)
        page.close()
    assert problems == []


def test_status_page_says_when_a_read_fails_keeps_the_last_view_and_recovers(
    chromium: Any, tmp_path: Path
) -> None:
    """A page left open while the API answers errors (a restart, an overloaded database) says so in the page and
    keeps showing the last good view; it clears the banner by itself once reads work again."""
    from playwright.sync_api import expect

    h = Harness.start(POLICY.replace("URL", "http://127.0.0.1:9/none"), tmp_path)
    h.run(ticks=1)
    app = create_app(h.daemon, TOKEN)
    with serve(app) as base:
        page = chromium.new_page()
        page.goto(f"{base}/?refresh=0.5")
        expect(page.locator('#pools tr[data-pool="embed"]')).to_be_visible(timeout=10_000)
        expect(page.locator('#pools tr[data-pool="llm"] [data-field="state"]')).to_contain_text("holding")
        # One of the endpoints the page reads fails (the browser answers for the API: Playwright's routing).
        page.route("**/v1/capacity*", lambda route: route.fulfill(status=503, body="{}"))
        expect(page.locator("#problem")).to_contain_text("HTTP 503", timeout=10_000)
        expect(page.locator('#pools tr[data-pool="embed"]')).to_be_visible()
        page.unroute("**/v1/capacity*")
        expect(page.locator("#problem")).to_be_hidden(timeout=10_000)
        page.close()


# ------------------------------------------------------------------ without a browser


def test_the_page_and_its_assets_are_served_and_ship_in_the_package(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.api_support import make_control

    control = make_control(tmp_path)
    client = TestClient(create_app(control, TOKEN))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for src in ("/static/status.js", "/static/status.css"):
        assert f'"{src}"' in page.text
        assert client.get(src).status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    # every file of the page is package data (the wheel and the container image carry it)
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "autoscaler"
    ]
    static = REPO / "autoscaler" / "api" / "static"
    shipped = [p.relative_to(REPO / "autoscaler").as_posix() for p in static.iterdir()]
    assert sorted(Path(f).name for f in shipped) == ["index.html", "status.css", "status.js"]
    assert [f for f in shipped if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)] == []
    control.store.close()


def test_history_is_thinned_to_the_last_decision_of_each_bucket_oldest_first(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.api_support import DECISION, POOL, make_control

    control = make_control(tmp_path)
    now = control.clock.now()
    for seconds_ago in (4000, 130, 65, 61, 30, 5):  # 4000 s ago is outside one hour
        decision = replace(DECISION, desired=float(seconds_ago))
        control.store.record_decisions(now - timedelta(seconds=seconds_ago), {POOL: decision})
    client = TestClient(create_app(control, TOKEN))
    body = client.get("/v1/history", params={"hours": 1, "max_points": 60}).json()  # one-minute buckets
    assert body["now"].startswith(now.strftime("%Y-%m-%dT%H:%M:%S"))
    (pool,) = body["pools"]
    assert pool["pool"] == POOL
    # buckets: [-180, -120) holds 130; [-120, -60) holds 65 and 61 (61 is later); [-60, 0) holds 30 and 5
    assert [p["desired"] for p in pool["points"]] == [130.0, 61.0, 5.0]
    assert [p["spend_usd_per_hour"] for p in pool["points"]] == [DECISION.spend_usd_per_hour] * 3
    every = client.get("/v1/history", params={"hours": 2, "max_points": 2000}).json()["pools"][0]["points"]
    assert [p["desired"] for p in every] == [4000.0, 130.0, 65.0, 61.0, 30.0, 5.0]
    assert client.get("/v1/history", params={"pool": "nope"}).json()["pools"] == []
    assert client.get("/v1/history", params={"hours": 0}).status_code == 422
    control.store.close()
