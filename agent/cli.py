"""vigie-agent: replay a capture or watch an interface, and report what it finds."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import settings
from agent.anonymise.explain import cmd_explain
from agent.anonymise.policy import AnonymisationError, Anonymiser
from agent.capture.live import CaptureError as LiveError
from agent.capture.live import LiveCapture
from agent.capture.pcapfile import CaptureError, PcapLayout, ReadStats, open_capture
from agent.outbox.store import Outbox, OutboxError
from agent.pipeline import Pipeline
from common import config, logs, sdnotify
from common.alertjson import alert_dict
from vigie.v1 import alert_pb2, ingest_pb2

if TYPE_CHECKING:
    from agent.selfguard import SelfGuard
# psutil, the metrics server, self-protection and the host sampler are loaded by the
# commands that use them: a replay starts without them (about 0.1 s of every start-up).

EX_USAGE, EX_TEMPFAIL = 2, 75


def agent_version() -> str:
    # Asked when a heartbeat is built, not at import: importlib.metadata alone costs 40 ms
    # of every command's start-up.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vigie")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0+src"


log = logs.get("agent")


def _anonymiser(cfg: dict[str, Any]) -> Anonymiser:
    return Anonymiser.from_settings(cfg["anonymisation"], cfg["state_dir"])


class Delivery:
    """--output collector: outbox plus the stream that empties it."""

    def __init__(self, cfg: dict[str, Any], stats: Callable[[], tuple[int, int]]) -> None:
        # gRPC is loaded only by the commands that stream (a replay to a file never does).
        import psutil

        from agent.deliver.stream import Credentials, Sender

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
        self.version = agent_version()
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
        import psutil

        hb = ingest_pb2.Heartbeat(
            agent_version=self.version,
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
        # Opaque ids only (no entity, no summary): lets an operator or a test follow an
        # alert from detection to the collector's ack.
        log.debug("alert_queued", id=alert.id, revision=alert.revision, detector=alert.detector)

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
    delivery = Delivery(cfg, lambda: (pipe.packets, 0)) if args.output == "collector" else None
    pipe = Pipeline(cfg, _anonymiser(cfg), delivery or _jsonl, time.time)
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


class _Service:
    """What `run` does for systemd: sd_notify, a watchdog fed by the loop's progress,
    SIGHUP reload, SIGTERM stop, metrics and self-protection."""

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], stream) -> None:
        self.args, self.cfg, self.stream = args, cfg, stream
        self.stop = threading.Event()
        self.hup = threading.Event()
        self.stall = threading.Event()  # test-only (VIGIE_TEST_STALL=1 + SIGUSR2)
        self.notifier = sdnotify.Notifier()
        self.reloads = {"applied": 0, "refused": 0}
        self.pipe: Pipeline | None = None
        self.delivery: Delivery | None = None
        self.guard: SelfGuard | None = None
        self.intel: Any = None
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.hup.set())
        if os.environ.get("VIGIE_TEST_STALL") == "1":
            # Blocks the packet loop as a hung thread would, so tests can watch the
            # watchdog stop being fed. Never installed otherwise.
            signal.signal(signal.SIGUSR2, lambda *_: self.stall.set())

    def _on_stop(self, *_: object) -> None:
        if not self.stop.is_set():
            self.notifier.stopping("stopping: flushing findings to the outbox")
            self.stop.set()

    def status(self) -> str:
        p = self.pipe
        if p is None:
            return "starting"
        text = (
            f"{p.packets} packets, {len(p.engine)} flows, {sum(p.counters.alerts.values())} alerts"
        )
        if self.delivery is not None:
            text += f", outbox {self.delivery.outbox.depth()}"
            text += ", connected" if self.delivery.sender.connected.is_set() else ", offline"
        if p.shed_level:
            from agent.selfguard import describe

            text += f", shedding level {p.shed_level} ({describe(p.shed_level)})"
        return text

    def reload(self) -> None:
        """SIGHUP: re-read and validate the file, apply what can be applied live."""
        self.notifier.reloading()
        args, running = self.args, self.cfg
        try:
            new = config.load(args.config, settings.SCHEMA)
        except config.ConfigError as exc:
            self.reloads["refused"] += 1
            log.error("reload_refused", error=str(exc), hint="the running configuration stays")
            self.notifier.ready(self.status())
            return
        if args.state_dir:
            new["state_dir"] = args.state_dir
        if args.collector:
            new["collector"]["address"] = args.collector
        old_flat, new_flat = _flatten(running), _flatten(new)
        changed = sorted(k for k in new_flat if new_flat[k] != old_flat.get(k))
        restart = [k for k in changed if not k.startswith(settings.RELOADABLE)]
        for key in restart:  # keep the running value until a restart
            _set(new, key, old_flat[key])
        applied = self.pipe.reconfigure(new) if self.pipe is not None else []
        if new["log_level"] != running["log_level"]:
            logs.setup(self.stream, new["log_level"])
        if self.guard is not None:
            self.guard.budget.cpu_percent = new["selfguard"]["cpu_percent"]
            self.guard.budget.rss_mb = new["selfguard"]["rss_mb"]
        if self.intel is not None:
            self.intel._stamp = None  # re-read state_dir/intel.json on the next sample
        self.cfg = new
        self.reloads["applied"] += 1
        log.info("reloaded", changed=[k for k in changed if k not in restart], applied=applied)
        if restart:
            log.warning("reload_needs_restart", keys=restart, hint="systemctl restart vigie-agent")
        self.notifier.ready(self.status())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def agent_metrics(svc: _Service, cap: LiveCapture, stats: Callable[[], tuple[int, int]]):
    import psutil

    from common import metrics

    reg = metrics.Registry()
    pipe = svc.pipe
    assert pipe is not None
    reg.callback("vigie_agent_packets_total", "Packets read.", lambda: pipe.packets, kind="counter")
    reg.callback(
        "vigie_agent_bytes_total", "Bytes on the wire.", lambda: pipe.bytes, kind="counter"
    )
    reg.callback(
        "vigie_agent_kernel_received_total",
        "Packets the kernel passed through the BPF filter.",
        lambda: stats()[0],
        kind="counter",
    )
    reg.callback(
        "vigie_agent_kernel_dropped_total",
        "Packets the kernel dropped (capture buffer full).",
        lambda: stats()[1],
        kind="counter",
    )
    reg.callback(
        "vigie_agent_malformed_total",
        "Packets the decoder refused.",
        lambda: sum(pipe.decode_stats.malformed.values()),
        kind="counter",
    )
    reg.callback("vigie_agent_flows", "Flows in the flow table.", lambda: len(pipe.engine))
    reg.callback(
        "vigie_agent_flows_created_total",
        "Flows created.",
        lambda: pipe.engine.created,
        kind="counter",
    )
    reg.callback(
        "vigie_agent_alerts_total",
        "Alert revisions emitted, per detector.",
        lambda: [((k,), v) for k, v in list(pipe.counters.alerts.items())],
        labels=("detector",),
        kind="counter",
    )
    reg.callback(
        "vigie_agent_selfguard_level",
        "Self-protection level: 0 none, 1 deep decoding off, N>=2 1 in 2^(N-1) new flows.",
        lambda: pipe.shed_level,
    )
    reg.callback(
        "vigie_agent_shed_packets_total",
        "Packets of flows left untracked by self-protection sampling.",
        lambda: pipe.shed_packets,
        kind="counter",
    )
    reg.callback(
        "vigie_agent_reloads_total",
        "SIGHUP reloads, applied or refused.",
        lambda: [((k,), v) for k, v in svc.reloads.items()],
        labels=("result",),
        kind="counter",
    )
    me = psutil.Process()
    reg.callback("vigie_agent_rss_bytes", "Agent resident memory.", lambda: me.memory_info().rss)
    reg.callback(
        "vigie_agent_cpu_seconds_total",
        "Agent CPU time (user + system).",
        lambda: sum(me.cpu_times()[:2]),
        kind="counter",
    )
    d = svc.delivery
    if d is not None:
        reg.callback(
            "vigie_agent_outbox_depth", "Alerts waiting for the collector.", d.outbox.depth
        )
        reg.callback(
            "vigie_agent_outbox_shed_total",
            "Alerts shed from a full outbox.",
            d.outbox.shed,
            kind="counter",
        )
        reg.callback(
            "vigie_agent_stream_connected",
            "1 while the stream to the collector is up.",
            lambda: int(d.sender.connected.is_set()),
        )
        reg.callback(
            "vigie_agent_alerts_acked_total",
            "Alerts the collector acknowledged.",
            lambda: d.sender.acked,
            kind="counter",
        )
        reg.callback(
            "vigie_agent_stream_connects_total",
            "Streams opened to the collector.",
            lambda: d.sender.connects,
            kind="counter",
        )
    return reg


def cmd_run(args: argparse.Namespace, cfg: dict[str, Any], stream=sys.stdout) -> int:
    from agent import selfguard
    from agent.host import sampler as host_sampler
    from agent.host.intel import IntelFile
    from common import metrics

    svc = _Service(args, cfg, stream)
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
    # The kernel's counters reset on read: one reader at a time (sender, metrics).
    stats_lock = threading.Lock()

    def stats() -> tuple[int, int]:
        with stats_lock:
            return cap.stats()

    delivery = Delivery(cfg, stats) if args.output == "collector" else None
    pipe = Pipeline(cfg, _anonymiser(cfg), delivery or _jsonl, time.time, keep_learned=True)
    svc.pipe, svc.delivery = pipe, delivery
    if delivery:
        delivery.start()
    host = None
    if cfg["host"]["enabled"]:
        svc.intel = IntelFile(Path(cfg["state_dir"]) / "intel.json")
        needs = host_sampler.Needs.from_settings(cfg, host_sampler.agent_files(args.config))
        host = host_sampler.HostSampler(needs, intel=svc.intel)
        host.start(pipe.host_samples.put_nowait, cfg["host"]["interval_seconds"])
    svc.guard = selfguard.from_settings(cfg, pipe.set_shed)
    server = metrics.serve(cfg["metrics"]["listen"], agent_metrics(svc, cap, stats))
    period = sdnotify.watchdog_seconds()
    watchdog = sdnotify.Watchdog(svc.notifier, period, svc.status) if period else None
    beat_every = min(1.0, period / 4) if period else 1.0
    log.info("capture_started", interface=args.interface, mode=cap.mode)
    svc.notifier.ready(svc.status())
    if watchdog is not None:
        watchdog.start()
    beat = watchdog.beat if watchdog is not None else lambda: None
    tick = pipe.tick
    items: Iterator[Any]
    if cap.mode == "ring":  # the engine walks each block's frames
        items, feed = cap.blocks(svc.stop), partial(pipe.feed_ring, snaplen=cap.snaplen)
    else:
        items, feed = cap.packets(svc.stop), lambda rec: pipe.feed(*rec)
    next_tick = next_beat = 0.0
    try:
        for item in items:
            if item is not None:
                feed(item)
            now = time.time()
            if now >= next_beat:
                # Time advances even on a quiet link (the capture yields None every
                # 0.2 s): this is the loop's heartbeat, the only thing that feeds the
                # watchdog.
                next_beat = now + beat_every
                beat()
                if now >= next_tick:
                    tick(now)
                    next_tick = now + 1.0
                if svc.hup.is_set():
                    svc.hup.clear()
                    svc.reload()
                while svc.stall.is_set() and not svc.stop.is_set():
                    time.sleep(0.05)
    finally:
        svc.notifier.stopping("stopping: flushing findings to the outbox")
        if watchdog is not None:
            watchdog.stop()
        if svc.guard is not None:
            svc.guard.stop()
        if host is not None:
            host.stop()
        final = pipe.stats()  # before finish() empties the flow table
        pipe.finish()  # open findings go through the aggregator into the outbox
        received, dropped = stats()
        cap.close()
        log.info(
            "capture_stopped",
            packets=pipe.packets,
            kernel_received=received,
            kernel_dropped=dropped,
        )
        log.info("pipeline_stats", **final)
        if server is not None:
            server.close()
        if delivery:
            delivery.finish(wait=False)
        svc.notifier.close()
    return 0


def cmd_enroll(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from agent.enroll import EnrollError, enroll

    if problem := config.host_port(args.collector):
        raise config.ConfigError(f"--collector {problem}")
    tls = settings.path(cfg, "", "tls")
    try:
        agent_id = enroll(args.collector, args.token, tls, args.ca_fingerprint, args.ca)
    except EnrollError as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_USAGE
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

    doc = sub.add_parser(
        "doctor", help="check capabilities, interface, filter, config, certificate, collector"
    )
    doc.add_argument("--config", help="TOML file (default: built-in defaults)")
    doc.add_argument("--state-dir", help="override state_dir")
    doc.add_argument(
        "--interface",
        "-i",
        default=os.environ.get("VIGIE_INTERFACE"),
        help="capture interface (default: $VIGIE_INTERFACE)",
    )
    doc.add_argument("--collector", metavar="HOST:PORT", help="override collector.address")
    doc.add_argument("--timeout", type=float, default=5.0, help="network timeout, seconds")

    ex = sub.add_parser(
        "explain-anonymisation",
        help="show how addresses and names would be reported (for the data protection officer)",
    )
    ex.add_argument("values", nargs="+", metavar="VALUE", help="address or name")
    ex.add_argument("--config", help="TOML file (default: built-in defaults)")
    ex.add_argument("--state-dir", help="override state_dir")
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    args = p.parse_args(argv)
    if args.cmd == "doctor":
        from agent import doctor

        logs.setup(sys.stderr, "error")
        return doctor.run(
            args.config,
            args.interface,
            {"state_dir": args.state_dir or "", "collector.address": args.collector or ""},
            args.timeout,
        )
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
        if args.cmd in ("replay", "run"):
            # The packet path allocates an event tuple, a packet or a message per flow:
            # at 700 allocations per collection the collector ran thousands of times a
            # second, each pass over the detectors' state (7 % of a replay). Objects made
            # at start-up are frozen out of its scans.
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
        if args.cmd == "replay":
            return cmd_replay(args, cfg)
        return cmd_run(args, cfg, stream)
    except (
        config.ConfigError,
        CaptureError,
        LiveError,
        OutboxError,
        AnonymisationError,
        FileNotFoundError,
    ) as exc:
        print(f"vigie-agent: {exc}", file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def entry() -> None:
    """The `vigie-agent` command. Once a command that streamed to the collector is done
    (its outbox closed, its output flushed), the process leaves without the interpreter's
    exit handlers: gRPC's can deadlock at exit now and then (grpc/grpc#20026), and an
    agent that never exits is worse than one that skips a cleanup it does not need."""
    rc = main()
    if "grpc" in sys.modules:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to keep
                f.flush()
        os._exit(rc if isinstance(rc, int) else 0)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
