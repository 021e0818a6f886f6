"""vigie: the analysts' command line over the collector's query service.

Exit codes: 0 done, 1 unexpected error, 2 bad usage or settings, 3 collector unreachable,
4 certificate refused or not allowed, 5 no such incident.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time

import grpc

from analyst import connect, intel
from common.alertjson import alert_dict, iso, severity_name
from common.config import ConfigError
from common.identity import STATUS_VALUES, status_name, status_value
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc

EX_USAGE, EX_UNREACHABLE, EX_REFUSED, EX_NOT_FOUND = 2, 3, 4, 5
SEV_TAG = {"critical": "CRIT", "high": "HIGH", "medium": "MED", "low": "LOW", "info": "INFO"}
SEV_COLOUR = {
    "CRIT": "\033[1;37;41m",
    "HIGH": "\033[1;31m",
    "MED": "\033[33m",
    "LOW": "\033[36m",
    "INFO": "\033[2m",
}


def _local(t) -> str:
    secs = t.seconds + t.nanos / 1e9
    return dt.datetime.fromtimestamp(secs).astimezone().strftime("%Y-%m-%d %H:%M")


def _since(text: str) -> float:
    """'2h', '3d', '30m' ago, or an ISO date/time."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return dt.datetime.now().timestamp() - int(text[:-1]) * units[text[-1]]
    try:
        return dt.datetime.fromisoformat(text).astimezone().timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration (30m, 2h, 7d) or ISO time: {text!r}"
        ) from None


def _sev(name: str, colour: bool) -> str:
    tag = SEV_TAG.get(name, name.upper()[:4])
    return f"{SEV_COLOUR[tag]}{tag:<4}\033[0m" if colour and tag in SEV_COLOUR else f"{tag:<4}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def print_alerts(items, as_json: bool, colour: bool) -> None:
    if as_json:
        for it in items:
            d = alert_dict(it.alert)
            d["origin"] = {
                "agent_id": it.origin.agent_id,
                "finess": it.origin.finess,
                "ght": it.origin.ght,
                "region": it.origin.region,
            }
            print(json.dumps(d, separators=(",", ":")))
        return
    width = max(80, shutil.get_terminal_size((80, 24)).columns)
    # One header line per alert, then what happened and who was involved, indented:
    # fits 80 columns without cutting the site or the summary short.
    print(f"{'LAST SEEN':<16}  {'SEV':<4}  {'DETECTOR':<18}  {'GHT / FINESS':<26}  COUNT")
    for it in items:
        a = it.alert
        site = f"{it.origin.ght} / {it.origin.finess}"
        print(
            f"{_local(a.last_seen):<16}  {_sev(severity_name(a.severity), colour)}  "
            f"{_fit(a.detector, 18):<18}  {_fit(site, 26):<26}  {a.occurrences:>5}"
        )
        print(_fit(f"    {a.summary}", width))
        ents = "  ".join(
            f"{alert_pb2.EntityRole.Name(e.role).removeprefix('ROLE_').lower()}="
            f"{e.value}{'*' if e.pseudonymised else ''}"
            for e in a.entities
        )
        print(_fit(f"    {a.technique}  {ents}", width))
    if not items:
        print("(no alerts)")
    else:
        print("* pseudonymised by the agent (internal address, host or user name)")


def _paged(call, req, field: str, args) -> list:
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


def cmd_alerts(stub, args) -> int:
    req = analyst_pb2.ListAlertsRequest(
        detector=args.detector or "",
        ght=args.ght or "",
        finess=args.finess or "",
        region=args.region or "",
        page_size=min(args.limit, 1000),
    )
    items = _paged(stub.ListAlerts, req, "alerts", args)
    print_alerts(items, args.json, _colour(args))
    return 0


