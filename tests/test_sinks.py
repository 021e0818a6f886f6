"""Incident sinks: JSON lines, syslog, HTTPS webhook, STIX 2.1 bundles.

Every network test talks to a listener started here on 127.0.0.1 (port 0).
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stix2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.sinks import OPTIONS, Sink, SinkError, build_sinks, incident_dict
from collector.sinks.jsonl import JsonlSink
from collector.sinks.stix import StixSink, bundle, file_name, pattern_for, stix_id
from collector.sinks.syslog import UDP_MAX_BYTES, SyslogSink, sd_escape
from collector.sinks.webhook import WebhookSink, retry_after
from common.config import ConfigError, load, validate
from common.pbtime import set_seconds
from vigie.v1 import alert_pb2, analyst_pb2

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
JA3 = "e7d705a3286e19ea42f587b344ee6865"
SITES = [("750000001", "GHT-75-01", "11"), ("130000002", "GHT-13-02", "93")]


# Builders -------------------------------------------------------------------------------


def make_incident(
    key: str = "multi_site_indicator|203.0.113.7|2024-05-01",
    seq: int = 17,
    *,
    rule: str = "multi_site_indicator",
    subject: str = "203.0.113.7",
    severity: int = alert_pb2.SEVERITY_HIGH,
    status: int = analyst_pb2.STATUS_OPEN,
    summary: str = "203.0.113.7 seen by 2 GHTs",
    sites: list[tuple[str, str, str]] = SITES,
    alert_count: int = 2,
) -> analyst_pb2.Incident:
    inc = analyst_pb2.Incident(
        key=key,
        rule=rule,
        subject=subject,
        severity=severity,
        status=status,
        summary=summary,
        alert_count=alert_count,
        seq=seq,
    )
    set_seconds(inc.first_seen, T0)
    set_seconds(inc.last_seen, T0 + 600)
    for finess, ght, region in sites:
        inc.sites.add(finess=finess, ght=ght, region=region)
    return inc


def make_alert(
    alert_id: str,
    site: tuple[str, str, str],
    entities: list[tuple[int, int, str, bool]],
    *,
    start: float = T0,
    occurrences: int = 3,
) -> analyst_pb2.StoredAlert:
    stored = analyst_pb2.StoredAlert()
    stored.origin.agent_id = f"agent-{site[0]}"
    stored.origin.finess, stored.origin.ght, stored.origin.region = site
    a = stored.alert
    a.id = alert_id
    a.detector = "net.portscan"
    a.technique = "T1046"
    a.severity = alert_pb2.SEVERITY_HIGH
    a.occurrences = occurrences
    set_seconds(a.first_seen, start)
    set_seconds(a.last_seen, start + 120)
    set_seconds(a.observed_at, start + 121)
    set_seconds(stored.received_at, start + 122)
    for role, kind, value, pseudo in entities:
        a.entities.add(role=role, kind=kind, value=value, pseudonymised=pseudo)
    return stored


def make_alerts() -> list[analyst_pb2.StoredAlert]:
    common = [
        (alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, "203.0.113.7", False),
        (alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, "p:0123456789abcdef0123", True),
        (alert_pb2.ROLE_TARGET, alert_pb2.KIND_HOSTNAME, "p:aaaaaaaaaaaaaaaaaaaa", True),
        (alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, "445", False),
    ]
    return [
        make_alert(
            "alert-1",
            SITES[0],
            [
                *common,
                (alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN, "Evil.Example.", False),
                (alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_JA3, JA3, False),
                (alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, "10.1.2.3", False),  # leaked: dropped
            ],
            occurrences=4,
        ),
        make_alert(
            "alert-2",
            SITES[1],
            [
                *common,
                (alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, "2001:DB8::7", False),
                (alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_HASH, SHA256.upper(), False),
            ],
            start=T0 + 60,
            occurrences=5,
        ),
    ]


# base -----------------------------------------------------------------------------------


def test_incident_dict_is_the_canonical_form() -> None:
    d = incident_dict(make_incident(), make_alerts())
    assert d["key"] == "multi_site_indicator|203.0.113.7|2024-05-01"
    assert d["seq"] == 17
    assert d["severity"] == "high"
    assert d["status"] == "open"
    assert d["status_at"] is None
    assert d["first_seen"] == "2024-05-01T08:00:00.000+00:00"
    assert d["last_seen"] == "2024-05-01T08:10:00.000+00:00"
    assert d["sites"] == [
        {"finess": "750000001", "ght": "GHT-75-01", "region": "11"},
        {"finess": "130000002", "ght": "GHT-13-02", "region": "93"},
    ]
    assert d["alert_ids"] == ["alert-1", "alert-2"]
    assert d["indicators"] == [
        {"kind": "domain", "value": "evil.example"},
        {"kind": "hash", "value": SHA256},
        {"kind": "ip", "value": "2001:db8::7"},
        {"kind": "ip", "value": "203.0.113.7"},
        {"kind": "ja3", "value": JA3},
    ]
    text = json.dumps(d)
    assert "p:" not in text  # no pseudonym, no internal address
    assert "10.1.2.3" not in text


def test_build_sinks_from_config(tmp_path: Path) -> None:
    assert build_sinks({}) == []
    cfg = validate(
        {
            "jsonl": {"enabled": True},
            "syslog": {"enabled": True, "address": "127.0.0.1:6514", "protocol": "tcp"},
            "webhook": {"enabled": True, "url": "https://127.0.0.1:1/incidents"},
            "stix": {"enabled": True},
        },
        OPTIONS["sinks"],
        "test",
        prefix="sinks.",
    )
    sinks = build_sinks(cfg, state_dir=str(tmp_path))
    try:
        assert [s.name for s in sinks] == ["jsonl", "syslog", "webhook", "stix"]
        assert all(isinstance(s, Sink) for s in sinks)
        assert sinks[0].path == tmp_path / "incidents.jsonl"
        assert (tmp_path / "stix").is_dir()
    finally:
        for s in sinks:
            s.close()


def test_build_sinks_names_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.syslog\.address"):
        build_sinks({"syslog": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"sinks\.jsonl\.path"):
        build_sinks({"jsonl": {"enabled": True}})  # no state_dir to default from
    with pytest.raises(ConfigError, match=r"sinks\.syslog\.protocol"):
        build_sinks({"syslog": {"enabled": True, "address": "h:1", "protocol": "sctp"}})
    with pytest.raises(ConfigError, match=r"sinks\.webhook cannot start"):
        build_sinks(
            {
                "webhook": {
                    "enabled": True,
                    "url": "https://example.org/",
                    "token_file": str(tmp_path / "missing"),
                }
            }
        )


# jsonl ----------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_appends_one_object_per_change(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "incidents.jsonl")
    alerts = make_alerts()
    sink.send(make_incident(seq=1), alerts)
    sink.send(make_incident(seq=2, status=analyst_pb2.STATUS_CLOSED), alerts)
    sink.close()
    sink = JsonlSink(tmp_path / "incidents.jsonl")  # reopening appends
    sink.send(make_incident(seq=3, summary="été"), alerts)
    sink.close()
    rows = _lines(tmp_path / "incidents.jsonl")
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[1]["status"] == "closed"
    assert rows[2]["summary"] == "été"
    assert rows[0] == incident_dict(make_incident(seq=1), alerts)


def test_jsonl_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    alerts = make_alerts()
    line_size = len(json.dumps(incident_dict(make_incident(seq=100), alerts))) + 1
    sink = JsonlSink(path, max_bytes=3 * line_size + 10, backups=2)
    for seq in range(100, 120):  # 20 lines, 3 per file
        sink.send(make_incident(seq=seq), alerts)
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["incidents.jsonl", "incidents.jsonl.1", "incidents.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 3 * line_size + 10
    kept = _lines(path.with_name("incidents.jsonl.2")) + _lines(path.with_name("incidents.jsonl.1"))
    kept += _lines(path)
    seqs = [r["seq"] for r in kept]
    assert seqs == list(range(120 - len(seqs), 120))  # oldest to newest, nothing torn
    assert len(seqs) == 3 + 3 + 2  # 20 = 6 full files + 2 lines


def test_jsonl_without_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    sink = JsonlSink(path, max_bytes=10, backups=0, fsync=False)
    for seq in range(3):
        sink.send(make_incident(seq=seq), [])
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["incidents.jsonl"]
    assert [r["seq"] for r in _lines(path)] == [2]


def test_jsonl_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    sink = JsonlSink(path, max_bytes=4000, backups=1000, fsync=False)

    def work(base: int) -> None:
        for i in range(25):
            sink.send(make_incident(seq=base + i), [])

    threads = [threading.Thread(target=work, args=(n * 1000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    seqs = [r["seq"] for p in tmp_path.iterdir() for r in _lines(p)]
    assert sorted(seqs) == sorted(n * 1000 + i for n in range(8) for i in range(25))


def test_jsonl_write_failure_is_a_sink_error(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "missing-dir" / "incidents.jsonl")
    with pytest.raises(SinkError, match="jsonl"):
        sink.send(make_incident(), [])


# syslog ---------------------------------------------------------------------------------

RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>1) "
    rb"(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) "
    rb'(?P<sd>-|(?:\[[^ =\]"]{1,32}(?: [^ =\]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*")*\])+)'
    rb"(?: (?P<msg>.*))?",
    re.S,
)
SD_PARAM = re.compile(rb'([^ =\]"]+)="((?:[^"\\\]]|\\["\\\]])*)"')


def parse_syslog(data: bytes) -> dict:
    m = RFC5424.fullmatch(data)
    assert m, data
    params = {
        k.decode(): re.sub(rb"\\([\"\\\]])", rb"\1", v).decode("utf-8")
        for k, v in SD_PARAM.findall(m["sd"])
    }
    sd_id = re.match(rb"\[([^ \]]+)", m["sd"])[1].decode()
    return {**{k: v for k, v in m.groupdict().items()}, "sd_id": sd_id, "params": params}


def tricky_incident(seq: int = 5) -> analyst_pb2.Incident:
    return make_incident(
        key='wave|net.x"y]z\\|b1',
        subject='bad"sub]ject\\',
        seq=seq,
        severity=alert_pb2.SEVERITY_CRITICAL,
        summary="Vague de détections dans 2 GHT",
    )


def test_sd_escape() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'


def test_syslog_udp_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        sink = SyslogSink(
            f"127.0.0.1:{port}", protocol="udp", hostname="collector-1", clock=lambda: T0 + 0.25
        )
        sink.send(tricky_incident(), make_alerts())
        data, _ = rx.recvfrom(65535)
        sink.close()
    m = parse_syslog(data)
    assert int(m["pri"]) == 10 * 8 + 2  # authpriv, critical
    assert m["version"] == b"1"
    assert m["timestamp"] == b"2024-05-01T08:00:00.250000Z"
    assert m["hostname"] == b"collector-1"
    assert m["app"] == b"vigie"
    assert m["msgid"] == b"incident"
    assert m["sd_id"] == "vigie@32473"
    assert m["params"] == {
        "key": 'wave|net.x"y]z\\|b1',
        "seq": "5",
        "rule": "multi_site_indicator",
        "subject": 'bad"sub]ject\\',
        "severity": "critical",
        "status": "open",
        "sites": "2",
        "alerts": "2",
    }
    assert b'key="wave|net.x\\"y\\]z\\\\|b1"' in data  # escaped on the wire
    assert m["msg"].startswith(b"\xef\xbb\xbf")  # UTF-8 MSG with its BOM
    assert "Vague de détections" in m["msg"].decode("utf-8")


def test_syslog_udp_truncates_long_messages() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sink = SyslogSink(f"127.0.0.1:{rx.getsockname()[1]}", facility=4)
        sink.send(make_incident(summary="é" * 5000, severity=alert_pb2.SEVERITY_LOW), [])
        data, _ = rx.recvfrom(65535)
        sink.close()
    assert len(data) <= UDP_MAX_BYTES
    data.decode("utf-8")  # cut on a character boundary
    m = parse_syslog(data)
    assert int(m["pri"]) == 4 * 8 + 5
    assert m["params"]["seq"] == "17"


class TcpReceiver:
    """Accepts connections and splits RFC 6587 octet-counted frames, per connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        conn.settimeout(10)
        return conn

    @staticmethod
    def read_frame(conn: socket.socket) -> tuple[bytes, bytes]:
        """(the octet count as sent, the message)."""
        head = b""
        while not head.endswith(b" "):
            head += conn.recv(1)
            assert head, "connection closed"
        count = int(head)
        body = b""
        while len(body) < count:
            chunk = conn.recv(count - len(body))
            assert chunk, "connection closed mid-frame"
            body += chunk
        return head, body

    def close(self) -> None:
        self.server.close()


