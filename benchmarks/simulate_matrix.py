"""The what-if matrix: every policy and B3 on real demand traces x real spot traces x boot delays x prices.

    .venv/bin/python benchmarks/simulate_matrix.py --jobs 2            # the full matrix (96 cells)
    .venv/bin/python benchmarks/simulate_matrix.py --jobs 2 --quick    # a 4-cell subset, to check it works
    .venv/bin/python benchmarks/simulate_matrix.py --speed             # ticks/s: 30 days of 30 s ticks, one pool
    .venv/bin/python benchmarks/simulate_matrix.py --replot out.jsonl  # docs and plots again from a run's stdout

Reads the public traces in ../shared/data (see its README.md; never shipped, never used by the tests):

* demand (4): the Azure LLM inference traces 2023 (``conv`` and ``code``; about an hour each), Mooncake's
  conversation trace (an hour) -- these three looped over the horizon -- and the MAF trace of SpotHedge's
  artifact (33 days of per-minute counts), divided by 10,000 and capped at 90 requests/min as the SkyServe
  paper did, from its start;
* spot (4): the four spot sets of SpotHedge's simulations, AWS1 (3 zones, up to 4 V100 each), AWS2 (3 zones, up
  to 16), AWS3 (9 zones, 0/1; ``gap_seconds`` 195 as ../shared/data/README.md says) and GCP1 (6 zones, up to 4
  A100x8 VMs). The zones of a set are dealt round-robin onto three clouds (zone i -> aws, gcp, azure, aws, ...):
  the simulated cloud gets one region and zone per trace zone, named ``<cloud>-<trace zone>``, whose spot
  capacity follows that zone's trace; on-demand is unlimited, offered in the first zone of each cloud;
* boot-to-ready delays (3): 2, 5 and 10 minutes, fixed, both markets;
* spot / on-demand price ratios (2): 0.15 and 0.33.

One instance type per cell (a V100 node for the AWS sets, an 8 x A100 node for GCP1), one capacity unit per
instance, at the same on-demand price on the three clouds: the price extract's Azure list price in eastus
(Standard_NC6s_v3, $3.06/h, equal to AWS's p3.2xlarge list price in us-east-1; Standard_ND96asr_v4, $27.197/h);
spot = ratio x on-demand. Demand is sized per spot set: requests_per_unit_per_second = the trace's mean rate over
the horizon / (0.6 x the set's mean total spot instances over the horizon), so spot can carry most of the mean
load but not the bursts. 30 s ticks, service 5 s, latency SLO 60 s, timeout 300 s, HORIZON_HOURS per cell. The
pool: min 1, max 4 x the peak units, ``targets.queue_per_unit`` = one tick of a unit's work (B1 and B2 scale on
it), the daemon's defaults otherwise (plus its arrivals-rate source when the policy schema has one); a budget
cap of 2 x the peak units at on-demand prices (the baselines know no cap; B3 ignores it).

Per cell: every policy's cost, SLO attainment, availability, max spend, and cost / B3, / B1 (keda), / B2
(spothedge); B3's cost, its fluid lower bound and status. Prints one JSON object per cell (stdout) and a summary
JSON at the end; rewrites the tables in docs/benchmarks.md between the simulate-matrix markers and saves one plot
per demand trace (docs/img/simulate_matrix_<trace>.png) unless --no-docs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autoscaler.sim.traces import DemandFormat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("GPU_AUTOSCALER_SHARED_DATA", ROOT.parent / "shared" / "data"))
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
BEGIN, END = "<!-- simulate-matrix:begin -->", "<!-- simulate-matrix:end -->"

HORIZON_HOURS = 24.0
TICK_SECONDS = 30.0
SERVICE_SECONDS = 5.0
SLO_SECONDS = 60.0
TIMEOUT_SECONDS = 300.0
SPOT_SHARE = 0.6  # mean demand = this x the spot set's mean total spot instances
B3_TIME_LIMIT_SECONDS = 15.0
POLICIES = ("daemon", "static", "keda", "spothedge")
CLOUDS = ("aws", "gcp", "azure")

DEMANDS: dict[
    str, tuple[str, DemandFormat]
] = {  # name -> (file under DATA, format); maf is derived (see maf_counts)
    "azure-conv": ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", "azure_csv"),
    "azure-code": ("azure_llm_2023/AzureLLMInferenceTrace_code.csv", "azure_csv"),
    "mooncake": ("mooncake/conversation_trace.jsonl", "mooncake_jsonl"),
    "maf": ("spothedge_ae/workloads/maf1/cleaned.csv", "minute_counts_csv"),
}
SPOT_SETS: dict[str, tuple[str, float | None, str]] = {  # name -> (folder, gap override, instance type)
    "AWS1": ("spothedge_ae/data/AWS1", None, "gpu.v100x1"),
    "AWS2": ("spothedge_ae/data/AWS2", None, "gpu.v100x1"),
    "AWS3": ("spothedge_ae/data/AWS3", 195.0, "gpu.v100x1"),
    "GCP1": ("spothedge_ae/data/GCP1", None, "gpu.a100x8"),
}
# instance type -> (gpus, the price extract's row giving its on-demand $/h: cloud, instance type, region)
INSTANCE_TYPES: dict[str, tuple[int, tuple[str, str, str]]] = {
    "gpu.v100x1": (1, ("azure", "Standard_NC6s_v3", "eastus")),
    "gpu.a100x8": (8, ("azure", "Standard_ND96asr_v4", "eastus")),
}
BOOT_MINUTES = (2, 5, 10)
PRICE_RATIOS = (0.15, 0.33)
QUICK = [("azure-code", "AWS1", 5, 0.33), ("maf", "GCP1", 2, 0.15), ("mooncake", "AWS3", 10, 0.33),
         ("azure-conv", "AWS2", 5, 0.15)]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    demand: str
    spot: str
    boot_minutes: int
    ratio: float

    @property
    def name(self) -> str:
        return f"{self.demand}/{self.spot}/boot{self.boot_minutes}m/r{self.ratio}"


# --------------------------------------------------------------------------------------------- the inputs


def on_demand_price(instance_type: str) -> float:
    cloud, name, region = INSTANCE_TYPES[instance_type][1]
    with (DATA / "prices" / "gpu_prices_extract.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (row["cloud"], row["instance_type"], row["region"]) == (cloud, name, region):
                return float(row["ondemand_usd_per_hr"])
    raise SystemExit(f"no price for {cloud} {name} {region} in the price extract")


def maf_counts(work: Path) -> Path:
    """SpotHedge's MAF trace scaled as the SkyServe paper did: count / 10,000, capped at 90 requests/min."""
    out = work / "maf_scaled.csv"
    if not out.exists():
        src = DATA / DEMANDS["maf"][0]
        with src.open(newline="", encoding="utf-8") as f, out.open("w", encoding="utf-8") as g:
            g.write("minute,count\n")
            for row in itertools.islice(csv.reader(f), 1, None):
                g.write(f"{row[0]},{min(float(row[1]) / 10_000.0, 90.0):.6g}\n")
    return out


