"""net.portscan on nmap captures: the alert, and the once-a-second reporting of a
flagged source (probes in between are summed, none lost); the engine's scoring of it
(agent/engine/scan.c): first contacts, pacing, window, bound, allow-list; the scan types
beyond SYN/connect/UDP/FIN/NULL/Xmas (ACK, Window, Maimon, IP protocol, SCTP INIT,
masscan), recorded from the real tools, and what keeps lone ACKs and refused protocols
from counting when they are not probes."""

from __future__ import annotations

import time

import pytest

from agent import settings
from agent.capture.pcapfile import read_capture
from agent.detect.portscan import PortScan
from agent.detect.window import KeyedWindow
from agent.engine import EV_SCAN, Engine, Packet
from agent.pipeline import Pipeline
from common import config
from common.config import defaults
from tests.detect_support import ANON, data, entity, latest, pseudonym, replay
from vigie.v1 import alert_pb2


def test_syn_scan_reported_at_most_once_a_second_without_losing_probes():
    cfg = config.validate({}, settings.SCHEMA, "test")
    out: list = []
    pipe = Pipeline(cfg, ANON, out.append, time.time)
    first = last = None
    for ts, *rest in read_capture(str(data("nmap_syn_scan_1000ports.pcap"))):
        first = ts if first is None else first
        last = ts
        pipe.feed(ts, *rest)
    pipe.finish()
    found = latest(out, "net.portscan")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1046"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("172.16.0.8")]
    # every failed probe is counted once, though reports came at most once a second
    assert a.occurrences == a.metrics["failed_probes"] >= 900
    assert pipe.aggregator.reports <= (last - first) + 3


# The engine's scoring (agent/engine/scan.c), driven with packets ----------------------

SCANNER, OTHER = b"\x0a\x00\x00\x08", b"\x0a\x00\x01\x08"
TARGET = b"\x0a\x00\x00\x63"
SYN, RST_ACK, FIN = 0x02, 0x14, 0x01


class _Rig:
    """An engine scoring into a PortScan detector's state, reports collected."""

    def __init__(self, **settings) -> None:
        self.reports: list[dict] = []
        self.d = PortScan(defaults(PortScan.schema()) | settings, self._got)
        self.e = Engine()
        self.e.configure(scan=self.d.wants.scan)
        self.sport = 40000

    def _got(self, **kw) -> None:
        self.reports.append(kw)

    def probe(self, ts: float, dport: int, src: bytes = SCANNER, dst: bytes = TARGET,
              flags: int = SYN) -> None:  # fmt: skip
        """A probe to a closed port: refused at once."""
        self.sport += 1
        self.e.packet(Packet(ts, 60, 4, src, dst, 6, self.sport, dport, flags))
        self.e.packet(Packet(ts, 60, 4, dst, src, 6, dport, self.sport, RST_ACK))
        self.drain()

    def drain(self) -> None:
        for ev in self.e.events():
            if ev[0] == EV_SCAN:
                self.d.on_scan(ev[1])

    def counts(self) -> list[tuple[float, int]]:
        return [(r["ts"], r["count"]) for r in self.reports]


def test_flagged_source_reported_at_most_once_per_interval_probes_summed():
    rig = _Rig()
    for i in range(10):
        rig.probe(i / 10, 1000 + i)
    # the 4th failure crosses the TRW bound: reported at once, with the failures so far
    assert rig.counts() == [(0.3, 4)]
    rig.probe(1.3, 2000)  # due again: the 6 probes since, and this one
    rig.probe(1.5, 2001)
    assert rig.counts() == [(0.3, 4), (1.3, 7)]
    rig.d.on_tick(2.0)  # reported 0.7 s ago: not yet
    assert len(rig.reports) == 2
    rig.d.on_tick(2.4)  # as of its last probe
    assert rig.counts() == [(0.3, 4), (1.3, 7), (1.5, 1)]
    rig.d.on_finish(2.4)  # nothing left
    assert len(rig.reports) == 3
    last = rig.reports[-1]
    assert last["metrics"]["failed_probes"] == 12 == sum(c for _, c in rig.counts())
    assert last["metrics"]["distinct_ports"] == 12 and last["metrics"]["distinct_hosts"] == 1
    assert last["summary"] == "vertical port scan: 12 failed probes, 12 ports on 1 host(s) (syn)"
    assert [e.value for e in last["entities"]] == ["10.0.0.8", "10.0.0.99"]


