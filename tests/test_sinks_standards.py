"""The sinks' outputs as other software reads them, checked by that software's own validator.

- syslog: real datagrams and TCP frames from SyslogSink, received on 127.0.0.1 and parsed
  by the `syslog-rfc5424-parser` package (a grammar of RFC 5424, not a regex of ours);
- STIX: bundles from `bundle()` and from StixSink files, checked by the OASIS
  `stix2-validator` in its default mode and in its interoperability mode (`--interop`).

The builders of incidents and alerts are those of tests/test_sinks.py.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import lark
import pytest
import stix2
from stix2validator import ValidationOptions, validate_instance, validate_string
from syslog_rfc5424_parser import SyslogMessage
from syslog_rfc5424_parser.constants import SyslogFacility, SyslogSeverity

from collector.sinks.stix import TLP, StixSink, bundle, file_name
from collector.sinks.syslog import SD_ID, UDP_MAX_BYTES, SyslogSink, format_message
from common.pbtime import set_seconds
from tests.test_sinks import (
    JA3,
    SITES,
    T0,
    TcpReceiver,
    make_alert,
    make_alerts,
    make_incident,
    tricky_incident,
)
from vigie.v1 import alert_pb2, analyst_pb2

# syslog ---------------------------------------------------------------------------------


def unescape(value: str) -> str:
    """PARAM-VALUE unescaping (RFC 5424 §6.3.3); the parser returns values as written."""
    return re.sub(r'\\(["\\\]])', r"\1", value)


def parse(data: bytes) -> SyslogMessage:
    # The parser's own dependency, lark-parser 0.6, installs into the same `lark` package
    # as lark 1.x, and its string rule rejects valid values ending in an escaped backslash:
    # say so rather than blame a valid message (see the dev list of pyproject.toml).
    assert int(lark.__version__.split(".")[0]) >= 1, (
        f"lark {lark.__version__} is installed over lark 1.x: "
        "pip install --force-reinstall --no-deps lark==1.3.1"
    )
    # Every Vigie message is UTF-8 throughout (ASCII header, UTF-8 values, BOM + UTF-8 MSG).
    return SyslogMessage.parse(data.decode("utf-8"))


def params(message: SyslogMessage) -> dict[str, str]:
    assert list(message.sd) == [SD_ID]
    return {k: unescape(v) for k, v in message.sd[SD_ID].items()}


def udp_roundtrip(*incidents: analyst_pb2.Incident, **sink_options: object) -> list[bytes]:
    """The datagrams SyslogSink sends for the incidents, as a UDP receiver gets them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sink = SyslogSink(f"127.0.0.1:{rx.getsockname()[1]}", protocol="udp", **sink_options)
        try:
            out = []
            for incident in incidents:
                sink.send(incident, make_alerts())
                out.append(rx.recvfrom(65535)[0])
            return out
        finally:
            sink.close()


def with_change(incident: analyst_pb2.Incident, change: str) -> analyst_pb2.Incident:
    incident.change = change
    return incident


# A subject full of what SD escaping touches ('"', ']', '\\'), of multi-byte characters
# (2, 3 and 4 bytes in UTF-8) and spaces: escaped, it alone is far over 2048 bytes.
HOSTILE = ('a"b]c\\d é€😀 x' * 200)[:1500]


def huge_incident(seq: int = 41) -> analyst_pb2.Incident:
    return with_change(
        make_incident(
            key=f"multi_site_indicator|domain:{HOSTILE}|2024-05-01",
            subject=f"domain:{HOSTILE}",
            seq=seq,
            severity=alert_pb2.SEVERITY_CRITICAL,
            summary="Indicateur vu dans 2 GHT : " + HOSTILE,
        ),
        "updated",
    )


def test_ordinary_incident_parses_with_every_field() -> None:
    incident = with_change(make_incident(), "opened")
    [data] = udp_roundtrip(incident, hostname="collector-1", clock=lambda: T0 + 0.5)
    m = parse(data)
    assert m.facility == SyslogFacility.authpriv
    assert m.severity == SyslogSeverity.err  # Vigie high -> syslog error
    assert m.version == 1
    assert m.timestamp == "2024-05-01T08:00:00.500000Z"
    assert m.hostname == "collector-1"
    assert m.appname == "vigie"
    assert m.msgid == "incident"
    assert list(params(m).items()) == [  # `change` comes right after `status`
        ("key", incident.key),
        ("seq", "17"),
        ("rule", "multi_site_indicator"),
        ("subject", "203.0.113.7"),
        ("severity", "high"),
        ("status", "open"),
        ("change", "opened"),
        ("sites", "2"),
        ("alerts", "2"),
    ]
    assert (
        m.msg == "high multi_site_indicator incident (open, 2 site(s)): 203.0.113.7 seen by 2 GHTs"
    )


