"""Streaming calls hold no thread: a thousand watches opened and abandoned (and hundreds
left open) leave the analysts' queries answering, and SIGTERM stops the collector within
its stop timeout."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests._delivery_kit import stop
from tests.conftest import start_collector
from vigie.v1 import analyst_pb2, analyst_pb2_grpc

STOP_TIMEOUT = 30.0  # the unit's TimeoutStopSec


def _channel(address: str, creds: Path) -> grpc.Channel:
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(
            (creds / "ca.crt").read_bytes(),
            (creds / "analyst.key").read_bytes(),
            (creds / "analyst.crt").read_bytes(),
        ),
    )


def test_abandoned_watches_hold_nothing_and_shutdown_completes(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.toml"
    cfg.write_text("[ingest]\nworkers = 2\n")  # the pool the report exhausted with two
    c = start_collector(tmp_path / "collector", config=cfg)
    try:
        creds = c.issue_analyst(tmp_path / "analyst")
        channels = [_channel(c.address, creds) for _ in range(4)]
        health = [health_pb2_grpc.HealthStub(ch) for ch in channels]
        analyst = [analyst_pb2_grpc.AnalystStub(ch) for ch in channels]
        calls = []
        for i in range(1200):
            if i % 4 == 0:
                call = analyst[i % 4].WatchIncidents(analyst_pb2.WatchIncidentsRequest())
            else:
                call = health[i % 4].Watch(health_pb2.HealthCheckRequest(service=""))
            calls.append(call)
        watches = [call for i, call in enumerate(calls) if i % 4]
        for call in watches:  # each health watch answered: every one of them is open
            assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        for call in calls[:1000]:
            call.cancel()
        time.sleep(0.5)
        for _ in range(5):  # the pool is free: queries answer at once
            t0 = time.monotonic()
            analyst[0].ListAgents(analyst_pb2.ListAgentsRequest(), timeout=5)
            analyst[1].CountAlerts(analyst_pb2.CountAlertsRequest(by="ght"), timeout=5)
            health[2].Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert time.monotonic() - t0 < 2.0

        # 200 calls are still open (150 health watches, 50 incident watches): stop now.
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        c.proc.wait(STOP_TIMEOUT)
        took = time.monotonic() - t0
        log = c.log.read_text()
        assert "collector_stopped" in log, log[-2000:]
        assert took < STOP_TIMEOUT
        print(f"collector stopped in {took:.1f} s with 200 watches open")
        # The watchers heard the collector go: NOT_SERVING, then the end of their call.
        still_open = [call for call in calls[1000:] if call in watches]
        statuses = set()
        for call in still_open[:20]:
            try:
                for msg in call:
                    statuses.add(msg.status)
            except grpc.RpcError:
                pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        for ch in channels:
            ch.close()
    finally:
        stop(c)
