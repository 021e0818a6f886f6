"""net.arp_spoof: generated poisoning and a gratuitous storm; the corpus's ARP is quiet."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Ether

from tests.detect_support import data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2

GW, GW_MAC = "10.50.0.1", "00:11:22:33:44:01"
VICTIM, VICTIM_MAC = "10.50.0.20", "00:11:22:33:44:20"
ATTACKER_MAC = "66:77:88:99:aa:bb"


def _reply(ip: str, mac: str, to_ip: str, to_mac: str, t: float):
    p = Ether(src=mac, dst=to_mac) / ARP(op=2, psrc=ip, hwsrc=mac, pdst=to_ip, hwdst=to_mac)
    p.time = t
    return p


def test_address_claimed_by_a_new_mac_fires(tmp_path):
    pkts = [
        _reply(GW, GW_MAC, VICTIM, VICTIM_MAC, 1.0),  # the real gateway
        _reply(VICTIM, VICTIM_MAC, GW, GW_MAC, 1.5),
    ]
    for i in range(5):  # arpspoof: "the gateway is at my MAC", every 2 s
        pkts.append(_reply(GW, ATTACKER_MAC, VICTIM, VICTIM_MAC, 3.0 + 2 * i))
    found = latest(replay(write(tmp_path, pkts)), "net.arp_spoof")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1557.002"
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym(GW)]
    assert len(entity(a, alert_pb2.ROLE_SOURCE, alert_pb2.KIND_MAC)) == 1
    assert "66:77" not in a.summary and GW not in a.summary


def test_gratuitous_arp_storm_fires(tmp_path):
    pkts = []
    for i in range(60):
        p = Ether(src=ATTACKER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, psrc="10.50.0.99", hwsrc=ATTACKER_MAC, pdst="10.50.0.99"
        )
        p.time = 1.0 + i * 0.1
        pkts.append(p)
    found = [
        a for a in latest(replay(write(tmp_path, pkts)), "net.arp_spoof") if "storm" in a.summary
    ]
    assert len(found) == 1
    assert entity(found[0], alert_pb2.ROLE_SOURCE) == [pseudonym("10.50.0.99")]


def test_probes_and_steady_bindings_are_quiet(tmp_path):
    pkts = []
    for i in range(10):
        pkts.append(_reply(GW, GW_MAC, VICTIM, VICTIM_MAC, 1.0 + i * 30))
        probe = Ether(src=ATTACKER_MAC) / ARP(op=1, psrc="0.0.0.0", hwsrc=ATTACKER_MAC, pdst=GW)
        probe.time = 2.0 + i * 30
        pkts.append(probe)
    assert not latest(replay(write(tmp_path, pkts)), "net.arp_spoof")


@pytest.mark.parametrize("name", ["arp_request_reply_with_ping.pcap", "arp_who_has_reply.pcap"])
def test_corpus_arp_is_quiet(name):
    assert not latest(replay(data(name)), "net.arp_spoof")