@pytest.mark.parametrize(
    ("status", "change"),
    [
        (analyst_pb2.STATUS_OPEN, ""),  # read as it stands: no `change` param
        (analyst_pb2.STATUS_OPEN, "reopened"),
        (analyst_pb2.STATUS_ACKNOWLEDGED, "acknowledged"),
        (analyst_pb2.STATUS_CLOSED, "closed"),
    ],
)
def test_key_seq_status_survive_the_roundtrip(status: int, change: str) -> None:
    plain = with_change(make_incident(seq=100, status=status), change)
    tricky = with_change(tricky_incident(seq=101), change)
    tricky.status = status
    for incident, data in zip((plain, tricky), udp_roundtrip(plain, tricky), strict=True):
        got = params(parse(data))
        assert got["key"] == incident.key
        assert got["seq"] == str(incident.seq)
        assert got["subject"] == incident.subject
        assert got["status"] == {1: "open", 2: "acknowledged", 3: "closed"}[status]
        assert got.get("change") == (change or None)
        assert "truncated" not in got
    assert parse(data).msg.startswith("\ufeff")  # UTF-8 MSG ("détections") with its BOM


def test_huge_subject_is_shortened_inside_a_valid_message() -> None:
    incident = huge_incident()
    full = format_message(incident, hostname="collector-1", procid=1, now=T0)
    head_and_sd = full[: full.index(b"] ") + 1]
    assert len(head_and_sd) > UDP_MAX_BYTES  # the case that used to cut inside the SD

    [data] = udp_roundtrip(incident, hostname="collector-1")
    assert len(data) <= UDP_MAX_BYTES
    m = parse(data)
    got = params(m)
    assert got["truncated"] == "true"
    # Numbers and enumerated values are whole; the long free-text values are prefixes,
    # cut on a character boundary (never inside an escape: the parser would refuse it).
    assert {k: got[k] for k in ("seq", "severity", "status", "change", "sites", "alerts")} == {
        "seq": "41",
        "severity": "critical",
        "status": "open",
        "change": "updated",
        "sites": "2",
        "alerts": "2",
    }
    assert got["rule"] == "multi_site_indicator"
    for name in ("key", "subject"):
        value = getattr(incident, name)
        assert 100 < len(got[name]) < len(value) and value.startswith(got[name]), name
    # What is left goes to MSG, with its BOM, cut on a UTF-8 boundary.
    assert m.msg.startswith("\ufeffcritical multi_site_indicator incident (open, 2 site(s))")


def test_long_msg_alone_is_cut_and_the_sd_kept_whole() -> None:
    incident = make_incident(summary="é" * 5000, severity=alert_pb2.SEVERITY_LOW)
    [data] = udp_roundtrip(incident, facility=4)
    assert len(data) <= UDP_MAX_BYTES
    m = parse(data)
    assert (m.facility, m.severity) == (SyslogFacility.auth, SyslogSeverity.notice)
    got = params(m)
    assert "truncated" not in got and got["key"] == incident.key
    assert m.msg.startswith("\ufeff") and m.msg.endswith("é")


@pytest.mark.parametrize("alphabet", ['"', "]", "\\", "é", "€", "😀", 'x"]\\é€😀 '])
def test_any_length_gives_a_valid_datagram(alphabet: str) -> None:
    # Every size around the limit, so that each possible cut point (inside an escape,
    # inside a multi-byte character) is met at least once.
    for n in range(0, 2400, 7):
        value = (alphabet * n)[:n]
        incident = make_incident(key=value, subject=value[::-1], summary=value)
        data = format_message(incident, hostname="h", procid=1, now=T0, limit=UDP_MAX_BYTES)
        assert len(data) <= UDP_MAX_BYTES, n
        m = parse(data)
        got = params(m)
        assert incident.key.startswith(got["key"]) and incident.subject.startswith(got["subject"])
        assert ("truncated" in got) == (got["key"] != incident.key or got["subject"] != value[::-1])
        if m.msg and not m.msg.isascii():  # RFC 5424 §6.4: non-ASCII MSG starts with a BOM
            assert m.msg.startswith("\ufeff"), n


