"""The systemd journal, read natively through libsystemd's sd-journal API (ctypes on
libsystemd.so.0, the library journald itself writes with: no parser of the journal format
here). One reader per journal directory (/var/log/journal, /run/log/journal), each with
its cursor. A machine without a journal (no library, no directory) is said once; the text
logs carry on.

Entries go through the same parser as syslog lines, with the journal's own fields
(SYSLOG_IDENTIFIER or _COMM as the program, _PID, _UID); systemd's "unit started"
entries (MESSAGE_ID 39f53479...) give the unit from their UNIT= field, audit entries
(_TRANSPORT=audit) are read as audit records.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

from agent.logs.event import LogEvent
from agent.logs.parse import Parser
from common import logs

log = logs.get("agent.logs")

UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # systemd's catalog: a unit started
SD_JOURNAL_INVALIDATE = 2
_FIELDS = (
    "MESSAGE",
    "SYSLOG_IDENTIFIER",
    "_COMM",
    "_PID",
    "SYSLOG_PID",
    "_UID",
    "MESSAGE_ID",
    "UNIT",
    "_TRANSPORT",
    "_AUDIT_TYPE_NAME",
)


class JournalUnavailable(Exception):
    pass


_lib = None
_libc = ctypes.CDLL(None)  # free() for the cursors sd_journal_get_cursor allocates


def library() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("systemd") or "libsystemd.so.0"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise JournalUnavailable(f"libsystemd not found ({exc})") from None
    P, C, I = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int  # noqa: E741
    sig = {
        "sd_journal_open_directory": (I, [ctypes.POINTER(P), C, I]),
        "sd_journal_close": (None, [P]),
        "sd_journal_next": (I, [P]),
        "sd_journal_get_realtime_usec": (I, [P, ctypes.POINTER(ctypes.c_uint64)]),
        "sd_journal_get_data": (I, [P, C, ctypes.POINTER(P), ctypes.POINTER(ctypes.c_size_t)]),
        "sd_journal_get_cursor": (I, [P, ctypes.POINTER(P)]),
        "sd_journal_seek_cursor": (I, [P, C]),
        "sd_journal_test_cursor": (I, [P, C]),
        "sd_journal_seek_head": (I, [P]),
        "sd_journal_seek_realtime_usec": (I, [P, ctypes.c_uint64]),
        "sd_journal_get_fd": (I, [P]),
        "sd_journal_process": (I, [P]),
        "sd_journal_set_data_threshold": (I, [P, ctypes.c_size_t]),
    }
    for fn, (res, args) in sig.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    _libc.free.argtypes = [P]
    _lib = lib
    return lib


class JournalDir:
    """One journal directory, read from a cursor."""

    def __init__(self, path: str, cursor: str | None, catch_up: float, max_message: int) -> None:
        self.path = path
        self.lib = lib = library()
        self.j = ctypes.c_void_p()
        r = lib.sd_journal_open_directory(ctypes.byref(self.j), path.encode(), 0)
        if r < 0:
            raise JournalUnavailable(f"{path}: {os.strerror(-r)}")
        lib.sd_journal_set_data_threshold(self.j, max_message)
        lib.sd_journal_get_fd(self.j)  # sets up the inotify watch sd_journal_process reads
        self.cursor = cursor
        self.lost = False  # the cursor's entry is no longer in the journal
        self._data = ctypes.c_void_p()
        self._len = ctypes.c_size_t()
        self._usec = ctypes.c_uint64()
        self._position(catch_up)

    def _position(self, catch_up: float) -> None:
        lib, j = self.lib, self.j
        if self.cursor:
            c = self.cursor.encode()
            if lib.sd_journal_seek_cursor(j, c) >= 0 and lib.sd_journal_next(j) > 0:
                if lib.sd_journal_test_cursor(j, c) > 0:
                    return  # on the last entry read: the next one is new
                # The entry is gone: we stand on the first one after where it was, unread.
                self.lost = True
                self._back = True
                return
        lib.sd_journal_seek_realtime_usec(j, int((time.time() - catch_up) * 1e6))

    _back = False  # the current entry is unread (positioned by a lost cursor)

    def close(self) -> None:
        if self.j:
            self.lib.sd_journal_close(self.j)
            self.j = ctypes.c_void_p()

    def _get(self, field: str) -> str | None:
        r = self.lib.sd_journal_get_data(
            self.j, field.encode(), ctypes.byref(self._data), ctypes.byref(self._len)
        )
        if r < 0:
            return None
        raw = ctypes.string_at(self._data, self._len.value)
        return raw[len(field) + 1 :].decode("utf-8", "replace")

    def entries(self, limit: int) -> list[dict[str, str | float]]:
        """Up to `limit` entries after the cursor (which moves past them)."""
        lib, j = self.lib, self.j
        # Files were added or removed: is the entry we stood on still there? If not, seek
        # where it was: the entry found there is the first unread one.
        c = self.cursor.encode() if self.cursor else b""
        if (
            c
            and lib.sd_journal_process(j) == SD_JOURNAL_INVALIDATE
            and lib.sd_journal_test_cursor(j, c) <= 0
            and lib.sd_journal_seek_cursor(j, c) >= 0
            and lib.sd_journal_next(j) > 0
            and lib.sd_journal_test_cursor(j, c) <= 0
        ):
            self.lost, self._back = True, True
        out: list[dict[str, str | float]] = []
        while len(out) < limit:
            if self._back:
                self._back = False
            elif lib.sd_journal_next(j) <= 0:
                break
            e: dict[str, str | float] = {}
            for f in _FIELDS:
                v = self._get(f)
                if v is not None:
                    e[f] = v
            lib.sd_journal_get_realtime_usec(j, ctypes.byref(self._usec))
            e["ts"] = self._usec.value / 1e6
            out.append(e)
        if out:
            cur = ctypes.c_void_p()
            if lib.sd_journal_get_cursor(j, ctypes.byref(cur)) >= 0:
                self.cursor = ctypes.string_at(cur).decode()
                _libc.free(cur)
        return out

    def oldest(self) -> float | None:
        """The time of the journal's oldest entry (how much history it keeps)."""
        lib = library()
        j = ctypes.c_void_p()
        if lib.sd_journal_open_directory(ctypes.byref(j), self.path.encode(), 0) < 0:
            return None
        try:
            lib.sd_journal_seek_head(j)
            if lib.sd_journal_next(j) <= 0:
                return None
            usec = ctypes.c_uint64()
            lib.sd_journal_get_realtime_usec(j, ctypes.byref(usec))
            return usec.value / 1e6
        finally:
            lib.sd_journal_close(j)