def spot_zones(spot: str) -> list[tuple[str, str, Path]]:
    """(cloud, zone name, trace file) per zone of the set: zones dealt round-robin onto the three clouds."""
    files = sorted((DATA / SPOT_SETS[spot][0]).glob("*.json"))
    out = []
    for i, path in enumerate(files):
        trace_zone = path.name.split("_")[0]  # e.g. us-east-1f
        out.append((CLOUDS[i % 3], f"{CLOUDS[i % 3]}-{trace_zone}", path))
    return out


def mean_spot_instances(spot: str, ticks: int) -> float:
    from autoscaler.sim.traces import capacity_per_tick, load_capacity_trace

    total = np.zeros(ticks)
    for _, _, path in spot_zones(spot):
        gap, data = load_capacity_trace(path)
        total += capacity_per_tick(
            gap, data, tick_seconds=TICK_SECONDS, ticks=ticks, gap_override=SPOT_SETS[spot][1]
        )
    return float(total.mean())


def mean_request_rate(demand_file: Path, fmt: DemandFormat, ticks: int) -> float:
    from autoscaler.sim.traces import arrivals_per_tick

    arrivals = arrivals_per_tick(demand_file, fmt, tick_seconds=TICK_SECONDS, ticks=ticks, loop=True)
    return float(arrivals.sum()) / (ticks * TICK_SECONDS)


