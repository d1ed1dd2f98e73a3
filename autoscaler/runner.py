"""Running the daemon as a service: APScheduler drives the ticks, uvicorn serves the admin API, signals steer.

SIGTERM/SIGINT: finish the tick in flight, stop the API, close the store, exit 0.
SIGHUP: reload the policy file; a bad file leaves the running policy in force (the log says why).
"""

from __future__ import annotations

import ipaddress
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
from autoscaler.sdnotify import Notifier

log = logging.getLogger(__name__)
JOB_ID = "tick"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; a name that is not an address counts as reachable from outside."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str) -> bool:
    """Log a warning when the admin API is told to listen beyond loopback: it speaks plain HTTP, and its bearer
    token and answers would cross the network in clear text. Returns whether it warned."""
    if is_loopback(host):
        return False
    log.warning(
        "the admin API listens on %s, beyond loopback, in plain HTTP: put a TLS-terminating proxy in front of it "
        "(and firewall the port), or listen on 127.0.0.1",
        host or "all interfaces",
    )
    return True


class Runner:
    def __init__(self, daemon: Daemon, host: str, port: int, token: str | None) -> None:
        self.daemon = daemon
        warn_if_exposed(host)
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(executors={"default": SchedulerPool(1)}, timezone="UTC")
        config = uvicorn.Config(
            create_app(daemon, token), host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self._server_thread = threading.Thread(target=self.server.run, name="admin-api", daemon=True)
        # systemd (Type=notify): READY after the first good tick, WATCHDOG every tick, STOPPING on shutdown.
        self.notifier = Notifier()
        self._ready_sent = False

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
        self._check_watchdog(interval)
        self.scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=interval),
            id=JOB_ID,
            max_instances=1,  # a slow tick delays the next one, never overlaps it
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        self.daemon.on_policy_change = self._reschedule
        self.scheduler.start()
        # High availability: renew the lease between ticks; a new leader ticks at once instead of at its next slot.
        self.daemon.on_leadership_gained = self._tick_now
        self.daemon.start_lease_renewal()

    def _tick_now(self) -> None:
        try:
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))
        except Exception:  # the scheduler is shutting down: nothing to hurry
            log.debug("could not bring the next tick forward", exc_info=True)

    def _reschedule(self, policy: Policy) -> None:
        self.scheduler.reschedule_job(JOB_ID, trigger=IntervalTrigger(seconds=policy.daemon.tick_seconds))
        self._check_watchdog(policy.daemon.tick_seconds)

    # ---- systemd notification (autoscaler.sdnotify; no-ops outside systemd)

    def _tick(self) -> None:
        """The scheduler's job: one tick, then tell systemd. A failed tick still pets the watchdog (the loop is
        alive, the next tick starts afresh); only a loop that stops ticking gets the daemon restarted."""
        self.daemon.run_tick()
        error = self.daemon.last_tick_error
        status = f"last tick failed: {error}"[:200] if error else self._status_line()
        if not error and not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(status)
        self.notifier.watchdog(status)

    def _status_line(self) -> str:
        lead = self.daemon.leadership()
        if lead.role == "follower":
            return f"follower (leader: {lead.leader or 'none yet'})"
        plan = self.daemon.last_plan
        if plan is None:
            return "running"
        decisions = plan.decisions.values()
        desired = sum(d.desired for d in decisions)
        ready = sum(d.ready for d in decisions)
        spend = sum(d.spend_usd_per_hour for d in decisions)
        return f"{len(plan.decisions)} pool(s): {ready:g}/{desired:g} capacity units ready, ${spend:,.2f}/h"

    def _check_watchdog(self, tick_seconds: float) -> None:
        limit = self.notifier.watchdog_seconds
        if limit is not None and 2 * tick_seconds > limit:
            log.warning(
                "WatchdogSec=%gs is less than twice tick_seconds=%gs: systemd may restart a healthy daemon; "
                "raise WatchdogSec in the unit",
                limit,
                tick_seconds,
            )

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the tick in flight, then stopping", signal.Signals(signum).name)
        self.stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        # Reload off the signal handler's stack: it reads a file and may take the daemon's lock.
        threading.Thread(target=self._reload, name="reload", daemon=True).start()

    def _reload(self) -> None:
        ok, message = self.daemon.reload_policy()
        self.notifier.status(message if ok else f"policy reload rejected: {message}"[:200])

    def wait(self) -> bool:
        """Block until a stop signal (True) or the admin API's death (False: the service manager should restart
        the daemon, so the process must not exit 0)."""
        clean = True
        while not self.stop.wait(timeout=1.0):
            if not self._server_thread.is_alive():
                log.error("the admin API stopped; shutting down")
                clean = False
                break
        self.shutdown()
        return clean

    def shutdown(self) -> None:
        self.notifier.stopping("stopping: finishing the tick in flight")
        self.scheduler.shutdown(wait=True)  # waits for the tick in flight
        self.daemon.stop_lease_renewal()  # then hands the lease over at once (high availability)
        self.server.should_exit = True
        self._server_thread.join(timeout=10)
        self.daemon.alerts.close(timeout=5.0)  # queued alert notices get a few seconds to go out
        self.daemon.store.close()
        log.info("stopped")
