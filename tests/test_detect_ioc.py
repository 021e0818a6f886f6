"""net.ioc: indicators from state_dir/intel.json matched on flows, DNS and TLS, and a new
bundle picked up without a restart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from agent import settings
from agent.capture.pcapfile import read_capture
from agent.detect.ioc import Ioc, listed_domain
from agent.host.intel import IntelFile
from agent.pipeline import Pipeline
from common import config
from common.config import defaults
from tests.detect_support import ANON, data, entity, latest, pseudonym
from vigie.v1 import alert_pb2

C2 = "91.254.215.167"
JA3 = "a607f3a5c94c2ee592af1456f36c8367"


def _replay(path: Path, state_dir: Path, intel: dict | None) -> list:
    if intel is not None:
        (state_dir / "intel.json").write_text(json.dumps(intel))
    cfg = config.validate({"state_dir": str(state_dir)}, settings.SCHEMA, "test")
    out: list = []
    pipe = Pipeline(cfg, ANON, out.append, time.time)
    for rec in read_capture(str(path)):
        pipe.feed(*rec)
    pipe.finish()
    return out


def _one(alerts: list, summary_part: str):
    found = [a for a in latest(alerts, "net.ioc") if summary_part in a.summary]
    assert len(found) == 1, [a.summary for a in latest(alerts, "net.ioc")]
    a = found[0]
    assert a.technique == "T1071"
    assert a.severity == alert_pb2.SEVERITY_HIGH
    return a


def test_c2_address_on_the_list_fires(tmp_path):
    cap = data("tls_clienthello_to_malicious_c2_ip.pcap")
    a = _one(_replay(cap, tmp_path, {"version": 7, "ips": [C2]}), "address")
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.46.2")]
    assert entity(a, alert_pb2.ROLE_INDICATOR) == [C2]  # external indicator: in clear
    assert a.metrics["intel_version"] == 7
    assert C2 not in a.summary


def test_cidr_matches_too(tmp_path):
    cap = data("tls_clienthello_to_malicious_c2_ip.pcap")
    _one(_replay(cap, tmp_path, {"version": 1, "ips": ["91.254.215.0/24"]}), "address")


def test_no_intel_no_alert(tmp_path):
    cap = data("tls_clienthello_to_malicious_c2_ip.pcap")
    assert not latest(_replay(cap, tmp_path, None), "net.ioc")


def test_sni_and_ja3_on_the_list_fire(tmp_path):
    cap = data("tls12_chrome34_google_de.pcap")
    alerts = _replay(cap, tmp_path, {"version": 2, "domains": ["google.de"], "ja3": [JA3]})
    sni = _one(alerts, "server name")
    assert entity(sni, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_TLS_SNI) == ["google.de"]
    assert entity(sni, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.4.149")]
    ja3 = _one(alerts, "JA3")
    assert entity(ja3, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_JA3) == [JA3]
    assert "google" not in sni.summary and JA3 not in ja3.summary


def test_dns_query_for_a_listed_parent_domain_fires(tmp_path):
    cap = data("iodine_dns_tunnel_pirate_sea.pcap")
    a = _one(_replay(cap, tmp_path, {"domains": ["pirate.sea"]}), "DNS query")
    assert entity(a, alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN) == ["pirate.sea"]
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.0.2.30")]


def test_listed_domain():
    domains = frozenset({"evil.example", "bad.co.uk"})
    assert listed_domain("a.b.evil.example", domains) == "evil.example"
    assert listed_domain("evil.example", domains) == "evil.example"
    assert listed_domain("notevil.example", domains) == ""
    assert listed_domain("co.uk", domains) == ""


def test_new_bundle_is_picked_up_without_restart(tmp_path):
    path = tmp_path / "intel.json"
    found: list = []
    d = Ioc(defaults(Ioc.schema()), lambda **kw: found.append(kw))
    d.use_intel(IntelFile(path))
    flow = SimpleNamespace(
        src=bytes([10, 0, 0, 5]), dst=bytes([203, 0, 113, 9]), dport=443, outcome="success"
    )
    d.on_tick(100.0)
    d.on_outcome(flow, "success", 100.0)
    assert not found
    path.write_text(json.dumps({"version": 3, "ips": ["203.0.113.9"]}))
    os.utime(path, ns=(1, 10**18))  # a distinct stamp even on coarse file systems
    d.on_tick(100.5)  # looked at most once a second: not yet
    d.on_outcome(flow, "success", 100.5)
    assert not found
    d.on_tick(101.1)
    d.on_outcome(flow, "success", 101.1)
    assert len(found) == 1 and found[0]["metrics"]["intel_version"] == 3


def test_outcomes_reach_python_only_while_the_list_holds_addresses(tmp_path):
    cfg = config.validate({"state_dir": str(tmp_path)}, settings.SCHEMA, "test")
    pipe = Pipeline(cfg, ANON, [].append, time.time)
    pipe.tick(100.0)
    every, ports = pipe.plan.engine["outcomes"], pipe.plan.engine["outcome_ports"]
    assert not every and 22 in ports and 443 not in ports  # bruteforce's and lateral's
    path = tmp_path / "intel.json"
    path.write_text(json.dumps({"version": 3, "domains": ["evil.example"]}))
    pipe.tick(101.1)
    assert not pipe.plan.engine["outcomes"]  # domains only: flows are not matched
    path.write_text(json.dumps({"version": 4, "ips": ["203.0.113.9"]}))
    os.utime(path, ns=(1, 10**18))
    pipe.tick(102.2)
    assert pipe.plan.engine["outcomes"]
