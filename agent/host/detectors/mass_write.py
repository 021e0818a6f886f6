"""host.mass_write — a process writing like ransomware encrypting a disk (T1486).

Two conditions, both cheap to check in this order: the process wrote at or above
`write_bytes_per_second` for `consecutive_samples` rounds in a row (from its I/O
counters, read for every process anyway), and across those rounds it held at least
`min_files` distinct files open for writing (open_files(), which the sampler lists only
for processes already above the rate). A database or a backup job writes fast to a few
files; ransomware writes fast to many.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.detect.hooks import HostWants
from agent.detect.window import Distinct
from agent.host.detectors.base import HostDetector, process_entities
from agent.host.sample import HostSample, ProcKey
from common.config import Option, one_of, positive
from vigie.v1 import alert_pb2


class _Streak:
    __slots__ = ("files", "rounds", "written")

    def __init__(self) -> None:
        self.rounds = 0
        self.written = 0.0
        self.files = Distinct(4096)


class MassWrite(HostDetector):
    name = "host.mass_write"
    technique = "T1486"
    severity = alert_pb2.SEVERITY_CRITICAL
    help = "A process writing at a ransomware-like rate to many distinct files."
    options: ClassVar[dict[str, Option]] = {
        "write_bytes_per_second": Option(
            float, 10 * 1024 * 1024.0, "Write rate that starts a streak.", positive
        ),
        "consecutive_samples": Option(int, 3, "Rounds in a row above the rate.", positive),
        "min_files": Option(int, 20, "Distinct files open for writing over the streak.", positive),
        "counter": Option(
            str,
            "write_bytes",
            "write_bytes (sent to storage) or write_chars (every write call, tmpfs included).",
            one_of("write_bytes", "write_chars"),
        ),
    }

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        # Open files are listed only for processes already above the rate: the costly part.
        rate = settings["write_bytes_per_second"]
        return HostWants(io_counter=settings["counter"], write_floor=rate, open_files_above=rate)

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.streaks: dict[ProcKey, _Streak] = {}

    def on_host(self, sample: HostSample) -> None:
        s = self.settings
        rate = s["write_bytes_per_second"]
        now: dict[ProcKey, _Streak] = {}
        for b in sample.busy:
            if b.write_rate < rate or self.allowed_process(b.process):
                continue
            st = self.streaks.get(b.key) or _Streak()
            st.rounds += 1
            st.written += b.write_rate * sample.interval
            for f in b.write_files or ():
                st.files.add(f)
            now[b.key] = st
            if st.rounds >= s["consecutive_samples"] and len(st.files) >= s["min_files"]:
                self.report(
                    subject=f"{b.process}|{b.key[0]}",
                    ts=sample.ts,
                    summary=(
                        f"mass write: {len(st.files)} files written at "
                        f"{b.write_rate / 1048576:.1f} MiB/s for {st.rounds} rounds"
                    ),
                    entities=process_entities(b.process, b.username),
                    metrics={
                        "pid": b.key[0],
                        "bytes_per_second": round(b.write_rate),
                        "bytes_written": round(st.written),
                        "files": len(st.files),
                        "rounds": st.rounds,
                    },
                )
        self.streaks = now  # a round below the rate ends the streak
