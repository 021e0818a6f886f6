"""net.lateral on generated SMB/RDP fan-out (the corpus has no multi-host capture)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.detect_support import entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2

E = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
SRC = "10.20.0.5"


def _handshake(dst: str, dport: int, sport: int, t: float) -> list:
    pk = [
        E / IP(src=SRC, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=100),
        E / IP(src=dst, dst=SRC) / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101),
        E / IP(src=SRC, dst=dst) / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501),
    ]
    for i, p in enumerate(pk):
        p.time = t + i * 0.001
    return pk


def test_fanout_on_smb_and_rdp_fires(tmp_path):
    pkts = []
    for i in range(20):
        pkts += _handshake(f"10.20.1.{10 + i}", 445 if i % 2 else 3389, 50000 + i, 10.0 + i)
    found = latest(replay(write(tmp_path, pkts)), "net.lateral")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1021"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym(SRC)]
    assert sorted(entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT)) == ["3389", "445"]
    assert a.metrics["distinct_hosts"] == 20
    assert "10.20" not in a.summary


def test_few_servers_or_external_hosts_do_not_fire(tmp_path):
    pkts = []
    for i in range(5):  # a workstation and its file servers
        pkts += _handshake(f"10.20.1.{10 + i}", 445, 50000 + i, 10.0 + i)
    for i in range(30):  # external SSH servers are not lateral movement
        pkts += _handshake(f"198.51.100.{10 + i}", 22, 51000 + i, 20.0 + i)
    assert not latest(replay(write(tmp_path, pkts)), "net.lateral")


# Protocol part: remote execution seen in SMB2 / DCE-RPC (ProtectWise/401trg captures).
def _exec(name: str):
    from tests.detect_support import data

    found = [
        a for a in latest(replay(data(name)), "net.lateral") if "remote execution" in a.summary
    ]
    assert len(found) == 1, [a.summary for a in found]
    a = found[0]
    assert a.technique == "T1021"
    assert a.severity == alert_pb2.SEVERITY_HIGH
    return a


def test_psexec_service_and_dropped_executable_fire():
    a = _exec("smb2_psexec_service_add_user.pcap")
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.10.31")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.10.10")]
    assert a.metrics["service_create"] == 1 and a.metrics["service_start"] == 1
    assert a.metrics["exe_write"] >= 1
    assert "PSEXESVC" not in a.summary and "192.168" not in a.summary


def test_remote_scheduled_task_fires():
    a = _exec("smb2_atsvc_remote_scheduled_task.pcap")
    assert a.metrics["task_register"] == 1
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.10.30")]


def test_svcctl_over_plain_tcp_fires():
    a = _exec("dcerpc_svcctl_remote_service_start.pcap")
    assert a.metrics["service_start"] == 1
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["dcerpc"]


def test_remote_exec_can_be_turned_off():
    from tests.detect_support import data

    alerts = replay(data("smb2_psexec_service_add_user.pcap"), {"lateral": {"remote_exec": False}})
    assert not latest(alerts, "net.lateral")
