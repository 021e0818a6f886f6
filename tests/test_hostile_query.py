"""Analyst filters carrying SQL, wildcards, huge ranges and page sizes, bogus cursors,
through the real gRPC analyst service: parameterised and bounded. Each answer is either
INVALID_ARGUMENT naming the field, or a (possibly empty) result; never a database error,
never every row for a wildcard."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests._hostile_kit import alert, channel, integrity, send
from tests.conftest import Collector, start_collector
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc

INJECTIONS = [
    "' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE alerts; --",
    '" OR ""="',
    "%",
    "*",
    "_",
    "%%",
    "net.%",
    ".*",
    "1) OR (1=1",
    "\\",
    "\x00",
    "' UNION SELECT * FROM audit --",
    "é' OR 'é'='é",
    "a" * 10_000,
]
FILTERS = ("detector", "finess", "ght", "region")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, Path]]:
    tmp = tmp_path_factory.mktemp("query")
    c = start_collector(tmp / "collector")
    try:
        # Two sites of two regions, sharing a public indicator (a multi-site incident).
        for name, finess, ght, region in (("a", "111111111", "GHT-A", "11"),
                                          ("b", "222222222", "GHT-B", "84")):  # fmt: skip
            creds = c.issue_agent(tmp / name, finess=finess, ght=ght, region=region)
            alerts = []
            for i in range(5):
                a = alert(i)
                a.entities.add(role=alert_pb2.ROLE_INDICATOR, kind=alert_pb2.KIND_IP,
                               value="203.0.113.9")  # fmt: skip
                alerts.append(a)
            with channel(c, creds) as ch:
                assert send(ch, *alerts)[-1].ack.stored == 5
        yield c, c.issue_analyst(tmp / "analyst")
    finally:
        c.proc.terminate()
        try:
            c.proc.wait(10)
        except subprocess.TimeoutExpired:
            c.proc.kill()


@pytest.fixture
def stub(setup) -> Iterator[analyst_pb2_grpc.AnalystStub]:
    c, creds = setup
    with channel(c, creds, "analyst") as ch:
        yield analyst_pb2_grpc.AnalystStub(ch)


def ok_or_invalid(call, request, field: str):
    """The answer, or None when refused with INVALID_ARGUMENT naming `field`."""
    try:
        return call(request, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, err.code(), err.details())
        assert field in err.details(), (field, err.details())
        return None


def test_baseline(stub) -> None:
    got = stub.ListAlerts(analyst_pb2.ListAlertsRequest(), timeout=10)
    assert len(got.alerts) == 10


@pytest.mark.parametrize("field", FILTERS)
def test_injection_in_alert_filters_matches_nothing(stub, field: str) -> None:
    for value in INJECTIONS:
        got = ok_or_invalid(stub.ListAlerts, analyst_pb2.ListAlertsRequest(**{field: value}),
                            field)  # fmt: skip
        if got is not None:
            assert len(got.alerts) == 0, (field, value)


def test_injection_in_counts_and_incidents(stub) -> None:
    for value in [*INJECTIONS, "ght, (SELECT 1)", "hour; DELETE FROM alerts", "GHT"]:
        assert ok_or_invalid(stub.CountAlerts, analyst_pb2.CountAlertsRequest(by=value),
                             "by") is None  # fmt: skip
        got = ok_or_invalid(stub.CountAlerts, analyst_pb2.CountAlertsRequest(
            by="ght", region=value), "region")  # fmt: skip
        assert got is None or len(got.counts) == 0
        got = ok_or_invalid(stub.ListIncidents, analyst_pb2.ListIncidentsRequest(rule=value),
                            "rule")  # fmt: skip
        assert got is None or len(got.incidents) == 0
        got = ok_or_invalid(stub.ListIncidents, analyst_pb2.ListIncidentsRequest(region=value),
                            "region")  # fmt: skip
        assert got is None or len(got.incidents) == 0
        with pytest.raises(grpc.RpcError) as err:
            stub.GetIncident(analyst_pb2.GetIncidentRequest(key=value), timeout=10)
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


HUGE = [-(2**63), -(10**12), 0, 253402300799, 2**62, 2**63 - 1]


def test_huge_time_ranges(stub) -> None:
    for since in HUGE:
        for until in HUGE:
            req = analyst_pb2.ListAlertsRequest(since=_ts(since), until=_ts(until))
            got = ok_or_invalid(stub.ListAlerts, req, "since")
            if got is not None:
                assert len(got.alerts) <= 10
            got = ok_or_invalid(stub.CountAlerts, analyst_pb2.CountAlertsRequest(
                by="hour", since=_ts(since), until=_ts(until)), "since")  # fmt: skip
        ok_or_invalid(stub.ListIncidents, analyst_pb2.ListIncidentsRequest(since=_ts(since)),
                      "since")  # fmt: skip
    got = ok_or_invalid(stub.ListAlerts, analyst_pb2.ListAlertsRequest(
        since=_ts(-(2**62)), until=_ts(2**62)), "since")  # fmt: skip
    assert got is None or len(got.alerts) == 10


def test_huge_page_sizes(stub) -> None:
    for size in (1001, 10**6, 2**31, 2**32 - 1):
        for call, req in (
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest(page_size=size)),
            (stub.ListIncidents, analyst_pb2.ListIncidentsRequest(page_size=size)),
        ):
            assert ok_or_invalid(call, req, "page_size") is None
    got = stub.ListAlerts(analyst_pb2.ListAlertsRequest(page_size=1000), timeout=10)
    assert len(got.alerts) == 10 and not got.next_cursor
    got = stub.ListAlerts(analyst_pb2.ListAlertsRequest(page_size=3), timeout=10)
    assert len(got.alerts) == 3 and got.next_cursor


BOGUS_CURSORS = [
    "abc", "-1", "1e9", "0x10", " 5", "5 ", "+5", "1.5", "9" * 19, "9" * 30,
    "9223372036854775808", "18446744073709551616", "²", "١٢", "１２", "0" * 19, "\x00",
    "'; DROP TABLE alerts; --", "%",
]  # fmt: skip


def test_bogus_cursors(stub) -> None:
    for cursor in BOGUS_CURSORS:
        for call, req in (
            (stub.ListAlerts, analyst_pb2.ListAlertsRequest(cursor=cursor)),
            (stub.ListIncidents, analyst_pb2.ListIncidentsRequest(cursor=cursor)),
        ):
            got = ok_or_invalid(call, req, "cursor")
            if got is not None:
                items = got.alerts if hasattr(got, "alerts") else got.incidents
                assert len(items) <= 10


def test_watch_with_huge_cursor(stub) -> None:
    for cursor in (2**63 - 1, 2**63, 2**64 - 1):
        req = analyst_pb2.WatchIncidentsRequest(cursor=cursor)
        try:
            for _ in stub.WatchIncidents(req, timeout=1.5):
                pass
        except grpc.RpcError as err:
            assert err.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ), (cursor, err.code(), err.details())
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert "cursor" in err.details()


def test_store_untouched(setup, stub) -> None:
    c, _ = setup
    assert integrity(c) == "ok"
    got = stub.ListAlerts(analyst_pb2.ListAlertsRequest(), timeout=10)
    assert len(got.alerts) == 10
