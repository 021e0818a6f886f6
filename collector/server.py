"""Assemble the collector: store, servicers, mutual TLS, health and reflection."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collector.audit import AuditInterceptor
from collector.auth import AuthInterceptor
from collector.enroll.servicer import EnrollmentServicer, RenewalServicer
from collector.ingest.commit import GroupCommit
from collector.ingest.servicer import REFUSALS, IngestServicer
from collector.ingest.writer import WriterProcess
from collector.jobs import Jobs
from collector.pki import ca as pki
from collector.pki.intel import IntelSource
from collector.pki.registry import Registry, RevocationCache
from collector.query.servicer import AnalystServicer
from collector.store import Store, StoreError
from collector.store import open_store as _open
from common import logs, metrics, sdnotify
from vigie.v1 import (
    analyst_pb2,
    analyst_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
)

log = logs.get("collector")


# PostgreSQL transactions run side by side (the pool holds 16 connections): as many writer
# threads, each storing what the streams brought while the others commit.
PG_WRITERS = 8


class StartError(Exception):
    pass


class Metrics:
    """The collector's Prometheus metrics (served on [metrics] listen)."""

    def __init__(self) -> None:
        self.registry = r = metrics.Registry()
        self.stored = r.counter("vigie_collector_alerts_stored_total", "Alert revisions stored.")
        self.duplicates = r.counter(
            "vigie_collector_alerts_duplicate_total", "Alert revisions received again (acked)."
        )
        self.batches = r.counter("vigie_collector_batches_total", "Batches committed and acked.")
        self.ingest_seconds = r.histogram(
            "vigie_collector_ingest_seconds",
            "Seconds to store and commit one transaction (the batches grouped in it).",
        )
        self.heartbeats = r.counter("vigie_collector_heartbeats_total", "Agent heartbeats.")
        self.batches_failed = r.counter(
            "vigie_collector_batches_failed_total",
            "Batches that failed to store: unavailable (the store could not be written; the "
            "agent sends again) or refused (stored alert by alert, the rest dead-lettered).",
            ["reason"],
        )
        self.dead_letters = r.counter(
            "vigie_collector_dead_letters_total",
            "Alerts put in the dead letters: store (refused by the store) or correlation "
            "(stored, but a rule failed on them).",
            ["kind"],
        )
        self.correlation_errors = r.counter(
            "vigie_collector_correlation_errors_total",
            "Correlation rule runs that failed on a batch (its alerts are stored).",
            ["rule"],
        )
        self.sink_errors = r.counter(
            "vigie_collector_sink_errors_total",
            "Incident changes a sink failed to deliver (retried at the next dispatch).",
            ["sink"],
        )
        self.refused = r.counter(
            "vigie_collector_refused_total",
            "Agent streams and batches refused, by reason.",
            ["reason"],
        )
        self.heartbeats_failed = r.counter(
            "vigie_collector_heartbeats_failed_total", "Heartbeats the store could not take."
        )
        # Zeros from the start: an alert rule on a rate needs the series to exist.
        for reason in ("unavailable", "refused"):
            self.batches_failed.inc(0, reason)
        for kind in ("store", "correlation"):
            self.dead_letters.inc(0, kind)
        from collector.correlate.rules import OPTIONS as RULES

        for rule in RULES:
            self.correlation_errors.inc(0, rule)
        for reason in REFUSALS:
            self.refused.inc(0, reason)
        self.streams: Callable[[], int] = lambda: 0  # set by build(): the servicer counts

        r.callback(
            "vigie_collector_connected_agents", "Agent streams open now.", lambda: self.streams()
        )


