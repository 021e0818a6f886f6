"""host.cpu_saturation — one process pinning CPU for a long while (T1496, miners).

A process at or above `cpu_percent` (one core = 100) for `consecutive_samples` rounds
in a row. Batch jobs that legitimately do this (imaging reconstruction, backups,
compression) belong in the allow-list.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.detect.hooks import HostWants
from agent.host.detectors.base import HostDetector, process_entities
from agent.host.sample import HostSample, ProcKey
from common.config import Option, positive
from vigie.v1 import alert_pb2


class CpuSaturation(HostDetector):
    name = "host.cpu_saturation"
    technique = "T1496"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "Sustained CPU saturation by one process that is not allow-listed (miners)."
    options: ClassVar[dict[str, Option]] = {
        "cpu_percent": Option(float, 90.0, "CPU share (one core = 100) that counts.", positive),
        "consecutive_samples": Option(
            int, 24, "Rounds in a row at or above it (24 x 5 s = 2 minutes).", positive
        ),
    }

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        return HostWants(cpu_floor=settings["cpu_percent"])

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.streaks: dict[ProcKey, tuple[int, float]] = {}  # rounds, CPU % summed

    def on_host(self, sample: HostSample) -> None:
        s = self.settings
        now: dict[ProcKey, tuple[int, float]] = {}
        for b in sample.busy:
            if b.cpu_percent < s["cpu_percent"] or self.allowed_process(b.process):
                continue
            rounds, total = self.streaks.get(b.key, (0, 0.0))
            rounds, total = rounds + 1, total + b.cpu_percent
            now[b.key] = (rounds, total)
            if rounds >= s["consecutive_samples"]:
                self.report(
                    subject=f"{b.process}|{b.key[0]}",
                    ts=sample.ts,
                    summary=f"CPU saturation: {total / rounds:.0f}% for {rounds} rounds",
                    entities=process_entities(b.process, b.username),
                    metrics={
                        "pid": b.key[0],
                        "cpu_percent": round(total / rounds, 1),
                        "rounds": rounds,
                    },
                )
        self.streaks = now
