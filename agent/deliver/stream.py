"""Deliver the outbox over one long-lived mutual-TLS gRPC stream.

At-least-once: an alert leaves the outbox only when the collector acknowledges the batch
that carried it (the collector acks after commit). On any stream failure every
unacknowledged batch is simply sent again after a jittered exponential backoff; the
collector's ids make the re-sends harmless. The collector's flow control bounds how
many batches are in flight and how fast a backlog drains.

The same stream brings intel bundles (stored in state_dir/intel.json, handed to a
callback, applied without restart). Certificates renew themselves over the mutual-TLS
channel when less than a third of their lifetime is left; the sender then reconnects
with the new one.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from agent.deliver import validity
from agent.outbox.store import Outbox
from common import logs
from common.files import write_atomic
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc

log = logs.get("agent.deliver")


def backoff(first: float = 0.5, cap: float = 60.0) -> Iterator[float]:
    """Full-jitter exponential backoff: sleep uniform(0, d), d doubling up to cap. A fleet
    that lost its collector does not come back in step."""
    delay = first
    while True:
        yield random.uniform(0, delay)
        delay = min(cap, delay * 2)


class Credentials:
    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.paths = (ca, cert, key)
        self.ca, self.cert, self.key = ca, cert, key

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
        intel_path: Path | None = None,
        on_intel: Callable[[dict], None] | None = None,
        renew_fraction: float = 1 / 3,
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
        self.connected = threading.Event()
        self.acked = 0
        self.last_ack_at = 0.0  # wall clock of the last acknowledgement (vigie-agent status)
        self.connects = 0
        self.renewals = 0
        self.intel_path = intel_path
        self.on_intel = on_intel
        self.renew_fraction = renew_fraction
        self.intel_version = _stored_intel_version(intel_path)
        self._reconnect_now = False

    def _heartbeat(self) -> ingest_pb2.AgentMessage:
        hb = self.heartbeat()
        hb.intel_version = self.intel_version
        return ingest_pb2.AgentMessage(heartbeat=hb)

    # The request side runs in gRPC's thread: it pulls batches from the outbox.
    def _requests(self, call_done: threading.Event, in_flight: dict[int, list[tuple[str, int]]]):
        """The request side of one stream. Its batches, sequence numbers and in-flight set
        belong to this stream alone: a generator of a dead stream that gRPC has not yet
        stopped can never touch the bookkeeping of the next one."""
        seq = 0
        yield self._heartbeat()
        next_hb = time.monotonic() + self.heartbeat_seconds
        sent_at = time.monotonic()
        while not self._stopping.is_set() and not call_done.is_set():
            with self._cv:
                flying = {i for items in in_flight.values() for i, _ in items}
                rows = []
                if len(in_flight) < self._max_in_flight:
                    rows = self.outbox.pending(self.batch_size, flying)
                if not rows:
                    self._cv.wait(timeout=min(1.0, max(0.05, next_hb - time.monotonic())))
            if time.monotonic() >= next_hb:
                next_hb = time.monotonic() + self.heartbeat_seconds
                yield self._heartbeat()
            if not rows:
                continue
            if self._rate:  # drain a backlog no faster than the collector allows
                wait = sent_at + len(rows) / self._rate - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, 1.0))
            sent_at = time.monotonic()
            seq += 1
            batch = ingest_pb2.AlertBatch(seq=seq)
            for _, _, payload in rows:
                batch.alerts.append(alert_pb2.Alert.FromString(payload))
            with self._cv:
                in_flight[seq] = [(r[0], r[1]) for r in rows]
            yield ingest_pb2.AgentMessage(batch=batch)

    def run(self) -> None:
        delays = backoff(0.5, self.backoff_max)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                if not self._stopping.is_set():
                    code = exc.code() if hasattr(exc, "code") else None
                    log.warning("stream_failed", code=str(code), detail=_detail(exc), **_hint(code))
            except (OSError, ValueError) as exc:
                log.error("stream_setup_failed", error=str(exc))
            finally:
                self.connected.clear()
                # Unacknowledged batches go again on the next stream, which gets its own
                # in-flight set (the old one may still be referenced by a dying generator).
                with self._cv:
                    self._in_flight = {}
            if self._stopping.is_set():
                break
            if self._reconnect_now:  # a renewed certificate: reconnect at once
                self._reconnect_now = False
                continue
            if time.monotonic() - started > 30:
                delays = backoff(0.5, self.backoff_max)  # the last stream was healthy
            self._stopping.wait(next(delays))

    def _channel(self) -> grpc.Channel:
        return grpc.secure_channel(
            self.address, self.creds.load(), options=[("grpc.keepalive_time_ms", 30_000)]
        )

    def _needs_renewal(self) -> bool:
        try:
            return validity.needs_renewal(self.creds.cert.read_bytes(), self.renew_fraction)
        except (OSError, ValueError):
            return False

    def _renew(self, channel: grpc.Channel) -> bool:
        from agent import enroll  # cryptography, loaded only to make the CSR

        try:
            left = enroll.renew(channel, self.creds.key, self.creds.cert, self.creds.ca)
        except grpc.RpcError as exc:
            log.warning("cert_renewal_failed", code=str(exc.code()), detail=_detail(exc))
            return False
        except (OSError, ValueError) as exc:
            log.error("cert_renewal_failed", error=str(exc))
            return False
        self.renewals += 1
        log.info("cert_renewed", seconds_left=round(left))
        return True

    def _watch_certificate(self, channel: grpc.Channel, done: threading.Event) -> None:
        """While a stream runs: renew when due, then end the stream to reconnect."""
        try:
            _, total = validity.lifetime_left(self.creds.cert.read_bytes())
        except (OSError, ValueError):
            return
        every = min(60.0, max(0.5, total / 30))
        while not done.wait(every):
            if self._needs_renewal() and self._renew(channel):
                self._reconnect_now = True
                call = getattr(self, "_call", None)
                if call is not None:
                    call.cancel()
                return

    def _apply_intel(self, bundle: ingest_pb2.IntelBundle) -> None:
        doc = MessageToDict(bundle, preserving_proto_field_name=True)
        doc["version"] = int(bundle.version)
        for key in ("ips", "domains", "ja3", "ja4", "hashes"):
            doc.setdefault(key, [])
        doc.setdefault("thresholds", {})
        if self.intel_path is not None:
            write_atomic(self.intel_path, json.dumps(doc, sort_keys=True).encode(), 0o600)
        self.intel_version = bundle.version
        if self.on_intel is not None:
            try:
                self.on_intel(doc)
            except Exception as exc:  # a bad consumer must not cut delivery
                log.error("intel_callback_failed", error=str(exc))
        log.info(
            "intel_applied",
            version=bundle.version,
            **{k: len(doc[k]) for k in ("ips", "domains", "ja3", "ja4", "hashes", "thresholds")},
        )

    def _session(self) -> None:
        # Renew first if the certificate is already due: a stream would only be cut for it.
        if self._needs_renewal():
            with self._channel() as channel:
                self._renew(channel)
        with self._channel() as channel:
            stub = ingest_pb2_grpc.IngestStub(channel)
            done = threading.Event()
            in_flight = self._in_flight
            self._call = call = stub.Stream(self._requests(done, in_flight))
            threading.Thread(
                target=self._watch_certificate,
                args=(channel, done),
                name="vigie-cert-watch",
                daemon=True,
            ).start()
            try:
                for msg in call:
                    body = msg.WhichOneof("body")
                    if body == "ack":
                        with self._cv:
                            items = in_flight.pop(msg.ack.seq, [])
                        self.outbox.ack(items)
                        self.acked += len(items)
                        self.last_ack_at = time.time()
                        if msg.ack.dead_lettered:  # in the collector's custody, not lost
                            log.warning(
                                "alerts_held_by_collector",
                                seq=msg.ack.seq,
                                count=msg.ack.dead_lettered,
                            )
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
                    elif body == "intel":
                        self._apply_intel(msg.intel.bundle)
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


def _stored_intel_version(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return int(json.loads(path.read_text(encoding="utf-8")).get("version", 0))
    except (OSError, ValueError, AttributeError, TypeError, OverflowError, RecursionError):
        return 0  # damaged: ask the collector for the whole bundle again


def _hint(code: grpc.StatusCode | None) -> dict[str, str]:
    """What an operator should check for the failures that mean a wrong address rather than
    a collector having trouble (gRPC's own texts, "Method not found!", say neither)."""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return {
            "hint": "this address answers gRPC but is not the collector's main port: the "
            "enrollment port serves only enrollment (the main port is one less by default); "
            "check [collector] address"
        }
    return {}


def _detail(exc: grpc.RpcError) -> str:
    try:
        return exc.details() or ""
    except Exception:
        return ""
