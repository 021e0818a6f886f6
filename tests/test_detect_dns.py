"""net.dns_tunnel on recorded tunnels (iodine, dnscat2, one base64 label), net.dga on
generated NXDOMAIN bursts; both quiet on ordinary DNS."""

from __future__ import annotations

import random

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from agent.detect.dnsname import entropy, registered_domain
from tests.detect_support import ANON, data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2


def _tunnel(name: str):
    found = latest(replay(data(name)), "net.dns_tunnel")
    assert len(found) == 1, [a.summary for a in found]
    a = found[0]
    assert a.technique == "T1071.004"
    assert a.severity == alert_pb2.SEVERITY_HIGH
    return a


def test_iodine_null_tunnel_fires():
    a = _tunnel("iodine_dns_tunnel_pirate_sea.pcap")
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.0.2.30")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("10.0.2.20")]
    # an external registered domain stays in clear: it is the indicator
    assert entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == ["pirate.sea"]
    assert a.metrics["distinct_subdomains"] >= 200
    assert a.metrics["odd_type_ratio"] == 1.0
    assert "10.0.2" not in a.summary and "pirate" not in a.summary


def test_dnscat2_without_domain_fires():
    a = _tunnel("dnscat2_dns_tunnel_cname_mx.pcap")
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.220.56")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.203.167")]
    # its names are all data: no registered domain to report
    assert entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == []
    assert a.metrics["long_high_entropy_labels"] > 50


def test_one_long_base64_label_is_enough():
    a = _tunnel("dns_exfil_base64_gzip_label.pcap")
    assert a.metrics["queries"] == 1
    assert a.metrics["max_label_length"] >= 50 and a.metrics["max_label_entropy"] > 4
    assert entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == ["test.txt"]


def test_allow_domains_silences_a_tunnel():
    alerts = replay(
        data("iodine_dns_tunnel_pirate_sea.pcap"), {"dns_tunnel": {"allow_domains": ["pirate.sea"]}}
    )
    assert not latest(alerts, "net.dns_tunnel")


def test_ordinary_dns_is_quiet():
    for name in ("dns_mixed_ad_srv_queries.pcap", "benign_mixed_ssh_http_ftp_dns_ntp.pcap"):
        alerts = replay(data(name))
        assert not [a for a in alerts if a.detector in ("net.dns_tunnel", "net.dga")]


@pytest.mark.parametrize(
    "name,reg",
    [
        ("a.b.example.com", "example.com"),
        ("www.chu-lille.fr", "chu-lille.fr"),
        ("x.y.ars.sante.gouv.fr", "sante.gouv.fr"),
        ("mail.nhs.uk", "mail.nhs.uk"),
        ("www.bbc.co.uk", "bbc.co.uk"),
        ("localhost", "localhost"),
    ],
)
def test_registered_domain(name, reg):
    assert registered_domain(name) == reg


def test_entropy():
    assert entropy("aaaa") == 0.0
    assert entropy("abcd") == 2.0


CLIENT, RESOLVER = "10.30.0.7", "10.30.0.53"
E = Ether(src="02:00:00:00:00:07", dst="02:00:00:00:00:35")


def _nx(name: str, t: float, qid: int, rcode: int = 3) -> list:
    q = E / IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40000 + qid, dport=53)
    q = q / DNS(id=qid, rd=1, qd=DNSQR(qname=name))
    r = E / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40000 + qid)
    r = r / DNS(id=qid, qr=1, rcode=rcode, qd=DNSQR(qname=name))
    q.time, r.time = t, t + 0.01
    return [q, r]


def test_dga_burst_of_random_nxdomains_fires(tmp_path):
    rng = random.Random(4)
    pkts = []
    for i in range(25):
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
        pkts += _nx(f"{label}.com", 10.0 + i, i)
    found = latest(replay(write(tmp_path, pkts)), "net.dga")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1568.002"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym(CLIENT)]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym(RESOLVER)]
    domains = entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN)
    assert domains and all(d.endswith(".com") for d in domains)  # external: in clear
    assert a.metrics["nx_random_domains"] == 25 and a.metrics["nxdomain_ratio"] == 1.0
    assert CLIENT not in a.summary


def test_dga_ignores_typos_and_internal_names(tmp_path):
    pkts = []
    words = ["wikipedia", "gooogle", "facebok", "microsft", "yahooo"]
    for i, w in enumerate(words * 3):  # readable names: low entropy or few distinct
        pkts += _nx(f"{w}.com", 10.0 + i, i)
    for i in range(20):  # AD clients ask for many internal names that do not exist
        pkts += _nx(f"wpad-{i:04x}qz7.site{i}.local", 40.0 + i, 100 + i)
    for i in range(30):  # many ordinary answers keep the NXDOMAIN rate low
        pkts += _nx(f"host{i}.example.org", 70.0 + i, 200 + i, rcode=0)
    assert not latest(replay(write(tmp_path, pkts)), "net.dga")


def test_pseudonym_of_internal_domain():
    # the anonymiser, not the detector, decides: an internal suffix is pseudonymised
    d = ANON.decide(alert_pb2.KIND_DOMAIN, "corp.local")
    assert d.pseudonymised


# The engine counts DNS for both detectors (agent/engine/dnsstat.c) --------------------


