"""net.bruteforce by protocol, not by port: services recognised by their handshake on
custom ports (agent/engine/authsvc.c), failures answered in clear, successful sessions
that stay quiet."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from agent.detect.sshauth import infer_auth
from agent.engine import EV_END, Engine
from tests.detect_support import entity, latest, replay, write
from vigie.v1 import alert_pb2

C, S = "10.9.0.5", "10.9.0.1"
E = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")


def _session(sport: int, dport: int, t: float, talk: list[tuple[int, bytes]]) -> list:
    """A TCP session: handshake, the payloads (0: from the client, 1: from the server),
    the client's FIN."""
    seq = {0: 1000, 1: 5000}
    pk = [
        E / IP(src=C, dst=S) / TCP(sport=sport, dport=dport, flags="S", seq=999),
        E / IP(src=S, dst=C) / TCP(sport=dport, dport=sport, flags="SA", seq=4999, ack=1000),
        E / IP(src=C, dst=S) / TCP(sport=sport, dport=dport, flags="A", seq=1000, ack=5000),
    ]
    for who, data in talk:
        src, dst, sp, dp = (C, S, sport, dport) if who == 0 else (S, C, dport, sport)
        pk.append(
            E
            / IP(src=src, dst=dst)
            / TCP(sport=sp, dport=dp, flags="PA", seq=seq[who], ack=seq[1 - who])
            / data
        )
        seq[who] += len(data)
    pk.append(E / IP(src=C, dst=S) / TCP(sport=sport, dport=dport, flags="FA", seq=seq[0]))
    for i, p in enumerate(pk):
        p.time = t + i * 0.01
    return pk


def _mysql_greeting() -> bytes:
    body = b"\x0a" + b"10.11.6-MariaDB\x00" + b"\x01\x00\x00\x00" + b"abcdefgh\x00" + b"\x00" * 20
    return struct.pack("<I", len(body))[:3] + b"\x00" + body


def _mysql_denied() -> bytes:
    body = b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied for user"
    return struct.pack("<I", len(body))[:3] + b"\x02" + body


def _pg_startup() -> bytes:
    params = b"user\x00postgres\x00database\x00postgres\x00\x00"
    return struct.pack(">II", 8 + len(params), 0x00030000) + params


def _pg_error(code: bytes) -> bytes:
    fields = b"SFATAL\x00VFATAL\x00C" + code + b"\x00Mpassword authentication failed\x00\x00"
    return b"E" + struct.pack(">I", 4 + len(fields)) + fields


PG_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00" + b"Z\x00\x00\x00\x05I"


def _ber(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


def _ldap_bind(msgid: int) -> bytes:
    bind = _ber(0x60, b"\x02\x01\x03" + _ber(0x04, b"cn=admin") + _ber(0x80, b"guess"))
    return _ber(0x30, b"\x02\x01" + bytes([msgid]) + bind)


def _ldap_result(msgid: int, code: int) -> bytes:
    res = _ber(0x61, b"\x0a\x01" + bytes([code]) + b"\x04\x00\x04\x00")
    return _ber(0x30, b"\x02\x01" + bytes([msgid]) + res)


def _tds_prelogin() -> bytes:
    # PRELOGIN options: VERSION at 11 (6 bytes), ENCRYPTION at 17 (1 byte), terminator
    body = bytes.fromhex("0000 0b 0006 01 0011 0001 ff") + bytes.fromhex("0f0007d00000") + b"\x00"
    return b"\x12\x01" + struct.pack(">H", 8 + len(body)) + b"\x00\x00\x01\x00" + body


def _fires(pkts: list, tmp_path, name: str) -> alert_pb2.Alert:
    found = latest(replay(write(tmp_path, pkts, name)), "net.bruteforce")
    assert len(found) == 1, [a.summary for a in found]
    return found[0]


def _proto_port(a) -> tuple[list[str], list[str]]:
    return (
        entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL),
        entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT),
    )


def test_mysql_on_a_custom_port_counted_by_its_access_denied_answers(tmp_path):
    # three connections, four passwords each: 12 ERR 1045 on port 13306
    pkts = []
    for n in range(3):
        talk = [(1, _mysql_greeting())]
        for _ in range(4):
            talk += [(0, b"\x20\x00\x00\x01" + b"u" * 32), (1, _mysql_denied())]
        pkts += _session(41000 + n, 13306, n * 1.0, talk)
    a = _fires(pkts, tmp_path, "mysql.pcap")
    assert _proto_port(a) == (["mysql"], ["13306"])
    assert a.metrics["protocol_failures"] == 12 and a.metrics["short_sessions"] == 0


