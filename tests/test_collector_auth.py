"""Only mutual TLS with a Vigie certificate gets in, and each kind only where it belongs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from collector.pki.ca import Authority
from tests.conftest import Collector
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc, ingest_pb2, ingest_pb2_grpc


def _channel(c: Collector, creds: Path | None, stem: str = "agent") -> grpc.Channel:
    ca = (c.state_dir / "pki" / "ca.crt").read_bytes()
    if creds is None:
        return grpc.secure_channel(c.address, grpc.ssl_channel_credentials(ca))
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            ca, (creds / f"{stem}.key").read_bytes(), (creds / f"{stem}.crt").read_bytes()
        ),
    )


def _alert(i: int = 0, **over) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=f"a{i:04d}",
        revision=1,
        detector="net.portscan",
        severity=alert_pb2.SEVERITY_MEDIUM,
        technique="T1046",
        summary="vertical port scan",
        occurrences=3,
    )
    now = time.time()
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(int(now))
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="p:00ff", pseudonymised=True
    )
    for k, v in over.items():
        setattr(a, k, v)
    return a


def _send(channel: grpc.Channel, *alerts: alert_pb2.Alert) -> list:
    stub = ingest_pb2_grpc.IngestStub(channel)
    msgs = [ingest_pb2.AgentMessage(batch=ingest_pb2.AlertBatch(seq=1, alerts=list(alerts)))]
    return list(stub.Stream(iter(msgs), timeout=10))


def _stored(c: Collector) -> int:
    with sqlite3.connect(c.db()) as db:
        return db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]


def test_agent_batch_is_acknowledged_after_commit(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_agent(tmp_path / "a", finess="111111111", ght="GHT-A")
    with _channel(collector, creds) as ch:
        replies = _send(ch, _alert(1), _alert(2))
    kinds = [m.WhichOneof("body") for m in replies]
    assert kinds == ["flow_control", "ack"]
    assert replies[1].ack.stored == 2 and replies[1].ack.duplicates == 0
    assert _stored(collector) == 2
    with _channel(collector, creds) as ch:  # the same batch again: stored once
        again = _send(ch, _alert(1), _alert(2))
    assert again[1].ack.stored == 0 and again[1].ack.duplicates == 2
    assert _stored(collector) == 2


def test_newer_revision_replaces_older(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_agent(tmp_path / "a")
    with _channel(collector, creds) as ch:
        _send(ch, _alert(1))
        _send(ch, _alert(1, revision=3, occurrences=40))
        _send(ch, _alert(1, revision=2, occurrences=10))  # late, older: ignored
    with sqlite3.connect(collector.db()) as db:
        assert db.execute("SELECT revision, occurrences FROM alerts").fetchall() == [(3, 40)]


def test_plaintext_is_refused(collector: Collector) -> None:
    with grpc.insecure_channel(collector.address) as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _stored(collector) == 0


def test_no_client_certificate_is_refused(collector: Collector) -> None:
    with _channel(collector, None) as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # TLS handshake fails
    assert _stored(collector) == 0


def test_certificate_from_another_ca_is_refused(collector: Collector, tmp_path: Path) -> None:
    from collector.pki.ca import Identity

    rogue = Authority.create(tmp_path / "rogue")
    rogue.issue(
        tmp_path / "r", "agent", identity=Identity("agent", "agt-rogue", "111111111", "GHT-A", "11")
    )
    with _channel(collector, tmp_path / "r") as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _stored(collector) == 0


def test_agent_cannot_call_the_analyst_api(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_agent(tmp_path / "a")
    with _channel(collector, creds) as ch, pytest.raises(grpc.RpcError) as err:
        analyst_pb2_grpc.AnalystStub(ch).ListAlerts(analyst_pb2.ListAlertsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_analyst_cannot_send_alerts(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_analyst(tmp_path / "n")
    with _channel(collector, creds, "analyst") as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _stored(collector) == 0


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"id": ""}, "alerts[0].id"),
        ({"id": "x" * 200}, "alerts[0].id"),
        ({"severity": 42}, "alerts[0].severity"),
        ({"technique": "DROP TABLE"}, "alerts[0].technique"),
        ({"summary": ""}, "alerts[0].summary"),
        ({"occurrences": 0}, "alerts[0].occurrences"),
    ],
)
def test_bad_alert_gets_invalid_argument_naming_the_field(
    collector: Collector, tmp_path: Path, over: dict, field: str
) -> None:
    creds = collector.issue_agent(tmp_path / "a")
    with _channel(collector, creds) as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, _alert(**over))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert _stored(collector) == 0


def test_timestamps_far_away_are_refused(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_agent(tmp_path / "a")
    bad = _alert()
    bad.last_seen.FromSeconds(int(time.time()) + 10 * 86400)
    with _channel(collector, creds) as ch, pytest.raises(grpc.RpcError) as err:
        _send(ch, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "last_seen" in err.value.details()


def test_origin_is_the_certificates(collector: Collector, tmp_path: Path) -> None:
    """Two agents of two establishments: each alert is filed under its sender's certificate."""
    a = collector.issue_agent(tmp_path / "a", finess="111111111", ght="GHT-A", region="11")
    b = collector.issue_agent(tmp_path / "b", finess="222222222", ght="GHT-B", region="84")
    with _channel(collector, a) as ch:
        _send(ch, _alert(1))
    with _channel(collector, b) as ch:
        _send(ch, _alert(1))  # the same id from another agent is another alert
    with sqlite3.connect(collector.db()) as db:
        rows = sorted(db.execute("SELECT finess, ght, region FROM alerts").fetchall())
    assert rows == [("111111111", "GHT-A", "11"), ("222222222", "GHT-B", "84")]


def test_regional_analyst_sees_only_their_region(collector: Collector, tmp_path: Path) -> None:
    a = collector.issue_agent(tmp_path / "a", finess="111111111", ght="GHT-A", region="11")
    b = collector.issue_agent(tmp_path / "b", finess="222222222", ght="GHT-B", region="84")
    for creds in (a, b):
        with _channel(collector, creds) as ch:
            _send(ch, _alert(1))
    reg = collector.issue_analyst(tmp_path / "r", name="ars-84", role="regional:84")
    with _channel(collector, reg, "analyst") as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        got = stub.ListAlerts(analyst_pb2.ListAlertsRequest(), timeout=10)
        assert [x.origin.region for x in got.alerts] == ["84"]
        with pytest.raises(grpc.RpcError) as err:
            stub.ListAlerts(analyst_pb2.ListAlertsRequest(region="11"), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