def test_syslog_tcp_octet_counting_and_reconnect() -> None:
    rx = TcpReceiver()
    sink = SyslogSink(f"127.0.0.1:{rx.port}", protocol="tcp", hostname="collector-1")
    try:
        sink.send(tricky_incident(seq=1), [])
        sink.send(make_incident(seq=2), [])
        conn = rx.accept()
        head, body = rx.read_frame(conn)
        assert re.fullmatch(rb"[1-9]\d* ", head) and int(head) == len(body)
        assert parse_syslog(body)["params"]["seq"] == "1"
        assert parse_syslog(rx.read_frame(conn)[1])["params"]["seq"] == "2"
        conn.close()  # the receiver restarts: the sink must open a new connection
        time.sleep(0.1)
        sink.send(make_incident(seq=3), [])
        conn2 = rx.accept()
        assert parse_syslog(rx.read_frame(conn2)[1])["params"]["seq"] == "3"
        conn2.close()
    finally:
        sink.close()
        rx.close()


def test_syslog_tcp_failure_is_a_sink_error() -> None:
    rx = TcpReceiver()
    port = rx.port
    rx.close()  # nothing listens there any more
    sink = SyslogSink(f"127.0.0.1:{port}", protocol="tcp", timeout=2)
    with pytest.raises(SinkError, match="TCP send"):
        sink.send(make_incident(), [])
    sink.close()


