"""`vigie-agent replay-logs FILE...`: log files through the log detectors as `replay`
takes a capture through the network ones, on the lines' own times; `--events` prints the
parsed events instead (names and addresses in clear: that output stays on the host)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent.logs.parse import ParseStats
from agent.logs.reader import read_files
from agent.output import Delivery, anonymiser, jsonl
from agent.pipeline import Pipeline
from common import logs

log = logs.get("agent")


def add_parser(sub: Any, settings_flags, output_flag) -> None:
    r = sub.add_parser(
        "replay-logs", help="run the log detectors on log files, on the lines' own times"
    )
    r.add_argument("files", nargs="+", metavar="FILE", help="syslog, auth.log or audit.log")
    settings_flags(r)
    output_flag(r, "jsonl")
    r.add_argument(
        "--events", action="store_true", help="print the parsed events (in clear), not alerts"
    )
    r.add_argument("--stats", action="store_true", help="print parser counters to stderr")


def cmd_replay_logs(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    for f in args.files:
        open(f, "rb").close()  # FileNotFoundError/PermissionError before any output
    stats = ParseStats()
    t0 = time.perf_counter()
    events = read_files(args.files, stats)
    if args.events:
        out = sys.stdout
        for ev in events:
            out.write(json.dumps(ev.as_dict(), separators=(",", ":")) + "\n")
        out.flush()
    else:
        anon = anonymiser(cfg)
        pipe: Pipeline
        delivery = Delivery(cfg, lambda: (0, 0), anon) if args.output == "collector" else None
        pipe = Pipeline(cfg, anon, delivery or jsonl, time.time)
        if delivery:
            delivery.start()
        pipe.feed_logs(events)
        pipe.finish()
        if delivery and not delivery.finish(wait=True):
            log.warning("outbox_not_drained", hint="alerts stay queued and go at the next start")
            return 75
    elapsed = time.perf_counter() - t0
    log.info(
        "replay_logs_done",
        lines=stats.lines,
        events=stats.events,
        unparsed=stats.unmatched + stats.other + stats.malformed,
        seconds=round(elapsed, 3),
    )
    if args.stats:
        d = {k: v for k, v in vars(stats).items() if k != "by_program"}
        d["unmatched_by_program"] = dict(sorted(stats.by_program.items()))
        d["seconds"] = round(elapsed, 3)
        print(json.dumps(d, indent=2), file=sys.stderr)
    return 0
