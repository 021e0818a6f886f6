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

from agent.logs.event import LogEvent
from agent.logs.parse import accounts, audit, auth, services, sshd
from agent.logs.parse.auth import pam

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
        self._bsd_key: tuple = ()
        self._bsd_ts = 0.0
        self._iso_key = ""
        self._iso_ts = 0.0
        self.reference = time.time()  # syslog lines without a year fall before this

    def parse_block(self, text: str) -> list[LogEvent]:
        """Whole lines (newline-separated) at once: the followers' path. A line of a
        program no family reads costs a split and a set look-up, no regex."""
        out: list[LogEvent] = []
        one = self._one
        for line in text.split("\n"):
            if line:
                ev = one(line)
                if ev is not None:
                    out.append(ev)
        return out

    def parse_line(self, line: str) -> LogEvent | None:
        return self._one(line.rstrip("\n"))

    def _one(self, line: str) -> LogEvent | None:
        st = self.stats
        st.lines += 1
        # Positions found with str.find, and the message cut only for a program a family
        # reads: most lines of a busy syslog are not, and cost four C calls.
        iso = line[0].isdigit()
        if iso:  # RFC 3339: "2026-12-03T15:33:50.1+00:00 host prog[pid]: msg"
            host = line.find(" ") + 1
        elif line.startswith("type="):  # auditd's own log
            ev = audit.parse(line, self.origin)
            if ev is None:
                if audit.HEADER.match(line) is None:
                    st.malformed += 1
                return None
            st.events += 1
            return ev
        else:  # traditional: "Dec  3 15:33:50 host prog[pid]: msg" (the time is 15 wide)
            host = 16 if len(line) > 16 and line[15] == " " else 0
        prog_at = line.find(" ", host) + 1 if host else 0
        end = line.find(": ", prog_at) if prog_at else -1
        if end < 0:
            if prog_at and line.endswith(":"):
                end = len(line) - 1
            else:
                st.malformed += 1
                return None
        tok = line[prog_at:end]
        prog, _, pid = tok.partition("[")
        if prog not in _KNOWN_SET and not line.startswith("pam_", end + 2):
            base = prog.rsplit("/", 1)[-1]
            if base not in _KNOWN_SET:
                st.other += 1
                return None
        if iso:
            ts = self._time_of([line[: host - 1]], True)
        else:
            ts = self._time_of(line[:15].split(), False)
        if ts is None:
            st.malformed += 1
            return None
        pid = pid.rstrip("]")
        return self._message(ts, prog, int(pid) if pid.isdigit() else 0, line[end + 2 :], -1)

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
        rules = RULES.get(prog)
        if rules is None:
            st.other += 1
            return None
        for rx, build in rules:
            m = rx.match(msg)
            if m is not None:
                ev = build(m.groupdict(), ts, prog, pid, origin, uid)
                if ev is not None:
                    st.events += 1
                return ev
        st.unmatched += 1
        if len(st.by_program) < 256 or prog in st.by_program:
            st.by_program[prog] = st.by_program.get(prog, 0) + 1
        return None

    def _time_of(self, parts: list[str], iso: bool) -> float | None:
        if iso:
            if parts[0] != self._iso_key:
                self._iso_key, self._iso_ts = parts[0], _iso(parts[0])
            return self._iso_ts
        if len(parts) != 3:
            return None
        key = (parts[0], parts[1], parts[2])
        if key == self._bsd_key:
            return self._bsd_ts
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
        self._bsd_key, self._bsd_ts = key, t
        return t


def _iso(text: str) -> float | None:
    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        return time.mktime(d.timetuple()) + d.microsecond / 1e6
    return d.timestamp()
