"""One notion of inside: the configured `[anonymisation] internal_ranges` and
`internal_domains` are inside for the anonymiser, the engine and every detector.

The main check replays the same traffic twice: as captured (a private inside), and
rewritten by tcprewrite so that the inside is numbered with public addresses, with those
ranges configured. The alerts must be the same (detector, technique, severity, counts,
metrics, summaries; entities equal once the address mapping is applied to the
pseudonyms). Without the configuration the public inside is outside, and the detectors
that ask "internal?" go quiet: the test shows that difference too.
"""

from __future__ import annotations

import ipaddress
import random
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapReader

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.capture.pcapfile import PcapLayout, ReadStats, open_capture
from agent.detect.beacon import Beacon
from agent.detect.exfil import Exfil
from agent.detect.lateral import Lateral
from agent.detect.medical import Medical
from agent.flows.table import SUCCESS
from agent.inside import BUILTIN, Inside
from agent.pipeline import Pipeline
from common import config
from tests.detect_support import corpus, write
from vigie.v1 import alert_pb2

SECRET = b"inside-tests-secret-0123456789ab"
# Public insides: documentation (RFC 5737) and benchmarking (RFC 2544) ranges, neither
# private nor built-in inside; 198.51.100.0/24 plays the real outside.
INSIDE_24 = "203.0.113.0/24"
INSIDE_16 = "198.18.0.0/16"
OUTSIDE = "198.51.100.20"


def _cfg(ranges=(), domains=(), detectors=None) -> dict[str, Any]:
    return config.validate(
        {
            "anonymisation": {"internal_ranges": list(ranges), "internal_domains": list(domains)},
            "detectors": detectors or {},
        },
        settings.SCHEMA,
        "test",
    )


def _pipeline(cfg: dict[str, Any], out: list) -> Pipeline:
    anon = Anonymiser(SECRET, inside=Inside.from_settings(cfg["anonymisation"]))
    return Pipeline(cfg, anon, out.append, time.time)


def _replay(path: Path, cfg: dict[str, Any]) -> tuple[list, Pipeline]:
    out: list = []
    pipe = _pipeline(cfg, out)
    capture = open_capture(str(path), ReadStats())
    if isinstance(capture, PcapLayout):
        try:
            pipe.feed_pcap(capture)
        finally:
            capture.close()
    else:
        pipe.feed_pcapng(capture, ReadStats())
    pipe.finish()
    return out, pipe


