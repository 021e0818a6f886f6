"""vigie-agent: replay a capture or watch an interface, and report what it finds."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil

from agent import settings
from agent.anonymise.explain import cmd_explain
from agent.anonymise.policy import AnonymisationError, Anonymiser
from agent.capture.live import CaptureError as LiveError
from agent.capture.live import LiveCapture
from agent.capture.pcapfile import CaptureError, ReadStats, read_capture
from agent.deliver.stream import Credentials, Sender
from agent.enroll import EnrollError
from agent.host import sampler as host_sampler
from agent.outbox.store import Outbox, OutboxError
from agent.pipeline import Pipeline
from common import config, logs
from common.alertjson import alert_dict
from vigie.v1 import alert_pb2, ingest_pb2

EX_USAGE, EX_TEMPFAIL = 2, 75

try:
    VERSION = version("vigie")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0+src"

log = logs.get("agent")


def _anonymiser(cfg: dict[str, Any]) -> Anonymiser:
    return Anonymiser.from_settings(cfg["anonymisation"], cfg["state_dir"])


class Delivery:
    """--output collector: outbox plus the stream that empties it."""

    def __init__(self, cfg: dict[str, Any], stats: Callable[[], tuple[int, int]]) -> None:
        c = cfg["collector"]
        self.outbox = Outbox(
            settings.path(cfg, cfg["outbox"]["path"], "outbox.db"), cfg["outbox"]["max_alerts"]
        )
        creds = Credentials(
            settings.path(cfg, c["ca"], "tls/ca.crt"),
            settings.path(cfg, c["cert"], "tls/agent.crt"),
            settings.path(cfg, c["key"], "tls/agent.key"),
        )
        creds.load()  # fail now, with the file named, rather than in the sender's loop
        self.started = time.time()
        # One Process object for the agent's whole life: cpu_percent measures since the
        # previous call on the same object, so a fresh one every heartbeat always said 0.
        self._me = psutil.Process()
        self._me.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None)
        self.stats = stats
        self.sender = Sender(
            self.outbox,
            c["address"],
            creds,
            self.heartbeat,
            c["batch_size"],
            c["heartbeat_seconds"],
            intel_path=settings.path(cfg, "", "intel.json"),
            on_intel=self.on_intel,
        )
        self.drain_timeout = c["drain_timeout_seconds"]

    def on_intel(self, bundle: dict) -> None:
        """A new intel bundle (already stored in state_dir/intel.json): the pipeline's
        IOC matching picks it up from here."""
        self.intel = bundle

    def heartbeat(self) -> ingest_pb2.Heartbeat:
        received, dropped = self.stats()
        me = self._me
        hb = ingest_pb2.Heartbeat(
            agent_version=VERSION,
            agent_uptime_seconds=time.time() - self.started,
            packets_captured=received,
            packets_dropped=dropped,
            outbox_depth=self.outbox.depth(),
            outbox_shed=self.outbox.shed(),
        )
        hb.sent_at.GetCurrentTime()
        hb.host.cpu_percent = psutil.cpu_percent(interval=None)
        hb.host.memory_percent = psutil.virtual_memory().percent
        hb.host.disk_percent = psutil.disk_usage("/").percent
        hb.host.uptime_seconds = time.time() - psutil.boot_time()
        hb.host.agent_cpu_percent = me.cpu_percent(interval=None)
        hb.host.agent_rss_bytes = me.memory_info().rss
        return hb

    def __call__(self, alert: alert_pb2.Alert) -> None:
        self.outbox.put(alert)

    def start(self) -> None:
        self.sender.start()

    def finish(self, wait: bool) -> bool:
        drained = self.sender.drain(self.drain_timeout) if wait else self.outbox.depth() == 0
        self.sender.stop()
        self.sender.join(timeout=5)
        depth = self.outbox.depth()
        log.info("delivery_stopped", acked=self.sender.acked, queued=depth)
        self.outbox.close()
        return drained


def _jsonl(alert: alert_pb2.Alert) -> None:
    sys.stdout.write(json.dumps(alert_dict(alert), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _print_stats(pipe: Pipeline, read: ReadStats | None, elapsed: float) -> None:
    d = pipe.decode_stats
    out = {
        "packets": pipe.packets,
        "bytes": pipe.bytes,
        "decoded": d.decoded,
        "malformed": dict(sorted(d.malformed.items())),
        "skipped": dict(sorted(d.skipped.items())),
        "flows_created": pipe.flows.created,
        "flows_evicted": pipe.flows.evicted,
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
    records = read_capture(args.pcap, read_stats)  # raises CaptureError before any record
    pipe: Pipeline
    delivery = Delivery(cfg, lambda: (pipe.packets, 0)) if args.output == "collector" else None
    pipe = Pipeline(cfg, _anonymiser(cfg), delivery or _jsonl, time.time)
    if delivery:
        delivery.start()
    t0 = time.perf_counter()
    feed = pipe.feed
    for ts, linktype, wirelen, frame in records:
        feed(ts, linktype, wirelen, frame)
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


def cmd_run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    c = cfg["capture"]
    cap = LiveCapture(
        args.interface,
        c["bpf_filter"],
        c["snaplen"],
        ring=c["ring"],
        ring_megabytes=c["ring_megabytes"],
    )
    if c["ring"] and cap.mode != "ring":
        log.warning("capture_ring_unavailable", reason=cap.ring_error, fallback="recv")
    delivery = Delivery(cfg, cap.stats) if args.output == "collector" else None
    pipe = Pipeline(cfg, _anonymiser(cfg), delivery or _jsonl, time.time)
    if delivery:
        delivery.start()
    host = host_sampler.from_settings(cfg, args.config) if cfg["host"]["enabled"] else None
    if host is not None:
        host.start(pipe.host_samples.put_nowait, cfg["host"]["interval_seconds"])
    log.info("capture_started", interface=args.interface, mode=cap.mode)
    feed, tick = pipe.feed, pipe.tick
    next_tick = 0.0
    try:
        for rec in cap.packets(stop):
            if rec is not None:
                feed(*rec)
            now = time.time()
            if now >= next_tick:
                tick(now)
                next_tick = now + 1.0
    finally:
        if host is not None:
            host.stop()
        pipe.finish()
        received, dropped = cap.stats()
        cap.close()
        log.info(
            "capture_stopped",
            packets=pipe.packets,
            kernel_received=received,
            kernel_dropped=dropped,
        )
        if delivery:
            delivery.finish(wait=False)
    return 0


def cmd_enroll(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from agent.enroll import enroll

    if problem := config.host_port(args.collector):
        raise config.ConfigError(f"--collector {problem}")
    tls = settings.path(cfg, "", "tls")
    agent_id = enroll(args.collector, args.token, tls, args.ca_fingerprint, args.ca)
    print(f"enrolled as {agent_id}: credentials in {tls}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigie-agent", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common_args(sp: argparse.ArgumentParser, default_output: str) -> None:
        sp.add_argument("--config", help="TOML file (default: built-in defaults)")
        sp.add_argument("--state-dir", help="override state_dir")
        sp.add_argument(
            "--output",
            choices=("jsonl", "collector"),
            default=default_output,
            help=f"where alerts go (default {default_output})",
        )
        sp.add_argument("--collector", metavar="HOST:PORT", help="override collector.address")

    r = sub.add_parser("replay", help="run the pipeline on a pcap/pcapng, on its own timestamps")
    r.add_argument("pcap")
    common_args(r, "jsonl")
    r.add_argument("--stats", action="store_true", help="print pipeline counters to stderr")
    live = sub.add_parser("run", help="capture live on an interface")
    live.add_argument("--interface", "-i", required=True)
    common_args(live, "collector")

    en = sub.add_parser("enroll", help="get this agent's certificate with a one-time token")
    en.add_argument("--collector", required=True, metavar="HOST:PORT", help="enrollment port")
    en.add_argument("--token", required=True, help="from 'vigie-collector token create'")
    pin = en.add_mutually_exclusive_group()
    pin.add_argument("--ca-fingerprint", default="", metavar="SHA256", help="pin the CA")
    pin.add_argument("--ca", default="", metavar="FILE", help="the collector's CA certificate")
    en.add_argument("--config", help="TOML file (default: built-in defaults)")
    en.add_argument("--state-dir", help="override state_dir")

    ex = sub.add_parser(
        "explain-anonymisation",
        help="show how addresses and names would be reported (for the data protection officer)",
    )
    ex.add_argument("values", nargs="+", metavar="VALUE", help="address or name")
    ex.add_argument("--config", help="TOML file (default: built-in defaults)")
    ex.add_argument("--state-dir", help="override state_dir")
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    args = p.parse_args(argv)
    # stdout carries alerts with --output jsonl: logs go to stderr then.
    stream = sys.stderr if getattr(args, "output", "jsonl") == "jsonl" else sys.stdout
    logs.setup(stream)
    try:
        cfg = config.load(args.config, settings.SCHEMA)
        if args.state_dir:
            cfg["state_dir"] = args.state_dir
        if args.cmd == "enroll":
            return cmd_enroll(args, cfg)
        if getattr(args, "collector", None):
            if problem := config.host_port(args.collector):
                raise config.ConfigError(f"--collector {problem}")
            cfg["collector"]["address"] = args.collector
        logs.setup(stream, cfg["log_level"])
        if args.cmd == "explain-anonymisation":
            return cmd_explain(args.values, cfg, args.json)
        if args.cmd == "replay":
            return cmd_replay(args, cfg)
        return cmd_run(args, cfg)
    except (
        config.ConfigError,
        CaptureError,
        LiveError,
        OutboxError,
        AnonymisationError,
        FileNotFoundError,
        EnrollError,
    ) as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
