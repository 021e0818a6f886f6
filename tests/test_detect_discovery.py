"""net.discovery: host discovery sweeps (ARP, ICMP echo/timestamp), from captures of real
tools (a held-out nmap capture of the corpus; self-made recordings of nmap, arp-scan,
fping, hping3 in the lab's namespaces, tests/data/recon/) and driven packet by packet
into the engine's counting (agent/engine/sweep.c): what makes a sweep, what stays quiet
without an allow-list (monitoring rounds, a router or DHCP server one address at a time,
gratuitous ARP), pacing, window, memory, bound, allow-list."""

from __future__ import annotations

import ipaddress
import json

import pytest

from agent.detect.discovery import Discovery
from agent.detect.window import KeyedWindow
from agent.engine import EV_SWEEP, P_ARP, Engine, Packet
from common.config import defaults
from tests.detect_support import (
    ATTACK_DETECTORS,
    corpus,
    data,
    entity,
    latest,
    pseudonym,
    replay,
)
from vigie.v1 import alert_pb2


def _one_sweep(alerts: list) -> alert_pb2.Alert:
    found = latest(alerts, "net.discovery")
    assert len(found) == 1, [a.summary for a in found]
    others = {a.detector for a in alerts} & ATTACK_DETECTORS - {"net.discovery"}
    assert others == set()
    a = found[0]
    assert a.technique == "T1018"
    return a


def test_held_out_nmap_arp_sweep_from_the_corpus():
    """zeek's nmap capture, never used to set the thresholds: 192.168.1.71 ARP-sweeps
    its /24 (the replies were not captured)."""
    a = _one_sweep(replay(corpus("scan/nmap_arp_host_discovery_sweep.pcap")))
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.1.71")]
    assert entity(a, alert_pb2.ROLE_CONTEXT) == [pseudonym("192.168.1.0")]  # the range
    assert a.metrics["prefix_length"] == 24 and a.metrics["targets"] >= 200
    assert a.metrics["answered"] == 0
    assert a.summary.startswith("ARP sweep of a /24: ")


# Recorded in the lab (python -m bench.scenarios.recon record tests/data/recon): the
# victim's link. On the segment every tool's sweep is ARP; beyond it, ICMP.
SWEEPS = [
    ("nmap_sn_arp.pcap", "ARP sweep", 24, 250),
    ("arp_scan.pcap", "ARP sweep", 24, 250),  # another tool
    ("nmap_sn_pe_icmp.pcap", "ICMP echo sweep", 24, 250),
    ("fping_g_24.pcap", "ICMP echo sweep", 24, 250),  # another tool
    # held out: random addresses of a /16, timestamp requests, hping3
    ("hping3_timestamp_sweep_16.pcap", "ICMP timestamp sweep", 16, 300),
]


@pytest.mark.parametrize("name,kind,prefix,targets", SWEEPS, ids=[s[0] for s in SWEEPS])
def test_recorded_tool_sweeps_raise_one_alert(name, kind, prefix, targets):
    a = _one_sweep(replay(data(f"recon/{name}")))
    assert kind in a.summary
    assert a.metrics["prefix_length"] == prefix and a.metrics["targets"] >= targets
    # only the victim answers on its own link
    assert a.metrics["answered"] <= 1
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.200.0.2")]


@pytest.mark.parametrize("period", [5, 30])
def test_recorded_monitoring_loop_stays_quiet(period):
    alerts = replay(data(f"recon/monitoring_loop_21_hosts_every_{period}_s.pcap"))
    assert [a.summary for a in alerts if a.detector in ATTACK_DETECTORS] == []


def test_monitoring_rounds_after_the_first_add_nothing():
    """With `min_targets` far under the loop's 21 hosts, its first round (20 of them
    consecutive: a dense block, all answering) has a sweep's shape and is reported; the
    three rounds after it probe nothing new, so the one alert stays at 21 targets."""
    alerts = replay(
        data("recon/monitoring_loop_21_hosts_every_5_s.pcap"), {"discovery": {"min_targets": 5}}
    )
    (a,) = latest(alerts, "net.discovery")
    assert a.metrics["targets"] == 21 and a.metrics["answered"] == 21