def _rewrite(src: Path, dst: Path, pnat: str) -> Path:
    if shutil.which("tcprewrite") is None:
        pytest.skip("tcprewrite (tcpreplay package) is not installed; ./dev installs it")
    subprocess.run(
        ["tcprewrite", f"--pnat={pnat}", "--fixcsum", "-i", str(src), "-o", str(dst)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dst


def _address_map(a: Path, b: Path) -> dict[str, str]:
    """Every address of capture `a` -> the address at the same place in `b`."""
    pairs: dict[str, str] = {}
    with PcapReader(str(a)) as ra, PcapReader(str(b)) as rb:
        for pa, pb in zip(ra, rb, strict=True):
            if IP in pa:
                pairs[pa[IP].src] = pb[IP].src
                pairs[pa[IP].dst] = pb[IP].dst
    return pairs


def _shape(alerts: list, value=lambda v: v) -> Counter:
    """What an analyst sees of each alert (last revision per id) and how many revisions
    there were, entity values passed through `value`."""
    last: dict[str, Any] = {}
    revisions: Counter = Counter()
    for a in alerts:
        last[a.id] = a
        revisions[a.id] += 1
    return Counter(
        (
            a.detector,
            a.technique,
            a.severity,
            a.summary,
            a.occurrences,
            revisions[a.id],
            tuple(sorted(a.metrics.items())),
            tuple(sorted((e.role, e.kind, value(e.value), e.pseudonymised) for e in a.entities)),
        )
        for a in last.values()
    )


def _detectors(alerts: list) -> Counter:
    return Counter(a.detector for a in {a.id: a for a in alerts}.values())


def _same_alerts(private: Path, public: Path, ranges: list[str], detectors=None) -> list:
    """Replay both; assert the same alerts modulo the mapping; return the private ones."""
    priv_alerts, _ = _replay(private, _cfg(detectors=detectors))
    pub_alerts, pipe = _replay(public, _cfg(ranges, detectors=detectors))
    anon = pipe.anonymiser
    back: dict[str, str] = {}  # public-run value -> private-run value
    for priv, pub in _address_map(private, public).items():
        back[anon.pseudonym(alert_pb2.KIND_IP, pub)] = anon.pseudonym(alert_pb2.KIND_IP, priv)
        back[pub] = priv
    assert _shape(pub_alerts, lambda v: back.get(v, v)) == _shape(priv_alerts)
    return priv_alerts


# The same traffic, private and public inside ---------------------------------------------


def test_beacon_same_alerts_with_a_public_inside(tmp_path):
    """Merlin C2 over QUIC from 10.0.0.4, the inside renumbered into a public /24 (narrower
    than the /16 lookup table: the ranges of that /16 are asked)."""
    private = corpus("beacon/merlin_c2_http3_quic_beacon_15s.pcapng")
    public = _rewrite(private, tmp_path / "public.pcap", f"10.0.0.0/24:{INSIDE_24}")
    alerts = _same_alerts(private, public, [INSIDE_24])
    assert _detectors(alerts)["net.beacon"] >= 1
    # Unconfigured, the public inside is outside: no internal source, no beacon.
    blind, _ = _replay(public, _cfg())
    assert _detectors(blind)["net.beacon"] == 0


def test_medical_same_alerts_with_a_public_inside(tmp_path):
    """HL7 over MLLP from an inside host to a partner outside (the corpus capture with its
    server moved outside), then the inside renumbered into a public range."""
    private = _rewrite(
        corpus("hl7/hl7_mllp_orm_o01_order.pcap"),
        tmp_path / "private.pcap",
        f"10.0.0.126/32:{OUTSIDE}/32",
    )
    public = _rewrite(private, tmp_path / "public.pcap", f"10.0.0.0/24:{INSIDE_24}")
    alerts = _same_alerts(private, public, [INSIDE_24])
    external = [a for a in alerts if a.detector == "net.medical" and a.metrics["external"]]
    assert len({a.id for a in external}) == 1
    blind, _ = _replay(public, _cfg())
    assert _detectors(blind)["net.medical"] == 0


_SMALL_EXFIL = {
    "interval_seconds": 10.0,
    "learning_intervals": 3,
    "min_bytes": 100_000,
    "large_transfer_bytes": 1_000_000,
}
_E = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")


def _handshake(src: str, dst: str, dport: int, sport: int, t: float) -> list:
    pk = [
        _E / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=100),
        _E / IP(src=dst, dst=src) / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101),
        _E / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501),
    ]
    for i, p in enumerate(pk):
        p.time = t + i * 0.001
    return pk


def _upload(src: str, dst: str, start: float, n: int, sport: int, step: float) -> list:
    out = []
    for i in range(n):
        p = _E / IP(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="PA") / (b"\0" * 1400)
        p.time = start + i * step
        out.append(p)
    return out


def test_lateral_and_exfil_same_alerts_with_a_public_inside(tmp_path):
    """One inside host (10.20.0.5) reaching 20 inside hosts on SMB/RDP, then uploading
    1.1 MB to a new outside destination; the inside renumbered into a public /16."""
    pkts: list = []
    for i in range(20):
        pkts += _handshake("10.20.0.5", f"10.20.1.{10 + i}", 445 if i % 2 else 3389,
                           50000 + i, 10.0 + i)  # fmt: skip
    for k in range(5):  # the usual outside service: the host's baseline
        pkts += _upload("10.20.0.5", "93.184.216.34", 100.0 + 10 * k, 5, 40000, 0.001)
    pkts += _upload("10.20.0.5", OUTSIDE, 151.0, 800, 41000, 0.02)
    private = write(tmp_path, pkts, "private.pcap")
    public = _rewrite(private, tmp_path / "public.pcap", f"10.20.0.0/16:{INSIDE_16}")
    detectors = {"exfil": _SMALL_EXFIL}
    alerts = _same_alerts(private, public, [INSIDE_16], detectors)
    seen = _detectors(alerts)
    assert seen["net.lateral"] == 1 and seen["net.exfil"] >= 1
    blind, _ = _replay(public, _cfg(detectors=detectors))
    assert _detectors(blind)["net.lateral"] == 0 and _detectors(blind)["net.exfil"] == 0


# Inside itself -------------------------------------------------------------------------------


