"""The analysts' queries: thin over the store; the caller's role narrows every query."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from collector.auth import caller
from collector.query.scope import Scope
from collector.store import AlertFilter, Store
from common.pbtime import seconds as _ts
from common.pbtime import set_seconds as _set_ts
from vigie.v1 import analyst_pb2, analyst_pb2_grpc

MAX_PAGE = 1000
MAX_CURSOR = 2**63 - 1  # cursors are row numbers: a signed 64-bit integer in the database


def _scope(context: grpc.ServicerContext) -> Scope:
    """The caller's role, as the one scoping code shared with the web console reads it."""
    return Scope(caller(context).role)


def _region_refusal(context: grpc.ServicerContext, asked: str) -> tuple[str, str | None]:
    """A regional analyst sees only their region, whatever they ask for: (the region to
    query, or why the request is refused)."""
    return _scope(context).refusal(asked)


def _scope_region(context: grpc.ServicerContext, asked: str) -> str:
    region, refused = _region_refusal(context, asked)
    if refused:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
    return region


class AnalystServicer(analyst_pb2_grpc.AnalystServicer):
    def __init__(
        self,
        store: Store,
        silent_after: float = 300.0,
        watch_poll: float = 0.5,
        stix: dict | None = None,
        registry=None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.stix = stix or {}
        self.silent_after = silent_after
        self.watch_poll = watch_poll

    def ListAlerts(self, request: analyst_pb2.ListAlertsRequest, context):
        size = request.page_size or 100
        if size > MAX_PAGE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be at most {MAX_PAGE}")
        before = _cursor(context, request.cursor)
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
        now = time.time()
        out = analyst_pb2.ListAgentsResponse()
        rows = _scope(context).agents(self.store)
        held = self.store.dead_letter_counts()
        names = self.registry.names() if self.registry is not None else {}
        for r in rows:
            try:
                label = str(json.loads(r["host"] or "{}").get("label", ""))
            except (ValueError, AttributeError):
                label = ""
            a = out.agents.add(
                agent_version=r["agent_version"],
                packets_dropped=r["packets_dropped"],
                outbox_depth=r["outbox_depth"],
                outbox_shed=r["outbox_shed"],
                silent=now - r["last_seen"] > self.silent_after,
                dead_letters=held.get(r["agent_id"], 0),
                host_label=label,
                name=names.get(r["agent_id"], ""),
            )
            a.origin.agent_id = r["agent_id"]
            a.origin.finess = r["finess"]
            a.origin.ght = r["ght"]
            a.origin.region = r["region"]
            _set_ts(a.last_seen, r["last_seen"])
        return out

    # Incidents ------------------------------------------------------------------------

    def _page_size(self, context, size: int) -> int:
        if size > MAX_PAGE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be at most {MAX_PAGE}")
        return size or 100

    def ListIncidents(self, request: analyst_pb2.ListIncidentsRequest, context):
        size = self._page_size(context, request.page_size)
        region = _scope_region(context, request.region)
        before = _cursor(context, request.cursor)
        rows = self.store.list_incidents(
            status=request.status,
            min_severity=request.min_severity,
            rule=request.rule,
            region=region,
            since=_ts(request.since) if request.HasField("since") else None,
            before_seq=before,
            limit=size + 1,
        )
        out = analyst_pb2.ListIncidentsResponse()
        for r in rows[:size]:
            out.incidents.append(incident_message(r, region))
        if len(rows) > size:
            out.next_cursor = str(rows[size - 1]["seq"])
        return out

    def GetIncident(self, request: analyst_pb2.GetIncidentRequest, context):
        scope = _scope(context)
        found = scope.incident(self.store, request.key)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such incident")
        row, alerts = found
        out = analyst_pb2.IncidentDetail(incident=incident_message(row, scope.region))
        for origin, alert, received in alerts:
            out.alerts.append(stored_alert(origin, alert, received))
        return out

    def UpdateIncident(self, request: analyst_pb2.UpdateIncidentRequest, context):
        if request.status not in (analyst_pb2.STATUS_ACKNOWLEDGED, analyst_pb2.STATUS_CLOSED):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "status must be ACKNOWLEDGED or CLOSED")
        if len(request.comment) > 2000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "comment is longer than 2000")
        who = caller(context)
        self.GetIncident(analyst_pb2.GetIncidentRequest(key=request.key), context)  # scope
        row = self.store.update_incident(request.key, request.status, who.name, request.comment)
        return incident_message(row, _scope_region(context, ""))

    async def WatchIncidents(self, request: analyst_pb2.WatchIncidentsRequest, context):
        """Polls the database, so an incident raised by any replica reaches every watcher.

        A coroutine, not a thread: a watch lasts as long as the analyst keeps it open, and
        its end (cancel, deadline, server stopping) reaches it as a cancellation."""
        scope = _scope(context)
        region, refused = scope.refusal(request.region)
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        cursor = request.cursor
        if cursor > MAX_CURSOR:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cursor is not one of ours")
        if not cursor and not request.from_start:
            cursor = await asyncio.to_thread(self.store.last_change_seq)
        while True:
            # Every change, as it stood (an ack then a close are two events), from the
            # change feed; a regional analyst's are filtered in the store, so the cursor
            # moves on past what they do not see.
            rows, cursor = await asyncio.to_thread(scope.changes, self.store, cursor, region)
            for r in rows:
                if r["severity"] >= request.min_severity:
                    yield analyst_pb2.IncidentEvent(incident=incident_message(r, region))
            if not rows:
                await asyncio.sleep(self.watch_poll)

    def CountAlerts(self, request: analyst_pb2.CountAlertsRequest, context):
        region = _scope_region(context, request.region)
        try:
            counts = self.store.count_by(
                request.by,
                _ts(request.since) if request.HasField("since") else None,
                _ts(request.until) if request.HasField("until") else None,
                region,
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"by: {exc}")
        return analyst_pb2.CountAlertsResponse(
            counts=[analyst_pb2.Count(key=k, count=c) for k, c in counts]
        )

    def ExportStix(self, request: analyst_pb2.ExportStixRequest, context):
        """A STIX 2.1 bundle of the incidents changed since `since`, scoped to the role."""
        from collector.sinks.stix import bundle

        region = _scope_region(context, request.region)
        since = _ts(request.since) if request.HasField("since") else None
        pairs = []
        for r in self.store.list_incidents(region=region, since=since, limit=500):
            found = self.store.get_incident(r["key"])
            if found is None:
                continue
            row, alerts = found
            pairs.append(
                (
                    incident_message(row, region),
                    [
                        stored_alert(o, a, t)
                        for o, a, t in alerts
                        if not region or o.region == region
                    ],
                )
            )
        kw = {k: self.stix[k] for k in ("identity_name", "tlp") if k in self.stix}
        return analyst_pb2.ExportStixResponse(bundle_json=bundle(pairs, **kw))

    def PublishIntel(self, request: analyst_pb2.PublishIntelRequest, context):
        """Adds (or replaces) indicators; agents receive the new version on their stream."""
        import json

        from collector.pki.intel import KEYS, validate

        if caller(context).role != "national":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "only a national analyst publishes intel for the whole fleet",
            )
        if self.registry is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "intel is not served by this collector")
        try:
            new = validate(json.loads(request.bundle_json))
            if not request.replace:
                _, current = self.registry.current_intel()
                merged = {
                    k: sorted(set(current.get(k, [])) | set(new.get(k, [])))
                    for k in KEYS
                    if k != "thresholds"
                }
                merged["thresholds"] = current.get("thresholds", {}) | new.get("thresholds", {})
                new = validate(merged)
        except (ValueError, RecursionError) as exc:
            # Echoing input back is capped: a status message travels in an 8 KB header.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bundle_json: {str(exc)[:500]}")
        retro = None
        if request.retro_seconds:
            from collector.pki.intel import MAX_RETRO_SECONDS

            if not 0 < request.retro_seconds <= MAX_RETRO_SECONDS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "retro_seconds: 1 s to 366 days")
            # The look-back searches this publication's own indicators, not the whole list.
            asked = validate(json.loads(request.bundle_json))
            retro = {k: asked[k] for k in ("ips", "domains", "ja3", "ja4")}
            retro["since"] = time.time() - request.retro_seconds
        version = self.registry.load_intel(new, retro)
        return analyst_pb2.PublishIntelResponse(
            version=version, counts={k: len(v) for k, v in new.items()}
        )

    def IntelStatus(self, request: analyst_pb2.IntelStatusRequest, context):
        """How many agents finished a publication's retro-hunt, are searching, have not
        started yet (online) or are offline."""
        if caller(context).role != "national":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only a national analyst follows intel"
            )
        if self.registry is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "intel is not served by this collector")
        asked = self.registry.retro_requests()
        if request.version:
            asked = [r for r in asked if r["version"] == request.version]
        if not asked:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no publication with a look-back (--retro) as version {request.version}"
                if request.version
                else "no publication with a look-back (--retro) yet",
            )
        req = asked[-1]
        revoked = self.registry.agent_states()
        now = time.time()
        out = analyst_pb2.IntelStatusResponse(
            version=req["version"], published_at=req["published_at"], since=req["since"]
        )
        counts = {"done": 0, "searching": 0, "waiting": 0, "offline": 0}
        for r in self.store.retro_status(req["version"]):
            if r["agent_id"] in revoked:
                continue
            state = r["state"] if r["state"] == "done" else None
            if state is None:
                if r["last_seen"] < now - RETRO_OFFLINE_SECONDS:
                    state = "offline"
                else:
                    state = "searching" if r["state"] else "waiting"
            counts[state] += 1
            out.agents.add(
                agent_id=r["agent_id"], finess=r["finess"], ght=r["ght"], region=r["region"],
                state=state, matches=r["matches"] or 0, last_seen=r["last_seen"],
            )  # fmt: skip
        out.counts.update(counts)
        return out


