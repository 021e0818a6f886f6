"""Host detectors, one per file. They run on host samples (agent/host/sample.py)."""

from __future__ import annotations

from agent.host.detectors.agent_tamper import AgentTamper
from agent.host.detectors.base import HostDetector
from agent.host.detectors.cpu_saturation import CpuSaturation
from agent.host.detectors.ioc_connection import IocConnection
from agent.host.detectors.listener import Listener
from agent.host.detectors.login import Login
from agent.host.detectors.mass_write import MassWrite
from agent.host.detectors.ransomware_precursor import RansomwarePrecursor
from agent.host.detectors.suspicious_exec import SuspiciousExec

HOST_DETECTORS: list[type[HostDetector]] = [
    Listener,
    SuspiciousExec,
    RansomwarePrecursor,
    MassWrite,
    CpuSaturation,
    Login,
    IocConnection,
    AgentTamper,
]