def test_only_first_contacts_count_and_multicast_is_ignored():
    rig = _Rig()
    for i in range(10):
        rig.probe(i / 10, 445)  # the same service again and again: one first contact
        rig.probe(i / 10, 1000 + i, dst=b"\xe0\x00\x00\xfb")  # 224.0.0.251
    assert rig.reports == [] and len(rig.d.scan) == 1
    for i in range(3):
        rig.probe(1.0, 446 + i)
    assert rig.counts() == [(1.0, 4)]


def test_stealth_probes_flag_on_their_own():
    rig = _Rig()
    for i in range(3):  # 3 failures: under the TRW bound, at the stealth count
        rig.probe(1.0 + i, 20 + i, flags=FIN)
    (r,) = rig.reports
    assert r["metrics"]["stealth_probes"] == 3 and r["summary"].endswith("(fin)")


def test_source_forgotten_after_window_of_silence():
    for last_tick, flagged in ((9.0, True), (10.5, False)):
        rig = _Rig(window_seconds=10.0)
        for i in range(3):
            rig.probe(0.0, 1000 + i)
        rig.d.on_tick(5.0)
        rig.d.on_tick(last_tick)
        assert len(rig.d.scan) == (1 if flagged else 0)
        rig.probe(last_tick + 0.1, 2000)  # a 4th failure flags only a remembered source
        assert bool(rig.reports) is flagged


def test_sources_bounded_oldest_forgotten_and_counted(monkeypatch):
    monkeypatch.setattr(KeyedWindow, "limit", 200)  # as [flows] max_flows = 200
    rig = _Rig()
    for i in range(250):
        rig.probe(1.0, 80, src=bytes((10, 9, i >> 8, i & 255)))
    # a hundredth (2) forgotten whenever full
    assert len(rig.d.scan) == 200 and rig.d.scan.forgotten == 50
    for src in (bytes((10, 9, 0, 0)), bytes((10, 9, 0, 100))):
        for port in (81, 82, 83):
            rig.probe(2.0, port, src=src)
    # the first source started afresh (3 failures), the 101st kept its first one (4)
    assert [r["subject"] for r in rig.reports] == ["0a090064"]


def test_allowed_sources_are_not_scored():
    rig = _Rig(allow=["10.0.0.0/24"])
    for i in range(10):
        rig.probe(1.0, 1000 + i)
        rig.probe(1.0, 1000 + i, src=OTHER)
    assert [r["subject"] for r in rig.reports] == [OTHER.hex()]
    assert len(rig.d.scan) == 1  # no state at all for the allowed one
    rig.d.set_allow(rig.d.settings | {"allow": []})  # as a reload that empties the list
    for i in range(4):
        rig.probe(2.0, 2000 + i)
    assert [r["subject"] for r in rig.reports] == [OTHER.hex(), SCANNER.hex()]


def test_a_first_contact_that_succeeded_still_counts_once_the_source_scans():
    """Sources whose one contact succeeded are kept compactly (most sources at a busy
    site); the walk of one that starts scanning must still start from that success, and
    one silent for the window must be forgotten like any other."""

    def flagged_after(rig: _Rig, src: bytes, t: float) -> int:
        for n in range(1, 20):
            rig.probe(t, 3000 + n, src=src)
            if any(r["subject"] == src.hex() for r in rig.reports):
                return n
        raise AssertionError("never flagged")

    def served(rig: _Rig, ts: float, src: bytes, dport: int) -> None:
        rig.sport += 1
        rig.e.packet(Packet(ts, 60, 4, src, TARGET, 6, rig.sport, dport, SYN))
        rig.e.packet(Packet(ts, 60, 4, TARGET, src, 6, dport, rig.sport, 0x12))
        rig.drain()

    rig = _Rig(window_seconds=100.0)
    assert flagged_after(rig, SCANNER, 1.0) == 4  # no success before: the 4th failure
    one, two, gone = (bytes((10, 0, 2, i)) for i in range(3))
    for _ in range(5):
        served(rig, 2.0, one, 443)  # the same service again: one first contact
    served(rig, 2.0, two, 443)
    served(rig, 2.0, two, 80)
    served(rig, 2.0, gone, 443)
    assert len(rig.d.scan) == 4
    assert flagged_after(rig, one, 3.0) == 5  # one success to walk back first
    assert flagged_after(rig, two, 3.0) == 6  # two
    rig.d.on_tick(50.0)
    rig.d.on_tick(103.5)  # `gone` silent for more than the window: forgotten
    assert len(rig.d.scan) == 0
    assert flagged_after(rig, gone, 104.0) == 4