def test_tcp_octet_counting_frames_parse_and_are_never_shortened() -> None:
    rx = TcpReceiver()
    sink = SyslogSink(f"127.0.0.1:{rx.port}", protocol="tcp", hostname="collector-1")
    incidents = [with_change(tricky_incident(seq=1), "opened"), huge_incident(seq=2)]
    try:
        for incident in incidents:
            sink.send(incident, [])
        conn = rx.accept()
        for incident in incidents:
            head, body = rx.read_frame(conn)
            assert int(head) == len(body)  # MSG-LEN SP SYSLOG-MSG (RFC 6587 §3.4.1)
            got = params(parse(body))
            assert got["key"] == incident.key and got["subject"] == incident.subject
            assert got["seq"] == str(incident.seq) and "truncated" not in got
        assert len(body) > UDP_MAX_BYTES
        conn.close()
    finally:
        sink.close()
        rx.close()


# STIX -----------------------------------------------------------------------------------

# The warnings the bundles keep on purpose, by the validator's code (docs/SINKS.md says
# why): 103, ids are UUIDv5 of stable names rather than UUIDv4, so that exporting an
# incident again yields the same ids.
ACCEPTED_WARNINGS = {"103"}
KILL_CHAIN_STEPS = [("net.portscan", "T1046"), ("net.bruteforce", "T1110"), ("net.exfil", "T1048")]


