"""Self-protection: the agent keeps to its CPU and memory budget, a clinical host first.

Every `interval_seconds` the guard reads its own process (psutil: CPU since the previous
read, resident memory). Above budget ([selfguard] cpu_percent of one core, rss_mb) it
sheds work one level at a time, in this order:

    level 0  everything on
    level 1  deep decoding off (application messages: TLS, DNS, SMB, auth, DICOM/HL7)
    level 2  flow sampling: only 1 in 2 new flows is tracked (existing flows go on)
    level 3  1 in 4, level 4: 1 in 8, ... up to MAX_LEVEL (1 in 32)

and it comes back one level at a time when comfortably under budget. Hysteresis: a level
is added after UP_AFTER consecutive samples over budget, and removed after DOWN_AFTER
consecutive samples under RELAX of the budget, so the agent does not flap.

Every change is a log event (selfguard_shed / selfguard_restored) and the level is a
metric (vigie_agent_selfguard_level) and part of the systemd STATUS line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from common import logs

log = logs.get("agent.selfguard")

MAX_LEVEL = 6
UP_AFTER = 2
DOWN_AFTER = 3
RELAX = 0.7  # under 70 % of the budget counts as "back under"

ACTIONS = {
    0: "full",
    1: "deep decoding off",
}


def describe(level: int) -> str:
    if level in ACTIONS:
        return ACTIONS[level]
    return f"deep decoding off, 1 in {sample_rate(level)} new flows tracked"


def sample_rate(level: int) -> int:
    """N of '1 in N new flows tracked' at `level` (1: every flow)."""
    return 1 if level < 2 else 2 ** (level - 1)


@dataclass
class Budget:
    cpu_percent: float = 40.0  # of one core
    rss_mb: float = 200.0


class SelfGuard:
    """Decides the shedding level; `apply(level)` carries it out (the pipeline)."""

    def __init__(
        self,
        budget: Budget,
        apply: Callable[[int], None],
        process: psutil.Process | None = None,
    ) -> None:
        self.budget = budget
        self.apply = apply
        self.level = 0
        self.changes = 0
        self.last_cpu = 0.0
        self.last_rss_mb = 0.0
        self._over = 0
        self._under = 0
        self._proc = process or psutil.Process()
        self._proc.cpu_percent(None)  # start measuring from now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, cpu_percent: float, rss_mb: float) -> int:
        """One sample; returns the (possibly new) level. Pure decision + apply."""
        self.last_cpu, self.last_rss_mb = cpu_percent, rss_mb
        b = self.budget
        over = cpu_percent > b.cpu_percent or rss_mb > b.rss_mb
        under = cpu_percent < b.cpu_percent * RELAX and rss_mb < b.rss_mb * RELAX
        self._over = self._over + 1 if over else 0
        self._under = self._under + 1 if under else 0
        if self._over >= UP_AFTER and self.level < MAX_LEVEL:
            self._set(self.level + 1, cpu_percent, rss_mb)
            self._over = 0
        elif self._under >= DOWN_AFTER and self.level > 0:
            self._set(self.level - 1, cpu_percent, rss_mb)
            self._under = 0
        return self.level

    def _set(self, level: int, cpu: float, rss: float) -> None:
        event = "selfguard_shed" if level > self.level else "selfguard_restored"
        self.level = level
        self.changes += 1
        (log.warning if event == "selfguard_shed" else log.info)(
            event,
            level=level,
            action=describe(level),
            cpu_percent=round(cpu, 1),
            rss_mb=round(rss, 1),
            budget_cpu_percent=self.budget.cpu_percent,
            budget_rss_mb=self.budget.rss_mb,
        )
        self.apply(level)

    def sample(self) -> int:
        cpu = self._proc.cpu_percent(None)
        rss = self._proc.memory_info().rss / (1 << 20)
        return self.observe(cpu, rss)

    def start(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sample()
                except psutil.Error as exc:  # never let the guard kill the agent
                    log.warning("selfguard_sample_failed", error=str(exc))

        self._thread = threading.Thread(target=loop, name="vigie-selfguard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def from_settings(cfg: dict, apply: Callable[[int], None]) -> SelfGuard | None:
    s = cfg["selfguard"]
    if not s["enabled"]:
        return None
    guard = SelfGuard(Budget(s["cpu_percent"], s["rss_mb"]), apply)
    guard.start(s["interval_seconds"])
    return guard