# The other scan types nmap documents, recorded in the lab from the real tools
# (python -m bench.scenarios.recon record tests/data/recon) ---------------------------

TYPES = [
    ("nmap_sa.pcap", "(ack)", 1000),  # -sA; -sW sends the same probes
    ("nmap_sm.pcap", "(maimon)", 1000),
    ("nmap_so.pcap", "ip-protocol", 4),  # refusals are rate-limited by the victim
    ("nmap_sy.pcap", "(sctp)", 4),  # no SCTP in this kernel: protocol unreachable
    ("masscan.pcap", "(syn)", 1000),  # stateless, at its default 100 packets/s
]


@pytest.mark.parametrize("name,style,probes", TYPES, ids=[t[0] for t in TYPES])
def test_recorded_scan_types_raise_one_alert(name, style, probes):
    alerts = replay(data(f"recon/{name}"))
    (a,) = latest(alerts, "net.portscan")
    assert style in a.summary and a.technique == "T1046"
    assert a.metrics["failed_probes"] >= probes
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.200.0.2")]
    assert {x.detector for x in alerts} == {"net.portscan"}


ACK, FIN_ACK, PSH_ACK = 0x10, 0x11, 0x18


def test_lone_acks_count_only_when_reset_and_only_towards_fanout():
    rig = _Rig()
    # sessions begun before the capture: a lone ACK answered as a session is
    for i in range(150):
        rig.sport += 1
        rig.e.packet(Packet(1.0, 60, 4, SCANNER, TARGET, 6, rig.sport, 1000 + i, ACK))
        rig.e.packet(Packet(1.0, 90, 4, TARGET, SCANNER, 6, 1000 + i, rig.sport, PSH_ACK,
                            b"x" * 30))  # fmt: skip
        rig.drain()
    assert rig.reports == []
    # stale sessions reset (a host back from sleep): under the fan-out, not scored by TRW
    for i in range(20):
        rig.probe(2.0, 3000 + i, src=OTHER, flags=ACK)
    assert rig.reports == []
    # an ACK or Maimon scan: the fan-out
    for i in range(100):
        rig.probe(3.0, 4000 + i, flags=ACK if i % 2 else FIN_ACK)
    (r,) = rig.reports
    assert r["subject"] == SCANNER.hex() and r["summary"].endswith("(ack, maimon)")
    assert r["metrics"]["distinct_ports"] == 100


def _refused(rig: _Rig, ts: float, proto: int, by: bytes = TARGET, dport: int = 0) -> None:
    """`proto` from SCANNER to TARGET, and ICMP protocol unreachable from `by`."""
    l4 = dport.to_bytes(2, "big") * 2 + bytes(4) if proto == 132 else b""
    ip_hdr = bytes((0x45, 0, 0, 20 + len(l4), 0, 0, 0, 0, 64, proto, 0, 0)) + SCANNER + TARGET
    rig.e.packet(Packet(ts, 34, 4, SCANNER, TARGET, proto, 0, 0, 0, l4))
    rig.e.packet(Packet(ts, 62, 4, by, SCANNER, 1, 3, 2, 0, bytes(4) + ip_hdr + l4))
    rig.drain()


def test_protocols_refused_by_their_target_make_an_ip_protocol_scan():
    rig = _Rig()
    for p in (47, 50, 51):  # GRE, ESP, AH refused: three first contacts, under the walk
        _refused(rig, 1.0, p)
    for p in range(60, 80):  # refused by a router, not by the target: not counted
        _refused(rig, 1.5, p, by=b"\x0a\x00\x00\x01")
    assert rig.reports == []
    _refused(rig, 2.0, 132, dport=2905)  # an SCTP INIT, port and all
    (r,) = rig.reports
    assert r["summary"] == (
        "vertical IP protocol scan: 4 failed probes, 4 protocols and ports on 1 host(s) "
        "(ip-protocol, sctp)"
    )
