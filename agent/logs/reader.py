"""The log sources together: text files and the journal polled from one thread, lines
parsed, duplicates across sources dropped (the same sshd line in the journal and in
auth.log, or in audit.log and auth.log), the backlog bounded by `[logs] catch_up`, and
the events handed to the pipeline in batches. A batch carries the positions reached when
it was read; the pipeline writes them once it has handled the batch, so a crash replays
at most the batch in hand and never skips one."""

from __future__ import annotations

import glob
import os
import pwd
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.logs.event import LogEvent
from agent.logs.files import FileFollower
from agent.logs.parse import Parser, ParseStats
from agent.logs.positions import Positions
from common import logs

log = logs.get("agent.logs")

DEDUP_SECONDS = 120.0  # how far apart in time two sources may hand over the same line


@dataclass
class LogBatch:
    events: list[LogEvent]
    commit: Callable[[], None]


@dataclass
class ReaderStats:
    polls: int = 0
    bytes_skipped: int = 0  # a file never seen before: all but its last part
    backlog_skipped: int = 0  # events older than catch_up
    duplicates: int = 0  # the same event from a second source
    journal_entries: int = 0
    parse: ParseStats = field(default_factory=ParseStats)
    outcomes: dict[str, int] = field(default_factory=dict)  # events handed over


class Dedup:
    """The same event read from two sources counts once: keyed by its second, process,
    service, outcome, user and source; per key, each origin's count, so that repeats in
    one source (four guesses in one second) all stay."""

    def __init__(self) -> None:
        self.seen: dict[tuple, dict[str, int]] = {}
        self.newest = 0.0

    def new(self, ev: LogEvent) -> bool:
        if not ev.pid:
            return True
        ts = ev.ts
        k = (int(ts), ev.pid, ev.service, ev.outcome, ev.user, ev.source)
        if ts > self.newest + 10:
            self.newest = ts
            cut = ts - DEDUP_SECONDS
            for old in [x for x in self.seen if x[0] < cut]:
                del self.seen[old]
        per = self.seen.get(k)
        if per is None:  # most events: the first of their kind in their second
            self.seen[k] = {ev.origin: 1}
            return True
        n = per.get(ev.origin, 0) + 1
        per[ev.origin] = n
        return n > max((c for o, c in per.items() if o != ev.origin), default=0)


class KeyFiles:
    """authorized_keys files (globs), stat'ed every poll: a change, a new one or one
    removed is an event. The first look is the baseline unless a saved state says more."""

    def __init__(self, patterns: list[str], state: dict[str, Any]) -> None:
        self.patterns = patterns
        self.state = state  # the Positions' "keys" dict, updated in place
        self.first = not state

    def poll(self, now: float) -> list[LogEvent]:
        out: list[LogEvent] = []
        seen: dict[str, list] = {}
        for pat in self.patterns:
            for p in glob.glob(pat):
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                seen[p] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_uid]
        if not self.first:
            for p, sig in seen.items():
                if self.state.get(p) != sig:
                    out.append(
                        self._event(p, sig[3], now, "changed" if p in self.state else "created")
                    )
            for p in set(self.state) - set(seen):
                out.append(self._event(p, self.state[p][3], now, "removed"))
        self.first = False
        self.state.clear()
        self.state.update(seen)
        return out

    @staticmethod
    def _event(path: str, uid: int, now: float, how: str) -> LogEvent:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid:{uid}"
        return LogEvent(
            now, "files", "key_file_changed", user=user, method=how, detail=path, origin=path
        )


