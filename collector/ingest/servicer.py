"""The agents' stream: thin over the store. Ack only after commit.

Each stream has a reader thread that only moves the agent's messages onto a queue, so
that the answering side can also speak unprompted: push a new intel bundle to a connected
agent, or end the stream of an agent revoked while connected.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import grpc

from collector.auth import caller
from collector.ingest.validate import Invalid, check_batch
from collector.store import Origin, Store
from common import logs
from vigie.v1 import ingest_pb2, ingest_pb2_grpc

log = logs.get("collector.ingest")
_END = object()
IDLE_CHECK_SECONDS = 1.0
# Streams one agent may hold at once: its live stream, plus one while a reconnect overlaps
# the old stream the server has not seen die yet. Each stream holds a worker thread, so
# without a cap one agent certificate could take every worker and starve the others.
MAX_STREAMS_PER_AGENT = 2


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(
        self,
        store: Store,
        max_batches_in_flight: int = 8,
        max_alerts_per_second: int = 2000,
        intel=None,
        revoked: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.flow = ingest_pb2.FlowControl(
            max_batches_in_flight=max_batches_in_flight,
            max_alerts_per_second=max_alerts_per_second,
        )
        self.intel = intel  # collector.pki.intel.IntelSource or None
        self.revoked = revoked
        # Messages read ahead of the one being handled. Past this the reader stops reading,
        # and gRPC flow control holds the agent back (an agent that ignores the flow
        # control it was told, or never reads its acks, cannot make us buffer its input).
        self.inbox_max = max(1, max_batches_in_flight)
        self._streams: dict[str, int] = {}
        self._streams_lock = threading.Lock()

    def _enter(self, agent_id: str) -> bool:
        with self._streams_lock:
            n = self._streams.get(agent_id, 0)
            if n >= MAX_STREAMS_PER_AGENT:
                return False
            self._streams[agent_id] = n + 1
            return True

    def _leave(self, agent_id: str) -> None:
        with self._streams_lock:
            n = self._streams.pop(agent_id, 1) - 1
            if n > 0:
                self._streams[agent_id] = n

    def _intel_for(self, known: int | None):
        """The update to send an agent that holds version `known`, or None."""
        if self.intel is None or known is None:
            return None
        version, bundle = self.intel.current()
        if version > known:
            return ingest_pb2.CollectorMessage(intel=ingest_pb2.IntelUpdate(bundle=bundle))
        return None

    def Stream(self, request_iterator, context: grpc.ServicerContext):
        who = caller(context)
        # The origin is the certificate's, whatever the messages might claim.
        origin = Origin(who.name, who.finess, who.ght, who.region)
        if not self._enter(origin.agent_id):
            log.warning("stream_refused", agent_id=origin.agent_id, reason="too many streams")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this agent already has {MAX_STREAMS_PER_AGENT} streams open",
            )
        try:
            yield from self._stream(origin, request_iterator, context)
        finally:
            self._leave(origin.agent_id)

    def _stream(self, origin: Origin, request_iterator, context: grpc.ServicerContext):
        log.info("agent_connected", agent_id=origin.agent_id, finess=origin.finess, ght=origin.ght)
        inbox: queue.Queue = queue.Queue(maxsize=self.inbox_max)
        done = threading.Event()

        def put(item: object) -> bool:
            while not done.is_set():
                try:
                    inbox.put(item, timeout=IDLE_CHECK_SECONDS)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for m in request_iterator:
                    if not put(m):
                        return
            except Exception:  # the call ended under us: cancelled, reset, deadline
                pass
            finally:
                put(_END)

        threading.Thread(target=read, name="ingest-reader", daemon=True).start()
        try:
            yield from self._answer(origin, inbox, context)
        finally:
            done.set()  # the reader stops waiting for room

    def _answer(self, origin: Origin, inbox: queue.Queue, context: grpc.ServicerContext):
        yield ingest_pb2.CollectorMessage(flow_control=self.flow)
        known: int | None = None  # the agent's intel version, from its heartbeats
        while True:
            try:
                msg = inbox.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:
                msg = None
            if msg is _END:
                break
            if self.revoked is not None and self.revoked(origin.agent_id):
                log.warning("revoked_agent_cut", agent_id=origin.agent_id)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "this agent certificate is revoked")
            if msg is not None:
                body = msg.WhichOneof("body")
                if body == "batch":
                    try:
                        check_batch(msg.batch.alerts)
                    except Invalid as exc:
                        log.warning("batch_refused", agent_id=origin.agent_id, reason=str(exc))
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    stored, dup = self.store.ingest(origin, msg.batch.alerts)
                    log.debug(
                        "batch_stored",
                        agent_id=origin.agent_id,
                        seq=msg.batch.seq,
                        stored=stored,
                        duplicates=dup,
                    )
                    yield ingest_pb2.CollectorMessage(
                        ack=ingest_pb2.Ack(seq=msg.batch.seq, stored=stored, duplicates=dup)
                    )
                elif body == "heartbeat":
                    self.store.heartbeat(origin, msg.heartbeat)
                    known = msg.heartbeat.intel_version
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message body is empty")
            update = self._intel_for(known)
            if update is not None:
                known = update.intel.bundle.version
                log.info("intel_sent", agent_id=origin.agent_id, version=known)
                yield update
        log.info("agent_disconnected", agent_id=origin.agent_id)
