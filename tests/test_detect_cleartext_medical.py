"""net.cleartext_credentials on recorded FTP logins, net.medical on recorded DICOM
associations and HL7/MLLP sessions (and a generated HL7 message to the outside)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.detect_support import ANON, data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2


def _user(name: str) -> str:
    return ANON.pseudonym(alert_pb2.KIND_USER, name)


def test_ftp_logins_in_clear_are_reported_not_copied():
    alerts = replay(data("ftp_bruteforce_30_failed_logins.pcap"))
    found = latest(alerts, "net.cleartext_credentials")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1040"
    assert a.severity == alert_pb2.SEVERITY_LOW
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("192.168.56.1")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("192.168.56.101")]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["ftp"]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_USER) == [_user("bro")]
    assert a.metrics["logins_sent"] == 30 and a.metrics["logins_accepted"] == 0
    for b in alerts:
        if b.detector == "net.cleartext_credentials":
            assert b"bro" not in b.SerializeToString()


def test_http_basic_credentials_reported_among_many_plain_requests(tmp_path):
    """The engine keeps back HTTP requests without credentials; the one with them still
    reaches the detector, wherever its Authorization header sits."""
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    pkts = []
    for i in range(50):
        req = b"GET /page%d HTTP/1.1\r\nHost: intranet\r\n\r\n" % i
        if i == 37:
            req = b"GET /admin HTTP/1.1\r\nHost: intranet\r\nAccept: */*\r\n"
            req += b"authorization: Basic YWRtaW46c2VjcmV0\r\n\r\n"  # admin:secret
        p = e / IP(src="10.40.0.5", dst="10.40.0.80") / TCP(sport=50000 + i, dport=80, flags="PA")
        p = p / req
        p.time = 10.0 + i * 0.1
        pkts.append(p)
    alerts = replay(write(tmp_path, pkts))
    found = latest(alerts, "net.cleartext_credentials")
    assert len(found) == 1
    a = found[0]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["http"]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_USER) == [_user("admin")]
    assert a.metrics["logins_sent"] == 1
    assert b"secret" not in a.SerializeToString()


def test_accepted_login_in_benign_mix_is_a_true_finding():
    a = latest(replay(data("benign_mixed_ssh_http_ftp_dns_ntp.pcap")), "net.cleartext_credentials")
    assert len(a) == 1
    assert a[0].severity == alert_pb2.SEVERITY_MEDIUM  # the server accepted it
    assert a[0].metrics["logins_accepted"] == 1
    assert entity(a[0], alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_USER) == [_user("jsiwek")]
    assert "jsiwek" not in a[0].summary


def test_user_names_can_be_left_out_entirely():
    alerts = replay(
        data("ftp_bruteforce_30_failed_logins.pcap"),
        {"cleartext_credentials": {"report_users": False}},
    )
    a = latest(alerts, "net.cleartext_credentials")[0]
    assert not entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_USER)


DICOM = [
    "dicom_a_associate_rq_cfind_testclient.pcap",
    "dicom_a_associate_rq_cget_large_testclient.pcap",
    "dicom_a_associate_rq_cget_testclient_2.pcap",
]
HL7 = [
    "hl7_mllp_adt_a01_udi_obx.pcap",
    "hl7_mllp_adt_a01_udi_prt.pcap",
    "hl7_mllp_orm_o01_order.pcap",
    "hl7_mllp_oru_r01_results.pcap",
]
NO_LEARNING = {"medical": {"learning_seconds": 0.0}}


@pytest.mark.parametrize("name", DICOM)
def test_dicom_new_peer_and_ae_titles_after_learning(name):
    found = latest(replay(data(name), NO_LEARNING), "net.medical")
    why = sorted(s for a in found for s in ("new_peer", "new_ae_title") if a.metrics[s])
    assert why == ["new_ae_title", "new_peer"], [a.summary for a in found]
    for a in found:
        assert a.technique == "T1071"
        assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("127.0.0.1")]
        aes = entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_AE_TITLE)
        assert sorted(aes) == sorted(
            ANON.pseudonym(alert_pb2.KIND_AE_TITLE, t) for t in ("testclient", "testserver")
        )
        assert "testclient" not in a.summary and b"testclient" not in a.SerializeToString()


@pytest.mark.parametrize("name", HL7)
def test_hl7_new_peer_after_learning(name):
    found = latest(replay(data(name), NO_LEARNING), "net.medical")
    assert len(found) == 1
    a = found[0]
    assert a.metrics["new_peer"] == 1 and a.metrics["external"] == 0
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("10.0.0.155")]
    assert entity(a, alert_pb2.ROLE_TARGET) == [pseudonym("10.0.0.126")]
    assert entity(a, alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL) == ["hl7"]


@pytest.mark.parametrize("name", DICOM + HL7)
def test_nothing_while_learning(name):
    # default learning period (24 h) covers the capture; every peer is internal
    assert not latest(replay(data(name)), "net.medical")


def test_hl7_to_an_external_address_fires_at_once(tmp_path):
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    cli, srv = "10.40.0.8", "198.51.100.20"
    msg = b"\x0bMSH|^~\\&|LAB|CHU|EXT|PARTNER|20240101||ORU^R01|1|P|2.5\rPID|1\r\x1c\r"
    pkts = [
        e / IP(src=cli, dst=srv) / TCP(sport=50000, dport=2575, flags="S", seq=1),
        e / IP(src=srv, dst=cli) / TCP(sport=2575, dport=50000, flags="SA", seq=9, ack=2),
        e / IP(src=cli, dst=srv) / TCP(sport=50000, dport=2575, flags="PA", seq=2, ack=10) / msg,
    ]
    for i, p in enumerate(pkts):
        p.time = 100.0 + i * 0.01
    found = latest(replay(write(tmp_path, pkts)), "net.medical")
    assert len(found) == 1
    a = found[0]
    assert a.metrics["external"] == 1
    assert a.severity == alert_pb2.SEVERITY_HIGH
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym(cli)]
    assert entity(a, alert_pb2.ROLE_TARGET) == [srv]
    assert "cleartext" in a.summary and cli not in a.summary


def _hl7_session(cli: str, srv: str, t: float, sport: int) -> list:
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    msg = b"\x0bMSH|^~\\&|LAB|CHU|RIS|CHU|20240101||ORU^R01|1|P|2.5\rPID|1\r\x1c\r"
    pkts = [
        e / IP(src=cli, dst=srv) / TCP(sport=sport, dport=2575, flags="S", seq=1),
        e / IP(src=srv, dst=cli) / TCP(sport=2575, dport=sport, flags="SA", seq=9, ack=2),
        e / IP(src=cli, dst=srv) / TCP(sport=sport, dport=2575, flags="PA", seq=2, ack=10) / msg,
    ]
    for i, p in enumerate(pkts):
        p.time = t + i * 0.01
    return pkts


def _run_agent(tmp_path, pcap) -> list:
    """One life of a running agent on `pcap`, with its state_dir kept between lives."""
    from agent import settings
    from agent.capture.pcapfile import ReadStats, read_capture
    from agent.pipeline import Pipeline
    from common import config

    cfg = config.validate({"detectors": {"medical": {"learning_seconds": 50.0}}},
                          settings.SCHEMA, "test")  # fmt: skip
    cfg["state_dir"] = str(tmp_path / "state")
    out: list = []
    pipe = Pipeline(cfg, ANON, out.append, lambda: 1_700_000_000.0, keep_learned=True)
    for rec in read_capture(str(pcap), ReadStats()):
        pipe.feed(*rec)
    pipe.finish()
    return latest(out, "net.medical")


def test_what_medical_learnt_survives_a_restart(tmp_path):
    """Learnt before the restart: the known peer stays quiet after it, and the learning
    period does not start again, so the new peer is reported at once."""
    first = write(tmp_path, _hl7_session("10.40.0.8", "10.40.0.9", 100.0, 50000), "a.pcap")
    assert _run_agent(tmp_path, first) == []  # learning
    saved = tmp_path / "state" / "learned" / "net.medical.json"
    assert saved.exists() and saved.stat().st_mode & 0o077 == 0
    second = write(
        tmp_path,
        _hl7_session("10.40.0.8", "10.40.0.9", 200.0, 50001)
        + _hl7_session("10.40.0.7", "10.40.0.9", 201.0, 50002),
        "b.pcap",
    )
    found = _run_agent(tmp_path, second)
    assert [entity(a, alert_pb2.ROLE_SOURCE) for a in found] == [[pseudonym("10.40.0.7")]]
    assert found[0].metrics["new_peer"] == 1
    # A damaged file costs a learning period, not the agent.
    saved.write_text('{"version": 1, "started": "x"')
    assert _run_agent(tmp_path, second) == []
