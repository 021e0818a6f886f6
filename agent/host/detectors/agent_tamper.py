"""host.agent_tamper — someone changed the agent or stopped its service (T1562.001).

Files: the configuration, the entry point and the agent's own code are fingerprinted at
the first round (stat; sha256 only when the stat moves) and compared every round.
Service: best effort, when the agent runs under systemd and systemctl exists, the unit's
ActiveState/UnitFileState are compared with what they were at start. Paths never go in
the alert (they may hold a user's name): only counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.detect.hooks import HostWants
from agent.host.detectors.base import HostDetector, names
from agent.host.sample import HostSample
from common.config import Option, positive
from vigie.v1 import alert_pb2


class AgentTamper(HostDetector):
    name = "host.agent_tamper"
    technique = "T1562.001"
    severity = alert_pb2.SEVERITY_HIGH
    help = "The agent's configuration or code changed, or its service was stopped/disabled."
    options: ClassVar[dict[str, Option]] = {
        "watch_paths": Option(
            list, [], "More files to watch, on top of the agent's config and code.", names
        ),
        "service_unit": Option(
            str, "vigie-agent.service", "systemd unit to check; empty: no check."
        ),
        "service_check_seconds": Option(float, 60.0, "How often the unit is checked.", positive),
    }

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        return HostWants(
            watch_files=tuple(settings["watch_paths"]),
            watch_agent=True,
            service_unit=settings["service_unit"],
            service_check_seconds=settings["service_check_seconds"],
        )

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.files: dict[str, str] | None = None
        self.service: dict[str, str] | None = None

    def on_host(self, sample: HostSample) -> None:
        if sample.files:
            if self.files is None:
                self.files = dict(sample.files)
            else:
                changed = [p for p, h in sample.files.items() if self.files.get(p) != h]
                if changed:
                    missing = sum(sample.files[p] == "missing" for p in changed)
                    self.report_rule(
                        self.technique,
                        subject="files",
                        ts=sample.ts,
                        summary=f"agent tampering: {len(changed)} watched agent file(s) changed",
                        entities=[],
                        metrics={"files_changed": len(changed), "files_missing": missing},
                    )
                    self.files = dict(sample.files)  # report each change once
        if sample.service is not None:
            if self.service is None:
                self.service = dict(sample.service)
                return
            was, now = self.service, sample.service
            stopped = was.get("ActiveState") == "active" and now.get("ActiveState") != "active"
            disabled = was.get("UnitFileState") == "enabled" and now.get("UnitFileState") in (
                "disabled",
                "masked",
            )
            if stopped or disabled:
                what = " and ".join(
                    x for x, on in (("stopped", stopped), ("disabled", disabled)) if on
                )
                self.report_rule(
                    self.technique,
                    subject="service",
                    ts=sample.ts,
                    summary=f"agent tampering: agent service {what}",
                    entities=[],
                    metrics={"stopped": int(stopped), "disabled": int(disabled)},
                )
            self.service = dict(now)