def to_event(e: dict, parser: Parser) -> LogEvent | None:
    """One journal entry as an event, through the syslog families' rules."""
    ts = float(e["ts"])
    if e.get("_TRANSPORT") == "audit":
        msg = str(e.get("MESSAGE", ""))
        kind = str(e.get("_AUDIT_TYPE_NAME", "")) or msg.split(" ", 1)[0]
        body = msg.split(" ", 1)[1] if msg.startswith(kind + " ") else msg
        parser.stats.lines += 1
        return parser.parse_line(f"type={kind} msg=audit({ts:.3f}:0): {body}") if kind else None
    prog = str(e.get("SYSLOG_IDENTIFIER") or e.get("_COMM") or "")
    pid_s = str(e.get("SYSLOG_PID") or e.get("_PID") or "0")
    pid = int(pid_s) if pid_s.isdigit() else 0
    uid_s = str(e.get("_UID", ""))
    uid = int(uid_s) if uid_s.isdigit() else -1
    if e.get("MESSAGE_ID") == UNIT_STARTED and e.get("UNIT"):
        parser.stats.lines += 1
        parser.stats.events += 1
        return LogEvent(
            ts,
            "systemd",
            "unit_started",
            detail=str(e["UNIT"]),
            origin=parser.origin,
            pid=pid,
            uid=uid,
        )
    return parser.parse_message(ts, prog, pid, str(e.get("MESSAGE", "")), uid)


class JournalSource:
    """Every configured journal directory that exists; says once when there is none."""

    def __init__(
        self,
        dirs: list[str],
        cursors: dict,
        catch_up: float,
        max_message: int = 16384,
        warn: Callable[..., None] = log.info,
    ) -> None:
        self.dirs: list[JournalDir] = []
        self.parsers: dict[str, Parser] = {}
        self.cursors = cursors  # the Positions' "journal" dict, updated in place
        self.lost_events: list[LogEvent] = []
        present = [d for d in dirs if os.path.isdir(d) and _has_journal(d)]
        if not present:
            warn("journal_absent", dirs=dirs, hint="no journal here: the text logs carry on")
            return
        for d in present:
            try:
                jd = JournalDir(d, cursors.get(d), catch_up, max_message)
            except JournalUnavailable as exc:
                warn("journal_unavailable", dir=d, error=str(exc)[:200])
                continue
            self.dirs.append(jd)
            self.parsers[d] = Parser(origin=f"journal:{d}")

    def poll(self, limit: int = 20000) -> tuple[list[LogEvent], int]:
        """Events since the last poll, and the entries read."""
        out: list[LogEvent] = []
        n = 0
        for jd in self.dirs:
            entries = jd.entries(limit)
            n += len(entries)
            if jd.lost:
                jd.lost = False
                old = jd.oldest()
                kept = time.time() - old if old else 0.0
                out.append(
                    LogEvent(
                        time.time(),
                        "journald",
                        "journal_removed",
                        detail=str(int(kept)),
                        origin=f"journal:{jd.path}",
                    )
                )
            p = self.parsers[jd.path]
            for e in entries:
                ev = to_event(e, p)
                if ev is not None:
                    out.append(ev)
            if jd.cursor:
                self.cursors[jd.path] = jd.cursor
        return out, n

    def close(self) -> None:
        for jd in self.dirs:
            jd.close()


def _has_journal(d: str) -> bool:
    for _root, _dirs, files in os.walk(d):
        if any(f.endswith((".journal", ".journal~")) for f in files):
            return True
    return False
