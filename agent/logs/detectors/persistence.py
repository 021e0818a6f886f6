"""host.persistence — something set up to run again (T1053 scheduled task, T1543.002
systemd service): a crontab replaced or a cron.d file (re)loaded, an at job, and, after
the learning period, a systemd unit or timer that starts for the first time.

Units the system starts on its own schedule (sessions, user managers, package timers)
are in `ignore_units`; a new unit is reported once, then known."""

from __future__ import annotations

import fnmatch
from typing import Any, ClassVar

from agent.logs.detectors.base import LEARNING, Learning, LogDetector, entities
from agent.logs.event import LogEvent
from common.config import Option
from vigie.v1 import alert_pb2

MAX_UNITS = 20_000


def _unit_kind(unit: str) -> str:
    return unit.rsplit(".", 1)[-1] if "." in unit else "unit"


class Persistence(LogDetector):
    name = "host.persistence"
    technique = "T1053"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "A crontab or cron.d change, an at job, a systemd unit or timer never seen before."
    options: ClassVar[dict[str, Option]] = {
        "ignore_units": Option(
            list,
            [
                "session-*.scope",
                "user@*.service",
                "user-runtime-dir@*.service",
                "*.mount",
                "*.slice",
                "*.device",
                "*.target",
                "*.socket",
                "init.scope",
                "systemd-*",
                "apt-daily*",
                "man-db.*",
                "logrotate.*",
                "e2scrub*",
                "fstrim.*",
                "dpkg-db-backup.*",
                "phpsessionclean.*",
                "sysstat-*",
                "certbot.*",
                "unattended-upgrades.*",
                "packagekit.*",
                "fwupd*",
                "motd-news.*",
            ],
            "Units (shell globs) started by the system itself, never reported.",
        ),
        "learning_seconds": LEARNING,
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.units: set[str] = set()
        self.learn = Learning(settings["learning_seconds"])

    def on_log(self, ev: LogEvent) -> None:
        o = ev.outcome
        if o == "unit_started":
            self._unit(ev)
            return
        if o not in ("crontab_changed", "cron_reload", "at_job", "exec"):
            return
        if self.allowed_event(ev):
            return
        if o == "crontab_changed":
            self._say("T1053.003", ev, f"cron|{ev.user}", "a user's crontab was replaced")
        elif o == "cron_reload":
            where = ev.detail
            if where.startswith(("crontabs/", "/var/spool/cron")):
                who = where.rsplit("/", 1)[-1]
                self._say("T1053.003", ev, f"cron|{who}", "a user's crontab was replaced")
            else:
                self._say(
                    "T1053.003",
                    ev,
                    f"cron|file|{where}",
                    "a system cron file was added or changed",
                    user=False,
                )
        elif o == "at_job":
            self._say("T1053.002", ev, f"at|{ev.user}", "an at job ran")
        elif o == "exec" and ev.detail in ("at", "batch"):
            self._say("T1053.002", ev, "at|exec", "an at job was queued", user=False)

    def _unit(self, ev: LogEvent) -> None:
        unit = ev.detail
        learning = self.learn.learning(ev.ts)
        if unit in self.units:
            return
        if len(self.units) < MAX_UNITS:
            self.units.add(unit)
        if learning or any(fnmatch.fnmatchcase(unit, g) for g in self.settings["ignore_units"]):
            return
        if self.allowed_event(ev):
            return
        kind = _unit_kind(unit)
        transient = unit.startswith("run-")  # systemd-run
        technique = "T1053.006" if kind == "timer" or transient else "T1543.002"
        ents = [alert_pb2_entity(unit)] + [
            e for e in entities(ev) if e.kind != alert_pb2.KIND_PROTOCOL
        ]
        self.report_rule(
            technique,
            subject=f"unit|{unit}",
            ts=ev.ts,
            summary=f"a systemd {kind}{' (transient)' if transient else ''} started for the "
            "first time",
            entities=ents,
            metrics={"known_units": len(self.units) - 1},
        )

    def _say(
        self, technique: str, ev: LogEvent, subject: str, summary: str, user: bool = True
    ) -> None:
        ents = [e for e in entities(ev) if user or e.kind != alert_pb2.KIND_USER]
        self.report_rule(technique, subject, ev.ts, f"{summary} ({ev.service})", ents, {})

    def learned(self) -> dict[str, Any]:
        return {"since": self.learn.since, "units": sorted(self.units)}

    def restore(self, state: dict[str, Any]) -> None:
        self.learn.since = state.get("since")
        self.units = {str(u) for u in state.get("units", [])}


def alert_pb2_entity(unit: str):
    from agent.anonymise.policy import Entity

    # A unit's name, like a process's base name, is sent in clear (docs/PRIVACY.md).
    return Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_PROCESS, unit)
