"""vigie: the analysts' command line over the collector's query service.

Exit codes: 0 done, 1 unexpected error, 2 bad usage or settings, 3 collector unreachable,
4 certificate refused or not allowed, 5 no such incident.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import grpc

from analyst import commands, connect, intel
from common.config import ConfigError
from common.identity import STATUS_VALUES
from vigie.v1 import analyst_pb2_grpc

EX_USAGE, EX_UNREACHABLE, EX_REFUSED, EX_NOT_FOUND = 2, 3, 4, 5
SEVERITIES = ["info", "low", "medium", "high", "critical"]
STATUS_ALIASES = {"acked": "acknowledged"}  # the former spelling, still accepted by --status


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


def _status_option(text: str) -> str:
    return STATUS_ALIASES.get(text, text)


# Flags several subcommands share, declared once each. A help text is passed where the
# subcommand showed one, so that `--help` reads as it always did.


def _since_flag(sp: argparse.ArgumentParser, help: str | None = None) -> None:
    sp.add_argument("--since", type=_since, help=help)


def _severity_flag(sp: argparse.ArgumentParser, help: str | None = None) -> None:
    sp.add_argument("--severity", choices=SEVERITIES, help=help)


def _region_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--region")


def _limit_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--limit", type=int, default=50)


def _incident_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("incident", metavar="KEY", help="the incident key")


def _output_flags(
    sp: argparse.ArgumentParser, colour: bool = True, help: str | None = None
) -> None:
    """--json, and --no-colour for the commands whose text shows severities."""
    sp.add_argument("--json", action="store_true", help=help)
    if colour:
        sp.add_argument("--no-colour", action="store_true")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vigie", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # How to reach the collector: analyst/connect.py completes them from the environment
    # and ~/.config/vigie/cli.toml.
    p.add_argument("--collector", help="HOST:PORT (or VIGIE_COLLECTOR)")
    p.add_argument("--ca", help="CA certificate (or VIGIE_CA)")
    p.add_argument("--cert", help="analyst certificate (or VIGIE_CERT)")
    p.add_argument("--key", help="analyst key (or VIGIE_KEY)")
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("alerts", help="list stored alerts, newest first")
    a.set_defaults(run=commands.cmd_alerts)
    _since_flag(a, help="30m, 2h, 7d or an ISO time")
    a.add_argument("--detector")
    _severity_flag(a, help="at least this severity")
    a.add_argument("--ght")
    a.add_argument("--finess")
    _region_flag(a)
    _limit_flag(a)
    _output_flags(a, help="one JSON object per line")

    g = sub.add_parser("agents", help="fleet health, silent agents first")
    g.set_defaults(run=commands.cmd_agents)
    _output_flags(g, colour=False)

    i = sub.add_parser("incidents", help="list incidents, newest change first")
    i.set_defaults(run=commands.cmd_incidents)
    i.add_argument("--status", type=_status_option, choices=list(STATUS_VALUES))
    _severity_flag(i, help="at least this severity")
    i.add_argument("--rule")
    _region_flag(i)
    _since_flag(i)
    _limit_flag(i)
    _output_flags(i)

    d = sub.add_parser("incident", help="one incident with its sites and alerts")
    d.set_defaults(run=commands.cmd_incident)
    _incident_arg(d)
    _output_flags(d)

    for name, what, run in (
        ("ack", "acknowledge", commands.cmd_ack),
        ("close", "close", commands.cmd_close),
    ):
        u = sub.add_parser(name, help=f"{what} an incident")
        u.set_defaults(run=run)
        _incident_arg(u)
        u.add_argument("--comment", "-m", default="", help="why (kept in the audit log)")

    st = sub.add_parser("stats", help="alert counts grouped by a field")
    st.set_defaults(run=commands.cmd_stats)
    st.add_argument(
        "--by",
        choices=["ght", "detector", "hour", "finess", "region", "technique"],
        default="detector",
    )
    _since_flag(st)
    _region_flag(st)
    _output_flags(st, colour=False)

    w = sub.add_parser("watch", help="follow incidents as they are raised or change")
    w.set_defaults(run=commands.cmd_watch)
    _severity_flag(w)
    w.add_argument("--from-start", action="store_true", help="replay every incident first")
    w.add_argument("--cursor", type=int, default=0, help="resume after this incident seq")
    w.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    _output_flags(w)

    it = sub.add_parser("intel", help="threat intelligence for the fleet")
    it.set_defaults(run=commands.cmd_intel)
    itsub = it.add_subparsers(dest="intel_cmd", required=True)
    pub = itsub.add_parser("publish", help="add the indicators of a .json, .csv or .stix file")
    pub.add_argument("file")
    pub.add_argument("--replace", action="store_true", help="replace the current bundle")
    pub.add_argument(
        "--retro",
        metavar="DURATION",
        help="also search every agent's journal this far back for these indicators (14d, 36h)",
    )
    st = itsub.add_parser("status", help="how far the agents are with a publication's retro-hunt")
    st.add_argument("version", nargs="?", type=int, default=0, help="default: the latest")
    _output_flags(st, colour=False)

    ex = sub.add_parser("export", help="export incidents for CERTs")
    ex.set_defaults(run=commands.cmd_export)
    exsub = ex.add_subparsers(dest="export_cmd", required=True)
    stx = exsub.add_parser("stix", help="a STIX 2.1 bundle of the incidents on stdout")
    _since_flag(stx, help="30m, 2h, 7d or an ISO time")
    _region_flag(stx)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = connect.settings(
            {"collector": args.collector, "ca": args.ca, "cert": args.cert, "key": args.key}
        )
        with connect.channel(cfg) as channel:
            return args.run(analyst_pb2_grpc.AnalystStub(channel), args)
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


if __name__ == "__main__":
    sys.exit(main())