class MeteredStore:
    """The store as the group-commit writer sees it: each transaction timed and counted."""

    def __init__(self, store: Store | WriterProcess, m: Metrics) -> None:
        self._store, self._m = store, m

    def ingest_many(self, batches, heartbeats=()):
        t0 = time.perf_counter()
        try:
            results = self._store.ingest_many(batches, heartbeats)
        except Exception:
            self._m.batches_failed.inc(len(batches), "unavailable")
            raise
        finally:
            self._count_events()
        self._m.ingest_seconds.observe(time.perf_counter() - t0)
        self._m.stored.inc(sum(r.stored for r in results))
        self._m.duplicates.inc(sum(r.duplicates for r in results))
        self._m.batches.inc(len(results))
        self._m.heartbeats.inc(len(heartbeats))
        return results

    def _count_events(self) -> None:
        m = self._m
        for (name, label), n in self._store.events.take().items():
            if name == "dead_letter":
                m.dead_letters.inc(n, label)
            elif name == "correlation_error":
                m.correlation_errors.inc(n, label)
            elif name == "batch_salvaged":
                m.batches_failed.inc(n, "refused")
            elif name == "heartbeat_failed":
                m.heartbeats_failed.inc(n)

    def close_writes(self) -> None:
        """Stop the writer process, if the writes go through one."""
        if isinstance(self._store, WriterProcess):
            self._store.close()


