"""host.ransomware_precursor — what ransomware operators run before encrypting.

The rules are data: (name, regex on the command line, ATT&CK technique), validated at
load like every setting; `extra_rules` adds to the built-in ones, `disabled_rules`
drops some by name. Two rules need more than one regex:
  - service stops in a burst (T1489): N distinct services stopped, disabled or masked
    (systemctl, net stop, sc stop/config) within a window, counted over all processes;
  - backup deletion (T1490): `rm` on a path matching one of `backup_patterns`.
Command lines are matched here and go no further: the alert names the rule and the
executable's base name, the metrics hold counts.
"""

from __future__ import annotations

import fnmatch
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.host.detectors.base import HostDetector, names, process_entities
from agent.host.sample import HostSample, ProcInfo
from common.config import Option, positive
from vigie.v1 import alert_pb2

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
_EXE = r"(?:\.exe)?"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    technique: str


BUILTIN_RULES: list[dict[str, str]] = [
    {
        "name": "vss_delete_shadows",
        "pattern": rf"\bvssadmin{_EXE}\s+(delete\s+shadows|resize\s+shadowstorage)",
        "technique": "T1490",
    },
    {
        "name": "wmic_shadowcopy_delete",
        "pattern": rf"\bwmic{_EXE}\b.*\bshadowcopy\b.*\bdelete\b",
        "technique": "T1490",
    },
    {
        "name": "powershell_shadowcopy_delete",
        "pattern": r"win32_shadowcopy\b.*\b(delete|remove)",
        "technique": "T1490",
    },
    {
        "name": "wbadmin_delete_backup",
        "pattern": rf"\bwbadmin{_EXE}\s+delete\s+(catalog|systemstatebackup|backup)",
        "technique": "T1490",
    },
    {
        "name": "bcdedit_disable_recovery",
        "pattern": rf"\bbcdedit{_EXE}\b.*"
        r"(recoveryenabled\s+no|bootstatuspolicy\s+ignoreallfailures)",
        "technique": "T1490",
    },
    {
        "name": "snapshot_delete",
        "pattern": r"\b(lvremove\b.*snap|btrfs\s+subvolume\s+delete\b.*snap|zfs\s+destroy\s+\S*@)",
        "technique": "T1490",
    },
    {
        "name": "disk_wipe",
        "pattern": r"\b(shred|wipefs|blkdiscard)\b.*\s/dev/\S+"
        r"|\bdd\b.*\bof=/dev/(sd|nvme|vd|xvd|hd|md|dm-)",
        "technique": "T1561.001",
    },
]

_STOP = re.compile(
    r"\bsystemctl(?:\s+-\S+)*\s+(?:stop|disable|mask|kill)\s+(?P<units>[^;&|]+)"
    rf"|\bnet1?{_EXE}\s+stop\s+(?P<net>\S+)"
    rf"|\bsc{_EXE}\s+(?:stop|config)\s+(?P<sc>\S+)",
    re.IGNORECASE,
)
_RM = re.compile(r"(?:^|[\s;&|/])rm\s+(?P<args>[^;&|]+)")


def _rules(value: list) -> str | None:
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"item {i} must be a table {{name, pattern, technique}}"
        extra = set(item) - {"name", "pattern", "technique"}
        if extra:
            return f"item {i} has unknown key(s) {', '.join(sorted(extra))}"
        missing = {"name", "pattern", "technique"} - set(item)
        if missing:
            return f"item {i} lacks {', '.join(sorted(missing))}"
        if not isinstance(item["name"], str) or not _NAME.fullmatch(item["name"]):
            return f"item {i}: name must be lower_snake_case, got {item['name']!r}"
        if not isinstance(item["technique"], str) or not _TECHNIQUE.fullmatch(item["technique"]):
            return f"item {i}: technique must look like T1490 or T1070.004"
        try:
            re.compile(str(item["pattern"]))
        except re.error as exc:
            return f"item {i}: pattern does not compile: {exc}"
    return None


