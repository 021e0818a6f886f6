"""The agents' stream: thin over the store. Ack only after commit.

An asyncio handler: a thousand agents hold a thousand streams, which as threads would
spend the collector's CPU switching between them. Each stream has a reader task that only
moves the agent's messages onto a bounded queue, so that the answering side can also
speak unprompted: push a new intel bundle to a connected agent, or end the stream of an
agent revoked while connected. Storing goes through the group-commit writer
(collector.ingest.commit): the stream waits for the transaction holding its batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable

import grpc

from collector.auth import Undecodable, caller
from collector.ingest.commit import GroupCommit
from collector.ingest.validate import Invalid, check_batch
from collector.store import Origin
from common import logs
from vigie.v1 import ingest_pb2, ingest_pb2_grpc

log = logs.get("collector.ingest")
_END = object()
_TICK = object()  # put in every idle stream's inbox once a second by one shared task
IDLE_CHECK_SECONDS = 1.0
# Streams one agent may hold at once: its live stream, plus one while a reconnect overlaps
# the old stream the server has not seen die yet. Without a cap one agent certificate
# could open streams until the collector runs out of memory.
MAX_STREAMS_PER_AGENT = 2
# Why a stream or a batch is refused: the label values of the refusal metric.
REFUSALS = (
    "agent_streams",
    "collector_full",
    "revoked",
    "invalid_batch",
    "invalid_message",
    "store_unavailable",
    "unauthenticated",
    "permission_denied",
)


class Budget:
    """Alerts read from every stream and not yet stored. Past the limit a stream's reader
    waits, nothing more is read from it, and gRPC flow control holds its agent back: a
    thousand agents draining their backlogs at once cannot fill the collector's memory.
    First come, first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    def amount(self, alerts: int) -> int:
        """What a batch of `alerts` takes: a batch larger than the whole budget takes all
        of it (it must still get through)."""
        return min(alerts, self.limit)

    async def take(self, n: int) -> int:
        """Wait for room for `n` alerts; returns what was taken, to give back once they
        are stored."""
        n = self.amount(n)
        if self.used + n <= self.limit and not self._waiters:
            self.used += n
            return n
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted, but the stream ended before it could use it
            raise
        return n

    def give(self, n: int) -> None:
        self.used -= n
        waiters = self._waiters
        while waiters:
            want, fut = waiters[0]
            if fut.done():  # its stream ended while waiting
                waiters.popleft()
                continue
            if self.used + want > self.limit:
                break
            waiters.popleft()
            self.used += want
            fut.set_result(None)


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(
        self,
        store: GroupCommit,
        max_batches_in_flight: int = 8,
        max_alerts_per_second: int = 2000,
        intel=None,
        revoked: Callable[[str], bool] | None = None,
        max_streams: int = 5000,
        max_alerts_buffered: int = 200_000,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        # Told why each stream or batch is refused (a label: the metrics count them).
        self.on_refused = on_refused or (lambda reason: None)
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
        self.max_streams = max_streams
        self.budget = Budget(max_alerts_buffered)
        self._streams: dict[str, int] = {}  # only touched from the event loop: no lock
        self._open = 0
        self._inboxes: set[asyncio.Queue] = set()
        self._ticker: asyncio.Task | None = None

    def open_streams(self) -> int:
        return self._open

    async def _tick(self) -> None:
        """Wakes idle streams so they push intel and notice a revocation: one task for all
        streams instead of a timer per stream and per message."""
        while self._inboxes:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            for inbox in list(self._inboxes):
                if inbox.empty():  # a busy stream checks after each message anyway
                    inbox.put_nowait(_TICK)
        self._ticker = None

    def _enter(self, agent_id: str) -> str | None:
        """Why this agent cannot open one more stream now, or None (and it is counted)."""
        n = self._streams.get(agent_id, 0)
        if n >= MAX_STREAMS_PER_AGENT:
            self.on_refused("agent_streams")
            return f"this agent already has {MAX_STREAMS_PER_AGENT} streams open"
        if self._open >= self.max_streams:
            self.on_refused("collector_full")
            return f"the collector serves {self.max_streams} streams already: retry later"
        self._streams[agent_id] = n + 1
        self._open += 1
        return None

    def _leave(self, agent_id: str) -> None:
        self._open -= 1
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

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext):
        who = caller(context)
        # The origin is the certificate's, whatever the messages might claim.
        origin = Origin(who.name, who.finess, who.ght, who.region)
        refused = self._enter(origin.agent_id)
        if refused is not None:
            log.warning("stream_refused", agent_id=origin.agent_id, reason=refused)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        log.info("agent_connected", agent_id=origin.agent_id, finess=origin.finess, ght=origin.ght)
        inbox: asyncio.Queue = asyncio.Queue(maxsize=self.inbox_max)
        held = [0]  # alerts this stream read and has not stored yet, on the shared budget

        async def read() -> None:
            # When the inbox is full, or the budget spent, this waits, nothing more is read,
            # and gRPC flow control holds the agent back.
            try:
                async for m in request_iterator:
                    n = len(m.batch.alerts)
                    if n:
                        held[0] += await self.budget.take(n)
                    await inbox.put(m)
            except asyncio.CancelledError:
                return  # the answering side is gone
            except Undecodable as exc:
                # Only the handler's own task may end the call: it re-raises this there.
                await inbox.put(exc)
                return
            except Exception:  # the call ended under us: cancelled, reset, deadline
                pass
            await inbox.put(_END)

        reader = asyncio.ensure_future(read())
        self._inboxes.add(inbox)
        if self._ticker is None:
            self._ticker = asyncio.ensure_future(self._tick())
        try:
            async for m in self._answer(origin, inbox, context, held):
                yield m
        finally:
            self._inboxes.discard(inbox)
            reader.cancel()
            self.budget.give(held[0])
            held[0] = 0
            self._leave(origin.agent_id)

    async def _answer(self, origin: Origin, inbox: asyncio.Queue, context, held: list[int]):
        yield ingest_pb2.CollectorMessage(flow_control=self.flow)
        known: int | None = None  # the agent's intel version, from its heartbeats
        while True:
            msg = await inbox.get()
            if msg is _TICK:
                msg = None
                if context.done():
                    break
            if msg is _END:
                break
            if isinstance(msg, Undecodable):
                raise msg
            if self.revoked is not None and self.revoked(origin.agent_id):
                log.warning("revoked_agent_cut", agent_id=origin.agent_id)
                self.on_refused("revoked")
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "this agent certificate is revoked"
                )
            if msg is not None:
                body = msg.WhichOneof("body")
                if body == "batch":
                    try:
                        check_batch(msg.batch.alerts)
                    except Invalid as exc:
                        log.warning("batch_refused", agent_id=origin.agent_id, reason=str(exc))
                        self.on_refused("invalid_batch")
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    fut = self.store.submit(origin, msg.batch.alerts)
                    try:
                        stored, dup, dead = await asyncio.wrap_future(fut)
                    except Exception as exc:
                        # Only what retrying can mend fails here (the store keeps aside what
                        # it refuses): the agent keeps the batch and sends it again. It is
                        # told that much and a reference, never our internals.
                        ref = uuid.uuid4().hex[:12]
                        log.error(
                            "batch_not_stored",
                            agent_id=origin.agent_id,
                            seq=msg.batch.seq,
                            ref=ref,
                            error=f"{type(exc).__name__}: {exc}"[:500],
                        )
                        self.on_refused("store_unavailable")
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            f"the collector cannot store alerts now; the batch will be taken "
                            f"when sent again (ref {ref})",
                        )
                    n = self.budget.amount(len(msg.batch.alerts))
                    held[0] -= n
                    self.budget.give(n)
                    log.debug(
                        "batch_stored",
                        agent_id=origin.agent_id,
                        seq=msg.batch.seq,
                        stored=stored,
                        duplicates=dup,
                        dead_lettered=dead,
                    )
                    yield ingest_pb2.CollectorMessage(
                        ack=ingest_pb2.Ack(
                            seq=msg.batch.seq, stored=stored, duplicates=dup, dead_lettered=dead
                        )
                    )
                elif body == "heartbeat":
                    try:
                        await asyncio.wrap_future(
                            self.store.submit_heartbeat(origin, msg.heartbeat)
                        )
                    except Exception as exc:  # a heartbeat is worth no stream: the next one
                        log.warning(
                            "heartbeat_not_stored",
                            agent_id=origin.agent_id,
                            error=f"{type(exc).__name__}: {exc}"[:500],
                        )
                    known = msg.heartbeat.intel_version
                else:
                    self.on_refused("invalid_message")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message body is empty")
            update = self._intel_for(known)
            if update is not None:
                known = update.intel.bundle.version
                log.info("intel_sent", agent_id=origin.agent_id, version=known)
                yield update
        log.info("agent_disconnected", agent_id=origin.agent_id)