def test_inside_answers_as_ipaddress_does():
    """The lookup tables with ranges wider than, equal to and narrower than /16 and /24,
    nested and side by side in one /24, a single address, and IPv6, against the plain
    ipaddress answer on random addresses and at and around every boundary."""
    ranges = ["198.18.0.0/15", "203.0.113.0/24", "192.0.2.128/28", "192.0.2.0/26",
              "193.48.7.9/32", "193.48.7.0/25", "193.48.16.0/20", "2001:db8:42::/48"]  # fmt: skip
    inside = Inside(ranges)
    nets = [n for n, _ in inside.ranges]
    rng = random.Random(7)
    probes = [rng.getrandbits(32) for _ in range(3000)]
    for n in nets:
        if n.version == 4:
            lo, hi = int(n.network_address), int(n.broadcast_address)
            probes += [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]
    for a in probes:
        ip = ipaddress.IPv4Address(a % 2**32)
        assert inside.is_internal(ip.packed) == any(ip in n for n in nets if n.version == 4), ip
    for text, want in (("2001:db8:42::7", True), ("2001:db8:43::7", False),
                       ("::ffff:203.0.113.9", True), ("::ffff:203.0.114.9", False),
                       ("fd00::1", True)):  # fmt: skip
        assert inside.is_internal(ipaddress.ip_address(text).packed) is want, text
    # Without configuration the same public addresses are outside.
    for text in ("198.19.4.4", "203.0.113.9", "192.0.2.130", "193.48.7.9", "2001:db8:42::7"):
        assert not BUILTIN.is_internal(ipaddress.ip_address(text).packed)
        assert inside.is_internal(ipaddress.ip_address(text).packed)


def test_one_inside_for_anonymiser_engine_and_every_detector():
    cfg = _cfg([INSIDE_24], ["chu-exemple.fr"])
    pipe = _pipeline(cfg, [])
    assert pipe.inside is pipe.anonymiser.inside
    assert pipe.detectors and all(d.inside is pipe.inside for d in pipe.detectors)
    nets = pipe.plan.engine["internal_nets"]
    assert (ipaddress.ip_address("203.0.113.0").packed, 24) in nets
    assert pipe.anonymiser.classify_ip("203.0.113.9").internal
    assert pipe.anonymiser.classify_name("pacs.chu-exemple.fr").internal
    # A reload that restarts a detector hands the new one the same inside.
    cfg2 = _cfg([INSIDE_24], ["chu-exemple.fr"], {"beacon": {"min_connections": 8}})
    pipe.reconfigure(cfg2)
    assert all(d.inside is pipe.inside for d in pipe.detectors)
    # An anonymiser built from another inside than the configuration's is refused.
    with pytest.raises(ValueError, match="inside"):
        Pipeline(cfg, Anonymiser(SECRET), [].append, time.time)


# One check per detector family that asks "internal?" ---------------------------------------

_PUB_HOST = ipaddress.ip_address("203.0.113.5").packed
_PUB_PEER = ipaddress.ip_address("203.0.113.6").packed
_OUT = ipaddress.ip_address(OUTSIDE).packed


def _detector(cls, inside: Inside, **settings):
    found: list = []
    s = config.validate({"detectors": {cls.name[4:]: settings}}, settings_schema(), "test")
    d = cls(s["detectors"][cls.name[4:]], lambda **kw: found.append(kw))
    d.use_inside(inside)
    return d, found


def settings_schema():
    return settings.SCHEMA


@pytest.mark.parametrize("inside, watched", [(Inside([INSIDE_24]), True), (BUILTIN, False)])
def test_beacon_watches_a_configured_public_inside(inside, watched):
    b, _ = _detector(Beacon, inside)
    assert b._watched(_PUB_HOST, _OUT, 443) is watched
    assert not b._watched(_PUB_HOST, _PUB_PEER, 443) or not watched  # inside -> inside


@pytest.mark.parametrize("inside, fires", [(Inside([INSIDE_24]), True), (BUILTIN, False)])
def test_exfil_counts_a_configured_public_inside(inside, fires):
    d, found = _detector(Exfil, inside, learning_intervals=1, large_transfer_bytes=1000,
                         interval_seconds=10.0)  # fmt: skip
    d.on_pairs([(_PUB_HOST, _PUB_PEER, 0, 1, 100, 1.0, 443)], 1.0)  # learnt, inside
    d.on_pairs([(_PUB_HOST, ipaddress.ip_address("93.184.216.34").packed, 0, 1, 100, 1.0, 443)],
               1.0)  # fmt: skip
    d.on_pairs([(_PUB_HOST, _OUT, 0, 10, 5000, 25.0, 443)], 25.0)
    assert bool(found) is fires
    assert all(f["entities"][1].value == OUTSIDE for f in found)  # never the inside peer