assert _rules(BUILTIN_RULES) is None, _rules(BUILTIN_RULES)


def compile_rules(extra: list[dict[str, Any]], disabled: list[str]) -> list[Rule]:
    return [
        Rule(r["name"], re.compile(r["pattern"], re.IGNORECASE), r["technique"])
        for r in [*BUILTIN_RULES, *extra]
        if r["name"] not in disabled
    ]


class RansomwarePrecursor(HostDetector):
    name = "host.ransomware_precursor"
    technique = "T1490"
    severity = alert_pb2.SEVERITY_CRITICAL
    help = "Shadow copy/backup deletion, recovery disabled, disk wipes, service-stop bursts."
    options: ClassVar[dict[str, Option]] = {
        "extra_rules": Option(
            list,
            [],
            "More rules: [{name = 'x', pattern = 'regex', technique = 'T1490'}].",
            _rules,
        ),
        "disabled_rules": Option(list, [], "Built-in rule names to switch off.", names),
        "backup_patterns": Option(
            list,
            ["*backup*", "*.bak", "*.vbk", "*.vib", "*.dump"],
            "Paths (shell globs, case-insensitive) whose deletion by rm is reported.",
            names,
        ),
        "service_stop_burst": Option(
            int, 5, "Distinct services stopped within the window that make a burst.", positive
        ),
        "service_stop_window_seconds": Option(
            float, 120.0, "Window for the service-stop burst.", positive
        ),
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.rules = compile_rules(settings["extra_rules"], settings["disabled_rules"])
        self.backup = [p.lower() for p in settings["backup_patterns"]]
        self.stops: deque[tuple[float, str, str]] = deque()  # (ts, unit, process)
        self.burst_reported_at = -1e18

    def on_host(self, sample: HostSample) -> None:
        for p in sample.processes:
            if p.event == "deleted" or not p.cmdline or self.allowed_process(p.base):
                continue
            line = " ".join(p.cmdline)
            for rule in self.rules:
                if rule.pattern.search(line):
                    self._emit(p, rule.name, rule.technique, sample.ts)
            if self._deletes_backup(line):
                self._emit(p, "backup_delete", "T1490", sample.ts)
            for m in _STOP.finditer(line):
                units = m.group("units") or m.group("net") or m.group("sc") or ""
                for u in units.split():
                    if not u.startswith("-"):
                        self.stops.append((sample.ts, u.lower().removesuffix(".service"), p.base))
        self._burst(sample.ts)

    def _deletes_backup(self, line: str) -> bool:
        for m in _RM.finditer(line):
            for arg in m.group("args").split():
                a = arg.strip("'\"").lower()
                if not a.startswith("-") and any(fnmatch.fnmatchcase(a, g) for g in self.backup):
                    return True
        return False

    def _burst(self, now: float) -> None:
        window = self.settings["service_stop_window_seconds"]
        while self.stops and now - self.stops[0][0] > window:
            self.stops.popleft()
        units = {u for _, u, _ in self.stops}
        if len(units) < self.settings["service_stop_burst"]:
            return
        if now - self.burst_reported_at < window:
            return  # one report per window; the aggregator's revision carries the growth
        self.burst_reported_at = now
        procs = sorted({b for _, _, b in self.stops})
        self.report_rule(
            "T1489",
            subject="service_stop_burst",
            ts=now,
            summary=(
                f"ransomware precursor: {len(units)} services stopped or disabled "
                f"within {window:g} s (rule service_stop_burst)"
            ),
            entities=[e for b in procs[:5] for e in process_entities(b)],
            metrics={"services": len(units), "commands": len(self.stops)},
        )

    def _emit(self, p: ProcInfo, rule: str, technique: str, ts: float) -> None:
        self.report_rule(
            technique,
            subject=f"{rule}|{p.base}",
            ts=ts,
            summary=f"ransomware precursor: command line matched rule {rule}",
            entities=process_entities(p.base, p.username),
            metrics={"pid": p.pid, "running_at_start": int(p.baseline)},
        )