def cmd_agents(stub, args) -> int:
    resp = stub.ListAgents(analyst_pb2.ListAgentsRequest(), timeout=30)
    agents = sorted(resp.agents, key=lambda a: (not a.silent, a.last_seen.seconds))
    if args.json:
        for a in agents:
            print(
                json.dumps(
                    {
                        "agent_id": a.origin.agent_id,
                        "finess": a.origin.finess,
                        "ght": a.origin.ght,
                        "region": a.origin.region,
                        "last_seen": _local(a.last_seen),
                        "version": a.agent_version,
                        "packets_dropped": a.packets_dropped,
                        "outbox_depth": a.outbox_depth,
                        "outbox_shed": a.outbox_shed,
                        "dead_letters": a.dead_letters,
                        "silent": a.silent,
                    }
                )
            )
        return 0
    print(
        f"{'STATE':<7} {'LAST SEEN':<16} {'GHT':<10} {'FINESS':<9} {'VERSION':<10} "
        f"{'DROPS':>7} {'BACKLOG':>8} {'HELD':>5}"
    )
    for a in agents:
        # HELD: alerts of this agent the collector could not store (its dead letters).
        print(
            f"{'SILENT' if a.silent else 'ok':<7} {_local(a.last_seen):<16} "
            f"{_fit(a.origin.ght, 10):<10} {a.origin.finess:<9} {_fit(a.agent_version, 10):<10} "
            f"{a.packets_dropped:>7} {a.outbox_depth:>8} {a.dead_letters:>5}"
        )
    if not agents:
        print("(no agents)")
    return 0


STATUS_ALIASES = {"acked": "acknowledged"}  # the former spelling, still accepted by --status


def _status_option(text: str) -> str:
    return STATUS_ALIASES.get(text, text)


def incident_dict(inc) -> dict:
    return {
        "key": inc.key,
        "rule": inc.rule,
        "subject": inc.subject,
        "severity": severity_name(inc.severity),
        "status": status_name(inc.status),
        "status_by": inc.status_by,
        "status_comment": inc.status_comment,
        "first_seen": iso(inc.first_seen),
        "last_seen": iso(inc.last_seen),
        "summary": inc.summary,
        "alert_count": inc.alert_count,
        "seq": inc.seq,
        "sites": [{"finess": s.finess, "ght": s.ght, "region": s.region} for s in inc.sites],
    }


def print_incidents(items, as_json: bool, colour: bool, header: bool = True) -> None:
    if as_json:
        for inc in items:
            print(json.dumps(incident_dict(inc), separators=(",", ":")), flush=True)
        return
    width = max(80, shutil.get_terminal_size((80, 24)).columns)
    if header:
        print(
            f"{'LAST SEEN':<16}  {'SEV':<4}  {'STATUS':<12}  {'RULE':<20}  {'SITES':>5}  "
            f"{'ALERTS':>6}"
        )
    for inc in items:
        print(
            f"{_local(inc.last_seen):<16}  {_sev(severity_name(inc.severity), colour)}  "
            f"{status_name(inc.status):<12}  {_fit(inc.rule, 20):<20}  "
            f"{len(inc.sites):>5}  {inc.alert_count:>6}"
        )
        print(_fit(f"    {inc.summary}", width))
        print(f"    key {inc.key}")
        if inc.status_by:
            print(
                _fit(
                    f"    {status_name(inc.status)} by {inc.status_by} "
                    f"{_local(inc.status_at)}: {inc.status_comment}",
                    width,
                )
            )
    if header and not items:
        print("(no incidents)")


def cmd_incidents(stub, args) -> int:
    req = analyst_pb2.ListIncidentsRequest(
        rule=args.rule or "", region=args.region or "", page_size=min(args.limit, 1000)
    )
    if args.status:
        req.status = status_value(args.status)
    items = _paged(stub.ListIncidents, req, "incidents", args)
    print_incidents(items, args.json, _colour(args))
    return 0


