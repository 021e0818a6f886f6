"""Every detector the agent runs. Add a detector: one file, one line here."""

from __future__ import annotations

from agent.detect.base import Detector
from agent.detect.portscan import PortScan

DETECTORS: list[type[Detector]] = [PortScan]


def config_key(cls: type[Detector]) -> str:
    return cls.name.removeprefix("net.").removeprefix("host.")
