"""net.dos on generated floods (the corpus holds none); live: tests/test_scenarios_live.py."""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from tests.detect_support import entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2

E = Ether(src="02:00:00:00:00:09", dst="02:00:00:00:00:01")
VICTIM = "10.9.0.1"


def test_spoofed_syn_flood(tmp_path):
    rnd = random.Random(1)
    pkts = []
    for i in range(4000):
        src = ".".join(str(rnd.randint(1, 223 if k == 0 else 254)) for k in range(4))
        p = E / IP(src=src, dst=VICTIM, ttl=rnd.randint(30, 250)) / TCP(
            sport=rnd.randint(1024, 65535), dport=443, flags="S", seq=rnd.getrandbits(32),
            window=rnd.choice((512, 1024, 64240)),
        )  # fmt: skip
        p.time = 100.0 + i / 4000  # 4,000 SYN/s for one second
        pkts.append(p)
    found = latest(replay(write(tmp_path, pkts)), "net.dos")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1498"
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym(VICTIM)]
    assert entity(a, alert_pb2.ROLE_SOURCE) == []  # spoofed: no one source to name
    assert a.metrics["spoofed"] == 1.0 and a.metrics["distinct_sources"] > 1000
    assert "SYN flood" in a.summary and "spoofed" in a.summary and VICTIM not in a.summary


def test_icmp_flood_from_one_source(tmp_path):
    pkts = []
    for i in range(3000):
        p = E / IP(src="10.9.0.66", dst=VICTIM) / ICMP(type=8, id=7, seq=i) / (b"\x00" * 56)
        p.time = 50.0 + i / 3000
        pkts.append(p)
    found = latest(replay(write(tmp_path, pkts)), "net.dos")
    assert len(found) == 1
    a = found[0]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym(VICTIM)]
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.9.0.66")]
    assert "ICMP flood" in a.summary


def test_busy_but_normal_server_is_not_a_flood(tmp_path):
    pkts = []
    for i in range(1500):  # 50 new connections per second for 30 s
        p = (
            E
            / IP(src=f"10.9.{i % 200}.{1 + i % 250}", dst=VICTIM)
            / TCP(sport=30000 + i, dport=443, flags="S")
        )
        p.time = 10.0 + i / 50
        pkts.append(p)
    assert not latest(replay(write(tmp_path, pkts)), "net.dos")


def test_quiet_targets_get_no_bucket_and_a_flood_among_them_still_fires():
    from agent.detect.base import PAIR_SYN
    from agent.detect.dos import Dos
    from common.config import defaults

    reports: list = []
    d = Dos(defaults(Dos.schema()), lambda **k: reports.append(k))
    victim = bytes((10, 9, 0, 1))
    for tick in range(3):
        now = 100.0 + tick
        # 5,000 servers getting a SYN each, and one getting 2,500 SYN in the tick
        records = [
            (bytes((10, 8, i >> 8, i & 255)), bytes((93, 184, i >> 8, i & 255)), PAIR_SYN,
             1, 60, now - 0.5, 443)
            for i in range(5000)
        ] + [(bytes((10, 8, 99, 99)), victim, PAIR_SYN, 2500, 150_000, now - 0.1, 443)]  # fmt: skip
        d.on_pairs(records, now)
        d.on_tick(now)
    assert len(d.targets) == 1  # the victim's bucket alone
    assert len(reports) == 1 and reports[0]["subject"] == victim.hex() + ":syn"