def test_postgresql_failures_fire_and_successful_logins_stay_quiet(tmp_path):
    bad = []
    for n in range(10):
        talk = [(0, _pg_startup()), (1, _pg_error(b"28P01"))]
        bad += _session(42000 + n, 15432, n * 1.0, talk)
    a = _fires(bad, tmp_path, "pg_bad.pcap")
    assert _proto_port(a) == (["postgresql"], ["15432"])
    # an application's pool: 30 short logins that succeed, on the standard port. By shape
    # alone (the port list) they were 30 short sessions; by protocol, no failure at all
    good = []
    for n in range(30):
        good += _session(43000 + n, 5432, n * 0.5, [(0, _pg_startup()), (1, PG_OK)])
    assert not latest(replay(write(tmp_path, good, "pg_ok.pcap")), "net.bruteforce")


def test_ldap_invalid_credentials_on_a_custom_port(tmp_path):
    pkts = []
    for n in range(11):
        talk = [(0, _ldap_bind(1)), (1, _ldap_result(1, 49))]
        pkts += _session(44000 + n, 10389, n * 1.0, talk)
    a = _fires(pkts, tmp_path, "ldap.pcap")
    assert _proto_port(a) == (["ldap"], ["10389"])
    # successful binds (resultCode 0) are not failures
    ok = []
    for n in range(20):
        ok += _session(45000 + n, 10389, n * 1.0, [(0, _ldap_bind(1)), (1, _ldap_result(1, 0))])
    assert not latest(replay(write(tmp_path, ok, "ldap_ok.pcap")), "net.bruteforce")


def test_kerberos_preauth_failures_over_udp(tmp_path):
    as_req = bytes.fromhex("6a8180308181a103020105a20302010a") + b"\x00" * 40
    # KRB-ERROR: pvno 5, msg-type 30, stime, susec, error-code 24 (PREAUTH_FAILED)
    krb_error = (
        bytes.fromhex(
            "7e5a3058a003020105a10302011ea411180f32303236313230333030303030305a"
            "a505020300d431a603020118"
        )
        + b"\x00" * 20
    )
    required = krb_error.replace(bytes.fromhex("a603020118"), bytes.fromhex("a603020119"))
    pkts = []
    for n in range(12):
        q = E / IP(src=C, dst=S) / UDP(sport=46000 + n, dport=88) / as_req
        r = E / IP(src=S, dst=C) / UDP(sport=88, dport=46000 + n) / krb_error
        q.time, r.time = n * 1.0, n * 1.0 + 0.01
        pkts += [q, r]
    a = _fires(pkts, tmp_path, "krb.pcap")
    assert _proto_port(a)[0] == ["kerberos"]
    # PREAUTH_REQUIRED (25) is the normal first answer of every logon: not a failure
    for p in pkts[1::2]:
        p[UDP].remove_payload()
        p[UDP].add_payload(required)
        del p[IP].len, p[IP].chksum, p[UDP].len, p[UDP].chksum
    assert not latest(replay(write(tmp_path, pkts, "krb_ok.pcap")), "net.bruteforce")


def test_http_401_to_requests_with_credentials_on_a_custom_port(tmp_path):
    basic = b"GET /admin/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46Z3Vlc3M=\r\n\r\n"
    denied = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n\r\n"
    login = b"POST /app/Login.php HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nu=a&p=b"
    forbidden = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    plain = b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"
    pkts = []
    for n in range(6):  # keep-alive: the challenge (not counted), two guesses; a login form
        talk = [(0, plain), (1, denied)] + [(0, basic), (1, denied)] * 2
        pkts += _session(49000 + n, 8081, n * 1.0, talk)
        pkts += _session(49100 + n, 8081, n * 1.0 + 0.5, [(0, login), (1, forbidden)])
    a = _fires(pkts, tmp_path, "http.pcap")
    assert _proto_port(a) == (["http"], ["8081"])
    assert a.metrics["protocol_failures"] == 18
    # a browser's challenge: the first request without credentials gets 401, the next one
    # with them 200; and pages that are simply not found: quiet
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    quiet = []
    for n in range(20):
        quiet += _session(50000 + n, 8081, n * 1.0, [(0, plain), (1, denied)])
        quiet += _session(50100 + n, 8081, n * 1.0 + 0.5, [(0, basic), (1, ok)])
    assert not latest(replay(write(tmp_path, quiet, "http_ok.pcap")), "net.bruteforce")


def test_rdp_on_3390_recognised_by_its_x224_handshake(tmp_path):
    cr = bytes.fromhex("030000130ee000000000000100080003000000")
    cc = bytes.fromhex("030000130ed000001234000200080001000000")
    pkts = []
    for n in range(10):
        pkts += _session(47000 + n, 3390, n * 1.0, [(0, cr), (1, cc), (0, b"\x16" * 300)])
    a = _fires(pkts, tmp_path, "rdp.pcap")
    assert _proto_port(a) == (["rdp"], ["3390"])
    assert a.metrics["short_sessions"] == 10