def pool_settings(rate: float, peak_units: int) -> dict[str, Any]:
    """The pool's scaling settings: the daemon's defaults, sized to the cell; arrivals-rate scaling when the
    policy schema has it."""
    from autoscaler.config import Targets

    metrics: list[dict[str, Any]] = [
        {"name": "backlog", "type": "synthetic", "kind": "queue"},
        {"name": "latency", "type": "synthetic", "kind": "latency"},
    ]
    # queue_per_unit (what B1 and B2 scale on, and the daemon's queue source): one tick of a unit's work, so
    # that a fleet sized to it keeps the expected wait (backlog / service rate) at ~30 s, within the SLO
    targets: dict[str, Any] = {"queue_per_unit": rate * TICK_SECONDS, "latency_slo_seconds": SLO_SECONDS}
    if "requests_per_unit_per_second" in Targets.model_fields:
        metrics.append({"name": "arrivals", "type": "synthetic", "kind": "arrivals"})
        targets["requests_per_unit_per_second"] = rate
    return {
        "name": "llm",
        "min_capacity": 1,
        "max_capacity": max(4 * peak_units, 8),
        "metrics": metrics,
        "targets": targets,
        "boot_timeout_seconds": 1800,
        "drain_seconds": 30,
    }


def write_cell(cell: Cell, work: Path) -> Path:
    """The cell's policy and scenario files (in `work`); returns the scenario's path."""
    horizon = HORIZON_HOURS * 3600.0
    ticks = round(horizon / TICK_SECONDS)
    itype = SPOT_SETS[cell.spot][2]
    od = on_demand_price(itype)
    zones = spot_zones(cell.spot)
    fmt: DemandFormat
    if cell.demand == "maf":
        demand_file, fmt = maf_counts(work), "minute_counts_csv"
    else:
        demand_file, fmt = DATA / DEMANDS[cell.demand][0], DEMANDS[cell.demand][1]
    target_units = SPOT_SHARE * mean_spot_instances(cell.spot, ticks)
    rate = mean_request_rate(demand_file, fmt, ticks) / target_units
    from autoscaler.sim.traces import arrivals_per_tick

    peak = arrivals_per_tick(demand_file, fmt, tick_seconds=TICK_SECONDS, ticks=ticks, loop=True)
    peak_units = int(np.ceil(peak.max() / (rate * TICK_SECONDS)))
    regions: dict[str, list[str]] = {}
    for _, zone, _ in zones:  # e.g. gcp-us-east-1 -> [gcp-us-east-1a, ...]
        regions.setdefault(zone[:-1], []).append(zone)
    first_zone = {
        c: next(z for cc, z, _ in zones if cc == c) for c in CLOUDS if any(cc == c for cc, _, _ in zones)
    }
    policy = {
        "daemon": {
            "id": "matrix",
            "tick_seconds": TICK_SECONDS,
            # generous (the baselines know no cap, B3 ignores it), but checked: no tick may exceed it
            "limits": {"max_usd_per_hour": round(2.0 * peak_units * od, 2)},
        },
        "clouds": {
            "simulated": {
                "regions": regions,
                "boot_seconds": cell.boot_minutes * 60.0,
                "instance_types": {
                    itype: {
                        "gpus": INSTANCE_TYPES[itype][0],
                        "on_demand_usd_per_hour": od,
                        "spot_usd_per_hour": round(cell.ratio * od, 6),
                    }
                },
            }
        },
        "pools": [
            {
                **pool_settings(rate, peak_units),
                "candidates": [
                    {
                        "cloud": "simulated",
                        "instance_type": itype,
                        "market": "spot",
                        "throughput": 1,
                        "zones": [z for _, z, _ in zones],
                    },
                    {
                        "cloud": "simulated",
                        "instance_type": itype,
                        "market": "on-demand",
                        "throughput": 1,
                        "zones": sorted(first_zone.values()),
                    },
                ],
            }
        ],
    }
    scenario = {
        "policy": "policy.yaml",
        "tick_seconds": TICK_SECONDS,
        "duration_seconds": horizon,
        "seed": 1,
        "policies": list(POLICIES),
        "demand": {"file": str(demand_file), "format": fmt, "loop": True},
        "queue": {
            "requests_per_unit_per_second": rate,
            "service_seconds": SERVICE_SECONDS,
            "timeout_seconds": TIMEOUT_SECONDS,
            "latency_slo_seconds": SLO_SECONDS,
        },
        "capacity": [
            {
                "file": str(path),
                "instance_type": itype,
                "market": "spot",
                "zone": zone,
                **({"gap_seconds": SPOT_SETS[cell.spot][1]} if SPOT_SETS[cell.spot][1] else {}),
            }
            for _, zone, path in zones
        ],
        "boot": [{"fixed": cell.boot_minutes * 60.0}],
        "progress_every": 10**9,
    }
    d = work / cell.name.replace("/", "_")
    d.mkdir(parents=True, exist_ok=True)
    (d / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    (d / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return d / "scenario.yaml"


# ---------------------------------------------------------------------------------------------- one cell


def run_cell(cell: Cell, work: str) -> dict[str, Any]:
    from autoscaler.sim import load_scenario
    from autoscaler.sim.b3 import solve_b3
    from autoscaler.sim.runner import demand_arrivals, plan_ticks, run_policy

    started, cpu = time.perf_counter(), time.process_time()
    loaded = load_scenario(write_cell(cell, Path(work)))
    tick, ticks = plan_ticks(loaded)
    arrivals = demand_arrivals(loaded, tick, ticks)
    out: dict[str, Any] = {"cell": asdict(cell), "name": cell.name, "ticks": ticks, "policies": {}}
    for name in POLICIES:
        try:
            s = run_policy(loaded, name, arrivals, tick, ticks).summary
        except Exception as exc:  # a policy that crashes is reported, the others still run
            out["policies"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out["policies"][name] = {
            "cost_usd": s["cost_usd"],
            "slo_attainment": s["slo_attainment"],
            "availability": s["availability"],
            "dropped_fraction": s["dropped_fraction"],
            "max_spend_usd_per_hour": s["max_spend_usd_per_hour"],
            "budget_cap_usd_per_hour": s["budget_cap_usd_per_hour"],
            "launches": s["launches"],
            "preemptions": s["preemptions"],
            "ticks_per_second": s["ticks_per_second"],
        }
    b3 = solve_b3(loaded, arrivals, tick, time_limit_seconds=B3_TIME_LIMIT_SECONDS).summary()
    out["b3"] = {k: b3[k] for k in ("cost_usd", "fluid_lower_bound_usd", "lower_bound_usd", "status",
                                     "aggregated_factor", "unmet_unit_ticks", "max_wait_ticks", "solve_seconds")}  # fmt: skip
    refs = {"b3": b3["cost_usd"], "b3_lower_bound": b3["lower_bound_usd"], "b1": _cost(out, "keda"),
            "b2": _cost(out, "spothedge")}  # fmt: skip
    for pol in out["policies"].values():
        if "cost_usd" in pol:
            for key, ref in refs.items():
                pol[f"cost_vs_{key}"] = pol["cost_usd"] / ref if ref else None
    out["wall_seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu
    return out


def _cost(res: dict[str, Any], name: str) -> float | None:
    c = res["policies"].get(name, {}).get("cost_usd")
    return float(c) if c else None


# ------------------------------------------------------------------------------------------------ report


def targets(results: list[dict[str, Any]], policy: str = "daemon") -> dict[str, dict[str, Any]]:
    """How many cells meet each of the issue's targets, for `policy`."""
    n = len(results)
    met = {"b3": 0, "b1": 0, "b2": 0}
    slo99 = 0
    for r in results:
        p, b2 = r["policies"].get(policy, {}), r["policies"].get("spothedge", {})
        if "cost_usd" not in p:
            continue
        slo99 += p["slo_attainment"] >= 0.99
        if p["cost_vs_b3"] is not None and p["cost_vs_b3"] <= 1.15 and p["slo_attainment"] >= 0.99:
            met["b3"] += 1
        if p["cost_vs_b1"] is not None and p["cost_vs_b1"] <= 0.5:
            met["b1"] += 1
        if (
            p["cost_vs_b2"] is not None
            and p["cost_vs_b2"] <= 0.9
            and p["slo_attainment"] >= b2.get("slo_attainment", 2)
        ):
            met["b2"] += 1
    return {
        "cost <= 1.15x B3 with >= 99% SLO": {"cells": met["b3"], "of": n},
        "cost <= 0.5x B1": {"cells": met["b1"], "of": n},
        "cost <= 0.9x B2 at equal or better SLO": {"cells": met["b2"], "of": n},
        ">= 99% SLO (any cost)": {"cells": slo99, "of": n},
    }


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[dict[str, Any]], demand: str) -> list[str]:
    lines = [
        "| spot | boot | ratio | B3 $ (lower bound) | "
        + " | ".join(f"{p} $ / SLO / xB3 / xB1 / xB2" for p in POLICIES)
        + " |",
        "|---" * (4 + len(POLICIES)) + "|",
    ]
    for r in sorted(
        (r for r in results if r["cell"]["demand"] == demand),
        key=lambda r: (r["cell"]["spot"], r["cell"]["boot_minutes"], r["cell"]["ratio"]),
    ):
        c, b3 = r["cell"], r["b3"]
        star = "" if b3["status"] == "optimal" and b3["aggregated_factor"] == 1 else "^"
        row = [c["spot"], f"{c['boot_minutes']} min", f"{c['ratio']}",
               f"{b3['cost_usd']:.0f}{star} ({b3['lower_bound_usd']:.0f})"]  # fmt: skip
        for name in POLICIES:
            p = r["policies"].get(name, {})
            if "cost_usd" not in p:
                row.append("error")
                continue
            row.append(
                f"{p['cost_usd']:.0f} / {100 * p['slo_attainment']:.1f}% / {_fmt(p['cost_vs_b3'])} "
                f"({_fmt(p['cost_vs_b3_lower_bound'], '.1f')}) / {_fmt(p['cost_vs_b1'])} / {_fmt(p['cost_vs_b2'])}"
            )
        lines.append("| " + " | ".join(row) + " |")
    return lines


def plot(results: list[dict[str, Any]], demand: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        (r for r in results if r["cell"]["demand"] == demand),
        key=lambda r: (r["cell"]["spot"], r["cell"]["boot_minutes"], r["cell"]["ratio"]),
    )
    if not rows:
        return
    labels = [f"{r['cell']['spot']}\n{r['cell']['boot_minutes']}m r{r['cell']['ratio']}" for r in rows]
    x = np.arange(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(rows) + 3), 6.5), sharex=True)
    width = 0.8 / len(POLICIES)
    for k, name in enumerate(POLICIES):
        ratio = [r["policies"].get(name, {}).get("cost_vs_b3") or np.nan for r in rows]
        slo = [100 * r["policies"].get(name, {}).get("slo_attainment", np.nan) for r in rows]
        top.bar(x + (k - (len(POLICIES) - 1) / 2) * width, ratio, width, label=name)
        bottom.plot(x, slo, marker="o", lw=0.8, label=name)
    top.axhline(1.15, color="k", ls="--", lw=0.8, label="1.15x B3 (target)")
    top.set_ylim(bottom=0)
    top.grid(axis="y", lw=0.3)
    top.set_ylabel("cost / B3")
    top.set_title(f"simulate_matrix: {demand} ({HORIZON_HOURS:g} h per cell, 30 s ticks)")
    top.legend(fontsize=7, ncol=5)
    bottom.axhline(99, color="k", ls="--", lw=0.8)
    bottom.set_ylabel("SLO attainment (%)")
    bottom.set_xticks(x, labels, fontsize=7)
    bottom.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(results: list[dict[str, Any]], summary: dict[str, Any], command: str) -> None:
    demands = [d for d in DEMANDS if any(r["cell"]["demand"] == d for r in results)]
    body = [
        BEGIN,
        "",
        f"Written by `{command}` on {summary['measured']} ({summary['machine']}); {summary['cells']} cells"
        f"{' (the --quick subset, not the full matrix)' if summary['quick'] else ''}, "
        f"{summary['wall_seconds']:.0f} s wall with {summary['jobs']} jobs ({summary['cpu_seconds']:.0f} s of CPU). Each cell: {HORIZON_HOURS:g} h of 30 s "
        f"ticks, latency SLO {SLO_SECONDS:g} s (service {SERVICE_SECONDS:g} s, timeout {TIMEOUT_SECONDS:g} s); the "
        "setup (trace mapping, prices, demand sizing) is in the script's docstring.",
        "",
        "Targets for the daemon (the issue's; counted over the cells above, whatever they turn out to be):",
        "",
    ]
    for label, t in summary["targets"]["daemon"].items():
        body.append(f"- {label}: **{t['cells']} of {t['of']} cells**")
    body += [
        "",
        "Each policy's column: cost in $ / SLO attainment / cost over B3 (in brackets: over B3's lower bound) / "
        "over B1 (keda) / over B2 (spothedge).",
        "B3 is the offline optimum with requests waiting up to the SLO; `^` marks a B3 that is an upper bound "
        "(aggregated into blocks, or the solver's time limit); in brackets a lower bound on the true optimum "
        "(the fine problem's LP relaxation when solved, else the fluid bound). Where B3 is an upper bound the "
        "policy's true cost / optimum lies between the two ratios shown; the targets are counted on the first "
        "(cost / B3), which flatters the policy by up to the gap.",
        "",
    ]
    for d in demands:
        img = IMG / f"simulate_matrix_{d}.png"
        body += [f"### {d}", "", f"Plot: `{img.relative_to(ROOT)}`", "", *table(results, d), ""]
    body.append(END)
    text = DOC.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(body) + tail
    else:
        text = text.rstrip("\n") + "\n\n## Simulator: the what-if matrix\n\n" + "\n".join(body) + "\n"
    DOC.write_text(text, encoding="utf-8")


# -------------------------------------------------------------------------------------------------- main


def cells(quick: bool) -> Iterable[Cell]:
    if quick:
        return [Cell(*q) for q in QUICK]
    return [Cell(d, s, b, r) for d in DEMANDS for s in SPOT_SETS for b in BOOT_MINUTES for r in PRICE_RATIOS]


def speed(scenario: Path) -> dict[str, Any]:
    """The daemon alone on `scenario` (default: examples/sim/month.yaml, 86,400 ticks of 30 s): ticks per second
    in wall time and in CPU time (the process's own, so a busy machine shows in the first only)."""
    from autoscaler.sim import load_scenario
    from autoscaler.sim.runner import demand_arrivals, plan_ticks, run_policy

    loaded = load_scenario(scenario)
    tick, ticks = plan_ticks(loaded)
    arrivals = demand_arrivals(loaded, tick, ticks)
    wall, cpu = time.perf_counter(), time.process_time()
    run = run_policy(loaded, "daemon", arrivals, tick, ticks)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "scenario": str(scenario.relative_to(ROOT) if scenario.is_relative_to(ROOT) else scenario),
        "ticks": ticks,
        "tick_seconds": tick,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "ticks_per_second_wall": ticks / wall,
        "ticks_per_second_cpu": ticks / cpu,
        "launches": run.summary["launches"],
        "preemptions": run.summary["preemptions"],
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    global HORIZON_HOURS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="cells run in parallel (processes)")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} cells")
    ap.add_argument("--hours", type=float, default=HORIZON_HOURS, help="horizon per cell")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md or the plots")
    ap.add_argument("--speed", nargs="?", const=ROOT / "examples" / "sim" / "month.yaml", type=Path,
                    help="only measure the simulator's ticks/s on this scenario (default: the 30-day example)")  # fmt: skip
    ap.add_argument(
        "--replot", type=Path, help="rewrite the docs and plots from this run's saved stdout (JSON lines)"
    )
    args = ap.parse_args()
    if args.replot is not None:
        lines = [json.loads(x) for x in args.replot.read_text(encoding="utf-8").splitlines() if x.strip()]
        saved = [x for x in lines if "cell" in x]
        summary = next(x["summary"] for x in lines if "summary" in x)
        HORIZON_HOURS = summary["horizon_hours"]
        for d in DEMANDS:
            plot(saved, d, IMG / f"simulate_matrix_{d}.png")
        write_docs(saved, summary, _command(summary["jobs"], summary["quick"], HORIZON_HOURS))
        return
    if args.speed is not None:
        print(json.dumps(speed(args.speed.resolve())), flush=True)
        return
    HORIZON_HOURS = args.hours
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the shared data folder is missing (set GPU_AUTOSCALER_SHARED_DATA)")
    todo = list(cells(args.quick))
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="simulate-matrix-") as work:
        maf_counts(Path(work))  # once, before the workers race to write it
        with ProcessPoolExecutor(
            max_workers=max(1, args.jobs), initializer=_set_hours, initargs=(HORIZON_HOURS,)
        ) as ex:
            futures = {ex.submit(run_cell, c, work): c for c in todo}
            for done, fut in enumerate(as_completed(futures), start=1):
                res = fut.result()
                results.append(res)
                print(json.dumps(res), flush=True)
                d = res["policies"].get("daemon", {})
                print(
                    f"[{done}/{len(todo)}] {res['name']}: daemon {_fmt(d.get('cost_vs_b3'))}x B3, "
                    f"SLO {_fmt(d.get('slo_attainment'), '.3f')}; B3 {res['b3']['status']} "
                    f"({res['wall_seconds']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "cells": len(results),
        "quick": args.quick,
        "jobs": args.jobs,
        "horizon_hours": HORIZON_HOURS,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "targets": {p: targets(results, p) for p in POLICIES},
        "daemon_cells_over_budget": sum(
            1
            for r in results
            if r["policies"].get("daemon", {}).get("max_spend_usd_per_hour", 0)
            > r["policies"].get("daemon", {}).get("budget_cap_usd_per_hour", float("inf")) + 1e-9
        ),
    }
    print(json.dumps({"summary": summary}), flush=True)
    if not args.no_docs:
        for d in DEMANDS:
            plot(results, d, IMG / f"simulate_matrix_{d}.png")
        write_docs(results, summary, _command(args.jobs, args.quick, HORIZON_HOURS))


def _command(jobs: int, quick: bool, hours: float) -> str:
    command = f"nice -n 10 .venv/bin/python benchmarks/simulate_matrix.py --jobs {jobs}"
    command += " --quick" if quick else ""
    command += f" --hours {hours:g}" if hours != 24.0 else ""
    return command


def _set_hours(hours: float) -> None:
    global HORIZON_HOURS
    HORIZON_HOURS = hours


if __name__ == "__main__":
    main()
