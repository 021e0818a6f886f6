"""Deliver the outbox over one long-lived mutual-TLS gRPC stream.

At-least-once: an alert leaves the outbox only when the collector acknowledges the batch
that carried it (the collector acks after commit). On any stream failure every
unacknowledged batch is simply sent again after a jittered exponential backoff; the
collector's ids make the re-sends harmless. The collector's flow control bounds how
many batches are in flight and how fast a backlog drains.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc

from agent.outbox.store import Outbox
from common import logs

log = logs.get("agent.deliver")


class Credentials:
    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.paths = (ca, cert, key)

    def load(self) -> grpc.ChannelCredentials:
        try:
            ca, cert, key = (p.read_bytes() for p in self.paths)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"TLS file missing: {exc.filename} (enroll the agent, or set [collector] "
                "ca/cert/key)"
            ) from None
        return grpc.ssl_channel_credentials(ca, key, cert)


class Sender(threading.Thread):
    def __init__(
        self,
        outbox: Outbox,
        address: str,
        creds: Credentials,
        heartbeat: Callable[[], ingest_pb2.Heartbeat],
        batch_size: int = 200,
        heartbeat_seconds: float = 30.0,
        backoff_max: float = 60.0,
    ) -> None:
        super().__init__(name="vigie-sender", daemon=True)
        self.outbox = outbox
        self.address = address
        self.creds = creds
        self.heartbeat = heartbeat
        self.batch_size = batch_size
        self.heartbeat_seconds = heartbeat_seconds
        self.backoff_max = backoff_max
        self._stopping = threading.Event()
        self._cv = outbox.changed
        self._in_flight: dict[int, list[tuple[str, int]]] = {}
        self._max_in_flight = 1
        self._rate = 0.0  # alerts per second allowed; 0 until the collector says
        self._seq = 0
        self.connected = threading.Event()
        self.acked = 0
        self.connects = 0

    # The request side runs in gRPC's thread: it pulls batches from the outbox.
    def _requests(self, call_done: threading.Event):
        yield ingest_pb2.AgentMessage(heartbeat=self.heartbeat())
        next_hb = time.monotonic() + self.heartbeat_seconds
        sent_at = time.monotonic()
        while not self._stopping.is_set() and not call_done.is_set():
            with self._cv:
                flying = {i for items in self._in_flight.values() for i, _ in items}
                rows = []
                if len(self._in_flight) < self._max_in_flight:
                    rows = self.outbox.pending(self.batch_size, flying)
                if not rows:
                    self._cv.wait(timeout=min(1.0, max(0.05, next_hb - time.monotonic())))
            if time.monotonic() >= next_hb:
                next_hb = time.monotonic() + self.heartbeat_seconds
                yield ingest_pb2.AgentMessage(heartbeat=self.heartbeat())
            if not rows:
                continue
            if self._rate:  # drain a backlog no faster than the collector allows
                wait = sent_at + len(rows) / self._rate - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, 1.0))
            sent_at = time.monotonic()
            self._seq += 1
            batch = ingest_pb2.AlertBatch(seq=self._seq)
            for _, _, payload in rows:
                batch.alerts.append(alert_pb2.Alert.FromString(payload))
            with self._cv:
                self._in_flight[self._seq] = [(r[0], r[1]) for r in rows]
            yield ingest_pb2.AgentMessage(batch=batch)

    def run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    code = exc.code() if hasattr(exc, "code") else None
                    log.warning("stream_failed", code=str(code), detail=_detail(exc))
            except (OSError, ValueError) as exc:
                log.error("stream_setup_failed", error=str(exc))
            finally:
                self.connected.clear()
                with self._cv:
                    self._in_flight.clear()  # unacked batches go again on the next stream
            if self._stopping.is_set():
                break
            if time.monotonic() - started > 30:
                delay = 0.5  # the last stream was healthy: start the backoff over
            sleep = random.uniform(0, delay)  # full jitter: a fleet does not return in step
            delay = min(self.backoff_max, delay * 2)
            self._stopping.wait(sleep)

    def _session(self) -> None:
        creds = self.creds.load()
        with grpc.secure_channel(
            self.address,
            creds,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
            ],
        ) as channel:
            stub = ingest_pb2_grpc.IngestStub(channel)
            done = threading.Event()
            self._call = call = stub.Stream(self._requests(done))
            try:
                for msg in call:
                    body = msg.WhichOneof("body")
                    if body == "ack":
                        with self._cv:
                            items = self._in_flight.pop(msg.ack.seq, [])
                        self.outbox.ack(items)
                        self.acked += len(items)
                    elif body == "flow_control":
                        fc = msg.flow_control
                        with self._cv:
                            self._max_in_flight = max(1, fc.max_batches_in_flight)
                            self._rate = float(fc.max_alerts_per_second)
                            self._cv.notify_all()
                        if not self.connected.is_set():
                            self.connects += 1
                            log.info(
                                "stream_connected",
                                max_in_flight=self._max_in_flight,
                                max_alerts_per_second=self._rate,
                            )
                        self.connected.set()
                    if self._stopping.is_set():
                        break
            finally:
                done.set()
                call.cancel()

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty; True if it emptied in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            with self._cv:
                self._cv.wait(timeout=0.2)
        return self.outbox.depth() == 0

    def stop(self) -> None:
        self._stopping.set()
        with self._cv:
            self._cv.notify_all()
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()


def _detail(exc: grpc.RpcError) -> str:
    try:
        return exc.details() or ""
    except Exception:
        return ""
