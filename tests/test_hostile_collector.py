"""Hostile agents against a real collector process: every bad input gets a clear status
code or is bounded, nothing corrupts the store, and other agents keep being served."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

from tests._hostile_kit import (
    alert,
    batch,
    channel,
    counts,
    integrity,
    raw_alert,
    raw_batch,
    send,
    send_raw,
    served,
)
from tests.conftest import Collector
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc

MIB = 1024 * 1024


@pytest.fixture
def agents(collector: Collector, tmp_path: Path) -> tuple[Path, Path]:
    """A hostile agent and a well-behaved one (another establishment)."""
    bad = collector.issue_agent(tmp_path / "bad", finess="111111111", ght="GHT-BAD")
    good = collector.issue_agent(tmp_path / "good", finess="222222222", ght="GHT-GOOD")
    with channel(collector, good) as ch:
        assert served(ch, 0)  # one stored alert, the baseline every test compares with
    return bad, good


def refused(collector: Collector, creds: Path, *alerts, raw: bytes = b"") -> grpc.RpcError:
    with channel(collector, creds) as ch, pytest.raises(grpc.RpcError) as err:
        if raw:
            send_raw(ch, raw)
        else:
            send(ch, *alerts)
    return err.value


def after(collector: Collector, good: Path, before: tuple[int, int], i: int = 1) -> None:
    """Refused input changed nothing, the store is sound, and a good agent is served."""
    assert counts(collector) == before
    assert integrity(collector) == "ok"
    with channel(collector, good) as ch:
        assert served(ch, i)
    assert counts(collector)[0] == before[0] + 1


def test_oversized_message_is_resource_exhausted(collector: Collector, agents) -> None:
    bad, good = agents
    before = counts(collector)
    err = refused(collector, bad, alert(1, summary="x" * (5 * MIB)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after(collector, good, before)


def test_too_many_alerts_in_a_batch(collector: Collector, agents) -> None:
    bad, good = agents
    before = counts(collector)
    err = refused(collector, bad, *[alert(i) for i in range(1001)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch.alerts" in err.details()
    after(collector, good, before)


def _ts(seconds: int, nanos: int = 0):
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=seconds, nanos=nanos)


def _entity(**kw) -> alert_pb2.Entity:
    e = dict(role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="p:01") | kw
    return alert_pb2.Entity(**e)


def _metric(key: str, value: float) -> alert_pb2.Alert:
    a = alert(1)
    a.metrics[key] = value
    return a


def _entities(*es: alert_pb2.Entity) -> alert_pb2.Alert:
    a = alert(1)
    del a.entities[:]
    a.entities.extend(es)
    return a


BAD_ALERTS = {
    # unknown enum values (proto3 enums are open: any int32 arrives)
    "severity_unknown": (alert(1, severity=99), "alerts[0].severity"),
    "severity_negative": (alert(1, severity=-1), "alerts[0].severity"),
    "severity_unset": (alert(1, severity=0), "alerts[0].severity"),
    "role_unknown": (_entities(_entity(role=77)), "alerts[0].entities[0].role"),
    "kind_unknown": (_entities(_entity(kind=2**31 - 1)), "alerts[0].entities[0].kind"),
    # empty and huge strings
    "summary_empty": (alert(1, summary=""), "alerts[0].summary"),
    "summary_huge": (alert(1, summary="s" * 100_000), "alerts[0].summary"),
    "entity_empty": (_entities(_entity(value="")), "alerts[0].entities[0].value"),
    "entity_huge": (_entities(_entity(value="v" * 513)), "alerts[0].entities[0].value"),
    "too_many_entities": (_entities(*[_entity()] * 65), "alerts[0].entities"),
    "detector_empty": (alert(1, detector=""), "alerts[0].detector"),
    "detector_huge": (alert(1, detector="net." + "a" * 5000), "alerts[0].detector"),
    "detector_sql": (alert(1, detector="net.x'; DROP TABLE alerts;--"), "alerts[0].detector"),
    "technique_huge": (alert(1, technique="T" + "1" * 4000), "alerts[0].technique"),
    # invalid ids
    "id_empty": (alert(1, id=""), "alerts[0].id"),
    "id_huge": (alert(1, id="i" * 129), "alerts[0].id"),
    "id_sql": (alert(1, id="x' OR '1'='1"), "alerts[0].id"),
    "id_path": (alert(1, id="../../etc/passwd"), "alerts[0].id"),
    "id_wildcard": (alert(1, id="%"), "alerts[0].id"),
    "id_unicode": (alert(1, id="ａｌｅｒｔ"), "alerts[0].id"),
    "id_nul": (alert(1, id="a\x00b"), "alerts[0].id"),
    "id_newline": (alert(1, id="abc\n"), "alerts[0].id"),
    # NaN, infinities, metric names
    "metric_nan": (_metric("rate", float("nan")), "alerts[0].metrics"),
    "metric_inf": (_metric("rate", float("inf")), "alerts[0].metrics"),
    "metric_minus_inf": (_metric("rate", float("-inf")), "alerts[0].metrics"),
    "metric_empty_name": (_metric("", 1.0), "alerts[0].metrics"),
    "metric_huge_name": (_metric("m" * 65, 1.0), "alerts[0].metrics"),
    # timestamps far away, or inverted
    "first_seen_epoch": (alert(1, first_seen=_ts(0)), "alerts[0].first_seen"),
    "first_seen_negative": (alert(1, first_seen=_ts(-(10**11))), "alerts[0].first_seen"),
    "last_seen_year_9999": (alert(1, last_seen=_ts(253402300799)), "alerts[0].last_seen"),
    "observed_at_2_pow_62": (alert(1, observed_at=_ts(2**62)), "alerts[0].observed_at"),
    "observed_at_unset": (alert(1, observed_at=_ts(0)), "alerts[0].observed_at"),
    "last_before_first": (
        alert(1, last_seen=_ts(int(time.time()) - 3600)),
        "alerts[0].last_seen",
    ),
    "occurrences_zero": (alert(1, occurrences=0), "alerts[0].occurrences"),
}


def test_bad_alerts_are_refused_naming_the_field(collector: Collector, agents) -> None:
    """One collector for the whole table (a collector start costs a second)."""
    bad, good = agents
    before = counts(collector)
    for name, (a, field) in BAD_ALERTS.items():
        err = refused(collector, bad, alert(0), a)  # a good alert first: nothing of it stays
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert field.replace("[0]", "[1]", 1) in err.details(), (name, err.details())
    # the same alert id twice in one batch, and an empty batch
    err = refused(collector, bad, alert(5), alert(5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "repeated" in err.details()
    err = refused(collector, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.details()
    after(collector, good, before)


def undecodable(err: grpc.RpcError) -> None:
    # The auth interceptor decodes leniently so that a malformed message gets
    # INVALID_ARGUMENT (gRPC alone would answer a bare INTERNAL).
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "not a valid protobuf message" in err.details()


def test_invalid_utf8_in_string_fields(collector: Collector, agents) -> None:
    """Bytes that are not UTF-8 where proto3 says string: the server's parser refuses
    them before any servicer code, with a status code, and nothing is stored."""
    bad, good = agents
    before = counts(collector)
    assert raw_alert() == alert_pb2.Alert.FromString(raw_alert()).SerializeToString()
    with channel(collector, bad) as ch:  # the hand encoding itself is right
        replies = send_raw(ch, raw_batch(raw_alert(b"rawok")))
        assert replies[-1].ack.stored == 1
    before = (before[0] + 1, counts(collector)[1])
    for where in ("id", "summary", "value", "detector"):
        kw = {
            "id": {"alert_id": b"ab\xff\xfe"},
            "summary": {"summary": b"scan \xc3\x28 overlong \xc0\xaf"},
            "value": {"value": b"p:\xed\xa0\x80"},  # a UTF-16 surrogate in UTF-8 form
            "detector": {"detector": b"net.\x80scan"},
        }[where]
        undecodable(refused(collector, bad, raw=raw_batch(raw_alert(**kw))))
    # bytes that are no protobuf at all
    for junk in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x12\x03\x0a"):
        undecodable(refused(collector, bad, raw=junk))
    after(collector, good, before)


def _hold(stop: threading.Event):
    """A request stream that sends nothing and stays open until `stop`."""
    stop.wait(60)
    return
    yield


def test_thousands_of_streams_are_bounded(collector: Collector, agents) -> None:
    """One agent opens 1000 streams at once and keeps them open: it holds only a few,
    the others are refused with RESOURCE_EXHAUSTED, and another agent is still served."""
    bad, good = agents
    before = counts(collector)
    stop = threading.Event()
    codes: list = []
    lock = threading.Lock()
    chans = [channel(collector, bad) for _ in range(4)]
    calls = []
    try:
        for i in range(1000):
            stub = ingest_pb2_grpc.IngestStub(chans[i % 4])
            call = stub.Stream(_hold(stop), timeout=60)
            call.add_done_callback(lambda c: (lock.acquire(), codes.append(c.code()),
                                              lock.release()))  # fmt: skip
            calls.append(call)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(codes) < 990:
            time.sleep(0.2)
        held = sum(not c.done() for c in calls)
        exhausted = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert exhausted >= 990, (held, {str(c) for c in codes})
        assert held <= 10
        # a well-behaved agent is served now, in the middle of the attack
        t = time.monotonic()
        with channel(collector, good) as ch:
            assert served(ch, 1, timeout=10)
        assert time.monotonic() - t < 10
    finally:
        stop.set()
        for c in calls:
            c.cancel()
        for ch in chans:
            ch.close()
    assert integrity(collector) == "ok"
    assert counts(collector)[0] == before[0] + 1


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_client_that_never_reads_its_acks(collector: Collector, agents) -> None:
    """An agent that writes batches as fast as it can and never reads an ack: the
    collector stops reading it (gRPC flow control) instead of queueing its messages,
    its memory stays bounded, and another agent is served meanwhile."""
    bad, good = agents
    big = [
        alert(i, summary="s" * 1000, entities=[_entity(value=f"p:{i:04d}" + "v" * 500)] * 60)
        for i in range(8)
    ]
    payload = batch(*big).SerializeToString()  # ~250 KB, sent again and again
    assert 200_000 < len(payload) < 300_000
    stop = threading.Event()
    sent = [0]

    def flood():
        while not stop.is_set():
            sent[0] += 1
            yield payload

    rss0 = _rss(collector.proc.pid)
    peak = rss0
    with channel(collector, bad) as ch:
        call = ch.stream_stream(
            "/vigie.v1.Ingest/Stream",
            request_serializer=None,
            response_deserializer=ingest_pb2.CollectorMessage.FromString,
        )(flood(), timeout=60)
        try:
            served_during = 0
            t_end = time.monotonic() + 8
            with channel(collector, good) as gch:
                while time.monotonic() < t_end:
                    peak = max(peak, _rss(collector.proc.pid))
                    if served(gch, 100 + served_during, timeout=10):
                        served_during += 1
                    time.sleep(0.3)
            peak = max(peak, _rss(collector.proc.pid))
        finally:
            stop.set()
            call.cancel()
    print(f"unread acks: {sent[0]} batches written by the client "
          f"({sent[0] * len(payload) / MIB:.0f} MiB), collector RSS {rss0 / MIB:.0f} -> "
          f"peak {peak / MIB:.0f} MiB, good agent served {served_during} times")  # fmt: skip
    assert served_during >= 5
    assert peak - rss0 < 150 * MIB, (rss0, peak, sent[0])
    assert integrity(collector) == "ok"
