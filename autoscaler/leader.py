"""Who may act: the leader election of daemons sharing PostgreSQL, and the single-node guard of SQLite.

PostgreSQL: `LeaderElector` takes or renews the lease (autoscaler.store.lease) at the start of every tick and,
between ticks, from a renewal thread every `ha.renew_seconds`, so a long tick does not lose it. The leader's
writes carry its fence (holder, token); the store refuses them once another daemon holds the lease. The elector
also keeps a local belief: it counts itself leader only until `lease_seconds` after the start of its last
successful renewal (monotonic clock, which runs on while the process is stopped), so a leader cut off from the
database, or paused, stops acting before a follower can have taken over; the fencing in the store is what makes
that safe even when the belief is wrong.

SQLite: one daemon per database file, enforced by `SingleNodeLock`, an exclusive lock on a file beside the
database held for the process's lifetime (released by the kernel when the process dies, however it dies).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

from autoscaler.config import HaSettings
from autoscaler.store import Fence, LeaseState, Store

log = logging.getLogger(__name__)

Role = Literal["leader", "follower", "single"]


def default_identity(daemon_id: str) -> str:
    """Unique per process: a restarted daemon is a new holder (its old holding's writes are fenced off)."""
    return f"{daemon_id}@{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class Leadership:
    """This daemon's role as last seen. `leader` is the lease holder (None: unknown or nobody), `token` its
    fencing token."""

    role: Role
    me: str
    leader: str | None = None
    token: int | None = None
    expires_at: datetime | None = None
    reason: str = ""

    @property
    def acts(self) -> bool:
        return self.role != "follower"

    @property
    def fence(self) -> Fence | None:
        return Fence(self.me, self.token) if self.role == "leader" and self.token is not None else None


# (was_leader, is_leader, token): called once per change, from whichever thread saw it (see Daemon).
ChangeHook = Callable[[bool, bool, int | None], None]


class LeaderElector:
    def __init__(
        self,
        store: Store,
        identity: str,
        settings: Callable[[], HaSettings],
        on_change: ChangeHook,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.identity = identity
        self._settings = settings
        self._on_change = on_change
        self._monotonic = monotonic
        # Two locks: polls queue on _polling (one database call at a time), while _lock guards only the fields
        # below and is never held across a database call, so /healthz answers even when the database hangs.
        self._polling = threading.Lock()
        self._lock = threading.Lock()
        self._state = Leadership("follower", identity, reason="not tried yet")
        self._deadline = 0.0  # monotonic: leader until then, unless a renewal extends it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> Leadership:
        """Take or renew the lease once. A database error keeps the belief until its deadline (then demotes)."""
        settings = self._settings()
        with self._polling:
            started = self._monotonic()
            try:
                state = self.store.acquire_lease(self.identity, settings.lease_seconds)
            except Exception as exc:  # the database is unreachable or failing: the deadline decides
                log.warning("leader lease: could not reach the database: %s", _short(exc))
                with self._lock:
                    return self._update(self._expired_belief(f"lease not renewed: {_short(exc)}"))
            with self._lock:
                if state is not None and state.mine:
                    self._deadline = started + settings.lease_seconds
                    return self._update(_leadership(self.identity, "leader", state, "holds the lease"))
                self._deadline = 0.0
                return self._update(
                    _leadership(self.identity, "follower", state, "another daemon holds the lease")
                )

    def current(self) -> Leadership:
        """The last poll's answer, demoted if the local deadline passed since (no database call)."""
        with self._lock:
            return self._update(self._expired_belief("lease not renewed in time"))

    def demote(self, reason: str) -> Leadership:
        """The store refused our fence: we are not the leader, whatever we believed."""
        with self._lock:
            self._deadline = 0.0
            s = self._state
            return self._update(Leadership("follower", self.identity, None, None, None, reason) if s.acts else s)

    def _expired_belief(self, reason: str) -> Leadership:
        s = self._state
        if s.role == "leader" and self._monotonic() >= self._deadline:
            return Leadership("follower", self.identity, None, None, None, reason)
        return s

    def _update(self, new: Leadership) -> Leadership:
        old, self._state = self._state, new
        was, now = old.role == "leader", new.role == "leader"
        if was != now or (now and old.token != new.token):
            self._on_change(was, now, new.token if now else old.token)
        return new

    # ---- the renewal thread ----

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="leader-lease", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._settings().renew_seconds):
            try:
                self.poll()
            except Exception:  # a bug in a change hook must not end the renewals
                log.exception("leader lease: renewal failed")

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with `release`, end the holding at once so a follower takes over at its next try."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._polling:
            fence = self._state.fence
            if release and fence is not None:
                try:
                    if self.store.release_lease(fence):
                        log.info("leader lease released (token %d)", fence.token)
                except Exception as exc:
                    log.warning("leader lease: could not release it (it expires by itself): %s", _short(exc))
            with self._lock:
                self._deadline = 0.0
                self._update(Leadership("follower", self.identity, None, None, None, "stopped"))


def _leadership(me: str, role: Role, state: LeaseState | None, reason: str) -> Leadership:
    if state is None:
        return Leadership(role, me, reason="the lease has never been taken")
    leader = None if state.expired and not state.mine else state.holder
    return Leadership(role, me, leader, state.token, state.expires_at, reason)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---------------------------------------------------------------- SQLite: one daemon per file


class AlreadyRunning(Exception):
    """Another daemon holds the database file."""


class SingleNodeLock:
    """An exclusive flock on `<database>.lock`, held while this object lives (the process, for `run`)."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise AlreadyRunning(
                f"another gpu-autoscaler (pid {holder}) is already running on {database} (lock file {self.path}). "
                "SQLite is single-node: stop the other daemon, give this one its own --state-dir, or share a "
                "PostgreSQL database (daemon.database_url), where daemons elect a leader."
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
