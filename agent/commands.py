"""The agent's short commands: replay a capture, enroll, doctor, explain-anonymisation.
The long-running `run` is agent/service.py. Each takes the parsed flags (and, but for
doctor, the loaded settings) and returns the exit code."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent import settings
from agent.anonymise import explain
from agent.capture.pcapfile import PcapLayout, ReadStats, open_capture
from agent.output import Delivery, anonymiser, jsonl
from agent.pipeline import Pipeline
from common import config, logs

EX_USAGE, EX_TEMPFAIL = 2, 75

log = logs.get("agent")


def _print_stats(pipe: Pipeline, read: ReadStats | None, elapsed: float) -> None:
    d = pipe.decode_stats
    out = {
        "packets": pipe.packets,
        "bytes": pipe.bytes,
        "decoded": d.decoded,
        "malformed": dict(sorted(d.malformed.items())),
        "skipped": dict(sorted(d.skipped.items())),
        "flows_created": pipe.engine.created,
        "flows_evicted": pipe.engine.evicted,
        "alerts": dict(sorted(pipe.counters.alerts.items())),
        "deep_decoded": dict(sorted(pipe.deep_stats.decoded.items())),
        "deep_malformed": dict(sorted(pipe.deep_stats.malformed.items())),
        "seconds": round(elapsed, 3),
        "packets_per_second": round(pipe.packets / elapsed) if elapsed > 0 else 0,
    }
    if read is not None:
        out["capture_file_errors"] = dict(read.errors)
    print(json.dumps(out, indent=2), file=sys.stderr)


def cmd_replay(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    read_stats = ReadStats()
    capture = open_capture(args.pcap, read_stats)  # raises CaptureError before any record
    pipe: Pipeline
    anon = anonymiser(cfg)
    delivery = (
        Delivery(cfg, lambda: (pipe.packets, 0), anon) if args.output == "collector" else None
    )
    pipe = Pipeline(cfg, anon, delivery or jsonl, time.time)
    if getattr(args, "journal", False):
        from agent.hunt.journal import Journal, journal_dir

        pipe.add_taker(Journal(journal_dir(cfg), cfg["journal"]))
    if delivery:
        delivery.start()
    t0 = time.perf_counter()
    if isinstance(capture, PcapLayout):
        try:
            read_stats.records, damage = pipe.feed_pcap(capture)
        finally:
            capture.close()
        if damage:
            read_stats.errors[damage] = read_stats.errors.get(damage, 0) + 1
    else:
        pipe.feed_pcapng(capture, read_stats)
    pipe.finish()
    elapsed = time.perf_counter() - t0
    for reason, n in read_stats.errors.items():
        log.warning("capture_file_damaged", reason=reason, count=n)
    log.info(
        "replay_done",
        packets=pipe.packets,
        alerts=sum(pipe.counters.alerts.values()),
        malformed=sum(pipe.decode_stats.malformed.values()),
        seconds=round(elapsed, 3),
    )
    if args.stats:
        _print_stats(pipe, read_stats, elapsed)
    if delivery and not delivery.finish(wait=True):
        log.warning("outbox_not_drained", hint="alerts stay queued and go at the next start")
        return EX_TEMPFAIL
    return 0


def cmd_enroll(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from agent.enroll import EnrollError, enroll, enrolled_as

    if problem := config.host_port(args.collector):
        raise config.ConfigError(f"--collector {problem}")
    tls = settings.path(cfg, "", "tls")
    # Enrolling again makes a new identity: the old one goes silent at the collector, and
    # stays listed there until retired. Never by accident.
    before = enrolled_as(tls)
    if before and not args.force:
        print(
            f"vigie-agent: this server is already enrolled as {before}. Enrolling again "
            "replaces that identity: pass --force to do it, then retire the old one on the "
            "collector (vigie-collector agent retire AGENT_ID)",
            file=sys.stderr,
        )
        return EX_USAGE
    if before:
        print(f"replacing {before}", file=sys.stderr)
    try:
        agent_id = enroll(args.collector, args.token, tls, args.ca_fingerprint, args.ca)
    except EnrollError as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_USAGE
    print(f"enrolled as {agent_id}: credentials in {tls}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Reads the settings itself: a file that does not load is one of its findings."""
    from agent import doctor

    logs.setup(sys.stderr, "error")
    return doctor.run(
        args.config,
        args.interface,
        {"state_dir": args.state_dir or "", "collector.address": args.collector or ""},
        args.timeout,
    )


def cmd_explain(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    return explain.cmd_explain(args.values, cfg, args.json)
