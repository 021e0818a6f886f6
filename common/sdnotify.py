"""The sd_notify protocol, without libsystemd: one datagram per message on $NOTIFY_SOCKET.

systemd (Type=notify) gives the service a unix datagram socket path in NOTIFY_SOCKET
(`@name` for the abstract namespace) and, with WatchdogSec=, the period in WATCHDOG_USEC
(for the process WATCHDOG_PID, when set). Messages are newline-separated VAR=value lines:
READY=1, RELOADING=1 + MONOTONIC_USEC=, STOPPING=1, STATUS=..., WATCHDOG=1.

Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op. A send that fails (socket
gone, systemd restarting) is ignored: notification must never take the service down.

The watchdog is fed only while the caller's work makes progress: `Watchdog` keeps a
heartbeat counter that the main loop advances; its thread sends WATCHDOG=1 at half the
period only if the counter moved since the previous feed. A stalled loop (a blocked
thread, a deadlock) stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

from common import logs

log = logs.get("sdnotify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self.address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if not address:
            return
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # abstract namespace
        elif address.startswith("/"):
            self.address = address
        else:  # vsock or unknown forms: not for us
            log.warning("notify_socket_unsupported", address=address)
            return
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.warning("notify_socket_failed", error=str(exc))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send one message made of `lines` (VAR=value); False when not sent."""
        if self._sock is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                self._sock.sendto(data, self.address)  # type: ignore[arg-type]
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_seconds() -> float:
    """The watchdog period systemd expects, in seconds; 0 when there is none for us."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    pid = os.environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return usec / 1e6


class Watchdog(threading.Thread):
    """Feeds the watchdog while `beat()` is being called, and only then.

    `status()` (optional) gives a STATUS= line sent with each feed.
    """

    def __init__(
        self,
        notifier: Notifier,
        period: float,
        status: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(name="vigie-watchdog", daemon=True)
        self.notifier = notifier
        self.interval = max(0.05, period / 2)  # systemd's advice: ping at half the period
        self.status = status
        self.beats = 0
        self.fed = 0
        self.missed = 0
        self._seen = -1
        self._stop = threading.Event()

    def beat(self) -> None:
        """Called by the loop being watched, each time round (cheap: one increment)."""
        self.beats += 1

    def feed_if_alive(self) -> bool:
        beats = self.beats
        if beats == self._seen:
            self.missed += 1
            if self.missed == 1:
                log.error("watchdog_stalled", beats=beats, hint="the main loop stopped advancing")
            return False
        self._seen = beats
        self.missed = 0
        lines = ["WATCHDOG=1"]
        if self.status is not None:
            # A status is a nicety: never let it stop the feeding.
            with contextlib.suppress(Exception):
                lines.append(f"STATUS={self.status()}")
        self.notifier.notify(*lines)
        self.fed += 1
        return True

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.feed_if_alive()

    def stop(self) -> None:
        self._stop.set()
