"""host.privilege — accounts and rights changed (T1136 create account, T1098 account
manipulation, T1548.003 sudo): a new account or group, an account with uid 0 that is not
root, an account added to an administrators' group, sudo by an account that never used
it (after learning) or refused, an authorized_keys file changed, root's password
changed."""

from __future__ import annotations

from typing import Any, ClassVar

from agent.logs.detectors.base import LEARNING, Learning, LogDetector, entities
from agent.logs.event import LogEvent
from common.config import Option
from vigie.v1 import alert_pb2

H, M, L = alert_pb2.SEVERITY_HIGH, alert_pb2.SEVERITY_MEDIUM, alert_pb2.SEVERITY_LOW
MAX_SUDOERS = 10_000


class Privilege(LogDetector):
    name = "host.privilege"
    technique = "T1098"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "New accounts and groups, uid 0, admin groups, first sudo, authorized_keys."
    options: ClassVar[dict[str, Option]] = {
        "admin_groups": Option(
            list,
            ["sudo", "wheel", "adm", "admin", "root", "docker", "lxd", "disk", "shadow"],
            "Groups whose new members are reported (they give root, or read every log).",
        ),
        "password_users": Option(list, ["root"], "Accounts whose password change is reported."),
        "learning_seconds": LEARNING,
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.sudoers: set[str] = set()  # accounts seen using sudo
        self.learn = Learning(settings["learning_seconds"])

    def on_log(self, ev: LogEvent) -> None:
        o = ev.outcome
        if o == "sudo":
            learning = self.learn.learning(ev.ts)
            if ev.user in self.sudoers:
                return
            if len(self.sudoers) < MAX_SUDOERS:
                self.sudoers.add(ev.user)
            if not learning and not self.allowed_event(ev):
                self._say("T1548.003", ev, "sudo", "first sudo by this account", M)
            return
        if o not in _WHAT or self.allowed_event(ev):
            return
        if o == "user_added":
            if ev.detail == "0" and ev.user != "root":
                self._say("T1136.001", ev, "uid0", "new account with uid 0 (a second root)", H)
            else:
                self._say("T1136.001", ev, "account", "new local account", M)
        elif o == "uid_changed":
            if ev.detail == "0" and ev.user != "root":
                self._say("T1098", ev, "uid0", "account changed to uid 0 (a second root)", H)
        elif o == "group_added" and ev.service not in ("useradd", "adduser"):
            # (useradd's group is the new account's own: its account alert says it)
            self._say("T1098", ev, f"group|{ev.detail}", "new local group", L, user=False)
        elif o == "group_member_added":
            if ev.detail in self.settings["admin_groups"]:
                self._say(
                    "T1098",
                    ev,
                    f"admin|{ev.detail}",
                    f"account added to the administrators' group {ev.detail}",
                    H,
                )
        elif o == "sudo_denied":
            self._say("T1548.003", ev, "sudo_denied", "sudo refused (not in sudoers)", M)
        elif o == "key_file_changed":
            self._say(
                "T1098.004",
                ev,
                f"keys|{ev.detail}",
                f"an authorized_keys file {ev.method or 'changed'}",
                M,
            )
        elif o == "password_changed" and ev.user in self.settings["password_users"]:
            self._say("T1098", ev, "password", "password changed", M)

    def _say(
        self,
        technique: str,
        ev: LogEvent,
        what: str,
        summary: str,
        severity: int,
        user: bool = True,
    ) -> None:
        ents = entities(ev)
        if not user:
            ents = [e for e in ents if e.kind != alert_pb2.KIND_USER]
        self.report_rule(
            technique,
            subject=f"{what}|{ev.user}",
            ts=ev.ts,
            summary=f"{summary} ({ev.service})",
            entities=ents,
            metrics={"uid": float(ev.detail)} if what == "uid0" else {},
            severity=severity,
        )

    def learned(self) -> dict[str, Any]:
        return {"since": self.learn.since, "sudoers": sorted(self.sudoers)}

    def restore(self, state: dict[str, Any]) -> None:
        self.learn.since = state.get("since")
        self.sudoers = {str(u) for u in state.get("sudoers", [])}


_WHAT = frozenset(
    (
        "user_added",
        "uid_changed",
        "group_added",
        "group_member_added",
        "sudo_denied",
        "key_file_changed",
        "password_changed",
    )
)
