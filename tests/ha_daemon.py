"""`gpu-autoscaler run` with one test hook, for the high-availability process tests (tests/ha_cluster.py).

When the file `$HA_TEST_STATE_DIR/stop-before-launch` exists, the daemon deletes it and stops itself with SIGSTOP
just before it writes its next launch intent: a leader paused at the worst moment, with a decision in hand. The
test resumes it with SIGCONT after another daemon took over, and checks that the store refuses the intent.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path
from typing import Any

from autoscaler import daemon as daemon_module
from autoscaler.model import Launch

MARKER = "stop-before-launch"


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung daemon's stacks, on demand (ha_cluster)
    state = Path(os.environ["HA_TEST_STATE_DIR"])
    original = daemon_module.Daemon.__init__

    def hook(point: str, launch: Launch) -> None:
        marker = state / MARKER
        if point == "before_intent" and marker.exists():
            marker.unlink()
            (state / "stopped-before-launch").write_text(launch.token)
            os.kill(os.getpid(), signal.SIGSTOP)

    def init(self: daemon_module.Daemon, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("crash_hook", hook)
        original(self, *args, **kwargs)

    daemon_module.Daemon.__init__ = init  # type: ignore[method-assign]
    from autoscaler.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
