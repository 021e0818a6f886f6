"""`vigie-agent run`: the long-running service under systemd. Live capture into the
pipeline, sd_notify and a watchdog fed by the packet loop's progress, SIGHUP reload, SIGTERM
stop, the metrics endpoint, self-protection and the host sampler."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent import settings
from agent.capture.live import LiveCapture
from agent.output import Delivery, anonymiser, jsonl
from agent.pipeline import Pipeline
from agent.status import STATUS_FILE
from common import config, logs, sdnotify
from common.files import write_atomic

if TYPE_CHECKING:
    from agent.outbox.store import Outbox
    from agent.selfguard import SelfGuard
    from common.metrics import Registry
# psutil, the metrics server, self-protection and the host sampler are loaded when the
# service starts: the other commands start without them (about 0.1 s of every start-up).

log = logs.get("agent")


STATUS_EVERY = 5.0  # seconds between its rewrites


class Service:
    """What `run` does for systemd: sd_notify, a watchdog fed by the loop's progress,
    SIGHUP reload, SIGTERM stop, metrics and self-protection."""

    def __init__(self, args: argparse.Namespace, cfg: dict[str, Any], stream: TextIO) -> None:
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
        self.logs: Any = None  # agent/logs/reader.py LogReader, when [logs] is on
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
            text += outbox_status(self.delivery.outbox)
        if p.shed_level:
            from agent.selfguard import describe

            text += f", shedding level {p.shed_level} ({describe(p.shed_level)})"
        return text

    def write_status(self, now: float, stopped: bool = False) -> None:
        """state_dir/status.json, for `vigie-agent status`: what only this process knows
        (the connection, the last alert), without a metrics port. Nothing personal: counts,
        times, a detector name. Skipped when the disk cannot take it (a full state disk
        is reported elsewhere)."""
        d = self.delivery
        body: dict[str, Any] = {"pid": os.getpid(), "updated_at": now, "stopped": stopped}
        if self.pipe is not None:
            body["packets"] = self.pipe.packets
            body["alerts"] = sum(self.pipe.counters.alerts.values())
        if d is not None:
            body["collector"] = {
                "address": d.sender.address,
                "connected": d.sender.connected.is_set(),
                "acked": d.sender.acked,
                "last_ack_at": d.sender.last_ack_at or None,
            }
            if d.last_alert is not None:
                t, detector, severity = d.last_alert
                body["last_alert"] = {"at": t, "detector": detector, "severity": severity}
        with contextlib.suppress(OSError):
            write_atomic(
                Path(self.cfg["state_dir"]) / STATUS_FILE, json.dumps(body).encode(), 0o600
            )

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
            self.intel.mark_stale()  # re-read state_dir/intel.json on the next sample
        self.cfg = new
        self.reloads["applied"] += 1
        log.info("reloaded", changed=[k for k in changed if k not in restart], applied=applied)
        if restart:
            log.warning("reload_needs_restart", keys=restart, hint="systemctl restart vigie-agent")
        self.notifier.ready(self.status())


def outbox_status(box: Outbox) -> str:
    """The STATUS= words about a full or filling state disk ('' when all is well)."""
    if box.disk_full:
        shed = box.shed_counts()["disk_full"]
        return f", disk full: {box.memory_queued()} alerts held in memory, {shed} shed"
    if box.low_space and box.free_bytes is not None:
        return f", state dir low on space ({box.free_bytes // (1024 * 1024)} MB free)"
    return ""


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


def agent_metrics(svc: Service, cap: LiveCapture, stats: Callable[[], tuple[int, int]]) -> Registry:
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
    if svc.logs is not None:
        svc.logs.register_metrics(reg)
    d = svc.delivery
    if d is not None:
        reg.callback(
            "vigie_agent_outbox_depth", "Alerts waiting for the collector.", d.outbox.depth
        )
        box = d.outbox
        reg.callback(
            "vigie_agent_outbox_shed_total",
            "Alerts shed: max_alerts (outbox bound), disk_full (memory bound while the state "
            "disk was full).",
            lambda: [((k,), v) for k, v in box.shed_counts().items()],
            labels=("reason",),
            kind="counter",
        )
        reg.callback(
            "vigie_agent_outbox_memory_queued",
            "Alerts held in memory because the state disk is full.",
            box.memory_queued,
        )
        reg.callback(
            "vigie_agent_outbox_disk_full",
            "1 while outbox writes fail for lack of space.",
            lambda: int(box.disk_full),
        )
        reg.callback(
            "vigie_agent_state_dir_free_bytes",
            "Free space of the state directory's filesystem (looked at once a second).",
            lambda: box.free_bytes if box.free_bytes is not None else float("nan"),
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


def cmd_run(args: argparse.Namespace, cfg: dict[str, Any], stream: TextIO = sys.stdout) -> int:
    from agent import selfguard
    from agent.host import sampler as host_sampler
    from agent.host.intel import IntelFile
    from common import metrics

    svc = Service(args, cfg, stream)
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

    anon = anonymiser(cfg)
    delivery = Delivery(cfg, stats, anon) if args.output == "collector" else None
    pipe = Pipeline(cfg, anon, delivery or jsonl, time.time, keep_learned=True)
    svc.pipe, svc.delivery = pipe, delivery
    from agent.hunt import service as hunt

    retro = hunt.start(cfg, pipe, delivery)  # the local journal and retro-hunts
    if delivery:
        delivery.start()
    host = None
    if cfg["host"]["enabled"]:
        svc.intel = IntelFile(Path(cfg["state_dir"]) / "intel.json")
        needs = host_sampler.Needs.from_settings(cfg, host_sampler.agent_files(args.config))
        host = host_sampler.HostSampler(needs, intel=svc.intel)
        host.start(pipe.host_samples.put_nowait, cfg["host"]["interval_seconds"])
    if cfg["logs"]["enabled"] and pipe.plan.on["on_log"]:
        from agent.logs.reader import LogReader

        svc.logs = LogReader(cfg["logs"], cfg["state_dir"])
        svc.logs.start(lambda batch: pipe.log_batches.put(batch, timeout=1.0))
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
    next_tick = next_beat = next_status = 0.0
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
                if now >= next_status:
                    svc.write_status(now)
                    next_status = now + STATUS_EVERY
                if now >= next_tick:
                    tick(now)
                    next_tick = now + 1.0
                if svc.hup.is_set():
                    svc.hup.clear()
                    svc.reload()
                while svc.stall.is_set() and not svc.stop.is_set():
                    time.sleep(0.05)
    finally:
        svc.write_status(time.time(), stopped=True)
        svc.notifier.stopping("stopping: flushing findings to the outbox")
        if watchdog is not None:
            watchdog.stop()
        if svc.guard is not None:
            svc.guard.stop()
        if host is not None:
            host.stop()
        if svc.logs is not None:
            svc.logs.stop()  # what it read is handled by finish(), its positions written
        if retro is not None:
            retro.stop()
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
