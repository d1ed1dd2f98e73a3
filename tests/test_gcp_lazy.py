"""A daemon without GCP never imports google.cloud.compute_v1 (1-1.5 s and a lot of memory); the GCP catalog and
price refresh modules do not import it either."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from autoscaler.clock import SystemClock
from autoscaler.policyfile import load_default_policy
from providers import build_providers
import providers.gcp_catalog, providers.gcp_prices
from providers.gcp_prices import refresh_targets
from providers.gcp_catalog import GcpCatalog
providers_built = build_providers(load_default_policy().policy, SystemClock())
refresh_targets(load_default_policy().policy, GcpCatalog.shipped())
import autoscaler.daemon, autoscaler.cli
print(",".join(sorted(m for m in sys.modules if m.startswith("google"))))
"""


def test_compute_v1_is_imported_only_with_the_gcp_provider() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