# The engine's counting (agent/engine/sweep.c), driven with packets -------------------

SCANNER = b"\x0a\x00\x00\x08"
MAC = b"\x02\x00\x00\x00\x00\x08"
BCAST = b"\xff" * 6


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class _Rig:
    """An engine counting into a Discovery detector's state, reports collected."""

    def __init__(self, **settings) -> None:
        self.reports: list[dict] = []
        self.d = Discovery(defaults(Discovery.schema()) | settings, self._got)
        self.e = Engine()
        self.e.configure(sweep=self.d.wants.sweep)

    def _got(self, **kw) -> None:
        self.reports.append(kw)

    def arp(self, ts: float, target: bytes, src: bytes = SCANNER, answered: bool = False,
            op: int = 1) -> None:  # fmt: skip
        self.e.packet(Packet(ts, 42, 0, src, target, P_ARP, smac=MAC, dmac=BCAST, op=op))
        if answered:
            self.e.packet(Packet(ts, 42, 0, target, src, P_ARP, smac=MAC, dmac=MAC, op=2))
        self.drain()

    def ping(self, ts: float, target: bytes, src: bytes = SCANNER, answered: bool = False,
             icmp_type: int = 8) -> None:  # fmt: skip
        v6 = len(src) == 16
        proto, reply = (58, 129) if v6 else (1, icmp_type - 8 if icmp_type == 8 else icmp_type + 1)
        ver = 6 if v6 else 4
        self.e.packet(Packet(ts, 98, ver, src, target, proto, icmp_type if not v6 else 128, 0))
        if answered:
            self.e.packet(Packet(ts, 98, ver, target, src, proto, reply, 0))
        self.drain()

    def drain(self) -> None:
        for ev in self.e.events():
            if ev[0] == EV_SWEEP:
                self.d.on_sweep(ev[1])

    def subjects(self) -> list[str]:
        return sorted({r["subject"] for r in self.reports})


def _net(prefix: str) -> list[bytes]:
    return [h.packed for h in ipaddress.ip_network(prefix).hosts()]


def test_burst_over_a_silent_range_is_a_sweep_reported_paced_without_losing_probes():
    rig = _Rig()
    targets = _net("10.0.5.0/26")  # 62 addresses, 8 a second, one answering
    for i, t in enumerate(targets):
        rig.arp(i / 8, t, answered=i == 10)
    # flagged at the 24th new address, at once, with every one so far
    assert (rig.reports[0]["ts"], rig.reports[0]["count"]) == (23 / 8, 24)
    # reported again at most once a second; the end of input flushes the rest
    rig.d.on_finish(10.0)
    counts = [(r["ts"], r["count"]) for r in rig.reports]
    assert counts == [(23 / 8, 24), (31 / 8, 8), (39 / 8, 8), (47 / 8, 8), (55 / 8, 8), (61 / 8, 6)]
    last = rig.reports[-1]
    m = last["metrics"]
    assert m["targets"] == 62 and m["answered"] == 1 and m["prefix_length"] == 26
    assert last["summary"] == "ARP sweep of a /26: 62 addresses probed (97% of the range), " \
        "1 answered (2%)"  # fmt: skip
    assert [e.value for e in last["entities"]] == ["10.0.0.8", "10.0.5.0"]


def test_sweep_of_a_full_range_is_flagged_however_many_answer():
    """A mirror port sees every answer: a fully populated range answers all, yet probing
    all of it is a sweep."""
    rig = _Rig()
    for i, t in enumerate(_net("10.0.6.0/24")[:60]):
        rig.ping(1.0 + i * 0.01, t, answered=True)
    rig.d.on_finish(5.0)
    assert rig.subjects() == [SCANNER.hex()]
    m = rig.reports[-1]["metrics"]
    assert m["answered_share"] == 1.0 and m["coverage"] > 0.5


