"""Regenerate the example traces (deterministic; seed 7). Run: python examples/sim/make_traces.py

demand.csv: 60 minutes of requests in the Azure LLM inference trace format (TIMESTAMP,ContextTokens,
GeneratedTokens): a Poisson stream of 4 requests/minute with a burst of 40 requests/minute from minute 20 to 30.
Token counts are drawn from lognormals; the simulator reads only the timestamps.

spot_a.json: availability of sim.a100x8 spot in sim-east-a in the spot-traces format, one entry per 120 s:
4 instances, down to 1 from minute 24 to 36 (preempting whatever runs beyond that), then 4 again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(7)
    start = datetime(2023, 11, 16, 18, 0, 0)
    times: list[float] = []
    for minute in range(60):
        rate = 40 if 20 <= minute < 30 else 4
        n = rng.poisson(rate)
        times.extend(minute * 60 + np.sort(rng.uniform(0, 60, n)))
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t in times:
        stamp = (start + timedelta(seconds=float(t))).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        ctx = int(rng.lognormal(7.5, 0.8))
        gen = max(1, int(rng.lognormal(4.5, 1.0)))
        lines.append(f"{stamp},{ctx},{gen}")
    (HERE / "demand.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = [1 if 12 <= i < 18 else 4 for i in range(30)]
    doc = {"metadata": {"gap_seconds": 120}, "data": data}
    (HERE / "spot_a.json").write_text(json.dumps(doc) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
