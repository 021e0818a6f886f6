"""One agent per state directory.

The state directory holds the agent's identity (its key and certificate), its outbox and
its pseudonymisation key. A second `vigie-agent run` on the same directory (an operator
trying a command while the service runs) would stream with the same identity, which the
collector caps, and send the same queued alerts twice. Commands that write that state take
an exclusive lock on `state_dir/agent.lock` for their whole life; the kernel drops it when
the process ends, however it ends (kill -9 included), so a stale lock cannot block a
restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

LOCK_NAME = "agent.lock"


class StateLocked(Exception):
    """Another live process holds the state directory."""


def hold(state_dir: str | Path, doing: str) -> int:
    """Take the state directory for this process (returns the lock's descriptor, kept open
    until exit); raises StateLocked, naming the holder, when another process has it."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        said = _said(fd)
        os.close(fd)
        who = f" ({said})" if said else ""
        raise StateLocked(
            f"{d} is in use by another vigie-agent{who}: one agent per state directory. "
            "Stop it first (systemctl stop vigie-agent), or give this command a --state-dir "
            "of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, {doing}\n".encode("ascii"), 0)
    return fd


def holder(state_dir: str | Path) -> dict[str, Any]:
    """Whether a live process holds the state directory, and what its lock file says.

    The lock is tried shared and non-blocking and let go at once: it never waits and is
    never kept (an agent starting in that instant would be told the directory is in use,
    and systemd restarts it). The file is opened read-only: nothing is created or written."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return {"held": False}
    except OSError as exc:
        return {"held": None, "error": str(exc)}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"held": True, "by": _said(fd)}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return {"held": False}
    finally:
        os.close(fd)


def _said(fd: int) -> str:
    """What the holder wrote in the lock file: "pid N, COMMAND"."""
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode("ascii", "replace").strip()
    return ""