def test_first_round_over_scattered_live_hosts_then_repeats_stay_quiet():
    """A new monitoring server: 200 live hosts spread over a /16, every minute for an
    hour. Its first round answers and covers 0.3 % of the /16; later rounds are not new."""
    rig = _Rig()
    hosts = [bytes((10, 1, i, 7 + i % 50)) for i in range(200)]
    for rnd in range(60):
        for i, h in enumerate(hosts):
            rig.ping(rnd * 60.0 + i * 0.01, h, answered=True)
        rig.d.on_tick(rnd * 60.0 + 30.0)
    assert rig.reports == []


def test_repeated_rounds_are_quiet_even_when_nothing_answers():
    """Rounds over the same silent targets: only the first could look like a sweep (it
    does not here, at 20 hosts), and with the threshold under the list's size only the
    first round is flagged, never the later ones."""
    rig = _Rig(min_targets=10)
    hosts = _net("10.0.7.0/27")[:20]
    for rnd in range(10):
        for i, h in enumerate(hosts):
            rig.ping(rnd * 30.0 + i * 0.05, h)
        rig.d.on_tick(rnd * 30.0 + 20.0)
    # one report for the first round (10 new, then 10 more within the second), none after
    assert {r["ts"] < 30.0 for r in rig.reports} == {True}


def test_router_and_dhcp_server_one_address_at_a_time_stay_quiet():
    rig = _Rig()
    router, dhcp = ip("10.0.0.1"), ip("10.0.0.2")
    pool = _net("10.0.8.0/24")
    for i, t in enumerate(pool):  # a new address every 4 s, as clients come
        rig.arp(i * 4.0, t, src=router, answered=True)
        rig.ping(i * 4.0 + 1.0, t, src=dhcp)  # conflict check: the free address is silent
        rig.d.on_tick(i * 4.0 + 2.0)
    assert rig.reports == []


def test_gratuitous_arp_and_arp_probes_claim_nothing():
    rig = _Rig()
    for i, t in enumerate(_net("10.0.9.0/24")):
        rig.arp(i * 0.01, t, src=t)  # gratuitous: sender = target
        rig.arp(i * 0.01, t, src=b"\x00\x00\x00\x00")  # RFC 5227 probe
        rig.arp(i * 0.01, b"\xff\xff\xff\xff")  # broadcast target
    assert rig.reports == [] and len(rig.d.sweep) == 0


def test_ipv6_echo_sweep():
    rig = _Rig()
    base = ipaddress.ip_address("fd00::100")
    src = ip("fd00::8")
    for i in range(40):
        rig.ping(i * 0.02, (base + i).packed, src=src)
    rig.d.on_finish(2.0)
    assert rig.subjects() == [src.hex()]
    assert "ICMP echo sweep" in rig.reports[-1]["summary"]


def test_new_targets_must_come_within_the_window():
    rig = _Rig(window_seconds=10.0)
    targets = _net("10.0.10.0/24")
    for i, t in enumerate(targets[:40]):  # one every 0.5 s: 20 per window
        rig.arp(i * 0.5, t)
    assert rig.reports == []
    for i, t in enumerate(targets[40:70]):  # faster: 24 within a window
        rig.arp(30.0 + i * 0.1, t)
    assert rig.subjects() == [SCANNER.hex()]


def test_a_source_silent_for_its_memory_is_forgotten_and_its_targets_are_new_again():
    rig = _Rig(min_targets=10, memory_seconds=100.0)
    hosts = _net("10.0.11.0/28")[:12]
    for i, h in enumerate(hosts):
        rig.ping(i * 0.1, h)
    rig.d.on_finish(5.0)
    assert len(rig.reports) >= 1
    n = len(rig.reports)
    rig.d.on_tick(50.0)
    for i, h in enumerate(hosts):  # within memory: nothing new
        rig.ping(60.0 + i * 0.1, h)
    rig.d.on_tick(70.0)
    assert len(rig.reports) == n
    rig.d.on_tick(200.0)  # silent for more than memory: forgotten
    assert len(rig.d.sweep) == 0
    for i, h in enumerate(hosts):
        rig.ping(210.0 + i * 0.1, h)
    assert len(rig.reports) == n + 1