class LogReader:
    """`[logs]` as configured: `poll()` reads what is new; `start(put)` polls from a
    thread and hands each batch to `put` (blocking: a full pipeline slows reading, and
    the lines wait in their files)."""

    def __init__(
        self, settings: dict[str, Any], state_dir: str | None, now: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.now = now
        self.stats = ReaderStats()
        path = Path(state_dir) / "logs" / "positions.json" if state_dir else None
        self.positions = Positions(path)
        pos = self.positions.data
        self.files = FileFollower(
            settings["files"], pos["files"], max_line=settings["max_line_bytes"], now=now
        )
        self.parsers: dict[str, Parser] = {}
        self.keys = KeyFiles(settings["key_files"], pos["keys"])
        self.journal = None
        if settings["journal"]:
            from agent.logs.journal import JournalSource

            self.journal = JournalSource(
                settings["journal_dirs"],
                pos["journal"],
                settings["catch_up"],
                settings["max_line_bytes"],
            )
        self.dedup = Dedup()
        self._said_backlog = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _parser(self, path: str) -> Parser:
        p = self.parsers.get(path)
        if p is None:
            p = self.parsers[path] = Parser(self.stats.parse, origin=path)
        return p

    def poll(self) -> LogBatch:
        st = self.stats
        st.polls += 1
        now = self.now()
        cutoff = now - self.settings["catch_up"]
        lines, events = self.files.poll()
        st.bytes_skipped = self.files.skipped_bytes
        out: list[LogEvent] = list(events)
        skipped = 0
        for path, block in lines:
            p = self._parser(path)
            p.reference = now
            for ev in p.parse_bytes(block):
                if ev.ts < cutoff:
                    skipped += 1
                else:
                    out.append(ev)
        if self.journal is not None:
            jevents, n = self.journal.poll()
            st.journal_entries += n
            for ev in jevents:
                if ev.ts < cutoff and ev.outcome != "journal_removed":
                    skipped += 1
                else:
                    out.append(ev)
        out.extend(self.keys.poll(now))
        if out:
            kept = []
            for ev in out:
                if self.dedup.new(ev):
                    kept.append(ev)
                else:
                    st.duplicates += 1
            out = kept
        out.sort(key=lambda e: e.ts)
        oc = st.outcomes
        for ev in out:
            oc[ev.outcome] = oc.get(ev.outcome, 0) + 1
        if skipped:
            st.backlog_skipped += skipped
            if not self._said_backlog:
                # Said once: later skips only count (vigie_agent_log_backlog_skipped_total).
                self._said_backlog = True
                log.warning(
                    "log_backlog_skipped",
                    events=skipped,
                    catch_up_seconds=self.settings["catch_up"],
                )
        snap = self.positions.snapshot()
        return LogBatch(out, lambda: self.positions.commit(snap))

    def register_metrics(self, reg: Any) -> None:
        st = self.stats
        p = st.parse
        reg.callback(
            "vigie_agent_log_lines_total",
            "Log lines and journal entries read.",
            lambda: p.lines,
            kind="counter",
        )
        reg.callback(
            "vigie_agent_log_events_total",
            "Events parsed from the logs and handed to the log detectors, per outcome.",
            lambda: [((k,), v) for k, v in list(st.outcomes.items())],
            labels=("outcome",),
            kind="counter",
        )
        reg.callback(
            "vigie_agent_log_unparsed_total",
            "Lines no rule read: unmatched (a known program), other (a program no family "
            "reads), malformed (not a syslog or audit line).",
            lambda: [
                (("unmatched",), p.unmatched),
                (("other",), p.other),
                (("malformed",), p.malformed),
            ],
            labels=("reason",),
            kind="counter",
        )
        reg.callback(
            "vigie_agent_log_backlog_skipped_total",
            "Events older than [logs] catch_up, not read.",
            lambda: st.backlog_skipped,
            kind="counter",
        )
        reg.callback(
            "vigie_agent_log_duplicates_total",
            "Events read from two sources (journal and file), counted once.",
            lambda: st.duplicates,
            kind="counter",
        )

    def start(self, put: Callable[[LogBatch], None]) -> None:
        def run() -> None:
            every = self.settings["poll_seconds"]
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    batch = self.poll()
                except Exception as exc:  # a source's bug must not stop the others
                    # The type only: a message could quote a path under a home.
                    log.error("log_poll_failed", error=type(exc).__name__)
                    batch = None
                if batch is not None:
                    while not self._stop.is_set():
                        try:
                            put(batch)
                            break
                        except Exception:  # queue.Full: the pipeline is behind
                            self._stop.wait(0.1)
                self._stop.wait(max(0.0, every - (time.monotonic() - t0)))

        self._thread = threading.Thread(target=run, name="vigie-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.journal is not None:
            self.journal.close()


def read_files(paths: list[str], stats: ParseStats) -> list[LogEvent]:
    """`replay-logs`: every line of each file (gzip/xz read through), times from the lines;
    syslog lines without a year take it from the file's modification time."""
    out: list[LogEvent] = []
    for path in paths:
        p = Parser(stats, origin=path)
        p.reference = os.stat(path).st_mtime
        for block in _blocks(path):
            out.extend(p.parse_block(block))
    out.sort(key=lambda e: e.ts)  # stable: a file's own order stays within a second
    return out


def _blocks(path: str, size: int = 4 << 20):
    """Whole lines, a few MB at a time."""
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".xz": lzma.open}.get(Path(path).suffix, open)
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        while True:
            block = f.read(size)
            if not block:
                return
            block += f.readline()  # to the end of the line cut by the read
            yield block