def test_engine_names_services_from_either_side_on_any_port(tmp_path):
    cases = {
        "ssh": [(1, b"SSH-2.0-OpenSSH_9.2p1\r\n"), (0, b"SSH-2.0-libssh_0.10.6\r\n")],
        "mysql": [(1, _mysql_greeting())],
        "postgresql": [(0, _pg_startup())],
        "ldap": [(0, _ldap_bind(1))],
        "mssql": [(0, _tds_prelogin())],
        "smb": [(0, b"\x00\x00\x00\x40\xfeSMB" + b"\x00" * 60)],
        "vnc": [(1, b"RFB 003.008\n")],
        "http": [(0, b"POST /login HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
        "": [(0, b"GET / HTTP/1.1\r\n\r\n"), (1, b"HTTP/1.1 200 OK\r\n\r\n")],
    }
    pkts = []
    for i, talk in enumerate(cases.values()):
        pkts += _session(48000 + i, 20000 + i, i * 1.0, talk)
    from agent.capture.pcapfile import read_capture

    eng = Engine(max_flows=100)
    eng.configure(ends=1)
    eng.configure_auth(True)
    for rec in read_capture(write(tmp_path, pkts, "svc.pcap")):
        eng.feed(*rec)
    eng.flush()
    got = {ev[1].dport: ev[1].service for ev in eng.events() if ev[0] == EV_END}
    assert [got[20000 + i] for i in range(len(cases))] == list(cases)
    assert eng.auth_stats()["recognised"]["ssh"] == 1


LAB = Path(__file__).parent / "data" / "authlab"


def _ssh_sizes(pcap: Path) -> dict[int, tuple[int, ...]]:
    from agent.capture.pcapfile import read_capture

    eng = Engine(max_flows=1000)
    eng.configure(ends=1)
    eng.configure_auth(True)
    for rec in read_capture(pcap):
        eng.feed(*rec)
    eng.flush()
    return {
        ev[1].sport: ev[1].ssh_sizes
        for ev in eng.events()
        if ev[0] == EV_END and ev[1].service == "ssh"
    }


def test_ssh_attempts_and_success_inferred_on_recorded_sshd_sessions():
    """Real sshd sessions (tests/data/authlab/README.md): password right and wrong, up to
    six per connection, publickey accepted and refused, keyboard-interactive over PAM,
    from paramiko, libssh (hydra), libssh2 (medusa) and OpenSSH."""
    sizes = _ssh_sizes(LAB / "ssh_sessions.pcap")
    truth = [json.loads(x) for x in (LAB / "ssh_truth.jsonl").read_text().splitlines()]
    assert {t["client"].split("_")[0] for t in truth} == {"paramiko", "libssh", "MEDUSA", "OpenSSH"}
    wrong = []
    for t in truth:
        got = infer_auth(sizes[t["port"]])
        if (got.attempts, got.success) != (t["attempts"], t["success"]):
            wrong.append((t, got))
    assert not wrong


def test_ssh_guessing_fires_by_attempts_and_successful_sessions_stay_quiet(tmp_path):
    a = latest(replay(LAB / "ssh_sessions.pcap"), "net.bruteforce")
    assert len(a) == 1
    assert _proto_port(a[0]) == (["ssh"], ["2222"])
    # 21 sessions; the alert counts the attempts inside them, not the sessions
    assert a[0].metrics["ssh_attempts"] >= 40 and a[0].metrics["short_sessions"] == 0
    # the sessions that logged in (some after a wrong password): far fewer failures
    truth = [json.loads(x) for x in (LAB / "ssh_truth.jsonl").read_text().splitlines()]
    ok = {t["port"] for t in truth if t["success"]}
    from scapy.utils import rdpcap

    pkts = [
        p
        for p in rdpcap(str(LAB / "ssh_sessions.pcap"))
        if p[TCP].sport in ok or p[TCP].dport in ok
    ]
    assert not latest(replay(write(tmp_path, pkts, "ok.pcap")), "net.bruteforce")


def test_real_postgresql_failures_on_a_custom_port():
    """psql against a real PostgreSQL 15 on 15432: 12 wrong passwords, then 3 logins."""
    a = latest(replay(LAB / "postgresql_psql_15432.pcap"), "net.bruteforce")
    assert len(a) == 1
    assert _proto_port(a[0]) == (["postgresql"], ["15432"])
    assert a[0].metrics["protocol_failures"] == 12 and a[0].metrics["short_sessions"] == 0


def test_key_login_on_a_publickey_only_server_is_no_failure():
    """Sizes seen from a real OpenSSH key login to a server with PasswordAuthentication
    off (the lab's ordinary traffic): the "none" probe's failure, listing only
    "publickey", has the size of the service accept, and the PK_OK before the signed
    request must not be taken for the failure size."""
    got = infer_auth((-316, 44, -44, 60, -44, 140, -100, 308, -28, 112, -44, 396, -500))
    assert (got.failures, got.success) == (0, True)
    # the same server refusing two keys before accepting the third
    got = infer_auth((-316, 44, -44, 60, -44, 140, -44, 140, -44, 140, -100, 308, -28))
    assert (got.failures, got.success) == (2, True)
