"""The long version of tests/test_fuzz_policy.py: many more mutated policy files (and random byte strings) through
load_policy, counting outcomes, and print JSON. Any exception other than PolicyError, or a PolicyError line
without file:line:column, is a failure and is printed with its input.

    python benchmarks/fuzz_policy.py [--examples 5000] [--bytes 2000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from autoscaler.policyfile import PolicyError, load_policy
from tests.test_fuzz_policy import mutated


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--bytes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    counts = {"loaded": 0, "policy_error": 0, "crash": 0, "bad_error_line": 0}
    failures: list[dict[str, str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-policy-"))
    path = workdir / "policy.yaml"
    line_re = re.compile(rf"^{re.escape(str(path))}:\d+:\d+: ")

    def attempt(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load_policy(path)
            counts["loaded"] += 1
        except PolicyError as exc:
            counts["policy_error"] += 1
            bad = [ln for ln in str(exc).splitlines() if not line_re.match(ln)]
            if bad:
                counts["bad_error_line"] += 1
                failures.append({"input": data[:300].decode("utf-8", "replace"), "line": bad[0]})
        except BaseException:
            counts["crash"] += 1
            failures.append({"input": data[:300].decode("utf-8", "replace"), "error": traceback.format_exc(-3)})

    started = time.perf_counter()
    common = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

    @seed(args.seed)
    @settings(max_examples=args.examples, **common)
    @given(text=mutated())
    def texts(text: str) -> None:
        attempt(text.encode("utf-8", "surrogatepass"))

    @seed(args.seed)
    @settings(max_examples=args.bytes, **common)
    @given(data=st.binary(max_size=2000))
    def blobs(data: bytes) -> None:
        attempt(data)

    texts()
    blobs()
    result = {
        "inputs": sum(counts.values()) - counts["bad_error_line"],
        **counts,
        "seconds": round(time.perf_counter() - started, 1),
        "failures": failures[:10],
    }
    print(json.dumps(result, indent=2))
    return 1 if counts["crash"] or counts["bad_error_line"] else 0


if __name__ == "__main__":
    sys.exit(main())
