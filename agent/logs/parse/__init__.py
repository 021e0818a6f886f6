"""Log lines into `LogEvent`s: a table of declared regexes per software family (the way
CrowdSec's parsers are declared), dispatched on the program name first, so that a line from
a program no family reads costs one dictionary look-up, and one no rule matches costs the
few anchored regexes of its family. Both are counted, never logged.

A family module (sshd.py, auth.py, accounts.py, services.py, audit.py) declares `RULES`:
program name -> [(compiled regex, builder)], where `builder(groups, ts, program, pid)`
returns the event (or None when the line is understood but says nothing to detect).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.engine._engine import scan_syslog
from agent.logs.event import LogEvent
from agent.logs.parse import accounts, audit, auth, services, sshd
from agent.logs.parse.auth import pam
from agent.logs.parse.common import DROP

Builder = Callable[..., "LogEvent | None"]
Rule = tuple["re.Pattern[str]", Builder]

RULES: dict[str, list[Rule]] = {}
for _family in (sshd, auth, accounts, services):
    for _prog, _rules in _family.RULES.items():
        RULES.setdefault(_prog, []).extend(_rules)
# Programs that write audit records into syslog (audisp-syslog, journald's audit socket).
AUDIT_PROGRAMS = frozenset(("audit", "audispd", "audisp-syslog", "auditd", "kernel"))
ALIASES = sshd.ALIASES
_KNOWN_SET = frozenset({*RULES, *AUDIT_PROGRAMS, *ALIASES})
# Programs read only for the audit records they carry ("kernel": most of its lines are not).
_AUDIT_ONLY = AUDIT_PROGRAMS - set(RULES) - set(ALIASES)
_NAMED = re.compile(r"\(\?P<\w+>")


def _combined(rules: list[Rule]) -> tuple[re.Pattern[str], dict[int, Rule]]:
    """A program's rules as one alternation, each rule's pattern a capturing group in
    order: one C call tries them all as the list would (the first that matches wins),
    where a loop paid a Python call per rule (sshd has 20). The matched rule is the group
    that closed last (`lastindex`); its own regex then reads the named groups."""
    parts, by_group, at = [], {}, 1
    for rx, build in rules:
        plain = _NAMED.sub("(?:", rx.pattern)
        parts.append(f"({plain})")
        by_group[at] = (rx, build)
        at += 1 + re.compile(plain).groups
    return re.compile("|".join(parts)), by_group


_TABLES = {prog: (*_combined(rules), prog) for prog, rules in RULES.items()}
_TABLES.update({alias: _TABLES[prog] for alias, prog in ALIASES.items()})
# Taken straight from a line's program name: not the programs whose lines may carry audit
# records (those go through `_message`, which looks for one first).
_FAST = {prog: t for prog, t in _TABLES.items() if prog not in AUDIT_PROGRAMS}
_FAST_NAMES = frozenset(_FAST)

_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


@dataclass
class ParseStats:
    lines: int = 0
    events: int = 0
    unmatched: int = 0  # a program a family reads, a message none of its rules knows
    other: int = 0  # a program no family reads (or, read line by line, not syslog at all)
    malformed: int = 0  # read line by line: not a syslog or audit line
    by_program: dict[str, int] = field(default_factory=dict)  # unmatched, bounded


class Parser:
    """One per source: it keeps that source's year reference and time cache."""

    def __init__(self, stats: ParseStats | None = None, origin: str = "") -> None:
        self.stats = stats or ParseStats()
        self.origin = origin
        self._stamp = ""
        self._stamp_ts: float | None = None
        self.reference = time.time()  # syslog lines without a year fall before this

    def parse_bytes(self, block: bytes) -> list[LogEvent]:
        """`parse_block` of the block's text (UTF-8, invalid bytes replaced): the
        followers' path. The lines `parse_block` would count as from a program no family
        reads, or as malformed, are counted and skipped in C (agent/engine/syslogscan.h),
        about a tenth of their cost here; the others go through `parse_lines`."""
        kept, lines, other, malformed = scan_syslog(block, _FAST_NAMES, _KNOWN_SET, _AUDIT_ONLY)
        out = self.parse_lines(kept)
        st = self.stats
        st.lines += lines - len(kept)
        st.other += other
        st.malformed += malformed
        return out

    def parse_block(self, text: str) -> list[LogEvent]:
        """Whole lines (newline-separated) at once."""
        return self.parse_lines(text.split("\n"))

    def parse_lines(self, lines: list[str]) -> list[LogEvent]:
        """Lines without their newline. The header is cut here, in the loop, so that a
        line of a program no family reads costs a few C calls and a set look-up, no
        function call and no regex."""
        out: list[LogEvent] = []
        st = self.stats
        fast, known, audit_only = _FAST, _KNOWN_SET, _AUDIT_ONLY
        rules, slow = self._rules, self._slow
        n = other = 0
        for line in lines:
            if not line:
                continue
            n += 1
            iso = line[0].isdigit()
            if iso:  # RFC 3339: "2026-12-03T15:33:50.1+00:00 host prog[pid]: msg"
                host = line.find(" ") + 1
            elif line.startswith("type="):  # auditd's own log
                ev = self._audit_line(line)
                if ev is not None:
                    out.append(ev)
                continue
            else:  # traditional: "Dec  3 15:33:50 host prog[pid]: msg" (the time is 15 wide)
                host = 16 if line[15:16] == " " else 0
            prog_at = line.find(" ", host) + 1 if host else 0
            end = line.find(": ", prog_at) if prog_at else -1
            if end < 0:
                if prog_at and line.endswith(":"):
                    end = len(line) - 1
                else:
                    st.malformed += 1
                    continue
            prog, _, pid = line[prog_at:end].partition("[")
            table = fast.get(prog)
            if table is None:
                if line.startswith("pam_", end + 2):
                    ev = slow(line, iso, host, prog, pid, end)
                elif prog in known:
                    if prog in audit_only and line.find("msg=audit(", end) < 0:
                        other += 1  # "kernel": read only for the audit records it carries
                        continue
                    ev = slow(line, iso, host, prog, pid, end)
                elif "/" in prog and prog.rsplit("/", 1)[1] in known:
                    ev = slow(line, iso, host, prog, pid, end)
                else:
                    other += 1
                    continue
            else:
                ev = rules(table, line, iso, host, pid, end)
            if ev is not None:
                out.append(ev)
        st.lines += n
        st.other += other
        return out

    def parse_line(self, line: str) -> LogEvent | None:
        got = self.parse_block(line.rstrip("\n"))
        return got[0] if got else None

    def _audit_line(self, line: str) -> LogEvent | None:
        ev = audit.parse(line, self.origin)
        if ev is None:
            if audit.HEADER.match(line) is None:
                self.stats.malformed += 1
            return None
        self.stats.events += 1
        return ev

    def _rules(
        self, table: tuple, line: str, iso: bool, host: int, pid: str, end: int
    ) -> LogEvent | None:
        """A program a family reads: its rules first, and the line's time read only for a
        line that makes an event (most lines of sshd, systemd or cron say nothing to
        detect), or starts with a PAM module's name."""
        if line.startswith("pam_", end + 2):
            return self._slow(line, iso, host, table[2], pid, end)
        msg = line[end + 2 :]
        m = table[0].match(msg)
        if m is None:
            self._unmatched(table[2])
            return None
        rx, build = table[1][m.lastindex]
        if build is DROP:
            return None
        st = self.stats
        ts = self._line_time(line, iso, host)
        if ts is None:
            st.malformed += 1
            return None
        pid = pid.rstrip("]")
        st.events += 1
        return build(
            rx.match(msg).groupdict(), ts, table[2], int(pid) if pid.isdigit() else 0,
            self.origin, -1,
        )  # fmt: skip

    def _slow(self, line: str, iso: bool, host: int, prog: str, pid: str, end: int) -> Any:
        """A line the rule tables do not take directly (`parse_lines` chose it): a
        program known by its path or read for its audit records, or a PAM module's line;
        `_message` reads it as a journal entry is read."""
        ts = self._line_time(line, iso, host)
        if ts is None:
            self.stats.malformed += 1
            return None
        pid = pid.rstrip("]")
        return self._message(ts, prog, int(pid) if pid.isdigit() else 0, line[end + 2 :], -1)

    def _unmatched(self, prog: str) -> None:
        st = self.stats
        st.unmatched += 1
        if len(st.by_program) < 256 or prog in st.by_program:
            st.by_program[prog] = st.by_program.get(prog, 0) + 1

    def parse_message(
        self, ts: float, program: str, pid: int, msg: str, uid: int = -1
    ) -> LogEvent | None:
        """A journal entry: its fields are already apart."""
        self.stats.lines += 1
        return self._message(ts, program, pid, msg, uid)

    def _message(self, ts: float, prog: str, pid: int, msg: str, uid: int) -> LogEvent | None:
        st = self.stats
        prog = prog.rsplit("/", 1)[-1]
        prog = ALIASES.get(prog, prog)
        origin = self.origin
        if prog in AUDIT_PROGRAMS and "msg=audit(" in msg:
            ev = audit.parse(msg[msg.find("type=") :], origin)
            if ev is not None:
                st.events += 1
            return ev  # None: a record type nothing reads
        if msg.startswith("pam_"):
            ev = pam(msg, ts, prog, pid, origin, uid)
            if ev is not False:
                if ev is not None:
                    st.events += 1
                return ev
        table = _TABLES.get(prog)
        if table is None:
            st.other += 1
            return None
        m = table[0].match(msg)
        if m is not None:
            rx, build = table[1][m.lastindex]
            ev = build(rx.match(msg).groupdict(), ts, prog, pid, origin, uid)
            if ev is not None:
                st.events += 1
            return ev
        self._unmatched(prog)
        return None

    def _line_time(self, line: str, iso: bool, host: int) -> float | None:
        """The line's time, read once per distinct stamp (most lines that are read share
        their second with the one before)."""
        stamp = line[: host - 1] if iso else line[:15]
        if stamp != self._stamp:
            self._stamp = stamp
            self._stamp_ts = _iso(stamp) if iso else self._bsd_time(stamp.split())
        return self._stamp_ts

    def _bsd_time(self, key: list[str]) -> float | None:
        """ "Dec  3 15:33:50" split: its year is the reference's, or the one before."""
        if len(key) != 3:
            return None
        mon = _MONTHS.get(key[0])
        hms = key[2].split(":")
        if mon is None or len(hms) != 3 or not key[1].isdigit():
            return None
        year = time.localtime(self.reference).tm_year
        try:
            hh, mm, ss = (int(x) for x in hms)
        except ValueError:
            return None
        # A line from December read in January belongs to last year; a day of slack for
        # clocks and time zones.
        try:
            t = time.mktime((year, mon, int(key[1]), hh, mm, ss, 0, 0, -1))
            if t > self.reference + 86400:
                t = time.mktime((year - 1, mon, int(key[1]), hh, mm, ss, 0, 0, -1))
        except (OverflowError, ValueError):
            return None
        return t


def _iso(text: str) -> float | None:
    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        return time.mktime(d.timetuple()) + d.microsecond / 1e6
    return d.timestamp()