# webhook --------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@dataclass
class Receiver:
    url: str
    script: deque = field(default_factory=deque)  # (status, headers) answered in turn
    requests: list[dict] = field(default_factory=list)


@pytest.fixture
def receiver(pki: dict[str, Path]) -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body, "t": time.time()}
            )
            status, headers = state.script.popleft() if state.script else (200, {})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}/vigie/incidents"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhook_posts_the_incident(
    receiver: Receiver, pki: dict[str, Path], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sink = WebhookSink(receiver.url, ca_file=str(pki["ca"]), token_file=str(token))
    incident, alerts = make_incident(), make_alerts()
    sink.send(incident, alerts)
    sink.close()
    [req] = receiver.requests
    assert req["path"] == "/vigie/incidents"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["Authorization"] == "Bearer s3cret-token"
    assert req["headers"]["Idempotency-Key"] == f"{incident.key}:17"
    assert json.loads(req["body"]) == incident_dict(incident, alerts)


def test_webhook_retries_503_with_exponential_backoff(
    receiver: Receiver, pki: dict[str, Path]
) -> None:
    receiver.script.extend([(503, {}), (503, {}), (200, {})])
    waits: list[float] = []
    sink = WebhookSink(receiver.url, ca_file=str(pki["ca"]), backoff=0.5, sleep=waits.append)
    sink.send(make_incident(), [])
    assert len(receiver.requests) == 3
    assert waits == [0.5, 1.0]
    assert len({r["body"] for r in receiver.requests}) == 1  # the same payload each time