def test_allowed_sources_are_not_counted_and_a_reload_applies():
    rig = _Rig(allow=["10.0.0.0/29"])
    for i, t in enumerate(_net("10.0.12.0/24")[:30]):
        rig.arp(i * 0.01, t, src=ip("10.0.0.5"))
        rig.arp(i * 0.01, t)
    assert rig.subjects() == [SCANNER.hex()]
    assert len(rig.d.sweep) == 1  # no state for the allowed one
    rig.d.set_allow(rig.d.settings | {"allow": []})
    for i, t in enumerate(_net("10.0.13.0/24")[:30]):
        rig.arp(1.0 + i * 0.01, t, src=ip("10.0.0.5"))
    assert rig.subjects() == sorted([SCANNER.hex(), ip("10.0.0.5").hex()])


def test_sources_bounded_oldest_forgotten_and_counted(monkeypatch):
    monkeypatch.setattr(KeyedWindow, "limit", 200)
    rig = _Rig()
    for i in range(250):
        rig.arp(1.0, ip("10.0.14.1"), src=bytes((10, 9, i >> 8, i & 255)))
    assert len(rig.d.sweep) == 200 and rig.d.sweep.forgotten == 50


def _nd(rig: _Rig, ts: float, src: bytes, target: bytes, answered: bool = False) -> None:
    """A neighbour solicitation for `target` (to its solicited-node group), and the
    advertisement answering it."""
    group = bytes.fromhex("ff0200000000000000000001ff") + target[-3:]
    rig.e.packet(Packet(ts, 86, 6, src, group, 58, 135, 0, 0, bytes(4) + target))
    if answered:
        rig.e.packet(Packet(ts, 86, 6, target, src, 58, 136, 0, 0, bytes(4) + target))
    rig.drain()


def test_ipv6_neighbour_discovery_sweep_and_duplicate_address_detection():
    rig = _Rig()
    base = ipaddress.ip_address("fd00::1:0")
    src = ip("fd00::8")
    for i in range(30):
        target = (base + i).packed
        _nd(rig, i * 0.01, b"\x00" * 16, target)  # duplicate address detection: nothing
        _nd(rig, i * 0.01, src, target, answered=i < 3)
    rig.d.on_finish(1.0)
    assert rig.subjects() == [src.hex()]
    last = rig.reports[-1]
    assert last["summary"].startswith("neighbour discovery sweep of a /123: 30 addresses")
    assert last["metrics"]["answered"] == 3


def test_a_monitoring_servers_targets_outlive_a_restart():
    """A first round over 40 consecutive live hosts has a sweep's shape; after a restart
    the agent still knows them (state_dir/learned/), so the next round is quiet."""
    hosts = _net("10.0.15.0/26")[:40]
    monitor = ip("10.0.0.9")
    rig = _Rig()
    for i, h in enumerate(hosts):
        rig.ping(i * 0.01, h, src=monitor, answered=True)
    assert rig.subjects() == [monitor.hex()]
    state = json.loads(json.dumps(rig.d.learned()))  # as saved to disk and read back
    assert len(json.dumps(state)) < 2000 and "10.0.15" not in json.dumps(state)
    again = _Rig()
    again.d.restore(state)
    for i, h in enumerate(hosts):
        again.ping(60.0 + i * 0.01, h, src=monitor, answered=True)
    again.d.on_finish(70.0)
    assert again.reports == []
    # a source silent for its memory is forgotten all the same
    again.d.on_tick(60.0 + 1801.0)
    assert len(again.d.sweep) == 0
    for bad in ({"version": 2}, {"version": 1, "sources": [["0a00", 1.0, [1]]]},
                {"version": 1, "sources": [["0a000009", 1.0, ["x"]]]}):  # fmt: skip
        with pytest.raises(ValueError):
            _Rig().d.restore(bad)
