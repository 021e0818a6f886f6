"""net.bruteforce on recorded password guessing (Zeek's traces) and on_app failures."""

from __future__ import annotations

from types import SimpleNamespace

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from agent.detect.bruteforce import BruteForce
from agent.flows.table import SUCCESS
from common.config import defaults
from tests.detect_support import data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2


def _one(alerts):
    found = latest(alerts, "net.bruteforce")
    assert len(found) == 1, [a.summary for a in alerts]
    a = found[0]
    assert a.technique == "T1110"
    return a


def test_ssh_password_guessing_fires():
    a = _one(replay(data("ssh_password_guessing.pcap")))
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.56.1")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.56.103")]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT) == ["22"]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["ssh"]
    # 11 connections, each a "none" probe then 2-4 attempts inside the encrypted session:
    # counted by the attempts inferred from packet sizes (agent/detect/sshauth.py), not
    # the sessions
    assert a.metrics["ssh_attempts"] == 28 and a.metrics["failed_sessions"] == 28
    assert a.metrics["short_sessions"] == 0
    assert "192.168" not in a.summary


def test_ftp_bruteforce_fires():
    a = _one(replay(data("ftp_bruteforce_30_failed_logins.pcap")))
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.56.1")]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["ftp"]
    assert a.metrics["failed_sessions"] == 30


def test_below_threshold_with_a_raised_threshold():
    alerts = replay(data("ssh_password_guessing.pcap"), {"bruteforce": {"attempts": 29}})
    assert not latest(alerts, "net.bruteforce")


def test_allow_list_silences_a_source():
    alerts = replay(
        data("ssh_password_guessing.pcap"), {"bruteforce": {"allow": ["192.168.56.0/24"]}}
    )
    assert not latest(alerts, "net.bruteforce")


def _session(sport: int, t: float, long: bool) -> list:
    c, s = "10.9.0.5", "10.9.0.1"
    e = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
    pk = [
        e / IP(src=c, dst=s) / TCP(sport=sport, dport=22, flags="S", seq=1),
        e / IP(src=s, dst=c) / TCP(sport=22, dport=sport, flags="SA", seq=9, ack=2),
        e / IP(src=c, dst=s) / TCP(sport=sport, dport=22, flags="A", seq=2, ack=10),
    ]
    for _ in range(4):
        pk.append(e / IP(src=c, dst=s) / TCP(sport=sport, dport=22, flags="PA") / (b"x" * 200))
    pk.append(e / IP(src=c, dst=s) / TCP(sport=sport, dport=22, flags="FA"))
    for i, p in enumerate(pk):
        p.time = t + (i * 10.0 if long and i >= 3 else i * 0.05)
    return pk


def test_long_ssh_sessions_do_not_count(tmp_path):
    pkts = []
    for n in range(15):
        pkts += _session(40000 + n, n * 100.0, long=True)
    assert not latest(replay(write(tmp_path, pkts)), "net.bruteforce")
    pkts = []
    for n in range(15):
        pkts += _session(40000 + n, n * 2.0, long=False)
    assert latest(replay(write(tmp_path, pkts, "short.pcap")), "net.bruteforce")


def test_on_app_counts_ftp_and_smb_logon_failures_duck_typed():
    reports = []
    d = BruteForce(defaults(BruteForce.schema()) | {"attempts": 3}, lambda **k: reports.append(k))
    flow = SimpleNamespace(
        src=b"\x0a\x00\x00\x05", sport=50000, dst=b"\x0a\x00\x00\x01", dport=21, proto=6,
        first=0.0, last=0.0, pkts_o=0, pkts_r=0, bytes_o=0, bytes_r=0, service="",
    )  # fmt: skip
    d.on_outcome(flow, SUCCESS, 0.0)
    d.on_app(SimpleNamespace(kind="ftp", login_failed=True), flow, SimpleNamespace(ts=1.0))
    d.on_app(SimpleNamespace(kind="ftp", event="login_failed"), flow, SimpleNamespace(ts=2.0))
    d.on_app(SimpleNamespace(kind="ftp", event="login_ok"), flow, SimpleNamespace(ts=2.5))
    d.on_app(SimpleNamespace(kind="dns"), flow, None)
    assert not reports
    smb = SimpleNamespace(**{**vars(flow), "dport": 445})
    for i, status in enumerate((0xC000006D, 0xC000006A, 0xC0000064)):
        d.on_app(SimpleNamespace(kind="smb", status=status), smb, SimpleNamespace(ts=3.0 + i))
    assert len(reports) == 1 and reports[0]["metrics"]["protocol_failures"] == 3
    d.on_app(SimpleNamespace(kind="ftp", login_failed=True), flow, SimpleNamespace(ts=9.0))
    assert len(reports) == 2  # ftp reached 3 too
    d.on_close(flow, 10.0)  # a short session, but counted through its failures already
    assert len(reports) == 2


def _sessions(n: int, first: float, port: int = 5432) -> list:
    from agent.flows.table import S_ESTABLISHED

    return [
        SimpleNamespace(
            src=b"\x0a\x00\x00\x07", sport=40000 + i, dst=b"\x0a\x00\x00\x02", dport=port,
            proto=6, first=first + i, last=first + i + 0.2, pkts_o=6, pkts_r=5, bytes_o=900,
            bytes_r=700, state=S_ESTABLISHED, closed=False, service="",
        )
        for i in range(n)
    ]  # fmt: skip


def test_sessions_ending_without_a_close_count_only_while_young():
    """A database pool's idle connections expire minutes after their short logon: not
    guesses. Connections that end (evicted, end of capture) still young without a FIN
    or RST are short sessions like closed ones."""
    reports = []
    d = BruteForce(defaults(BruteForce.schema()), lambda **k: reports.append(k))
    d.on_tick(10.0)
    for flow in _sessions(12, first=0.0):  # ended while the last tick was 10 s after them
        d.on_flow_end(flow)
    assert reports[0]["metrics"]["short_sessions"] == 10  # the threshold
    assert reports[-1]["metrics"]["short_sessions"] == 12  # and each one after
    reports.clear()
    d = BruteForce(defaults(BruteForce.schema()), lambda **k: reports.append(k))
    d.on_tick(400.0)  # the pool's connections expire after 300 s of silence
    for flow in _sessions(12, first=0.0):
        d.on_flow_end(flow)
    assert not reports
    for flow in _sessions(12, first=0.0):  # a FIN or RST went to on_close instead
        flow.closed = True
        d.on_flow_end(flow)
    assert not reports


def test_a_closed_session_ends_once_for_bruteforce(tmp_path):
    """The engine reports the end of a watched session only if no close was reported:
    15 short SSH sessions closed with a FIN and then expired are 15 attempts, not 30."""
    pkts = []
    for n in range(15):
        pkts += _session(40000 + n, n * 2.0, long=False)
    a = _one(replay(write(tmp_path, pkts, "closed.pcap")))
    assert a.metrics["short_sessions"] == 15 and a.metrics["failed_sessions"] == 15