def test_webhook_honours_retry_after(receiver: Receiver, pki: dict[str, Path]) -> None:
    receiver.script.extend([(429, {"Retry-After": "1"}), (200, {})])
    sink = WebhookSink(receiver.url, ca_file=str(pki["ca"]), backoff=0.01)  # real waiting
    sink.send(make_incident(), [])
    first, second = receiver.requests
    assert second["t"] - first["t"] >= 0.95
    assert retry_after("Wed, 01 May 2024 08:00:30 GMT", T0) == pytest.approx(30)
    assert retry_after("soon", T0) is None


def test_webhook_does_not_retry_other_4xx(receiver: Receiver, pki: dict[str, Path]) -> None:
    receiver.script.extend([(400, {}), (200, {})])
    waits: list[float] = []
    sink = WebhookSink(receiver.url, ca_file=str(pki["ca"]), sleep=waits.append)
    with pytest.raises(SinkError, match="400") as err:
        sink.send(make_incident(), [])
    assert err.value.status == 400 and err.value.permanent
    assert len(receiver.requests) == 1 and waits == []


def test_webhook_does_not_follow_redirects(receiver: Receiver, pki: dict[str, Path]) -> None:
    receiver.script.append((302, {"Location": "http://127.0.0.1:1/elsewhere"}))
    sink = WebhookSink(receiver.url, ca_file=str(pki["ca"]), sleep=lambda s: None)
    with pytest.raises(SinkError) as err:
        sink.send(make_incident(), [])
    assert err.value.status == 302 and len(receiver.requests) == 1