def cmd_incident(stub, args) -> int:
    detail = stub.GetIncident(analyst_pb2.GetIncidentRequest(key=args.incident), timeout=30)
    if args.json:
        d = incident_dict(detail.incident)
        d["alerts"] = [
            alert_dict(a.alert)
            | {
                "origin": {
                    "finess": a.origin.finess,
                    "ght": a.origin.ght,
                    "region": a.origin.region,
                }
            }
            for a in detail.alerts
        ]
        print(json.dumps(d, separators=(",", ":")))
        return 0
    print_incidents([detail.incident], False, _colour(args))
    print("\nSITES")
    for s in detail.incident.sites:
        print(f"    {s.ght:<20} {s.finess:<9}  region {s.region}")
    print("\nALERTS")
    print_alerts(list(detail.alerts), False, _colour(args))
    return 0


def _update(stub, key: str, status: int, comment: str) -> int:
    inc = stub.UpdateIncident(
        analyst_pb2.UpdateIncidentRequest(key=key, status=status, comment=comment), timeout=30
    )
    print(f"{status_name(inc.status)}: {inc.key}")
    return 0


def cmd_ack(stub, args) -> int:
    return _update(stub, args.incident, analyst_pb2.STATUS_ACKNOWLEDGED, args.comment)


def cmd_close(stub, args) -> int:
    return _update(stub, args.incident, analyst_pb2.STATUS_CLOSED, args.comment)


def cmd_stats(stub, args) -> int:
    req = analyst_pb2.CountAlertsRequest(by=args.by, region=args.region or "")
    if args.since is not None:
        req.since.FromSeconds(int(args.since))
    counts = list(stub.CountAlerts(req, timeout=30).counts)
    if args.by == "hour":
        counts.sort(key=lambda c: int(c.key))
    if args.json:
        for c in counts:
            key = _local_hour(c.key) if args.by == "hour" else c.key
            print(json.dumps({args.by: key, "count": c.count}))
        return 0
    top = max((c.count for c in counts), default=1)
    print(f"{args.by.upper():<24} {'ALERTS':>8}")
    for c in counts:
        key = _local_hour(c.key) if args.by == "hour" else c.key
        bar = "#" * max(1, round(40 * c.count / top))
        print(f"{_fit(key, 24):<24} {c.count:>8}  {bar}")
    if not counts:
        print("(no alerts)")
    return 0


def _local_hour(key: str) -> str:
    return dt.datetime.fromtimestamp(int(key)).astimezone().strftime("%Y-%m-%d %H:00")


def cmd_watch(stub, args) -> int:
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
                print_incidents([event.incident], args.json, _colour(args), header=first)
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


def cmd_intel(stub, args) -> int:
    bundle = intel.read(args.file)
    resp = stub.PublishIntel(
        analyst_pb2.PublishIntelRequest(bundle_json=json.dumps(bundle), replace=args.replace),
        timeout=60,
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(resp.counts.items()) if v)
    print(
        f"intel version {resp.version} published ({counts or 'empty'}); agents pick it up "
        "on their stream"
    )
    return 0


def cmd_export(stub, args) -> int:
    req = analyst_pb2.ExportStixRequest(region=args.region or "")
    if args.since is not None:
        req.since.FromSeconds(int(args.since))
    print(stub.ExportStix(req, timeout=120).bundle_json)
    return 0