@pytest.mark.parametrize("inside, fires", [(Inside([INSIDE_16]), True), (BUILTIN, False)])
def test_lateral_fans_out_in_a_configured_public_inside(inside, fires):
    d, found = _detector(Lateral, inside, fanout_hosts=5)
    for i in range(6):
        flow = SimpleNamespace(proto=6, dport=445, src=ipaddress.ip_address("198.18.0.5").packed,
                               dst=ipaddress.ip_address(f"198.18.1.{i}").packed)  # fmt: skip
        d.on_outcome(flow, SUCCESS, 10.0 + i)
    assert bool(found) is fires


@pytest.mark.parametrize("inside", [Inside([INSIDE_24]), BUILTIN])
def test_medical_crossing_follows_the_configured_inside(inside):
    d, found = _detector(Medical, inside)
    hl7 = SimpleNamespace(kind="hl7")
    flow = SimpleNamespace(src=_PUB_HOST, dst=_OUT, dport=2575)
    d.on_app(hl7, flow, SimpleNamespace(ts=5.0, src=_PUB_HOST, dst=_OUT, dport=2575))
    inside_peer = SimpleNamespace(src=_PUB_HOST, dst=_PUB_PEER, dport=2575)
    d.on_app(hl7, inside_peer, SimpleNamespace(ts=6.0, src=_PUB_HOST, dst=_PUB_PEER, dport=2575))
    crossing = sorted(f["subject"].rsplit(":", 1)[1] for f in found)
    if inside is BUILTIN:  # both public ends look outside: nothing crosses
        assert crossing == []
    else:  # the outside partner crosses, the inside peer does not
        assert crossing == ["external"]
        assert found[0]["entities"][1].value == OUTSIDE


def _nxdomains(names: list[str]) -> list:
    pkts = []
    for i, name in enumerate(names):
        q = DNS(id=i, rd=1, qd=DNSQR(qname=name))
        a = DNS(id=i, qr=1, rcode=3, qd=DNSQR(qname=name))
        for j, (s, d, sp, dp, m) in enumerate(
            (
                ("10.9.0.5", "10.9.0.53", 40000 + i, 53, q),
                ("10.9.0.53", "10.9.0.5", 53, 40000 + i, a),
            )
        ):
            p = _E / IP(src=s, dst=d) / UDP(sport=sp, dport=dp) / m
            p.time = 10.0 + i + j * 0.01
            pkts.append(p)
    return pkts


def test_dga_never_counts_names_of_a_configured_internal_domain(tmp_path):
    """Random-looking NXDOMAIN names: a DGA when public, an internal resolver's misses when
    under the establishment's internal domains."""
    rng = random.Random(3)
    domains = ["".join(rng.choice("bcdfghjklmnpqrstvwxz0123456789") for _ in range(12)) + ".fr"
               for _ in range(25)]  # fmt: skip
    pcap = write(tmp_path, _nxdomains([f"host{i}.{d}" for i, d in enumerate(domains)]))
    loud, _ = _replay(pcap, _cfg())
    assert _detectors(loud)["net.dga"] == 1
    quiet, pipe = _replay(pcap, _cfg(domains=domains))
    assert _detectors(quiet)["net.dga"] == 0
    dga = next(d for d in pipe.detectors if d.name == "net.dga")
    assert f".{domains[0]}" in dga.engine_config()["skip_suffixes"]


def _queries(names: list[str]) -> list:
    pkts = []
    for i, name in enumerate(names):
        q = DNS(id=i, rd=1, qd=DNSQR(qname=name, qtype="TXT"))
        p = _E / IP(src="10.9.0.5", dst="10.9.0.53") / UDP(sport=41000 + i, dport=53) / q
        p.time = 10.0 + i * 0.2
        pkts.append(p)
    return pkts


def test_dns_tunnel_never_scores_a_configured_internal_domain(tmp_path):
    """Tunnel-shaped names (long random labels, TXT) under the establishment's own zone are
    its resolvers' business; the same shape under a public domain still fires."""
    rng = random.Random(5)

    def label() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(52))

    inside = [f"{label()}.ad.chu-exemple.fr" for _ in range(40)]
    outside = [f"{label()}.pirate.sea" for _ in range(40)]
    pcap = write(tmp_path, _queries(inside + outside))

    def domains(cfg) -> set[str]:
        alerts, _ = _replay(pcap, cfg)
        return {
            e.value
            for a in alerts
            if a.detector == "net.dns_tunnel"
            for e in a.entities
            if e.kind == alert_pb2.KIND_DOMAIN
        }

    assert domains(_cfg()) == {"chu-exemple.fr", "pirate.sea"}
    assert domains(_cfg(domains=["chu-exemple.fr"])) == {"pirate.sea"}
