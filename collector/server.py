"""Assemble the collector: store, servicers, mutual TLS, health and reflection."""

from __future__ import annotations

import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collector.auth import AuthInterceptor
from collector.ingest.servicer import IngestServicer
from collector.pki import ca as pki
from collector.query.servicer import AnalystServicer
from collector.store import Store, StoreError
from collector.store import open_store as _open
from common import logs
from vigie.v1 import analyst_pb2, analyst_pb2_grpc, ingest_pb2, ingest_pb2_grpc

log = logs.get("collector")


class StartError(Exception):
    pass


def pki_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["pki"]["dir"] or Path(cfg["state_dir"]) / "pki")


def open_store(cfg: dict[str, Any]) -> Store:
    url = cfg["storage"] or f"sqlite:///{Path(cfg['state_dir']) / 'vigie.db'}"
    try:
        return _open(url, cfg["sqlite_synchronous"].upper())
    except StoreError as exc:
        raise StartError(str(exc)) from None


def build(cfg: dict[str, Any], store: Store) -> tuple[grpc.Server, int]:
    d = pki_dir(cfg)
    if not pki.Authority.exists(d) or not (d / "server.crt").exists():
        if not cfg["pki"]["auto_init"]:
            raise StartError(f"no PKI in {d}: run 'vigie-collector pki init'")
        pki.init(d, cfg["pki"]["server_names"])
        log.info("pki_created", dir=str(d))
    creds = grpc.ssl_server_credentials(
        [((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())],
        root_certificates=(d / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    limit = cfg["ingest"]["max_message_bytes"]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg["ingest"]["workers"]),
        interceptors=[AuthInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
        maximum_concurrent_rpcs=cfg["ingest"]["workers"] * 4,
    )
    ingest_pb2_grpc.add_IngestServicer_to_server(
        IngestServicer(
            store, cfg["ingest"]["max_batches_in_flight"], cfg["ingest"]["max_alerts_per_second"]
        ),
        server,
    )
    analyst_pb2_grpc.add_AnalystServicer_to_server(
        AnalystServicer(store, cfg["silent_after_seconds"]), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
        analyst_pb2.DESCRIPTOR.services_by_name["Analyst"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(cfg["listen"], creds)
    if port == 0:
        raise StartError(f"cannot listen on {cfg['listen']}")
    for name in ("", *names[:2]):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def serve(cfg: dict[str, Any]) -> None:
    store = open_store(cfg)
    server, port = build(cfg, store)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    host = cfg["listen"].rpartition(":")[0]
    log.info("collector_listening", address=f"{host}:{port}")
    try:
        stop.wait()
    finally:
        log.info("collector_stopping")
        server.stop(grace=5).wait()
        store.close()
        log.info("collector_stopped")