def test_webhook_gives_up_after_max_attempts(receiver: Receiver, pki: dict[str, Path]) -> None:
    receiver.script.extend([(503, {})] * 5)
    waits: list[float] = []
    sink = WebhookSink(
        receiver.url, ca_file=str(pki["ca"]), max_attempts=3, backoff=1, sleep=waits.append
    )
    with pytest.raises(SinkError, match="after 3 attempt") as err:
        sink.send(make_incident(), [])
    assert err.value.status == 503 and not err.value.permanent
    assert len(receiver.requests) == 3 and waits == [1, 2]


def test_webhook_retries_connection_errors(pki: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    waits: list[float] = []
    sink = WebhookSink(
        f"https://127.0.0.1:{port}/", ca_file=str(pki["ca"]), max_attempts=2, sleep=waits.append
    )
    with pytest.raises(SinkError, match="after 2 attempt"):
        sink.send(make_incident(), [])
    assert waits == [1.0]


def test_webhook_verifies_the_server(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, sleep=lambda s: None)  # system CAs: test CA unknown
    with pytest.raises(SinkError, match="TLS verification failed"):
        sink.send(make_incident(), [])
    assert receiver.requests == []


def test_webhook_refuses_plain_http(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https"):
        WebhookSink("http://127.0.0.1:8080/")
    with pytest.raises(ConfigError, match=r"sinks\.webhook\.url.*https://"):
        build_sinks({"webhook": {"enabled": True, "url": "http://soc.example/hook"}})
    cfg = tmp_path / "collector.toml"
    cfg.write_text('[sinks.webhook]\nenabled = true\nurl = "http://soc.example/hook"\n')
    with pytest.raises(ConfigError) as err:
        load(cfg, {"sinks": OPTIONS["sinks"]})
    assert str(cfg) in str(err.value) and "sinks.webhook.url" in str(err.value)


# STIX -----------------------------------------------------------------------------------


def _by_type(parsed: stix2.v21.Bundle) -> dict[str, list]:
    out: dict[str, list] = {}
    for obj in parsed.objects:
        out.setdefault(obj.type, []).append(obj)
    return out


def test_stix_bundle_contents() -> None:
    incident, alerts = make_incident(), make_alerts()
    text = bundle([(incident, alerts)])
    parsed = stix2.parse(text, allow_custom=False)
    objs = _by_type(parsed)
    assert {"identity", "indicator", "sighting", "incident"} <= set(objs)

    names = {i.name: i for i in objs["identity"]}
    assert set(names) == {
        "Vigie national collector",
        "FINESS 750000001 (GHT GHT-75-01)",
        "FINESS 130000002 (GHT GHT-13-02)",
    }
    collector = names["Vigie national collector"]
    site_1 = names["FINESS 750000001 (GHT GHT-75-01)"]
    site_2 = names["FINESS 130000002 (GHT GHT-13-02)"]

    patterns = {i.pattern: i for i in objs["indicator"]}
    assert set(patterns) == {
        "[ipv4-addr:value = '203.0.113.7']",
        "[ipv6-addr:value = '2001:db8::7']",
        "[domain-name:value = 'evil.example']",
        f"[file:hashes.'SHA-256' = '{SHA256}']",
        f"[x-ja3:value = '{JA3}']",
    }
    assert all(
        i.pattern_type == "stix" and i.created_by_ref == collector.id for i in patterns.values()
    )
    for secret in ("p:0123456789abcdef0123", "p:aaaaaaaaaaaaaaaaaaaa", "10.1.2.3"):
        assert secret not in text

    ip = patterns["[ipv4-addr:value = '203.0.113.7']"]
    sightings = {s.sighting_of_ref: s for s in objs["sighting"]}
    assert set(sightings) == {i.id for i in objs["indicator"]}
    s_ip = sightings[ip.id]
    assert sorted(s_ip.where_sighted_refs) == sorted([site_1.id, site_2.id])
    assert s_ip.count == 4 + 5
    assert s_ip.first_seen == dt.datetime.fromtimestamp(T0, dt.UTC)
    assert s_ip.last_seen == dt.datetime.fromtimestamp(T0 + 60 + 120, dt.UTC)
    s_domain = sightings[patterns["[domain-name:value = 'evil.example']"].id]
    assert s_domain.where_sighted_refs == [site_1.id] and s_domain.count == 4

    [inc] = objs["incident"]
    assert inc.name == "multi_site_indicator: 203.0.113.7"
    refs = {r.source_name: r for r in inc.external_references}
    assert refs["vigie"].external_id == incident.key
    assert refs["mitre-attack"].external_id == "T1046"
    assert "high" in inc.description and "open" in inc.description
    targets = {r.target_ref for r in objs["relationship"] if r.source_ref == inc.id}
    assert targets == {i.id for i in objs["indicator"]} | {site_1.id, site_2.id}
    assert all(o.object_marking_refs == [stix2.v21.TLP_AMBER.id] for o in objs["indicator"])


def test_stix_ids_are_stable_across_exports() -> None:
    first = bundle([(make_incident(), make_alerts())])
    assert bundle([(make_incident(), make_alerts())]) == first  # byte for byte

    later = make_incident(seq=18, status=analyst_pb2.STATUS_ACKNOWLEDGED)
    set_seconds(later.status_at, T0 + 900)
    second = bundle([(later, make_alerts())])

    def ids(text: str) -> dict[str, set[str]]:
        return {k: {o.id for o in v} for k, v in _by_type(stix2.parse(text)).items()}

    a, b = ids(first), ids(second)
    for kind in ("identity", "indicator", "sighting", "incident", "relationship"):
        assert a[kind] == b[kind], kind
    assert a["incident"] == {stix_id("incident", make_incident().key)}
    assert json.loads(first)["id"] != json.loads(second)["id"]  # a bundle per change
    inc2 = _by_type(stix2.parse(second))["incident"][0]
    assert inc2.modified == dt.datetime.fromtimestamp(T0 + 900, dt.UTC)


def test_stix_bundle_of_several_incidents_shares_indicators() -> None:
    other = make_incident(key="wave|net.portscan|2024-05-01", rule="wave", subject="net.portscan")
    other_alerts = [
        make_alert(
            "alert-9",
            SITES[0],
            [(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, "203.0.113.7", False)],
            start=T0 - 3600,
        )
    ]
    parsed = stix2.parse(bundle([(make_incident(), make_alerts()), (other, other_alerts)]))
    objs = _by_type(parsed)
    assert len(objs["incident"]) == 2
    ip = [i for i in objs["indicator"] if "203.0.113.7" in i.pattern]
    assert len(ip) == 1  # one indicator, sighted in two incidents
    assert ip[0].valid_from == dt.datetime.fromtimestamp(T0 - 3600, dt.UTC)
    assert sum(s.sighting_of_ref == ip[0].id for s in objs["sighting"]) == 2
    assert len([i for i in objs["identity"] if i.name.startswith("FINESS")]) == 2


def test_stix_dark_site_without_indicators() -> None:
    dark = make_incident(
        key="dark_site|750000001|2024-05-01",
        rule="dark_site",
        subject="750000001",
        sites=SITES[:1],
        alert_count=0,
    )
    objs = _by_type(stix2.parse(bundle([(dark, [])], tlp="red"), allow_custom=False))
    assert "indicator" not in objs and "sighting" not in objs
    assert objs["incident"][0].name == "dark_site: 750000001"
    assert objs["incident"][0].object_marking_refs == [stix2.v21.TLP_RED.id]


def test_stix_patterns_are_escaped_or_refused() -> None:
    assert pattern_for("domain", "a'b\\c.example") == "[domain-name:value = 'a\\'b\\\\c.example']"
    assert pattern_for("hash", "abc") is None  # no known algorithm of that length
    assert pattern_for("ja3", "not-a-ja3") is None
    assert pattern_for("ip", "not-an-ip") is None
    hostile = make_alert(
        "alert-x",
        SITES[0],
        [(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_TLS_SNI, "x'] OR [file:name = 'y", False)],
    )
    stix2.parse(bundle([(make_incident(), [hostile])]), allow_custom=False)


def test_stix_sink_writes_one_file_per_change(tmp_path: Path) -> None:
    sink = StixSink(tmp_path / "stix", tlp="green")
    incident, alerts = make_incident(), make_alerts()
    sink.send(incident, alerts)
    sink.send(make_incident(seq=18), alerts)
    sink.send(make_incident(seq=18), alerts)  # a retried change: same file, same bytes
    sink.close()
    files = sorted((tmp_path / "stix").iterdir())
    assert [f.name for f in files] == [file_name(incident.key, 17), file_name(incident.key, 18)]
    assert files[0].name.endswith("--000000000017.json") and "|" not in files[0].name
    assert files[0].read_text() == bundle([(incident, alerts)], tlp="green")
    parsed = stix2.parse(files[1].read_text(), allow_custom=False)
    assert any(o.type == "incident" for o in parsed.objects)
    assert file_name("a/b", 1) != file_name("a_b", 1)  # sanitising cannot collide
