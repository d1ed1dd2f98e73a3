"""Kill the daemon with SIGKILL at random moments, many times, while it scales on the three clouds' local test
servers (moto's EC2 server, the Compute Engine fake, the HTTPS Resource Manager fake) with injected stockouts;
print JSON: kills survived, leaks found, double launches, ticks to converge after each restart.

    python benchmarks/kill_storm.py [--kills 300] [--seed 1] [--max-delay 0.6]

The rig is tests/kill_storm_rig.py (the CI test tests/test_kill_storm.py runs 50 kills of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
os.environ.pop("AWS_SESSION_TOKEN", None)

from tests.aws_fake import FakeEC2
from tests.azure_fake import FakeARM
from tests.gcp_fake import FakeGCE
from tests.kill_storm_rig import KillStorm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay", type=float, default=0.6, help="a kill lands within this many seconds")
    parser.add_argument("--progress", action="store_true", help="print a dot per kill on stderr")
    args = parser.parse_args()
    ec2, gce, arm = FakeEC2().start(), FakeGCE().start(), FakeARM().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            storm = KillStorm(ec2, gce, arm, Path(tmp), seed=args.seed)
            progress = (
                (lambda n: print(".", end="" if n % 50 else f" {n}\n", file=sys.stderr, flush=True))
                if (args.progress)
                else None
            )
            report = storm.run(args.kills, max_delay=args.max_delay, on_kill=progress)
    finally:
        for fake in (ec2, gce, arm):
            fake.stop()
    result = {"benchmark": "kill_storm", "max_delay_seconds": args.max_delay, **report.as_json()}
    print(json.dumps(result, indent=2))
    clean = not (report.leaks or report.double_launches or report.not_converged or report.tick_errors)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