def _colour(args) -> bool:
    return sys.stdout.isatty() and not getattr(args, "no_colour", False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vigie", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--collector", help="HOST:PORT (or VIGIE_COLLECTOR)")
    p.add_argument("--ca", help="CA certificate (or VIGIE_CA)")
    p.add_argument("--cert", help="analyst certificate (or VIGIE_CERT)")
    p.add_argument("--key", help="analyst key (or VIGIE_KEY)")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("alerts", help="list stored alerts, newest first")
    a.add_argument("--since", type=_since, help="30m, 2h, 7d or an ISO time")
    a.add_argument("--detector")
    a.add_argument(
        "--severity",
        choices=["info", "low", "medium", "high", "critical"],
        help="at least this severity",
    )
    a.add_argument("--ght")
    a.add_argument("--finess")
    a.add_argument("--region")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.add_argument("--no-colour", action="store_true")
    g = sub.add_parser("agents", help="fleet health, silent agents first")
    g.add_argument("--json", action="store_true")
    sev = ["info", "low", "medium", "high", "critical"]
    i = sub.add_parser("incidents", help="list incidents, newest change first")
    i.add_argument("--status", type=_status_option, choices=list(STATUS_VALUES))
    i.add_argument("--severity", choices=sev, help="at least this severity")
    i.add_argument("--rule")
    i.add_argument("--region")
    i.add_argument("--since", type=_since)
    i.add_argument("--limit", type=int, default=50)
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-colour", action="store_true")
    d = sub.add_parser("incident", help="one incident with its sites and alerts")
    d.add_argument("incident", metavar="KEY", help="the incident key")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-colour", action="store_true")
    for name, what in (("ack", "acknowledge"), ("close", "close")):
        u = sub.add_parser(name, help=f"{what} an incident")
        u.add_argument("incident", metavar="KEY", help="the incident key")
        u.add_argument("--comment", "-m", default="", help="why (kept in the audit log)")
    st = sub.add_parser("stats", help="alert counts grouped by a field")
    st.add_argument(
        "--by",
        choices=["ght", "detector", "hour", "finess", "region", "technique"],
        default="detector",
    )
    st.add_argument("--since", type=_since)
    st.add_argument("--region")
    st.add_argument("--json", action="store_true")
    w = sub.add_parser("watch", help="follow incidents as they are raised or change")
    w.add_argument("--severity", choices=sev)
    w.add_argument("--from-start", action="store_true", help="replay every incident first")
    w.add_argument("--cursor", type=int, default=0, help="resume after this incident seq")
    w.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--json", action="store_true")
    w.add_argument("--no-colour", action="store_true")
    it = sub.add_parser("intel", help="threat intelligence for the fleet")
    itsub = it.add_subparsers(dest="intel_cmd", required=True)
    pub = itsub.add_parser("publish", help="add the indicators of a .json, .csv or .stix file")
    pub.add_argument("file")
    pub.add_argument("--replace", action="store_true", help="replace the current bundle")
    ex = sub.add_parser("export", help="export incidents for CERTs")
    exsub = ex.add_subparsers(dest="export_cmd", required=True)
    stx = exsub.add_parser("stix", help="a STIX 2.1 bundle of the incidents on stdout")
    stx.add_argument("--since", type=_since, help="30m, 2h, 7d or an ISO time")
    stx.add_argument("--region")
    args = p.parse_args(argv)
    try:
        cfg = connect.settings(
            {"collector": args.collector, "ca": args.ca, "cert": args.cert, "key": args.key}
        )
        with connect.channel(cfg) as channel:
            stub = analyst_pb2_grpc.AnalystStub(channel)
            return COMMANDS[args.cmd](stub, args)
    except (ConfigError, connect.ConnectError, intel.IntelFileError) as exc:
        print(f"vigie: {exc}", file=sys.stderr)
        return EX_USAGE
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            print(
                f"vigie: collector {cfg['collector']} unreachable ({exc.details()})",
                file=sys.stderr,
            )
            return EX_UNREACHABLE
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            print(f"vigie: refused by the collector: {exc.details()}", file=sys.stderr)
            return EX_REFUSED
        if code == grpc.StatusCode.NOT_FOUND:
            print(f"vigie: {exc.details()}", file=sys.stderr)
            return EX_NOT_FOUND
        print(f"vigie: {code.name}: {exc.details()}", file=sys.stderr)
        return EX_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


COMMANDS = {
    "alerts": cmd_alerts,
    "agents": cmd_agents,
    "incidents": cmd_incidents,
    "incident": cmd_incident,
    "ack": cmd_ack,
    "close": cmd_close,
    "stats": cmd_stats,
    "watch": cmd_watch,
    "intel": cmd_intel,
    "export": cmd_export,
}


if __name__ == "__main__":
    sys.exit(main())
