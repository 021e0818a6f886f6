"""The one way a family declares a rule: a regex and what its named groups mean."""

from __future__ import annotations

import re

from agent.logs.event import LogEvent

# Named groups a pattern may use: user, source, method, detail, outcome (overrides).
_SKIP = object()


def DROP(g: dict, ts: float, prog: str, pid: int, origin: str = "", uid: int = -1) -> None:
    """The builder of a rule whose line is understood and says nothing to detect (the
    parser, seeing it, skips reading the line's time)."""
    return None


def rule(pattern: str, outcome: str | None, service: str = "", method: str = ""):
    """A rule whose event takes `outcome` (None: the line is understood but dropped), the
    pattern's named groups, and `service` (default: the program's name)."""
    rx = re.compile(pattern)
    if outcome is None:
        return rx, DROP

    def build(g: dict, ts: float, prog: str, pid: int, origin: str = "", uid: int = -1) -> LogEvent:
        return LogEvent(
            ts,
            service or prog,
            g.get("outcome") or outcome,
            user=g.get("user") or "",
            source=_source(g.get("source") or ""),
            method=g.get("method") or method,
            detail=g.get("detail") or "",
            origin=origin,
            pid=pid,
            uid=uid,
        )

    return rx, build


def _source(s: str) -> str:
    # PAM's rhost is empty, a name or an address; "::ffff:1.2.3.4" is the IPv4 peer.
    s = s.strip()
    return s[7:] if s.startswith("::ffff:") and "." in s else s