class LoopThread:
    """The asyncio loop the main gRPC server runs on, in a thread of its own: the main
    thread keeps the signals, the watchdog and the shutdown sequence."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1. Check also tells the caller the collector's clock (trailing
    metadata x-vigie-time, Unix seconds): `vigie-agent doctor` measures skew with it.

    Watch is a coroutine on the event loop, waiting on an asyncio event: grpc's own
    servicer blocks a pool thread per Watch until the status changes, so a few cancelled
    watches held every analyst and renewal thread, and stopping waited for them forever.
    Every status change wakes the watchers; a cancelled one simply ends."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Event()

    def set(self, service: str, status: int) -> None:
        """From the event loop only."""
        self._status[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def shutdown(self) -> None:
        """Every service NOT_SERVING: watchers hear it before their calls end."""
        for service in list(self._status):
            self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def Check(self, request, context):
        status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        context.set_trailing_metadata((("x-vigie-time", f"{time.time():.6f}"),))
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while True:
            changed = self._changed
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await changed.wait()


def pki_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["pki"]["dir"] or Path(cfg["state_dir"]) / "pki")


def open_registry(cfg: dict[str, Any]) -> Registry:
    return Registry(Path(cfg["state_dir"]) / "registry.db")


def store_url(cfg: dict[str, Any]) -> str:
    return cfg["storage"] or f"sqlite:///{Path(cfg['state_dir']) / 'vigie.db'}"


def open_store(cfg: dict[str, Any]) -> Store:
    url = store_url(cfg)
    try:
        return _open(url, cfg["sqlite_synchronous"].upper(), cfg["correlation"])
    except StoreError as exc:
        raise StartError(str(exc)) from None


async def build(
    cfg: dict[str, Any],
    store: Store,
    registry: Registry | None = None,
    meters: Metrics | None = None,
    pool: futures.ThreadPoolExecutor | None = None,
) -> tuple[grpc.aio.Server, int, GroupCommit]:
    """The main server (to be built, started and stopped on its event loop), its port,
    and the group-commit writer the agents' streams store through. `pool` runs the
    handlers that are plain functions (analyst queries, renewals, health, reflection)."""
    d = pki_dir(cfg)
    registry = registry or open_registry(cfg)
    revoked = RevocationCache(registry)
    names = pki.configured_names(cfg["pki"]["server_names"], cfg["listen"])
    if not pki.Authority.exists(d) or not (d / "server.crt").exists():
        if not cfg["pki"]["auto_init"]:
            raise StartError(f"no PKI in {d}: run 'vigie-collector pki init'")
        pki.init(d, names)
        log.info("pki_created", dir=str(d))
    # The certificate's names are fixed when it is issued: names configured later reach no
    # agent (hostname verification fails at enrollment) until the certificate is reissued.
    missing = pki.missing_server_names(d, names)
    if missing:
        log.warning(
            "server_certificate_names",
            missing=missing,
            covered=pki.server_certificate_names(d),
            fix="vigie-collector pki reissue-server (then restart)",
        )
    creds = grpc.ssl_server_credentials(
        [((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())],
        root_certificates=pki.trust_bundle(d),  # the issuing CA and any kept by a rollover
        require_client_auth=True,
    )
    meters = meters or Metrics()
    ing = cfg["ingest"]
    limit = ing["max_message_bytes"]
    server = grpc.aio.server(
        # Analyst, renewal, health and reflection handlers are plain functions: they run
        # in this pool; the agents' streams are coroutines on the loop.
        migration_thread_pool=pool or futures.ThreadPoolExecutor(max_workers=ing["workers"]),
        interceptors=[
            AuthInterceptor(revoked, lambda reason: meters.refused.inc(1, reason)),
            AuditInterceptor(store),
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
        maximum_concurrent_rpcs=ing["max_streams"] + ing["workers"],
    )
    if store.backend.dialect.one_writer:
        # Writes go to a process of their own (see collector/ingest/writer.py).
        writes = WriterProcess(
            store_url(cfg), cfg["sqlite_synchronous"].upper(), cfg["correlation"]
        )
        writer = GroupCommit(MeteredStore(writes, meters))
    else:
        writer = GroupCommit(MeteredStore(store, meters), writers=PG_WRITERS)
    ingest = IngestServicer(
        writer,
        ing["max_batches_in_flight"],
        ing["max_alerts_per_second"],
        IntelSource(registry),
        revoked,
        max_streams=ing["max_streams"],
        max_alerts_buffered=ing["max_alerts_buffered"],
        on_refused=lambda reason: meters.refused.inc(1, reason),
    )
    meters.streams = ingest.open_streams
    ingest_pb2_grpc.add_IngestServicer_to_server(ingest, server)
    enroll_pb2_grpc.add_RenewalServicer_to_server(
        RenewalServicer(d, registry, cfg["pki"]["agent_cert_seconds"]), server
    )
    analyst_pb2_grpc.add_AnalystServicer_to_server(
        AnalystServicer(
            store, cfg["silent_after_seconds"], stix=cfg["sinks"]["stix"], registry=registry
        ),
        server,
    )
    health_servicer = Health()
    server.vigie_health = health_servicer  # serve() tells watchers when stopping
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
        analyst_pb2.DESCRIPTOR.services_by_name["Analyst"].full_name,
        enroll_pb2.DESCRIPTOR.services_by_name["Renewal"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(cfg["listen"], creds)
    if port == 0:
        raise StartError(f"cannot listen on {cfg['listen']}")
    for name in ("", *names[:3]):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, writer


def build_enroll(
    cfg: dict[str, Any], registry: Registry, main_port: int
) -> tuple[grpc.Server | None, int]:
    """The enrollment listener: server-side TLS only, and the Enrollment service alone.

    Python gRPC cannot request a client certificate without requiring it, so enrollment
    (where the agent has none yet) gets its own port rather than weakening the main one.
    """
    where = cfg["enroll"]["listen"]
    if not where:
        return None, 0
    auto = where == "auto"
    if auto:
        host = cfg["listen"].rpartition(":")[0]
        where = f"{host}:{main_port + 1}"
    d = pki_dir(cfg)
    creds = grpc.ssl_server_credentials(
        [((d / "server.key").read_bytes(), pki.server_chain(d))], require_client_auth=False
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024)],
        maximum_concurrent_rpcs=16,
    )
    enroll_pb2_grpc.add_EnrollmentServicer_to_server(
        EnrollmentServicer(d, registry, cfg["pki"]["agent_cert_seconds"]), server
    )
    try:
        port = server.add_secure_port(where, creds)
    except RuntimeError:
        port = 0
    if port == 0:
        if auto:
            log.warning("enroll_listener_skipped", address=where, reason="address in use")
            return None, 0
        raise StartError(f"cannot listen for enrollment on {where}")
    return server, port


def build_sinks(cfg: dict[str, Any]) -> list:
    """The national service's outputs enabled in [sinks] (none by default)."""
    from collector.sinks import build_sinks as _build

    return _build(cfg["sinks"], state_dir=cfg["state_dir"])


