"""What each `vigie` subcommand asks the collector's query service; analyst/output.py shows
the answer. Each command takes the Analyst stub and the parsed flags and returns the exit
code; gRPC errors are left to analyst/cli.py, which turns them into exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import grpc

from analyst import intel, output
from common.identity import status_value
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc


def _colour(args: argparse.Namespace) -> bool:
    return sys.stdout.isatty() and not getattr(args, "no_colour", False)


def _paged(call: Any, req: Any, field: str, args: argparse.Namespace) -> list:
    """Apply the common filters, then follow the cursors up to --limit items."""
    if args.severity:
        req.min_severity = alert_pb2.Severity.Value(f"SEVERITY_{args.severity.upper()}")
    if args.since is not None:
        req.since.FromSeconds(int(args.since))
    items: list = []
    while len(items) < args.limit:
        resp = call(req, timeout=30)
        items.extend(getattr(resp, field))
        if not resp.next_cursor:
            break
        req.cursor = resp.next_cursor
    return items[: args.limit]


def cmd_alerts(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    req = analyst_pb2.ListAlertsRequest(
        detector=args.detector or "",
        ght=args.ght or "",
        finess=args.finess or "",
        region=args.region or "",
        page_size=min(args.limit, 1000),
    )
    items = _paged(stub.ListAlerts, req, "alerts", args)
    output.print_alerts(items, args.json, _colour(args))
    return 0


def cmd_agents(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    resp = stub.ListAgents(analyst_pb2.ListAgentsRequest(), timeout=30)
    agents = sorted(resp.agents, key=lambda a: (not a.silent, a.last_seen.seconds))
    output.print_agents(agents, args.json)
    return 0


def cmd_incidents(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    req = analyst_pb2.ListIncidentsRequest(
        rule=args.rule or "", region=args.region or "", page_size=min(args.limit, 1000)
    )
    if args.status:
        req.status = status_value(args.status)
    items = _paged(stub.ListIncidents, req, "incidents", args)
    output.print_incidents(items, args.json, _colour(args))
    return 0


def cmd_incident(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    detail = stub.GetIncident(analyst_pb2.GetIncidentRequest(key=args.incident), timeout=30)
    output.print_incident_detail(detail, args.json, _colour(args))
    return 0


def _update(stub: analyst_pb2_grpc.AnalystStub, key: str, status: int, comment: str) -> int:
    inc = stub.UpdateIncident(
        analyst_pb2.UpdateIncidentRequest(key=key, status=status, comment=comment), timeout=30
    )
    output.print_status_change(inc)
    return 0


def cmd_ack(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    return _update(stub, args.incident, analyst_pb2.STATUS_ACKNOWLEDGED, args.comment)


def cmd_close(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    return _update(stub, args.incident, analyst_pb2.STATUS_CLOSED, args.comment)


def cmd_stats(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    req = analyst_pb2.CountAlertsRequest(by=args.by, region=args.region or "")
    if args.since is not None:
        req.since.FromSeconds(int(args.since))
    counts = list(stub.CountAlerts(req, timeout=30).counts)
    if args.by == "hour":
        counts.sort(key=lambda c: int(c.key))
    output.print_counts(counts, args.by, args.json)
    return 0


def cmd_watch(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    """Follows incidents; after a lost connection it resumes from the last one seen."""
    cursor = args.cursor
    first = True
    delay = 1.0
    while True:
        req = analyst_pb2.WatchIncidentsRequest(cursor=cursor, from_start=args.from_start)
        if args.severity:
            req.min_severity = alert_pb2.Severity.Value(f"SEVERITY_{args.severity.upper()}")
        try:
            for event in stub.WatchIncidents(req):
                output.print_incidents([event.incident], args.json, _colour(args), header=first)
                first = False
                cursor = event.incident.seq
                delay = 1.0
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or args.once:
                raise
            print(f"vigie: connection lost, resuming after incident #{cursor}", file=sys.stderr)
            time.sleep(delay)
            delay = min(30.0, delay * 2)
        if args.once:
            return 0


def cmd_intel(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    if args.intel_cmd == "status":
        status = stub.IntelStatus(analyst_pb2.IntelStatusRequest(version=args.version), timeout=30)
        output.print_intel_status(status, args.json)
        return 0
    bundle = intel.read(args.file)
    retro = intel.parse_duration(args.retro) if args.retro else 0.0
    resp = stub.PublishIntel(
        analyst_pb2.PublishIntelRequest(
            bundle_json=json.dumps(bundle), replace=args.replace, retro_seconds=retro
        ),
        timeout=60,
    )
    output.print_published(resp)
    return 0


def cmd_export(stub: analyst_pb2_grpc.AnalystStub, args: argparse.Namespace) -> int:
    req = analyst_pb2.ExportStixRequest(region=args.region or "")
    if args.since is not None:
        req.since.FromSeconds(int(args.since))
    print(stub.ExportStix(req, timeout=120).bundle_json)
    return 0
