"""Classic text logs followed as `tail -F` follows them.

Each configured path or glob is looked at every poll. A file is known by its device,
inode and the hash of its first bytes (the head), and read from an offset:
- renamed away (logrotate's default "create"): the old file is read to its end through
  the descriptor still open, then the new one from its start;
- truncated in place (copytruncate): read again from the start; when no rotated sibling
  holds the same head, the truncation was not a rotation (a cleared log, T1070);
- gone with no sibling holding it (rotated and compressed: a fresh .gz/.xz sibling): deleted;
- compressed rotated files (.gz, .xz, .bz2, .zst) and numbered or dated copies (.1, -20261203)
  are never read as logs of their own: their lines were read before rotation;
- a path that does not exist yet is picked up when it appears.
Lines are handed over whole: a partial last line waits for its newline.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

from agent.logs.event import LogEvent

HEAD_BYTES = 256  # bytes hashed to recognise a file (copytruncate, inode reuse)
READ_CHUNK = 1 << 20
COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z")
_ROTATED = re.compile(r"(?:\.\d+|-\d{8}(?:\d{2})?|\.old)(?:\.(?:gz|xz|bz2|zst|lz4|Z))?$")
ROTATION_SLACK = 300.0  # a sibling written this recently may be the rotation of our file


def rotated_name(path: str) -> bool:
    return path.endswith(COMPRESSED) or bool(_ROTATED.search(path))


def _head(fd: int) -> str:
    data = os.pread(fd, HEAD_BYTES, 0)
    return hashlib.sha256(data).hexdigest()[:32] if data else ""


def _head_of_file(path: str, n: int) -> str:
    """The head hash of a (maybe compressed) rotated sibling, over its first `n` bytes."""
    try:
        if path.endswith(".gz"):
            import gzip

            with gzip.open(path, "rb") as f:
                data = f.read(n)
        elif path.endswith(".xz"):
            import lzma

            with lzma.open(path, "rb") as f:
                data = f.read(n)
        elif path.endswith(".bz2"):
            import bz2

            with bz2.open(path, "rb") as f:
                data = f.read(n)
        else:
            with open(path, "rb") as f:
                data = f.read(n)
    except (OSError, EOFError, ValueError):
        return ""
    return hashlib.sha256(data).hexdigest()[:32] if data else ""


class _Tail:
    __slots__ = ("dev", "fd", "head", "head_len", "ino", "offset", "path", "pending")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.ino = self.dev = 0
        self.offset = 0
        self.head = ""
        self.head_len = 0
        self.pending = b""

    def open(self, st: os.stat_result | None = None) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        self.close()
        self.fd, self.ino, self.dev = fd, st.st_ino, st.st_dev
        self.offset, self.pending = 0, b""
        self.head, self.head_len = _head(fd), min(st.st_size, HEAD_BYTES)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def state(self) -> dict[str, Any]:
        return {
            "ino": self.ino,
            "dev": self.dev,
            "offset": self.offset - len(self.pending),
            "head": self.head,
            "head_len": self.head_len,
        }


class FileFollower:
    """Follows every path the configured patterns match; `poll()` returns what was
    written since the last poll, oldest first, as (path, block of whole lines) pairs,
    plus the events the follower itself saw (truncation, deletion)."""

    def __init__(
        self,
        patterns: list[str],
        positions: dict[str, Any],
        max_line: int = 16384,
        start_bytes: int = 16 << 20,
        max_read: int = 8 << 20,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.patterns = patterns
        self.positions = positions  # the Positions' "files" dict, updated in place
        self.max_line = max_line
        self.start_bytes = start_bytes  # a file never seen: at most its last N bytes
        self.max_read = max_read  # per poll and file: the rest at the next poll
        self.now = now
        self.tails: dict[str, _Tail] = {}
        self.missing: set[str] = set()  # known, then gone: reopened when back
        self.skipped_bytes = 0
        self.truncated_lines = 0  # lines longer than max_line, cut

    def _paths(self) -> list[str]:
        out: list[str] = []
        for pat in self.patterns:
            if glob.has_magic(pat):
                out.extend(p for p in sorted(glob.glob(pat)) if not rotated_name(p))
            elif os.path.exists(pat):
                out.append(pat)
        return list(dict.fromkeys(out))

    def poll(self) -> tuple[list[tuple[str, bytes]], list[LogEvent]]:
        lines: list[tuple[str, bytes]] = []
        events: list[LogEvent] = []
        present = set(self._paths())
        for path in present - self.tails.keys():
            self._start(path, lines)
        for path, t in list(self.tails.items()):
            self._follow(t, path in present, lines, events)
        return lines, events

    # A file seen for the first time, at start or later --------------------------------

    def _start(self, path: str, lines: list) -> None:
        t = _Tail(path)
        if not t.open():
            return
        self.tails[path] = t
        saved = self.positions.get(path)
        size = os.fstat(t.fd).st_size
        if path in self.missing:  # came back (rotation by rename, or a new file)
            self.missing.discard(path)
            return
        if saved and saved.get("ino") == t.ino and saved.get("dev") == t.dev:
            if _same_head(t, saved) and size >= saved.get("offset", 0):
                t.offset = saved["offset"]
                return
        elif saved:
            # Rotated while the agent was down: finish the old file first, if a sibling
            # still holds it uncompressed, then read this one from its start.
            old = _sibling_with(path, saved)
            if old is not None:
                self._drain_file(old, saved["offset"], path, lines)
            return
        if not saved and size > self.start_bytes:
            # Never seen: no more than its last start_bytes; older lines would be past
            # catch_up on any busy server anyway.
            t.offset = size - self.start_bytes
            nl = os.pread(t.fd, 65536, t.offset).find(b"\n")
            t.offset += nl + 1 if nl >= 0 else 0
            self.skipped_bytes += t.offset

    def _drain_file(self, old: str, offset: int, path: str, lines: list) -> None:
        try:
            with open(old, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return
        if data:
            lines.append((path, data if data.endswith(b"\n") else data + b"\n"))

    # A file already followed ------------------------------------------------------------

    def _follow(self, t: _Tail, present: bool, lines: list, events: list) -> None:
        try:
            st = os.stat(t.path) if present else None
        except OSError:
            st = None
        if st is not None and (st.st_ino, st.st_dev) == (t.ino, t.dev):
            # Shorter than what was read, or rewritten from the start (truncated, then
            # written past the old offset before this poll).
            if st.st_size < t.offset - len(t.pending) or (
                t.head_len
                and hashlib.sha256(os.pread(t.fd, t.head_len, 0)).hexdigest()[:32] != t.head
            ):
                self._truncated(t, lines, events)
            self._read(t, lines)
            self.positions[t.path] = t.state()
            return
        # Renamed or deleted: what was written to the old file before is still ours.
        self._read(t, lines, final=True)
        now = self.now()
        rotated = _sibling_holds(t, now)
        if not rotated:
            events.append(self._event(t, "log_deleted", now))
        if st is None:
            t.close()
            del self.tails[t.path]
            self.missing.add(t.path)
            self.positions.pop(t.path, None)
            return
        if t.open():  # the new file under the name, from its start
            self._read(t, lines)
            self.positions[t.path] = t.state()

    def _truncated(self, t: _Tail, lines: list, events: list) -> None:
        now = self.now()
        copy = _sibling_holds(t, now)
        if not copy:
            events.append(self._event(t, "log_truncated", now))
        elif copy is not True:
            # copytruncate: what was written between our last read and the copy is in the
            # copy only (tail -F loses it).
            data = _read_from(copy, t.offset - len(t.pending))
            if data:
                lines.append((t.path, data if data.endswith(b"\n") else data + b"\n"))
        t.offset, t.pending = 0, b""
        t.head, t.head_len = _head(t.fd), min(os.fstat(t.fd).st_size, HEAD_BYTES)

    def _event(self, t: _Tail, outcome: str, now: float) -> LogEvent:
        return LogEvent(now, "file", outcome, detail=t.path, origin=t.path)

    def _read(self, t: _Tail, lines: list, final: bool = False) -> None:
        budget = self.max_read
        while budget > 0:
            try:
                data = os.pread(t.fd, min(READ_CHUNK, budget), t.offset)
            except OSError:
                return
            if not data:
                break
            budget -= len(data)
            t.offset += len(data)
            if t.head_len < HEAD_BYTES and t.offset - len(data) < HEAD_BYTES:
                t.head, t.head_len = _head(t.fd), min(t.offset, HEAD_BYTES)
            buf = t.pending + data
            end = buf.rfind(b"\n") + 1
            if end:
                lines.append((t.path, buf[:end]))  # whole lines, parsed as one block
            t.pending = buf[end:]
            if len(t.pending) > self.max_line:  # no newline for too long: cut it
                self.truncated_lines += 1
                lines.append((t.path, t.pending[: self.max_line] + b"\n"))
                t.pending = b""
        if final and t.pending:
            lines.append((t.path, t.pending + b"\n"))
            t.pending = b""


def _same_head(t: _Tail, saved: dict) -> bool:
    n = saved.get("head_len", HEAD_BYTES)
    data = os.pread(t.fd, n, 0)
    return not saved.get("head") or hashlib.sha256(data).hexdigest()[:32] == saved["head"]


def _siblings(path: str) -> list[str]:
    d, base = os.path.split(path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    stem = base.rsplit(".log", 1)[0] if base.endswith(".log") else base
    return [os.path.join(d, n) for n in names if n != base and n.startswith(stem)]


def _sibling_with(path: str, saved: dict) -> str | None:
    """An uncompressed sibling holding the inode a saved position names."""
    for s in _siblings(path):
        if s.endswith(COMPRESSED):
            continue
        try:
            st = os.stat(s)
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (saved.get("ino"), saved.get("dev")):
            return s
    return None


def _read_from(path: str, offset: int) -> bytes:
    """A rotated copy (maybe compressed) from `offset` of its uncompressed text on."""
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(
        os.path.splitext(path)[1], open
    )
    try:
        with opener(path, "rb") as f:
            f.seek(offset)
            return f.read(64 << 20)
    except (OSError, EOFError, ValueError):
        return b""


def _sibling_holds(t: _Tail, now: float) -> bool | str:
    """Whether a rotated sibling holds the file `t` followed: True when it is the same
    inode (renamed), its path when it is a fresh copy with its head (copytruncate, or
    renamed then compressed)."""
    for s in _siblings(t.path):
        try:
            st = os.stat(s)
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (t.ino, t.dev):
            return True
        if now - st.st_mtime > ROTATION_SLACK and now - st.st_ctime > ROTATION_SLACK:
            continue
        if t.head and t.head_len and _head_of_file(s, t.head_len) == t.head:
            return s
    return False
