"""Run the daemon and the baselines (B0 static, B1 keda, B2 spothedge) and B3 on the policy-tuning scenarios.

The scenarios (benchmarks/policy_scenarios/*.yaml) replay the example's shipped traces (examples/sim) with
different burstiness, boot delays, preemption rates and prices, so that a policy change is kept only when it
wins on all of them. Prints one JSON object per scenario (cost, SLO attainment, availability, cost / B3, / B1,
/ B2) and a summary line per scenario on stderr.

    .venv/bin/python benchmarks/policy_scenarios.py [SCENARIO.yaml ...] [--policies daemon,keda,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autoscaler.sim import load_scenario
from autoscaler.sim.b3 import solve_b3
from autoscaler.sim.runner import demand_arrivals, plan_ticks, run_policy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT = [
    ROOT / "examples" / "sim" / "scenario.yaml",
    *sorted(p for p in (HERE / "policy_scenarios").glob("*.yaml") if not p.name.startswith("policy")),
]
KEYS = (
    "cost_usd",
    "slo_attainment",
    "availability",
    "dropped_fraction",
    "launches",
    "preemptions",
    "max_spend_usd_per_hour",
    "budget_cap_usd_per_hour",
)


def run(path: Path, names: list[str], with_b3: bool, b3_seconds: float = 60.0) -> dict[str, Any]:
    loaded = load_scenario(path)
    tick, ticks = plan_ticks(loaded)
    arrivals = demand_arrivals(loaded, tick, ticks)
    out: dict[str, Any] = {"scenario": str(path.relative_to(ROOT)), "policies": {}}
    for name in names:
        r = run_policy(loaded, name, arrivals, tick, ticks)
        out["policies"][name] = {k: r.summary[k] for k in KEYS}
    if with_b3:
        try:
            b3 = solve_b3(loaded, arrivals, tick, time_limit_seconds=b3_seconds).summary()
        except Exception as exc:  # the optimum is another module's work: report, do not stop the others
            print(f"{path.name}: B3 failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            with_b3 = False
        else:
            out["b3"] = {k: b3[k] for k in ("cost_usd", "status", "unmet_unit_ticks", "aggregated_factor")}
    d = out["policies"].get("daemon")
    if d is not None:
        ratios: dict[str, float | None] = {}
        for ref in ("keda", "spothedge"):
            if ref in out["policies"]:
                ratios[f"vs_{ref}"] = d["cost_usd"] / out["policies"][ref]["cost_usd"]
        if with_b3 and "b3" in out and out["b3"]["cost_usd"] > 0:
            ratios["vs_b3"] = d["cost_usd"] / out["b3"]["cost_usd"]
        out["daemon_ratios"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="*", type=Path)
    ap.add_argument("--policies", default="daemon,static,keda,spothedge")
    ap.add_argument("--no-b3", action="store_true")
    ap.add_argument("--b3-seconds", type=float, default=60.0, help="the MILP's time limit per scenario")
    args = ap.parse_args()
    names = args.policies.split(",")
    for path in [p.resolve() for p in args.scenarios] or DEFAULT:
        res = run(path, names, not args.no_b3, args.b3_seconds)
        print(json.dumps(res))
        line = [res["scenario"]]
        for n, s in res["policies"].items():
            line.append(f"{n} ${s['cost_usd']:.2f} slo {s['slo_attainment']:.3f} av {s['availability']:.3f}")
        if "b3" in res:
            line.append(f"B3 ${res['b3']['cost_usd']:.2f}")
        if "daemon_ratios" in res:
            line.append(" ".join(f"{k}={v:.2f}" for k, v in res["daemon_ratios"].items() if v is not None))
        print(" | ".join(line), file=sys.stderr)


if __name__ == "__main__":
    main()
