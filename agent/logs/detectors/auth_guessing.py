"""host.auth_guessing — password guessing read from the host's logs (T1110.001), and
sprays (T1110.003): fail2ban's jail, for every service that logs its failures.

Three counts over `window_seconds`, each reported once crossed and growing after:
- failed authentications per source (any service: sshd, PAM services, login...);
- failed authentications per account, from all sources together (a guess spread over
  many addresses);
- accounts tried per source: many accounts with few guesses each is spraying, many that
  do not exist is enumeration (both T1110.003).
A guess is a `failure` or an `invalid_user` event; PAM's line for a service that writes its
own (sshd, su, sudo, login) does not count twice, nor does the same line read from two
sources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from agent.detect.window import Distinct, KeyedWindow, Stamped
from agent.logs.detectors.base import WINDOW, LogDetector, entities
from agent.logs.event import AUTH_FAILURES, LogEvent
from common.config import Option, at_least
from vigie.v1 import alert_pb2

# A source guessing at full speed fails hundreds of times a second: its alert is told at
# most once a second of log time, the latest count held back until the next tick.
REPORT_EVERY = 1.0


class _Count(Stamped):
    __slots__ = ("first", "n", "unknown", "users")

    def __init__(self, now: float) -> None:
        self.first = now
        self.n = 0
        self.users = Distinct(256)
        self.unknown = Distinct(256)  # accounts that do not exist


class AuthGuessing(LogDetector):
    name = "host.auth_guessing"
    technique = "T1110.001"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "Failed logins in the host's logs: per source, per account, and sprays."
    options: ClassVar[dict[str, Option]] = {
        "window_seconds": WINDOW,
        "source_failures": Option(
            int, 10, "Failed authentications from one source in the window.", at_least(2)
        ),
        "user_failures": Option(
            int, 20, "Failed authentications against one account, all sources.", at_least(2)
        ),
        "spray_users": Option(
            int,
            5,
            "Distinct accounts tried from one source: a spray or enumeration.",
            at_least(2),
        ),
        "spray_guesses_per_user": Option(
            float,
            3.0,
            "At most this many guesses per account on average makes a spray.",
            at_least(1),
        ),
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        w = settings["window_seconds"]
        self.by_source: KeyedWindow[_Count] = KeyedWindow(w, _Count)
        self.by_user: KeyedWindow[_Count] = KeyedWindow(w, _Count)
        self._told: dict[str, float] = {}  # subject -> log time of its last report
        self._held: dict[str, Callable[[], None]] = {}  # subject -> its latest report

    def _tell(self, subject: str, ts: float, send: Callable[[], None]) -> None:
        last = self._told.get(subject)
        if last is None or ts - last >= REPORT_EVERY:
            self._told[subject] = ts
            self._held.pop(subject, None)
            send()
        else:
            self._held[subject] = send

    def on_log(self, ev: LogEvent) -> None:
        o = ev.outcome
        if o not in AUTH_FAILURES and o != "unknown_user":
            return
        if self.allowed_event(ev):
            return
        s = self.settings
        w = s["window_seconds"]
        if ev.source:
            c = self._count(self.by_source, ev.source, ev.ts, w)
            if ev.user:
                c.users.add(ev.user)
                if o != "failure":
                    c.unknown.add(ev.user)
            if o != "unknown_user":
                c.n += 1
                if c.n >= s["source_failures"]:
                    self._tell(f"source|{ev.source}", ev.ts, lambda: self._per_source(ev, c))
            users = len(c.users)
            if users >= s["spray_users"]:
                self._tell(f"spray|{ev.source}", ev.ts, lambda: self._spray(ev, c, users))
        if ev.user and o != "unknown_user":
            u = self._count(self.by_user, (ev.service, ev.user), ev.ts, w)
            u.n += 1
            if ev.source:
                u.users.add(ev.source)  # here: the sources
            if u.n >= s["user_failures"]:
                subject = f"user|{ev.service}|{ev.user}"
                self._tell(subject, ev.ts, lambda: self._per_user(subject, ev, u))

    def _per_user(self, subject: str, ev: LogEvent, u: _Count) -> None:
        ents = [
            e
            for e in entities(ev)
            if e.kind != alert_pb2.KIND_IP and e.kind != alert_pb2.KIND_HOSTNAME
        ]
        self.report(
            subject=subject,
            ts=ev.ts,
            summary=f"{u.n} failed {ev.service} authentications against one account "
            f"from {len(u.users)} sources",
            entities=ents,
            metrics={
                "failures": u.n,
                "sources": len(u.users),
                "seconds": round(ev.ts - u.first, 1),
            },
        )

    @staticmethod
    def _count(win: KeyedWindow, key: object, ts: float, window: float) -> _Count:
        c = win.get(key, ts)
        if ts - c.first > window:  # a new window for this key
            c.first, c.n = ts, 0
            c.users, c.unknown = Distinct(256), Distinct(256)
        return c

    def _per_source(self, ev: LogEvent, c: _Count) -> None:
        ents = entities(ev)
        self.report(
            subject=f"source|{ev.source}",
            ts=ev.ts,
            summary=f"{c.n} failed {ev.service} authentications from one source, "
            f"{len(c.users)} accounts",
            entities=ents,
            metrics={
                "failures": c.n,
                "users": len(c.users),
                "unknown_users": len(c.unknown),
                "seconds": round(ev.ts - c.first, 1),
            },
        )

    def _spray(self, ev: LogEvent, c: _Count, users: int) -> None:
        s = self.settings
        unknown = len(c.unknown)
        if c.n and c.n / users <= s["spray_guesses_per_user"]:
            what = "password spraying"
        elif unknown >= s["spray_users"]:
            what = "account enumeration"
        else:
            return  # many guesses on each of a few accounts: the per-source count's case
        self.report_rule(
            "T1110.003",
            subject=f"spray|{ev.source}",
            ts=ev.ts,
            summary=f"{what}: {users} accounts tried from one source ({unknown} unknown), "
            f"{c.n} guesses",
            entities=[e for e in entities(ev) if e.kind != alert_pb2.KIND_USER],
            metrics={"users": users, "unknown_users": unknown, "failures": c.n},
        )

    def on_tick(self, now: float) -> None:
        held, self._held = self._held, {}
        for send in held.values():
            send()
        if len(self._told) > 10_000:  # subjects told long ago: told again when due
            self._told.clear()
        self.by_source.expire(now)
        self.by_user.expire(now)
