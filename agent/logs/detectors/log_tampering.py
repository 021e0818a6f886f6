"""host.log_tampering — the host's logs cleared or silenced (T1070.002 clear Linux logs,
T1562.012 disable the Linux audit system): a followed log truncated or deleted when no
rotated sibling holds its lines (logrotate's rename, copytruncate and compression are
told apart), journal entries gone before the agent read them while the journal keeps
little history (a vacuum, not journald's own size limits), auditd stopped or auditing
disabled."""

from __future__ import annotations

from typing import ClassVar

from agent.anonymise.policy import Entity
from agent.logs.detectors.base import LogDetector
from agent.logs.event import LogEvent
from common.config import Option, positive
from vigie.v1 import alert_pb2

_SAY = {
    "log_truncated": ("T1070.002", "a followed log was truncated outside rotation"),
    "log_deleted": ("T1070.002", "a followed log was deleted outside rotation"),
    "journal_removed": ("T1070.002", "journal entries were removed before they were read"),
    "audit_stopped": ("T1562.012", "the audit daemon stopped"),
    "audit_disabled": ("T1562.012", "kernel auditing was disabled"),
}


class LogTampering(LogDetector):
    name = "host.log_tampering"
    technique = "T1070.002"
    severity = alert_pb2.SEVERITY_HIGH
    help = "A log truncated or deleted outside rotation, the journal vacuumed, auditd stopped."
    options: ClassVar[dict[str, Option]] = {
        "journal_min_history_seconds": Option(
            float,
            86400.0,
            "Journal entries gone unread are reported when the journal then holds less "
            "history than this (journald's own size limits keep more).",
            positive,
        ),
    }

    def on_log(self, ev: LogEvent) -> None:
        said = _SAY.get(ev.outcome)
        if said is None or self.allowed_event(ev):
            return
        if ev.outcome == "journal_removed":
            kept = float(ev.detail or 0)
            if kept >= self.settings["journal_min_history_seconds"]:
                return
        technique, summary = said
        # Which log: its base name (auth.log, audit.log), never a path under a home.
        name = ev.detail.rsplit("/", 1)[-1] if ev.outcome.startswith("log_") else ev.service
        self.report_rule(
            technique,
            subject=f"{ev.outcome}|{ev.detail if ev.outcome.startswith('log_') else ''}",
            ts=ev.ts,
            summary=summary,
            entities=[Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_PROCESS, name)],
            metrics={},
        )
