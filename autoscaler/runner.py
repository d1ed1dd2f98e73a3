"""Running the daemon as a service: APScheduler drives the ticks, uvicorn serves the admin API, signals steer.

SIGTERM/SIGINT: finish the tick in flight, stop the API, close the store, exit 0.
SIGHUP: reload the policy file; a bad file leaves the running policy in force (the log says why).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from types import FrameType

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from autoscaler.api.app import create_app
from autoscaler.config import Policy
from autoscaler.daemon import Daemon

log = logging.getLogger(__name__)
JOB_ID = "tick"


class Runner:
    def __init__(self, daemon: Daemon, host: str, port: int, token: str | None) -> None:
        self.daemon = daemon
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(executors={"default": SchedulerPool(1)}, timezone="UTC")
        config = uvicorn.Config(
            create_app(daemon, token), host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self._server_thread = threading.Thread(target=self.server.run, name="admin-api", daemon=True)

    def start(self) -> None:
        """Start the admin API first (a port already taken fails here, before any tick), then the ticks."""
        self._server_thread.start()
        while not self.server.started:
            if not self._server_thread.is_alive():
                raise RuntimeError(
                    f"the admin API could not listen on {self.server.config.host}:{self.server.config.port}"
                )
            time.sleep(0.05)
        interval = self.daemon.policy().policy.daemon.tick_seconds
        self.scheduler.add_job(
            self.daemon.run_tick,
            IntervalTrigger(seconds=interval),
            id=JOB_ID,
            max_instances=1,  # a slow tick delays the next one, never overlaps it
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        self.daemon.on_policy_change = self._reschedule
        self.scheduler.start()

    def _reschedule(self, policy: Policy) -> None:
        self.scheduler.reschedule_job(JOB_ID, trigger=IntervalTrigger(seconds=policy.daemon.tick_seconds))

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the tick in flight, then stopping", signal.Signals(signum).name)
        self.stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        # Reload off the signal handler's stack: it reads a file and may take the daemon's lock.
        threading.Thread(target=self.daemon.reload_policy, name="reload", daemon=True).start()

    def wait(self) -> None:
        while not self.stop.wait(timeout=1.0):
            if not self._server_thread.is_alive():
                log.error("the admin API stopped; shutting down")
                break
        self.shutdown()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=True)  # waits for the tick in flight
        self.server.should_exit = True
        self._server_thread.join(timeout=10)
        self.daemon.store.close()
        log.info("stopped")
