"""systemd's service notification protocol (sd_notify(3)), written out: no dependency, a few lines.

A service started with `Type=notify` finds a datagram socket in $NOTIFY_SOCKET (a file system path, or an
abstract-namespace name written with a leading "@") and sends it newline-separated KEY=VALUE assignments:
`READY=1` when it is up, `WATCHDOG=1` at least every $WATCHDOG_USEC microseconds while it is healthy,
`STOPPING=1` when it begins to shut down, and `STATUS=...` as a one-line status for `systemctl status`.

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op. A send that fails (the manager went away, the socket
was removed) is logged once at debug level and never raises: notification is advice, never a reason to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value: a path as is; "@name" as the abstract-namespace
    address (a leading NUL byte); None for an empty or unusable value (systemd only uses these two forms)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications to the service manager named by $NOTIFY_SOCKET at construction time."""

    def __init__(self, notify_socket: str | None = None, watchdog_usec: str | None = None) -> None:
        value = os.environ.get("NOTIFY_SOCKET", "") if notify_socket is None else notify_socket
        self.address = socket_address(value)
        usec = os.environ.get("WATCHDOG_USEC", "") if watchdog_usec is None else watchdog_usec
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._lock = threading.Lock()  # the tick thread, the main thread and the reload thread all send
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of KEY=VALUE lines. True when it was sent (False outside systemd or on error)."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("cannot notify the service manager at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self, status: str = "") -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")
