"""The analysts' queries: thin over the store; the caller's role narrows every query."""

from __future__ import annotations

import time

import grpc

from collector.auth import caller
from collector.store import AlertFilter, Store
from common.pbtime import seconds as _ts
from common.pbtime import set_seconds as _set_ts
from vigie.v1 import analyst_pb2, analyst_pb2_grpc

MAX_PAGE = 1000


def _scope_region(context: grpc.ServicerContext, asked: str) -> str:
    """A regional analyst sees only their region, whatever they ask for."""
    role = caller(context).role
    if role == "national":
        return asked
    own = role.removeprefix("regional:")
    if asked and asked != own:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"region {asked!r} is outside your role")
    return own


class AnalystServicer(analyst_pb2_grpc.AnalystServicer):
    def __init__(self, store: Store, silent_after: float = 300.0) -> None:
        self.store = store
        self.silent_after = silent_after

    def ListAlerts(self, request: analyst_pb2.ListAlertsRequest, context):
        size = request.page_size or 100
        if size > MAX_PAGE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be at most {MAX_PAGE}")
        before = None
        if request.cursor:
            if not request.cursor.isdigit() or len(request.cursor) > 19:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cursor is not one of ours")
            before = int(request.cursor)
        flt = AlertFilter(
            since=_ts(request.since) if request.HasField("since") else None,
            until=_ts(request.until) if request.HasField("until") else None,
            detector=request.detector,
            min_severity=request.min_severity,
            finess=request.finess,
            ght=request.ght,
            region=_scope_region(context, request.region),
        )
        page, cursor = self.store.list_alerts(flt, size, before)
        out = analyst_pb2.ListAlertsResponse(next_cursor=str(cursor) if cursor else "")
        for origin, alert, received in page:
            item = out.alerts.add()
            item.alert.CopyFrom(alert)
            item.origin.agent_id = origin.agent_id
            item.origin.finess = origin.finess
            item.origin.ght = origin.ght
            item.origin.region = origin.region
            _set_ts(item.received_at, received)
        return out

    def ListAgents(self, request: analyst_pb2.ListAgentsRequest, context):
        region = _scope_region(context, "")
        now = time.time()
        out = analyst_pb2.ListAgentsResponse()
        rows = [r for r in self.store.list_agents() if not region or r["region"] == region]
        for r in rows:
            a = out.agents.add(
                agent_version=r["agent_version"],
                packets_dropped=r["packets_dropped"],
                outbox_depth=r["outbox_depth"],
                outbox_shed=r["outbox_shed"],
                silent=now - r["last_seen"] > self.silent_after,
            )
            a.origin.agent_id = r["agent_id"]
            a.origin.finess = r["finess"]
            a.origin.ght = r["ght"]
            a.origin.region = r["region"]
            _set_ts(a.last_seen, r["last_seen"])
        return out
