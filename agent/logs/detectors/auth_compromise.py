"""host.auth_compromise — a login that succeeded where it should not have: from a source
that failed many times just before (a guess that worked, T1110), or, once the learning
period is over, from a source never seen for that account (T1078, valid accounts).

The first is the signal the national service most needs: one success after a hundred
failures is a compromised account. Failures are counted per source over
`lookback_seconds`, whatever the service and account; the success names both counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.detect.window import KeyedWindow, Stamped
from agent.logs.detectors.base import LEARNING, Learning, LogDetector, entities
from agent.logs.event import AUTH_FAILURES, LogEvent
from common.config import Option, at_least, positive
from vigie.v1 import alert_pb2

MAX_ACCOUNTS = 10_000
MAX_SOURCES = 256  # per account; past it the account is too roaming to learn


class _Fails(Stamped):
    __slots__ = ("first", "n", "users")

    def __init__(self, now: float) -> None:
        self.first = now
        self.n = 0
        self.users: set[str] = set()


class AuthCompromise(LogDetector):
    name = "host.auth_compromise"
    technique = "T1110"
    severity = alert_pb2.SEVERITY_HIGH
    help = "A successful login after many failures from its source, or from a new source."
    options: ClassVar[dict[str, Option]] = {
        "failures_before": Option(
            int,
            5,
            "Failures from the source before a success that make it suspect.",
            at_least(1),
        ),
        "lookback_seconds": Option(
            float, 3600.0, "How long failures from a source are remembered.", positive
        ),
        "new_source": Option(
            bool, True, "After learning, report a login from a source new for the account."
        ),
        "learning_seconds": LEARNING,
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.fails: KeyedWindow[_Fails] = KeyedWindow(settings["lookback_seconds"], _Fails)
        self.known: dict[str, set[str]] = {}  # account -> sources it logged in from
        self.learn = Learning(settings["learning_seconds"])

    def on_log(self, ev: LogEvent) -> None:
        if not ev.source:
            return  # local logins: no source to suspect
        if ev.outcome in AUTH_FAILURES:
            f = self.fails.get(ev.source, ev.ts)
            if ev.ts - f.first > self.settings["lookback_seconds"]:
                f.first, f.n, f.users = ev.ts, 0, set()
            f.n += 1
            if ev.user and len(f.users) < 64:
                f.users.add(ev.user)
            return
        if ev.outcome != "success":
            return
        learning = self.learn.learning(ev.ts)
        seen = self.known.get(ev.user)
        new = seen is None or ev.source not in seen
        before = len(seen) if seen else 0
        if new and (seen is not None or len(self.known) < MAX_ACCOUNTS):
            s = self.known.setdefault(ev.user, set())
            if len(s) < MAX_SOURCES:
                s.add(ev.source)
        if self.allowed_event(ev):
            return
        f = self.fails.peek(ev.source)
        n = f.n if f is not None and ev.ts - f.first <= self.settings["lookback_seconds"] else 0
        ents = entities(ev)
        if n >= self.settings["failures_before"]:
            self.report(
                subject=f"guessed|{ev.source}|{ev.user}",
                ts=ev.ts,
                summary=f"{ev.service} login by {ev.method or 'unknown method'} succeeded "
                f"after {n} failures from its source ({len(f.users)} accounts tried)",
                entities=ents,
                metrics={
                    "failures_before": n,
                    "users_tried": len(f.users),
                    "seconds_after_first_failure": round(ev.ts - f.first, 1),
                    "user_was_tried": int(ev.user in f.users),
                },
                severity=alert_pb2.SEVERITY_CRITICAL,
            )
        elif new and not learning and self.settings["new_source"]:
            self.report_rule(
                "T1078",
                subject=f"new|{ev.source}|{ev.user}",
                ts=ev.ts,
                summary=f"{ev.service} login from a source never seen for this account "
                f"({before} known)",
                entities=ents,
                metrics={"known_sources": before, "failures_before": n},
                severity=alert_pb2.SEVERITY_MEDIUM,
            )

    def on_tick(self, now: float) -> None:
        self.fails.expire(now)

    def learned(self) -> dict[str, Any]:
        return {"since": self.learn.since, "known": {u: sorted(s) for u, s in self.known.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.learn.since = state.get("since")
        self.known = {str(u): set(s) for u, s in state.get("known", {}).items()}
