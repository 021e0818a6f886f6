"""Three collector processes on one PostgreSQL database: the same indicator reaching all
three at once makes exactly one incident, every alert is stored exactly once, and a
watcher on any replica sees what another raised."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from tests.conftest import Collector, start_collector, tool
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc, ingest_pb2, ingest_pb2_grpc


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[list[Collector]]:
    ca_home = tmp_path / "ca-home"  # the one CA every replica trusts
    subprocess.run(
        [tool("vigie-collector"), "pki", "init", "--state-dir", str(ca_home)],
        check=True,
        capture_output=True,
    )
    out = []
    try:
        for i in range(3):
            cfg = tmp_path / f"c{i}.toml"
            cfg.write_text(
                f'storage = "{pg_url}"\n[pki]\ndir = "{ca_home / "pki"}"\n'
                f'auto_init = false\n[enroll]\nlisten = ""\n'
            )
            out.append(start_collector(tmp_path / f"replica{i}", config=cfg))
        yield out
    finally:
        for c in out:
            c.proc.terminate()
        for c in out:
            c.proc.wait(10)


def _channel(c: Collector, creds: Path, stem: str = "agent") -> grpc.Channel:
    return grpc.secure_channel(
        c.address,
        grpc.ssl_channel_credentials(
            (creds / "ca.crt").read_bytes(),
            (creds / f"{stem}.key").read_bytes(),
            (creds / f"{stem}.crt").read_bytes(),
        ),
    )


def _alerts(prefix: str, n: int) -> list[alert_pb2.Alert]:
    now = int(time.time())
    out = []
    for i in range(n):
        a = alert_pb2.Alert(
            id=f"{prefix}{i:04d}",
            revision=1,
            detector="net.portscan",
            severity=3,
            technique="T1046",
            summary="scan",
            occurrences=1,
        )
        for f in (a.first_seen, a.last_seen, a.observed_at):
            f.FromSeconds(now)
        a.entities.add(
            role=alert_pb2.ROLE_SOURCE,
            kind=alert_pb2.KIND_IP,
            value="198.51.100.200",
            pseudonymised=False,
        )
        out.append(a)
    return out


def _send(c: Collector, creds: Path, alerts: list[alert_pb2.Alert]) -> int:
    with _channel(c, creds) as ch:
        replies = list(
            ingest_pb2_grpc.IngestStub(ch).Stream(
                iter([ingest_pb2.AgentMessage(batch=ingest_pb2.AlertBatch(seq=1, alerts=alerts))]),
                timeout=30,
            )
        )
    return replies[-1].ack.stored


def test_three_replicas_one_incident_each_alert_once(
    replicas: list[Collector], tmp_path: Path, pg_url: str
) -> None:
    # Credentials come from the CA the replicas share.
    first = Collector(replicas[0].address, tmp_path / "ca-home", replicas[0].proc, replicas[0].log)
    agents = [
        first.issue_agent(
            tmp_path / f"agent{i}", finess=f"{i + 1:09d}", ght=f"GHT-{i % 3}", region="11"
        )
        for i in range(6)
    ]
    watcher_creds = first.issue_analyst(tmp_path / "analyst")
    seen: list[analyst_pb2.Incident] = []

    def watch() -> None:
        with _channel(replicas[2], watcher_creds, "analyst") as ch:
            stream = analyst_pb2_grpc.AnalystStub(ch).WatchIncidents(
                analyst_pb2.WatchIncidentsRequest(from_start=True), timeout=20
            )
            try:
                for ev in stream:
                    seen.append(ev.incident)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    watcher = threading.Thread(target=watch)
    watcher.start()
    barrier = threading.Barrier(6)
    stored: list[int] = []

    def agent(i: int) -> None:
        barrier.wait()  # every agent at once, spread over the three replicas
        stored.append(_send(replicas[i % 3], agents[i], _alerts(f"a{i}-", 50)))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(stored) == 300
    # A re-sent batch, to another replica this time, is stored once.
    assert _send(replicas[1], agents[0], _alerts("a0-", 50)) == 0
    assert _send(replicas[2], agents[0], _alerts("a0-", 50)) == 0

    conninfo, _, options = pg_url.partition("?")
    with psycopg.connect(
        conninfo, options=options.removeprefix("options=").replace("%3D", "=")
    ) as db:
        assert db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 300
        incidents = db.execute(
            "SELECT key, alert_count FROM incidents WHERE rule = 'multi_site_indicator'"
        ).fetchall()
        sites = db.execute(
            "SELECT COUNT(*) FROM incident_sites WHERE incident_key = %s", (incidents[0][0],)
        ).fetchone()[0]
        waves = db.execute("SELECT COUNT(*) FROM incidents WHERE rule = 'wave'").fetchone()[0]
    assert len(incidents) == 1, incidents
    assert incidents[0][1] == 300 and sites == 6
    assert waves == 1  # six establishments, same detector: one wave, not one per replica
    watcher.join()
    assert {i.key for i in seen if i.rule == "multi_site_indicator"} == {incidents[0][0]}
