"""Every detector the agent runs. Add a detector: one file, one line here."""

from __future__ import annotations

from agent.detect.arp_spoof import ArpSpoof
from agent.detect.base import Detector
from agent.detect.beacon import Beacon
from agent.detect.bruteforce import BruteForce
from agent.detect.cleartext_credentials import CleartextCredentials
from agent.detect.dga import Dga
from agent.detect.discovery import Discovery
from agent.detect.dns_tunnel import DnsTunnel
from agent.detect.dos import Dos
from agent.detect.exfil import Exfil
from agent.detect.ioc import Ioc
from agent.detect.lateral import Lateral
from agent.detect.medical import Medical
from agent.detect.portscan import PortScan
from agent.detect.tunnel import Tunnel
from agent.host.detectors import HOST_DETECTORS
from agent.logs.detectors import LOG_DETECTORS

DETECTORS: list[type[Detector]] = [
    PortScan,
    Discovery,
    BruteForce,
    Lateral,
    Dos,
    Beacon,
    Exfil,
    Tunnel,
    ArpSpoof,
    DnsTunnel,
    Dga,
    Ioc,
    CleartextCredentials,
    Medical,
]


def config_key(cls: type[Detector]) -> str:
    return cls.name.removeprefix("net.").removeprefix("host.")


# Host detectors (agent/host/detectors/) share the [detectors.<name>] namespace: config_key
# drops the "net."/"host." prefix, so two detectors must never reduce to the same key.
DETECTORS += HOST_DETECTORS
DETECTORS += LOG_DETECTORS  # agent/logs/detectors: they read the host's logs
_keys = [config_key(d) for d in DETECTORS]
if len(set(_keys)) != len(_keys):
    raise RuntimeError(
        f"detector config keys collide: {sorted(k for k in _keys if _keys.count(k) > 1)}"
    )
