"""`vigie-agent hunt`: the hospital team's own search of this server's journal.

Prints matching records in clear, Zeek-like (one line per record, tab-separated, a
header naming the fields), or one JSON object per line with --json. Nothing is sent
anywhere: this reads state_dir/journal and writes to the terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from typing import Any, TextIO

from agent.hunt.journal import FIELDS, TYPES, journal_dir
from agent.hunt.search import Query, QueryError, search

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Any, settings_flags: Any) -> None:
    h = sub.add_parser(
        "hunt",
        help="search this server's metadata journal for addresses, domains, fingerprints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    h.add_argument("--ip", action="append", default=[], help="address or CIDR (repeatable)")
    h.add_argument("--domain", action="append", default=[], help="domain and its subdomains")
    h.add_argument("--ja3", action="append", default=[], help="TLS client JA3 hash")
    h.add_argument("--ja4", action="append", default=[], help="TLS client JA4")
    h.add_argument("--since", default="14d", help="how far back: 30m, 12h, 7d (default 14d)")
    h.add_argument("--limit", type=int, default=10_000, help="stop after this many records")
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    settings_flags(h)


def parse_since(text: str, now: float) -> float:
    m = _SINCE.match(text.strip().lower())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise QueryError(f"--since {text!r}: expected 30m, 12h, 7d or an ISO time") from None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def as_dict(rec: list, what: str, value: str) -> dict[str, Any]:
    d: dict[str, Any] = {"type": TYPES[rec[0]]}
    for name, v in zip(FIELDS[rec[0]], rec[1:], strict=False):
        d[name] = _iso(v) if name in ("ts", "first", "last") else v
    if rec[0] == "d":
        d.setdefault("answers", [])  # written before answers were kept: same columns
    d["matched"] = f"{what}:{value}"
    return d


def _cell(v: Any) -> str:
    """A text column: a list (DNS answers) comma-separated, "-" when empty, as Zeek does."""
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)


def cmd_hunt(args: argparse.Namespace, cfg: dict[str, Any], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    q = Query.build(args.ip, args.domain, args.ja3, args.ja4, parse_since(args.since, time.time()))
    if not q:
        raise QueryError("give at least one --ip, --domain, --ja3 or --ja4")
    directory = journal_dir(cfg)
    if not directory.exists():
        print(f"no journal in {directory} ([journal] enabled = false?)", file=sys.stderr)
        return 1
    n = 0
    header = None
    for hit in search(directory, q):
        d = as_dict(hit.record, hit.what, hit.value)
        if args.json:
            out.write(json.dumps(d) + "\n")
        else:
            if header != d["type"]:
                header = d["type"]
                out.write("#" + "\t".join(d) + "\n")
            out.write("\t".join(_cell(v) for v in d.values()) + "\n")
        n += 1
        if n >= args.limit:
            print(f"stopped at --limit {args.limit}", file=sys.stderr)
            break
    print(f"{n} records matched", file=sys.stderr)
    return 0