def validate(text: str, *, interop: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the OASIS validator on one bundle, as its messages."""
    result = validate_string(text, ValidationOptions(silent=True, interop=interop))
    results = result if isinstance(result, list) else [result]
    errors = [str(e) for r in results for e in getattr(r, "errors", [])]
    errors += [r.error for r in results if hasattr(r, "error")]  # an exception, if any
    warnings = [str(w) for r in results for w in getattr(r, "warnings", None) or []]
    assert errors or all(r.is_valid for r in results)
    return errors, warnings


def assert_compliant(text: str) -> None:
    for interop in (False, True):
        errors, warnings = validate(text, interop=interop)
        assert errors == [], (interop, errors)
        codes = {m[1] for w in warnings if (m := re.search(r"\{(\d+)\}", w))}
        assert codes <= ACCEPTED_WARNINGS, (interop, warnings)
        assert all(re.search(r"\{\d+\}", w) for w in warnings), warnings  # all coded


def kill_chain() -> tuple[analyst_pb2.Incident, list[analyst_pb2.StoredAlert]]:
    """One establishment, three steps, nothing but pseudonyms and internal addresses."""
    site = SITES[0]
    alerts = []
    for i, (detector, technique) in enumerate(KILL_CHAIN_STEPS):
        a = make_alert(
            f"kc-{i}",
            site,
            [
                (alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, "p:0123456789abcdef0123", True),
                (alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, "10.20.30.40", False),
                (alert_pb2.ROLE_TARGET, alert_pb2.KIND_HOSTNAME, "p:bbbbbbbbbbbbbbbbbbbb", True),
            ],
            start=T0 + 300 * i,
        )
        a.alert.detector, a.alert.technique = detector, technique
        alerts.append(a)
    incident = make_incident(
        key=f"kill_chain|{site[0]}|2024-05-01",
        rule="kill_chain",
        subject=site[0],
        severity=alert_pb2.SEVERITY_CRITICAL,
        summary="attack progression: recon -> access -> exfiltration",
        sites=[site],
        alert_count=len(alerts),
    )
    return with_change(incident, "opened"), alerts


def multi_site() -> tuple[analyst_pb2.Incident, list[analyst_pb2.StoredAlert]]:
    """IPv4, IPv6, domain, SHA-256 and JA3 indicators seen in two GHTs."""
    return with_change(make_incident(), "updated"), make_alerts()


def handled(status: int, change: str, seq: int) -> analyst_pb2.Incident:
    incident = make_incident(
        key="multi_site_indicator|ja3:" + JA3 + "|2024-05-01",
        subject="ja3:" + JA3,
        seq=seq,
        status=status,
        summary="JA3 seen by 2 GHTs",
    )
    incident.status_by = "national:analyste-1"
    incident.status_comment = "Vu avec le CERT régional"
    set_seconds(incident.status_at, T0 + 3600)
    return with_change(incident, change)


def ja3_alerts() -> list[analyst_pb2.StoredAlert]:
    entity = (alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_JA3, JA3, False)
    return [make_alert(f"ja3-{i}", site, [entity]) for i, site in enumerate(SITES)]


def cases() -> Iterator[tuple[str, analyst_pb2.Incident, list[analyst_pb2.StoredAlert]]]:
    yield "multi_site_indicator", *multi_site()
    yield "kill_chain", *kill_chain()
    yield "acknowledged", handled(analyst_pb2.STATUS_ACKNOWLEDGED, "acknowledged", 30), ja3_alerts()
    yield "closed", handled(analyst_pb2.STATUS_CLOSED, "closed", 31), ja3_alerts()


@pytest.mark.parametrize("tlp", sorted(TLP))
def test_bundles_pass_the_oasis_validator(tlp: str) -> None:
    for name, incident, alerts in cases():
        text = bundle([(incident, alerts)], tlp=tlp)
        try:
            assert_compliant(text)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    # Several incidents in one bundle, as the ExportStix RPC makes them.
    assert_compliant(bundle([(i, a) for _, i, a in cases()], tlp=tlp))


@pytest.mark.parametrize("tlp", sorted(TLP))
def test_every_object_has_a_producer_and_the_tlp_marking(tlp: str) -> None:
    text = bundle([(i, a) for _, i, a in cases()], tlp=tlp)
    objects = json.loads(text)["objects"]
    by_type: dict[str, list[dict]] = {}
    for o in objects:
        by_type.setdefault(o["type"], []).append(o)
    assert {"identity", "indicator", "sighting", "incident", "relationship"} == set(by_type)
    [producer] = [o for o in by_type["identity"] if o["identity_class"] == "system"]
    assert producer["created_by_ref"] == producer["id"]  # the producer names itself
    for o in objects:
        assert o["created_by_ref"] == producer["id"], o["id"]
        assert o["object_marking_refs"] == [TLP[tlp].id], o["id"]  # STIX 2.1's own TLP id
    # Each object passes on its own too (validate_instance), in both modes.
    for o in objects:
        for interop in (False, True):
            result = validate_instance(o, ValidationOptions(silent=True, interop=interop))
            assert result.is_valid, (o["id"], [str(e) for e in result.errors])
    stix2.parse(text, allow_custom=False)  # and the stix2 library still reads it strictly


def test_kill_chain_without_indicator_and_statuses_in_the_bundle() -> None:
    incident, alerts = kill_chain()
    objs = json.loads(bundle([(incident, alerts)]))["objects"]
    types = {o["type"] for o in objs}
    assert "indicator" not in types and "sighting" not in types
    [inc] = [o for o in objs if o["type"] == "incident"]
    refs = {r["external_id"] for r in inc["external_references"] if r["source_name"] != "vigie"}
    assert refs == {t for _, t in KILL_CHAIN_STEPS}
    assert "10.20.30.40" not in json.dumps(objs) and "p:" not in json.dumps(objs)
    closed = analyst_pb2.STATUS_CLOSED
    for status, word in ((analyst_pb2.STATUS_ACKNOWLEDGED, "acknowledged"), (closed, "closed")):
        [inc] = [
            o
            for o in json.loads(bundle([(handled(status, word, 40), ja3_alerts())]))["objects"]
            if o["type"] == "incident"
        ]
        assert f"status-{word}" in inc["labels"] and f"Status: {word}." in inc["description"]


@pytest.mark.parametrize("tlp", sorted(TLP))
def test_stix_sink_files_pass_the_oasis_validator(tmp_path: Path, tlp: str) -> None:
    sink = StixSink(tmp_path / "stix", tlp=tlp)
    sent = list(cases())
    for _, incident, alerts in sent:
        sink.send(incident, alerts)
    sink.close()
    names = {file_name(i.key, i.seq) for _, i, _ in sent}
    assert {p.name for p in (tmp_path / "stix").iterdir()} == names
    for path in sorted((tmp_path / "stix").iterdir()):
        try:
            assert_compliant(path.read_text(encoding="utf-8"))
        except AssertionError as exc:
            raise AssertionError(f"{path.name}: {exc}") from None
