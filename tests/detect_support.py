"""Helpers for the detector tests: replay a capture through the real pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.capture.pcapfile import PcapLayout, ReadStats, open_capture
from agent.pipeline import Pipeline
from common import config
from tests.conftest import CORPUS
from vigie.v1 import alert_pb2

DATA = Path(__file__).resolve().parent / "data"
SECRET = b"detector-tests-secret-0123456789"
ANON = Anonymiser(SECRET)
ATTACK_DETECTORS = frozenset(
    (
        "net.portscan", "net.discovery", "net.bruteforce", "net.lateral", "net.dos",
        "net.dns_tunnel", "net.dga", "net.beacon", "net.exfil", "net.arp_spoof", "net.tunnel",
    )
)  # fmt: skip


def data(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"test capture {name} is missing from tests/data")
    return p


def corpus(rel: str) -> Path:
    p = CORPUS / rel
    if not p.exists():
        pytest.skip(f"capture corpus not available ({p})")
    return p


def replay(path: Path, detectors: dict[str, dict[str, Any]] | None = None) -> list:
    """All alert revisions the pipeline emits for `path`, at default settings unless
    `detectors` overrides some ({"dos": {"syn_capacity": 10}})."""
    cfg = config.validate({"detectors": detectors or {}}, settings.SCHEMA, "test")
    out: list[alert_pb2.Alert] = []
    pipe = Pipeline(cfg, ANON, out.append, time.time)
    # as `vigie-agent replay` walks it: classic pcap and runs of pcapng packet blocks in
    # the engine, events handed over in batches
    capture = open_capture(str(path), ReadStats())
    if isinstance(capture, PcapLayout):
        try:
            pipe.feed_pcap(capture)
        finally:
            capture.close()
    else:
        pipe.feed_pcapng(capture, ReadStats())
    pipe.finish()
    return out


def write(tmp_path: Path, packets: list, name: str = "gen.pcap") -> Path:
    from scapy.utils import wrpcap

    p = tmp_path / name
    wrpcap(str(p), packets)
    return p


def latest(alerts: list, detector: str) -> list:
    """The last revision of each alert of `detector`."""
    by_id = {}
    for a in alerts:
        if a.detector == detector:
            by_id[a.id] = a
    return list(by_id.values())


def entity(alert, role: int, kind: int = alert_pb2.KIND_IP) -> list[str]:
    return [e.value for e in alert.entities if e.role == role and e.kind == kind]


def pseudonym(ip: str) -> str:
    return ANON.pseudonym(alert_pb2.KIND_IP, ip)