def _query(name: str, t: float, qid: int, client: str = CLIENT, qtype: int = 1):
    q = E / IP(src=client, dst=RESOLVER) / UDP(sport=30000 + qid % 30000, dport=53)
    q = q / DNS(id=qid % 65536, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    q.time = t
    return q


@pytest.mark.parametrize(
    "name",
    [
        "Mail7.Hopital.EXAMPLE",  # upper case counts as lower
        "a.b.example.co.uk",  # a listed short public suffix: three labels
        "x.y.z.gouv.fr",
        "deep.er.www.example",
        "Ünïcode-ÀÉ.sub.domaine.fr",  # Latin-1 upper case, lowered as Python lowers it
        "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop.t.example",  # a long label
    ],
)
def test_engine_reads_names_as_the_python_helpers_do(tmp_path, name):
    """The domain, the longest label and its entropy the alert reports are those
    dnsname.registered_domain() and entropy() give for the name."""
    pkts = [_query(name, 10.0, 1)]
    one = {"unique_subdomains": 1, "query_volume": 1, "long_label_length": 30}
    found = latest(replay(write(tmp_path, pkts), {"dns_tunnel": one}), "net.dns_tunnel")
    assert len(found) == 1
    lowered = name.encode().decode("latin-1").lower()  # the wire's bytes, read as Latin-1
    reg = registered_domain(lowered)
    sub = lowered[: -len(reg) - 1]
    longest = max(sub.split("."), key=len)
    a = found[0]
    assert entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == [reg]
    assert a.metrics["max_label_length"] == len(longest)
    expected = round(entropy(longest), 3) if len(longest) >= 30 else 0.0
    assert a.metrics["max_label_entropy"] == pytest.approx(expected, abs=1e-9)


def _tunnel_engine(**settings):
    from agent.detect.dns_tunnel import DnsTunnel
    from agent.engine import Engine
    from common.config import defaults
    from common.suffixes import SHORT_SUFFIXES

    e = Engine(max_flows=settings.pop("max_flows", 200_000))
    e.configure(deep={"dns"}, outcomes=False, ends=0)
    det = DnsTunnel(defaults(DnsTunnel.schema()) | settings, lambda **kw: None)
    e.configure_dns(tunnel=det.engine_config(), fresh=True, up=False,
                    short_suffixes=sorted(SHORT_SUFFIXES))  # fmt: skip
    return e


def _feed(e, pkts) -> None:
    for p in pkts:
        raw = bytes(p)
        e.feed(float(p.time), 1, len(raw), raw)


def test_engine_forgets_a_quiet_client_domain_after_the_window():
    e = _tunnel_engine(window_seconds=60.0)
    _feed(e, [_query(f"h{i}.hopital.example", 10.0 + i, i) for i in range(3)])
    assert e.read_stats()["keys"] == 1
    e.dns_tick(72.0)  # 60 s after the last query: not yet
    assert e.read_stats()["keys"] == 1
    e.dns_tick(72.5)
    assert e.read_stats()["keys"] == 0
    assert e.events() == []  # nothing went up: no on_app wanted DNS messages
    assert e.stats()["handed_up"] == 0


def test_engine_bounds_its_keys_by_the_flow_limit():
    e = _tunnel_engine(max_flows=200)
    clients = [f"10.31.{i // 250}.{i % 250 + 1}" for i in range(300)]
    _feed(e, [_query("a.hopital.example", 10.0 + i * 0.001, i, c) for i, c in enumerate(clients)])
    st = e.read_stats()
    assert st["keys"] <= 200 and st["forgotten"] >= 100  # oldest first, 1 % at a time


def test_engine_refuses_incomplete_settings_naming_the_key_and_keeps_counting():
    e = _tunnel_engine()
    _feed(e, [_query("h1.hopital.example", 10.0, 1)])
    with pytest.raises(ValueError, match="missing setting long_label_length"):
        e.configure_dns(tunnel={"ports": [53], "window_seconds": 600.0})
    _feed(e, [_query("h2.hopital.example", 11.0, 2, client="10.30.0.8")])
    assert e.read_stats()["keys"] == 2  # the settings in force still count


def test_dns_messages_reach_python_only_while_ioc_lists_domains(tmp_path):
    import json
    import time as _time

    from agent import settings as agent_settings
    from agent.pipeline import Pipeline
    from common import config

    pkts = [_query(f"h{i}.evil.example", 10.0 + i, i) for i in range(5)]
    pcap = write(tmp_path, pkts)
    from agent.capture.pcapfile import read_capture

    def run(intel: dict | None) -> tuple[int, list]:
        state = tmp_path / f"s{intel is not None}"
        state.mkdir()
        if intel is not None:
            (state / "intel.json").write_text(json.dumps(intel))
        cfg = config.validate({"state_dir": str(state)}, agent_settings.SCHEMA, "test")
        out: list = []
        pipe = Pipeline(cfg, ANON, out.append, _time.time)
        for rec in read_capture(str(pcap)):
            pipe.feed(*rec)
        pipe.finish()
        assert pipe.deep_stats.decoded["dns"] == 5  # counted either way
        return pipe.engine.stats()["handed_up"], latest(out, "net.ioc")

    up, alerts = run(None)
    assert up == 0 and not alerts
    up, alerts = run({"version": 1, "domains": ["evil.example"]})
    assert up == 5 and len(alerts) == 1
