"""net.beacon on a recorded C2 (Merlin over HTTP/3-QUIC, 15 s check-ins)."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from agent.detect.beacon import Beacon
from agent.detect.window import Series
from common.config import defaults
from tests.detect_support import data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2


def test_merlin_quic_beacon_fires():
    found = latest(replay(data("merlin_c2_http3_quic_beacon_15s.pcapng")), "net.beacon")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1071"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.0.0.4")]
    assert entity(a, alert_pb2.ROLE_INDICATOR) == ["24.199.110.233"]  # external: in clear
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT) == ["443"]
    assert 14.5 < a.metrics["interval_median_seconds"] < 15.5
    assert a.metrics["score"] >= 0.75
    assert "10.0.0.4" not in a.summary and "24.199" not in a.summary


def test_too_few_connections_do_not_score():
    alerts = replay(
        data("merlin_c2_http3_quic_beacon_15s.pcapng"), {"beacon": {"min_connections": 20}}
    )
    assert not latest(alerts, "net.beacon")


def test_irregular_connections_do_not_fire(tmp_path):
    rnd = random.Random(7)
    t, pkts = 1000.0, []
    e = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
    for _i in range(40):
        t += rnd.expovariate(1 / 20.0) + 6  # human-like gaps
        size = rnd.randint(50, 1400)
        p = e / IP(src="10.9.0.5", dst="198.51.100.9") / UDP(sport=50000, dport=443) / (b"x" * size)
        p.time = t
        pkts.append(p)
    assert not latest(replay(write(tmp_path, pkts)), "net.beacon")


def test_score_of_a_perfect_beacon_is_high():
    s = Series(64)
    for i in range(10):
        s.add(i * 60.0)
        s.sizes.append(300)
    d = Beacon(defaults(Beacon.schema()), lambda **k: None)
    assert d is not None
    from agent.detect.beacon import score

    assert score(s)["score"] > 0.95
