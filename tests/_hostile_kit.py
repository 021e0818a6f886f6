"""Helpers for the hostile collector tests: channels, alerts, a hand protobuf encoder."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc

from tests.conftest import Collector
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc

STREAM = "/vigie.v1.Ingest/Stream"


def channel(c: Collector, creds: Path, stem: str = "agent", **options) -> grpc.Channel:
    ca = (c.state_dir / "pki" / "ca.crt").read_bytes()
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            ca, (creds / f"{stem}.key").read_bytes(), (creds / f"{stem}.crt").read_bytes()
        ),
        options=list(options.items()),
    )


def alert(i: int = 0, **over) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=f"a{i:05d}",
        revision=1,
        detector="net.portscan",
        severity=alert_pb2.SEVERITY_MEDIUM,
        technique="T1046",
        summary="vertical port scan",
        occurrences=3,
    )
    now = int(time.time())
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(now)
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="p:00ff", pseudonymised=True
    )
    for k, v in over.items():
        if k in ("first_seen", "last_seen", "observed_at"):
            getattr(a, k).CopyFrom(v)
        elif k == "entities":
            del a.entities[:]
            a.entities.extend(v)
        else:
            setattr(a, k, v)
    return a


def batch(*alerts: alert_pb2.Alert, seq: int = 1) -> ingest_pb2.AgentMessage:
    return ingest_pb2.AgentMessage(batch=ingest_pb2.AlertBatch(seq=seq, alerts=list(alerts)))


def send(ch: grpc.Channel, *alerts: alert_pb2.Alert, timeout: float = 15) -> list:
    stub = ingest_pb2_grpc.IngestStub(ch)
    return list(stub.Stream(iter([batch(*alerts)]), timeout=timeout))


def send_raw(ch: grpc.Channel, *messages: bytes, timeout: float = 15) -> list:
    """Bytes on the wire exactly as given: the server's parser is the first to read them."""
    call = ch.stream_stream(
        STREAM,
        request_serializer=None,
        response_deserializer=ingest_pb2.CollectorMessage.FromString,
    )
    return list(call(iter(messages), timeout=timeout))


def served(ch: grpc.Channel, i: int, timeout: float = 15) -> bool:
    """A well-behaved agent's batch of one alert is stored and acknowledged."""
    replies = send(ch, alert(i), timeout=timeout)
    return [m.WhichOneof("body") for m in replies][-1] == "ack"


# Hand-written protobuf encoding (to put bytes the generated code refuses on the wire).


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def raw_alert(alert_id: bytes = b"raw1", summary: bytes = b"scan", value: bytes = b"p:01",
              detector: bytes = b"net.portscan") -> bytes:  # fmt: skip
    ts = field(1, int(time.time()))
    entity = field(1, 1) + field(2, 1) + field(3, value) + field(4, 1)
    return (
        field(1, alert_id) + field(2, 1) + field(3, ts) + field(4, ts) + field(5, ts)
        + field(6, detector) + field(7, 3) + field(8, b"T1046") + field(9, summary)
        + field(10, entity) + field(12, 1)
    )  # fmt: skip


def raw_batch(*alerts: bytes, seq: int = 1) -> bytes:
    body = field(1, seq) + b"".join(field(2, a) for a in alerts)
    return field(1, body)  # AgentMessage.batch


def counts(c: Collector) -> tuple[int, int]:
    with sqlite3.connect(c.db()) as db:
        return (
            db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM alert_indicators").fetchone()[0],
        )


def integrity(c: Collector) -> str:
    with sqlite3.connect(c.db()) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