def serve(cfg: dict[str, Any]) -> None:
    # Threads that give up the GIL at every call out (PostgreSQL writers at each statement,
    # the SQLite writer's pipe) would otherwise wait up to the default 5 ms behind the busy
    # event loop each time they want it back. Measured while SQLite writes still ran in a
    # thread here: 1,000 agents paced at 5,000 alerts/s, 2,500 -> 4,400 alerts/s stored.
    sys.setswitchinterval(0.0005)
    notifier = sdnotify.Notifier()
    store = open_store(cfg)
    registry = open_registry(cfg)
    meters = Metrics()
    meters.registry.callback(
        "vigie_collector_incident_changes",
        "Incidents opened or updated so far (the store's incident sequence).",
        store.last_incident_seq,
    )
    meters.registry.callback(
        "vigie_collector_dead_letters_held",
        "Alerts held in the dead letters now, waiting for 'vigie-collector dead-letter retry'.",
        lambda: sum(store.dead_letter_counts().values()),
    )
    grpc_loop = LoopThread()
    pool = futures.ThreadPoolExecutor(max_workers=cfg["ingest"]["workers"])
    try:
        server, port, writer = grpc_loop.run(build(cfg, store, registry, meters, pool))
    except BaseException:
        grpc_loop.close()
        raise
    enroll, enroll_port = build_enroll(cfg, registry, port)
    stop = threading.Event()

    def on_stop(*_: object) -> None:
        if not stop.is_set():
            notifier.stopping("stopping")
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    grpc_loop.run(server.start())
    host = cfg["listen"].rpartition(":")[0]
    if enroll is not None:
        enroll.start()
        where = cfg["enroll"]["listen"]
        ehost = host if where == "auto" else where.rpartition(":")[0]
        log.info(
            "enroll_listening",
            address=f"{ehost}:{enroll_port}",
            ca_fingerprint=pki.server_ca_fingerprint(pki_dir(cfg)),
        )
    jobs = Jobs(store, cfg, build_sinks(cfg), meters=meters)
    jobs.start()
    from collector import console as web

    console, _ = web.start(cfg, store, registry, pki_dir(cfg))
    exporter = metrics.serve(cfg["metrics"]["listen"], meters.registry)
    log.info("collector_listening", address=f"{host}:{port}")

    def status() -> str:
        return f"{meters.streams()} agents connected, {int(meters.stored.value())} alerts stored"

    period = sdnotify.watchdog_seconds()
    watchdog = sdnotify.Watchdog(notifier, period, status) if period else None
    notifier.ready(status())
    if watchdog is not None:
        watchdog.start()
    try:
        # The main loop's heartbeat feeds the watchdog (a hung main thread stops it).
        while not stop.wait(min(1.0, period / 4) if period else 1.0):
            if watchdog is not None:
                watchdog.beat()
    finally:
        notifier.stopping("stopping")
        if watchdog is not None:
            watchdog.stop()
        if exporter is not None:
            exporter.close()
        log.info("collector_stopping")
        if console is not None:
            console.stop()
        jobs.stop()
        for sink in jobs.sinks:
            sink.close()
        if enroll is not None:
            enroll.stop(grace=1)
        grpc_loop.loop.call_soon_threadsafe(server.vigie_health.shutdown)
        grpc_loop.run(server.stop(grace=5))
        grpc_loop.close()
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        store.close()
        registry.close()
        log.info("collector_stopped")
