"""net.exfil on generated uploads (the corpus has none), with Zeek-style lowered sizes."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.detect_support import entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2

E = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
HOST, USUAL, NEW = "10.30.0.5", "93.184.216.34", "203.0.113.77"
SMALL = {
    "interval_seconds": 10.0,
    "learning_intervals": 3,
    "min_bytes": 100_000,
    "large_transfer_bytes": 1_000_000,
}


def _upload(dst: str, start: float, n: int, sport: int, step: float = 0.001) -> list:
    out = []
    for i in range(n):
        p = E / IP(src=HOST, dst=dst) / TCP(sport=sport, dport=443, flags="PA") / (b"\x00" * 1400)
        p.time = start + i * step
        out.append(p)
    return out


def test_volume_above_baseline_fires(tmp_path):
    pkts = []
    for k in range(6):  # 6 quiet intervals of ~14 kB to the usual service: the baseline
        pkts += _upload(USUAL, 100.0 + 10 * k, 10, 40000)
    pkts += _upload(USUAL, 165.0, 200, 40000)  # then ~290 kB in one interval
    found = latest(replay(write(tmp_path, pkts), {"exfil": SMALL}), "net.exfil")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1048"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym(HOST)]
    assert entity(a, alert_pb2.ROLE_TARGET) == [USUAL]
    assert a.metrics["ratio"] > 10
    assert "baseline" in a.summary and HOST not in a.summary


def test_large_transfer_to_new_destination_fires(tmp_path):
    pkts = []
    for k in range(5):
        pkts += _upload(USUAL, 100.0 + 10 * k, 5, 40000)
    pkts += _upload(NEW, 151.0, 800, 41000, step=0.02)  # 1.1 MB over 16 s, new place
    found = [
        a
        for a in latest(replay(write(tmp_path, pkts), {"exfil": SMALL}), "net.exfil")
        if "new external destination" in a.summary
    ]
    assert len(found) == 1
    assert entity(found[0], alert_pb2.ROLE_TARGET) == [NEW]
    assert entity(found[0], alert_pb2.ROLE_SOURCE) == [pseudonym(HOST)]


def test_steady_uploads_and_defaults_are_quiet(tmp_path):
    pkts = []
    for k in range(12):
        pkts += _upload(USUAL, 100.0 + 10 * k, 20, 40000)
    assert not latest(replay(write(tmp_path, pkts), {"exfil": SMALL}), "net.exfil")
    assert not latest(replay(write(tmp_path, pkts, "b.pcap")), "net.exfil")
