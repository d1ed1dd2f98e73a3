"""CPU cost of the rate rule alone (`policies.rate.rate_need`) over the 30-day simulator month.

    .venv/bin/python benchmarks/rate_need_replay.py                     # this tree's policies/rate.py
    .venv/bin/python benchmarks/rate_need_replay.py --rate-module X.py  # another version of it, same inputs

Runs `examples/sim/month.yaml` (the daemon only) once, recording every call's inputs (rate, backlog, instant,
lead), then replays that chain of calls (each call's state from the previous one) and prints, as JSON, the CPU
microseconds per call with the pool's seasonal forecast on and with `forecast.enabled: false`, best of
`--repeat`. The replay isolates the rule from the rest of the tick: comparing two versions of rate.py on the
same inputs shows their difference without the noise of the whole month.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-module", type=Path, help="a rate.py to time instead of this tree's policies/rate.py")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import policies.scaling as scaling
    from autoscaler.model import ScalingState
    from autoscaler.sim import load_scenario
    from autoscaler.sim.runner import demand_arrivals, plan_ticks, run_policy

    calls: list[tuple[float, float, Any, float]] = []
    pools: list[Any] = []
    real = scaling.rate_need

    def recording(pool: Any, rate: float, backlog: float, state: Any, now: Any, lead: float) -> Any:
        calls.append((rate, backlog, now, lead))
        if not pools:
            pools.append(pool)
        return real(pool, rate, backlog, state, now, lead)

    scaling.rate_need = recording
    loaded = load_scenario(ROOT / "examples" / "sim" / "month.yaml")
    tick, ticks = plan_ticks(loaded)
    run_policy(loaded, "daemon", demand_arrivals(loaded, tick, ticks), tick, ticks)
    scaling.rate_need = real

    rate_need = real
    if args.rate_module is not None:
        spec = importlib.util.spec_from_file_location("rate_under_test", args.rate_module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["rate_under_test"] = module
        spec.loader.exec_module(module)
        rate_need = module.rate_need
    pool = pools[0]
    fc = pool.scaling.forecast
    off = pool.model_copy(
        update={"scaling": pool.scaling.model_copy(update={"forecast": fc.model_copy(update={"enabled": False})})}
    )
    out: dict[str, Any] = {
        "rate_module": str(args.rate_module or ROOT / "policies" / "rate.py"),
        "calls": len(calls),
        "forecast": {
            "period_seconds": fc.period_seconds,
            "bucket_seconds": fc.bucket_seconds,
            "periods": fc.periods,
        },
    }
    for name, p in (("us_per_call_forecast_on", pool), ("us_per_call_forecast_off", off)):
        best = float("inf")
        for _ in range(args.repeat):
            state = ScalingState()
            cpu = time.process_time()
            for rate, backlog, now, lead in calls:
                _, state = rate_need(p, rate, backlog, state, now, lead)
            best = min(best, time.process_time() - cpu)
        out[name] = round(best / len(calls) * 1e6, 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
