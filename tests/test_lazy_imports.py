"""A daemon with no AWS candidates never imports boto3 (nor any other cloud SDK)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from autoscaler.clock import SystemClock
from autoscaler.policyfile import load_default_policy
from providers import build_providers
providers = build_providers(load_default_policy().policy, SystemClock())
import autoscaler.daemon, autoscaler.api.app, autoscaler.cli  # the whole daemon, loaded
assert list(providers) == ["simulated"], providers
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "google", "azure"))
print(",".join(loaded))
"""


def test_no_cloud_sdk_is_imported_without_its_cloud() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
