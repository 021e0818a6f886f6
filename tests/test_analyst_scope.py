"""Three certificates: national sees everything, regional:11 never sees region 84 through
any call, an agent is refused everywhere."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import Collector
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc, ingest_pb2, ingest_pb2_grpc

A_SITES = [("111000001", "GHT-A1", "11"), ("111000002", "GHT-A2", "11")]
B_SITES = [("844000001", "GHT-B1", "84"), ("844000002", "GHT-B2", "84")]


def _channel(c: Collector, creds: Path, stem: str) -> grpc.Channel:
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            (creds / "ca.crt").read_bytes(),
            (creds / f"{stem}.key").read_bytes(),
            (creds / f"{stem}.crt").read_bytes(),
        ),
    )


def _alert(aid: str, indicator: str) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=aid,
        revision=1,
        detector="net.portscan",
        severity=3,
        technique="T1046",
        summary="vertical port scan",
        occurrences=5,
    )
    now = int(time.time())
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(now)
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value=indicator, pseudonymised=False
    )
    return a


@pytest.fixture
def fleet(collector: Collector, tmp_path: Path):
    """Alerts from two regions: an incident in each region and one that spans both."""
    for i, (finess, ght, region) in enumerate(A_SITES + B_SITES):
        creds = collector.issue_agent(tmp_path / f"agent{i}", finess=finess, ght=ght, region=region)
        own = "198.51.100.1" if region == "11" else "198.51.100.2"
        batch = ingest_pb2.AlertBatch(
            seq=1, alerts=[_alert(f"own{i}", own), _alert(f"both{i}", "203.0.113.66")]
        )
        with _channel(collector, creds, "agent") as ch:
            replies = list(
                ingest_pb2_grpc.IngestStub(ch).Stream(
                    iter(
                        [
                            ingest_pb2.AgentMessage(batch=batch),
                            ingest_pb2.AgentMessage(
                                heartbeat=ingest_pb2.Heartbeat(agent_version="t")
                            ),
                        ]
                    ),
                    timeout=10,
                )
            )
        assert replies[-1].ack.stored == 2
    return {
        "national": collector.issue_analyst(tmp_path / "nat", "nat", "national"),
        "regional": collector.issue_analyst(tmp_path / "ars", "ars-11", "regional:11"),
        "agent": tmp_path / "agent0",
    }


def _every_view(stub) -> str:
    """Everything an analyst can see, as text."""
    out = []
    out.append(str(stub.ListAlerts(analyst_pb2.ListAlertsRequest(), timeout=10)))
    out.append(str(stub.ListAgents(analyst_pb2.ListAgentsRequest(), timeout=10)))
    for by in ("ght", "finess", "region", "detector", "hour"):
        out.append(str(stub.CountAlerts(analyst_pb2.CountAlertsRequest(by=by), timeout=10)))
    incs = stub.ListIncidents(analyst_pb2.ListIncidentsRequest(), timeout=10).incidents
    out.append(str(incs))
    for inc in incs:
        out.append(str(stub.GetIncident(analyst_pb2.GetIncidentRequest(key=inc.key), timeout=10)))
    watch = stub.WatchIncidents(analyst_pb2.WatchIncidentsRequest(from_start=True), timeout=3)
    try:
        for ev in watch:
            out.append(str(ev))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    out.append(stub.ExportStix(analyst_pb2.ExportStixRequest(), timeout=10).bundle_json)
    return "\n".join(out)


def test_national_sees_both_regions(collector: Collector, fleet) -> None:
    with _channel(collector, fleet["national"], "analyst") as ch:
        seen = _every_view(analyst_pb2_grpc.AnalystStub(ch))
    for finess, ght, _ in A_SITES + B_SITES:
        assert finess in seen and ght in seen


def test_regional_analyst_never_sees_another_region(collector: Collector, fleet) -> None:
    with _channel(collector, fleet["regional"], "analyst") as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        seen = _every_view(stub)
        for finess, ght, _ in A_SITES:
            assert finess in seen and ght in seen
        for finess, ght, _ in B_SITES:
            assert finess not in seen and ght not in seen
        assert "198.51.100.2" not in seen  # region B's own indicator
        incs = stub.ListIncidents(analyst_pb2.ListIncidentsRequest(), timeout=10).incidents
        spanning = [i for i in incs if i.subject == "ip:203.0.113.66"]
        assert len(spanning) == 1 and {s.region for s in spanning[0].sites} == {"11"}
        # Asking for the other region explicitly is refused, not silently emptied.
        for call, req in (
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest(region="84")),
            (stub.CountAlerts, analyst_pb2.CountAlertsRequest(by="ght", region="84")),
            (stub.ListIncidents, analyst_pb2.ListIncidentsRequest(region="84")),
            (stub.ExportStix, analyst_pb2.ExportStixRequest(region="84")),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # An incident of region B only does not exist for this analyst.
        with _channel(collector, fleet["national"], "analyst") as nch:
            all_incs = (
                analyst_pb2_grpc.AnalystStub(nch)
                .ListIncidents(analyst_pb2.ListIncidentsRequest(), timeout=10)
                .incidents
            )
        b_only = [i for i in all_incs if {s.region for s in i.sites} == {"84"}]
        for inc in b_only:
            with pytest.raises(grpc.RpcError) as err:
                stub.GetIncident(analyst_pb2.GetIncidentRequest(key=inc.key), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                stub.UpdateIncident(
                    analyst_pb2.UpdateIncidentRequest(
                        key=inc.key, status=analyst_pb2.STATUS_CLOSED
                    ),
                    timeout=10,
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_agent_certificate_is_refused_on_every_analyst_call(collector: Collector, fleet) -> None:
    with _channel(collector, fleet["agent"], "agent") as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        calls = [
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest()),
            (stub.ListAgents, analyst_pb2.ListAgentsRequest()),
            (stub.CountAlerts, analyst_pb2.CountAlertsRequest(by="ght")),
            (stub.ListIncidents, analyst_pb2.ListIncidentsRequest()),
            (stub.GetIncident, analyst_pb2.GetIncidentRequest(key="x")),
            (stub.UpdateIncident, analyst_pb2.UpdateIncidentRequest(key="x", status=3)),
            (stub.ExportStix, analyst_pb2.ExportStixRequest()),
        ]
        for call, req in calls:
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, call
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.WatchIncidents(analyst_pb2.WatchIncidentsRequest(), timeout=10)))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_filters_name_the_field(collector: Collector, fleet) -> None:
    with _channel(collector, fleet["national"], "analyst") as ch:
        stub = analyst_pb2_grpc.AnalystStub(ch)
        for call, req, field in (
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest(page_size=5000), "page_size"),
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest(cursor="1 OR 1=1"), "cursor"),
            (stub.ListIncidents, analyst_pb2.ListIncidentsRequest(cursor="x"), "cursor"),
            (stub.CountAlerts, analyst_pb2.CountAlertsRequest(by="ght; DROP TABLE alerts"), "by"),
            (stub.UpdateIncident, analyst_pb2.UpdateIncidentRequest(key="x", status=1), "status"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.value.details()
        assert stub.ListAlerts(analyst_pb2.ListAlertsRequest(ght="%"), timeout=10).alerts == []


def test_health_and_reflection_answer_for_grpcurl(collector: Collector, fleet) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with _channel(collector, fleet["national"], "analyst") as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="vigie.v1.Analyst"), timeout=10
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(
            iter(
                reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    iter([req]), timeout=10
                )
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        assert {"vigie.v1.Analyst", "vigie.v1.Ingest", "grpc.health.v1.Health"} <= names
