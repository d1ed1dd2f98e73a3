"""Write a run's results: summary.json, timeline.csv and plot.png (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from autoscaler.sim.runner import COLUMNS, MARKETS, PolicyRun
from autoscaler.sim.scenario import LoadedScenario

TIMELINE_HEADER = ("policy", "time", "t_seconds", *COLUMNS, *(f"instances_{m}" for m in MARKETS))


def write_outputs(
    loaded: LoadedScenario, runs: list[PolicyRun], out: Path, optimum: dict[str, Any] | None = None
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "timeline": out / "timeline.csv", "plot": out / "plot.png"}
    sc = loaded.scenario
    summary = {
        "scenario": loaded.source,
        "policy_file": loaded.policy.source,
        "policy_sha256": loaded.policy.sha256,
        "start": sc.start.isoformat(),
        "duration_seconds": sc.duration_seconds,
        "seed": sc.seed,
        "policies": {run.name: run.summary for run in runs},
    }
    if optimum is not None:
        summary["optimum"] = optimum
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with paths["timeline"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TIMELINE_HEADER)
        for run in runs:
            n = len(run.columns["arrivals"])
            cols = [run.columns[c].tolist() for c in COLUMNS] + [run.instances[m].tolist() for m in MARKETS]
            for i in range(n):
                t = i * run.tick_seconds
                stamp = (sc.start + timedelta(seconds=t)).isoformat()
                writer.writerow([run.name, stamp, f"{t:g}", *(_fmt(col[i]) for col in cols)])
    plot(runs, paths["plot"])
    return paths


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def plot(runs: list[PolicyRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    twin = bottom.twinx()
    for k, run in enumerate(runs):
        c = run.columns
        hours = np.arange(len(c["arrivals"])) * run.tick_seconds / 3600.0
        if k == 0:
            top.plot(hours, c["demand_units"], color="0.6", lw=0.8, label="demand (units)")
        top.step(hours, c["ready_units"], where="post", lw=1.2, label=f"{run.name}: ready units")
        top.step(hours, c["desired_units"], where="post", lw=0.8, ls="--", label=f"{run.name}: desired")
        bottom.step(hours, c["spend_usd_per_hour"], where="post", lw=1.0, label=f"{run.name}: $/h")
        cost = np.cumsum(c["spend_usd_per_hour"] * run.tick_seconds / 3600.0)
        twin.plot(hours, cost, lw=1.0, ls=":", label=f"{run.name}: cumulative $")
    top.set_ylabel("capacity units")
    top.set_title("demand vs capacity")
    top.legend(loc="upper right", fontsize=8)
    twin.set_ylabel("cumulative cost ($)")
    twin.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("spend rate ($/h)")
    bottom.set_xlabel("hours")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