# An agent not heard from for this long is offline for `vigie intel status` (heartbeats
# come every 30 s by default).
RETRO_OFFLINE_SECONDS = 180.0


def _cursor(context, text: str) -> int | None:
    if not text:
        return None
    # ASCII only: str.isdigit() also takes "²" (which int() refuses) and other scripts'
    # digits; and the value must fit the database's 64-bit integer.
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_CURSOR:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cursor is not one of ours")
    return int(text)


def stored_alert(origin, alert, received: float) -> analyst_pb2.StoredAlert:
    item = analyst_pb2.StoredAlert(alert=alert)
    item.origin.agent_id = origin.agent_id
    item.origin.finess = origin.finess
    item.origin.ght = origin.ght
    item.origin.region = origin.region
    _set_ts(item.received_at, received)
    return item


def incident_message(r: dict, region: str = "") -> analyst_pb2.Incident:
    """A stored incident; a regional analyst sees only the sites of their region."""
    inc = analyst_pb2.Incident(
        key=r["key"],
        rule=r["rule"],
        subject=r["subject"],
        severity=r["severity"],
        status=r["status"],
        status_by=r["status_by"],
        status_comment=r["status_comment"],
        summary=r["summary"],
        alert_count=r["alert_count"],
        seq=r["seq"],
        change=r.get("change", ""),
    )
    _set_ts(inc.first_seen, r["first_seen"])
    _set_ts(inc.last_seen, r["last_seen"])
    if r["status_at"]:
        _set_ts(inc.status_at, r["status_at"])
    for s in r.get("sites", []):
        if not region or s["region"] == region:
            inc.sites.add(finess=s["finess"], ght=s["ght"], region=s["region"])
    return inc
