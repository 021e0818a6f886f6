"""The agents' stream: thin over the store. Ack only after commit."""

from __future__ import annotations

import grpc

from collector.auth import caller
from collector.ingest.validate import Invalid, check_batch
from collector.store import Origin, Store
from common import logs
from vigie.v1 import ingest_pb2, ingest_pb2_grpc

log = logs.get("collector.ingest")


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(
        self, store: Store, max_batches_in_flight: int = 8, max_alerts_per_second: int = 2000
    ) -> None:
        self.store = store
        self.flow = ingest_pb2.FlowControl(
            max_batches_in_flight=max_batches_in_flight,
            max_alerts_per_second=max_alerts_per_second,
        )

    def Stream(self, request_iterator, context: grpc.ServicerContext):
        who = caller(context)
        # The origin is the certificate's, whatever the messages might claim.
        origin = Origin(who.name, who.finess, who.ght, who.region)
        log.info("agent_connected", agent_id=origin.agent_id, finess=origin.finess, ght=origin.ght)
        yield ingest_pb2.CollectorMessage(flow_control=self.flow)
        for msg in request_iterator:
            body = msg.WhichOneof("body")
            if body == "batch":
                try:
                    check_batch(msg.batch.alerts)
                except Invalid as exc:
                    log.warning("batch_refused", agent_id=origin.agent_id, reason=str(exc))
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                stored, dup = self.store.ingest(origin, msg.batch.alerts)
                log.info(
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
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message body is empty")
        log.info("agent_disconnected", agent_id=origin.agent_id)
