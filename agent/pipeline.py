"""capture -> decode -> flows -> detectors -> aggregate -> anonymise -> output.

Time comes from the packets (replay is deterministic) or, when no packet arrives, from
the caller's `tick(now)` (live capture on a quiet link).
"""

from __future__ import annotations

import json
import queue
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.aggregate import Aggregator
from agent.anonymise.policy import Anonymiser, Finding
from agent.capture.pcapfile import MAX_CAPLEN, PcapLayout, PcapngLayout, ReadStats, iter_pcapng
from agent.decode import DecodeStats
from agent.decode.deep import (
    ALL_PROTOCOLS,
    PROTOCOL_OF_KIND,
    TCP_PORTS,
    DeepDecoder,
    DeepStats,
)
from agent.decode.deep.auth import HTTP_FIRST, HTTP_METHODS, MAX_HEADERS
from agent.decode.packet import ARP, ICMP, ICMP6, TCP, UDP
from agent.detect import registry
from agent.detect.hooks import COUNTERS, HOOKS, Wants, handlers
from agent.detect.window import KeyedWindow
from agent.engine import (
    END_ALL,
    END_DEEP,
    END_SESSIONS,
    END_UNRESOLVED,
    EV_AUTH,
    EV_CLOSE,
    EV_DNS,
    EV_END,
    EV_OUTCOME,
    EV_PACKET,
    EV_SCAN,
    EV_SWEEP,
    PAIRS_FLOODS,
    PAIRS_OUTBOUND,
    WALK_BAD_LENGTH,
    WALK_DONE,
    WALK_EVENTS,
    WALK_TICK,
    WALK_TRUNCATED,
    Engine,
    Scan,
    Sweep,
)
from agent.host.intel import IntelFile
from agent.inside import BUILTIN, Inside
from agent.selfguard import sample_rate
from common import logs
from common.files import write_atomic
from common.suffixes import SHORT_SUFFIXES
from vigie.v1 import alert_pb2

log = logs.get("agent.pipeline")
TICK_INTERVAL = 1.0
SAVE_LEARNED_SECONDS = 300.0  # how much learning a crash can lose
HOST_QUEUE = 16  # host samples waiting for a tick; the sampler counts what did not fit
LOG_QUEUE = 64  # batches of log events waiting for a tick; the log reader waits when full
EVENTS_PER_BATCH = 4096  # events the engine queues before Python handles them
_FLOW_ENDS = {"all": END_ALL, "unresolved": END_UNRESOLVED, "sessions": END_SESSIONS}
_PAIRS = {"floods": PAIRS_FLOODS, "outbound": PAIRS_OUTBOUND}
_PROTOS = frozenset((TCP, UDP, ICMP, ICMP6, ARP))


@dataclass(frozen=True)
class Plan:
    """What the enabled detectors' hooks and `wants` (agent/detect/hooks.py) ask of the
    pipeline, the engine and the deep decoder; made by `plan` alone."""

    on: dict[str, tuple[Callable[..., Any], ...]]  # per hook, the detectors' methods
    wants: tuple[Wants, ...]  # as read, one per detector: a change is seen at a tick
    packet: dict[int, tuple[Callable[..., Any], ...]]  # on_packet handlers per Packet.proto
    app: dict[str, tuple[Callable[..., Any], ...]]  # on_app handlers per message kind
    counted: dict[int, Callable[..., Any]]  # on_counted handler per engine record code
    counters: dict[str, Any]  # engine DNS counter -> the detector it counts for
    dns_up: bool  # DNS messages go up to Python
    deep: frozenset[str] | None  # protocols the deep decoder decodes; None: no decoder
    http_headers: list[str]  # HTTP requests go up only with one of these (none: all)
    engine: dict[str, Any]  # Engine.configure's arguments
    auth: bool = False  # Engine.configure_auth: services by handshake (agent/engine/authsvc.h)


def plan(detectors: list[Any], deep_off: bool = False, inside: Inside = BUILTIN) -> Plan:
    """Everything the engine and the deep decoder must do for `detectors`, deep decoding
    shed (`deep_off`, agent/selfguard.py) or not: the one reader of their `wants`. The
    engine's activity and outbound counters know the inside the detectors know
    (`inside`, agent/inside.py)."""
    wants = tuple(d.wants for d in detectors)
    on = {hook: handlers(detectors, hook) for hook in HOOKS}
    pairs_ = list(zip(detectors, wants, strict=True))

    def having(hook: str) -> list[tuple[Any, Wants]]:
        return [(d, w) for d, w in pairs_ if hasattr(d, hook)]

    def takes(w: Wants, kind: str) -> bool:
        return w.app_kinds is None or kind in w.app_kinds

    # The engine only hands up packets some on_packet asked for: ARP, ICMP, or TCP/UDP
    # payloads the deep decoder reads or that match a declared signature.
    packet = {
        pr: tuple(
            d.on_packet for d, w in having("on_packet") if pr in (w.packet_protocols or _PROTOS)
        )
        for pr in _PROTOS
    }
    apps = having("on_app")
    app = {k: tuple(d.on_app for d, w in apps if takes(w, k)) for k in PROTOCOL_OF_KIND}
    # Detectors the engine counts for (their per-message work is in C) need DNS read too.
    counting = [(d, w) for d, w in pairs_ if w.counter is not None]
    readers = [w for _, w in apps + counting]
    deep: frozenset[str] | None = None
    if readers:  # otherwise no decoder, and no packet pays for one
        deep = ALL_PROTOCOLS
        if all(w.app_kinds is not None for w in readers):
            kinds = {k for w in readers for k in w.app_kinds or ()}
            deep = frozenset(PROTOCOL_OF_KIND[k] for k in kinds if k in PROTOCOL_OF_KIND)
    http = [w for _, w in apps if takes(w, "http")]
    # HTTP requests go up only with a header some reader needs, when every reader
    # declared the headers it needs
    headers = (
        sorted({h for w in http for h in w.http_headers or ()})
        if all(w.http_headers is not None for w in http)
        else []
    )
    watch = [w for _, w in having("on_activity")]
    outcomes = [w.outcome_ports for _, w in having("on_outcome")]
    every_outcome = any(p is None for p in outcomes)
    pair_wants = [w.pairs for _, w in having("on_pairs")]
    pairs_want = 0  # every pair, unless each reader said which it reads
    if None not in pair_wants:
        for x in pair_wants:
            pairs_want |= _PAIRS[x]
    ends = END_DEEP if deep is not None else 0  # the decoder's flow state is dropped then
    for _, w in having("on_flow_end"):
        ends |= _FLOW_ENDS[w.flow_end]
    scans = [w.scan for w in wants if w.scan is not None]
    if len(scans) > 1:
        raise ValueError("several detectors declare a scan state; the engine scores one")
    sweeps = [w.sweep for w in wants if w.sweep is not None]
    if len(sweeps) > 1:
        raise ValueError("several detectors declare a sweep state; the engine counts one")
    active = None if deep_off else deep
    return Plan(
        on=on,
        wants=wants,
        packet=packet,
        app=app,
        counted={COUNTERS[w.counter]: d.on_counted for d, w in counting if w.counter},
        counters={w.counter: d for d, w in counting},
        dns_up=any(w.dns for _, w in apps if takes(w, "dns")),
        deep=deep,
        http_headers=headers,
        auth=any(w.auth for w in wants),
        engine={
            "pairs": bool(on["on_pairs"]),
            "arp": bool(packet[ARP]),
            "icmp": bool(packet[ICMP] or packet[ICMP6]),
            "signatures": [sig for w in wants for sig in w.packet_payloads],
            "deep": active,
            "deep_tcp_ports": [p for p, pr in TCP_PORTS.items() if active and pr in active],
            "http_first": bytes(sorted(HTTP_FIRST)),
            "close_ports": frozenset().union(*(w.close_ports for _, w in having("on_close"))),
            # One filter for all watchers: the ports every one ignores; each filters again.
            "activity": bool(watch),
            "activity_ignore": (
                frozenset.intersection(*(w.activity_ignore for w in watch))
                if watch
                else frozenset()
            ),
            "activity_internal": any(w.activity_internal for w in watch),
            "internal_nets": inside.engine_nets(),
            "ends": ends,
            # Handlers still filter: this only spares the outcomes nobody reads.
            "outcomes": every_outcome,
            "outcome_ports": frozenset()
            if every_outcome
            else frozenset().union(*(p for p in outcomes if p is not None)),
            "scan": scans[0] if scans else None,
            "sweep": sweeps[0] if sweeps else None,
            "activity_gap": min((w.activity_gap for w in watch), default=5.0),
            "pairs_want": pairs_want,
        },
    )


@dataclass
class Counters:
    alerts: dict[str, int] = field(default_factory=dict)  # emitted revisions per detector


class Pipeline:
    def __init__(
        self,
        cfg: dict[str, Any],
        anonymiser: Anonymiser,
        output: Callable[[alert_pb2.Alert], None],
        clock: Callable[[], float],
        keep_learned: bool = False,
    ) -> None:
        """`keep_learned`: detectors that learn what is normal (their `learned()` and
        `restore()`) start from, and save to, state_dir/learned/ (the running agent; a
        replay learns afresh)."""
        self.anonymiser = anonymiser
        # One inside for everything: the anonymiser's (built from [anonymisation]) is what
        # the engine and every detector call internal too.
        self.inside = anonymiser.inside
        if "anonymisation" in cfg and Inside.from_settings(cfg["anonymisation"]) != self.inside:
            raise ValueError("the anonymiser was not built from this configuration's inside")
        self.output = output
        self.clock = clock  # wall clock, for observed_at only
        self.counters = Counters()
        agg = cfg["aggregation"]
        self.aggregator = Aggregator(
            self._emit, agg["window_seconds"], agg["update_interval_seconds"]
        )
        KeyedWindow.limit = cfg["flows"]["max_flows"]
        self.detectors = [
            cls(cfg["detectors"][registry.config_key(cls)], self.aggregator.report)
            for cls in registry.DETECTORS
            if cfg["detectors"][registry.config_key(cls)]["enabled"]
        ]
        # Host samples come from the sampler's thread through this bounded queue and are
        # handled in tick(), so detectors, aggregator and anonymiser stay single-threaded.
        self.host_samples: queue.Queue = queue.Queue(maxsize=HOST_QUEUE)
        # Log events likewise (agent/logs/reader.py), each batch with the positions to
        # write once its events are handled.
        self.log_batches: queue.Queue = queue.Queue(maxsize=LOG_QUEUE)
        self._deep_stats = DeepStats()
        self.deep: DeepDecoder | None = None
        self._deep: DeepDecoder | None = None  # self.deep unless shed
        self.plan: Plan | None = None
        self._dns_up: bool | None = None
        # The intel list (state_dir/intel.json, written by the delivery stream when the
        # collector sends a bundle): detectors that match indicators re-read it on change.
        state_dir = cfg.get("state_dir")
        self.intel = IntelFile(Path(state_dir) / "intel.json") if state_dir else None
        # Self-protection (agent/selfguard.py) sets these from its thread.
        self.shed_level = 0
        self._deep_off = False
        self.sample_n = 1  # 1 in N new flows tracked
        f = cfg["flows"]
        # Decoding, the flow table and per-packet counting (agent/engine)
        self.engine = Engine(
            max_flows=f["max_flows"],
            attempt_timeout=f["attempt_timeout_seconds"],
            tcp_idle=f["tcp_idle_seconds"],
            udp_idle=f["udp_idle_seconds"],
            active_timeout=f["active_timeout_seconds"],
        )
        # Takers beside the detectors, planned with them but raising no alert (the
        # retro-hunt journal, agent/hunt); and retro-hunt findings handed over by its
        # thread, sent at the next tick: (findings, called once they are out).
        self.takers: list[Any] = []
        self.retro: queue.Queue = queue.Queue()
        self.use(self.detectors)
        self._next_tick = 0.0
        self._learned_dir = Path(state_dir) / "learned" if keep_learned and state_dir else None
        # Detectors already given their saved state (weak: a replaced one must not keep
        # its id, which a new detector could reuse, marked as done).
        self._restored: weakref.WeakSet = weakref.WeakSet()
        self._next_save = 0.0
        self._restore_learned()

    def add_taker(self, taker: Any) -> None:
        """Plan `taker`'s wants and call its hooks too (agent/hunt/journal.py); a taker
        with `use_engine` is handed the engine (the journal's records made in C)."""
        self.takers.append(taker)
        if (use_engine := getattr(taker, "use_engine", None)) is not None:
            use_engine(self.engine)
        self._configure(force=True)

    def _drain_retro(self) -> None:
        """Retro-hunt matches go out as they are (their own times and counts), not
        through the aggregator's window."""
        while True:
            try:
                findings, done = self.retro.get_nowait()
            except queue.Empty:
                return
            for f in findings:
                self._emit(f)
            done()

    def use(self, detectors: list[Any]) -> None:
        """Run `detectors` from now on (at start, after a reload; tests hand their own)."""
        self.detectors = detectors
        if self.intel is not None:
            for use_intel in handlers(detectors, "use_intel"):
                use_intel(self.intel)
        for use_inside in handlers(detectors, "use_inside"):
            use_inside(self.inside)
        self._configure(force=True)

    def _configure(self, force: bool = False) -> None:
        """Apply the detectors' plan: the deep decoder, then the engine when its part
        changed (or `force`: the detectors or the shed level did), then DNS going up."""
        old, p = self.plan, plan([*self.detectors, *self.takers], self._deep_off, self.inside)
        self.plan = p
        if p.deep is None:
            self.deep = None
        elif self.deep is None or self.deep.protocols != p.deep:
            self.deep = DeepDecoder(self._deep_stats, protocols=p.deep)
        self._deep = None if self._deep_off else self.deep
        eng = self.engine
        if force or old is None or p.engine != old.engine:
            eng.configure(**p.engine)
            eng.configure_auth(p.auth)
            # A counting detector new since the last call (enabled, or restarted by new
            # tunables) starts from empty windows; one that stays keeps them (an
            # allow-list change only re-applies).
            before = old.counters if old is not None else {}
            for which in COUNTERS:
                d = p.counters.get(which)
                eng.configure_dns(
                    **{which: d.engine_config() if d is not None else None},
                    fresh=d is not None and before.get(which) is not d,
                    short_suffixes=sorted(SHORT_SUFFIXES),
                )
            eng.configure_http(
                methods=[m.decode() for m in HTTP_METHODS],
                headers=p.http_headers,
                max_headers=MAX_HEADERS,
            )
            self._dns_up = None
        if p.dns_up != self._dns_up:
            eng.configure_dns(up=p.dns_up)
            self._dns_up = p.dns_up

    def intel_changed(self) -> None:
        """A new bundle was stored: re-read it at the next check (safe from any thread)."""
        if self.intel is not None:
            self.intel.mark_stale()

    def set_shed(self, level: int) -> None:
        """Self-protection level (see agent/selfguard.py); safe from another thread (the
        engine runs under the GIL from start to end of each call)."""
        self._deep_off = level >= 1
        self.sample_n = sample_rate(level)
        self.engine.set_limits(sample_n=self.sample_n)
        self._configure(force=True)
        self.shed_level = level

    # counters read by the CLI, metrics and tests ----------------------------------------

    @property
    def packets(self) -> int:
        return self.engine.packets

    @property
    def bytes(self) -> int:
        return self.engine.bytes

    @property
    def last_ts(self) -> float:
        return self.engine.last_ts

    @property
    def shed_packets(self) -> int:
        return self.engine.shed_packets

    @property
    def deep_stats(self) -> DeepStats:
        """Messages decoded and malformed per protocol: the deep decoder's, and those the
        engine read itself (DNS over UDP, HTTP requests no reader needed)."""
        d, e = self._deep_stats, self.engine.read_stats()
        decoded = dict(d.decoded)
        for proto, n in e["decoded"].items():
            if n:
                decoded[proto] = decoded.get(proto, 0) + n
        malformed = dict(d.malformed)
        for reason, n in e["malformed"].items():
            malformed[reason] = malformed.get(reason, 0) + n
        return DeepStats(d.inspected + e["inspected"], decoded, malformed)

    @property
    def decode_stats(self) -> DecodeStats:
        s = self.engine.stats()
        return DecodeStats(s["packets"], s["decoded"], s["malformed"], s["skipped"])

    def reconfigure(self, cfg: dict[str, Any]) -> list[str]:
        """Apply new detector, aggregation and flow settings to the running pipeline.

        The flow table, the aggregator's open alerts and everything queued stay. A
        detector whose only change is its allow-list keeps its state; one whose tunables
        changed starts afresh (its windows restart); one disabled is dropped, one enabled
        starts. Returns what changed, for the log.
        """
        changes: list[str] = []
        self.save_learned()  # a detector restarted below starts from what it knows now
        KeyedWindow.limit = cfg["flows"]["max_flows"]
        current = {registry.config_key(type(d)): d for d in self.detectors}
        detectors = []
        for cls in registry.DETECTORS:
            key = registry.config_key(cls)
            new = cfg["detectors"][key]
            cur = current.get(key)
            if not new["enabled"]:
                if cur is not None:
                    changes.append(f"detectors.{key}: disabled")
                continue
            if cur is not None and cur.settings == new:
                detectors.append(cur)
                continue
            if cur is not None and {k for k in new if new[k] != cur.settings.get(k)} == {"allow"}:
                cur.set_allow(new)
                detectors.append(cur)
                changes.append(f"detectors.{key}.allow: applied")
                continue
            detectors.append(cls(new, self.aggregator.report))
            changes.append(f"detectors.{key}: " + ("restarted" if cur else "enabled"))
        self.use(detectors)
        self._restore_learned()  # a detector restarted by new settings keeps what it knew
        agg, f = cfg["aggregation"], cfg["flows"]
        a = self.aggregator
        if (a.window, a.update_interval) != (agg["window_seconds"], agg["update_interval_seconds"]):
            a.window, a.update_interval = agg["window_seconds"], agg["update_interval_seconds"]
            changes.append("aggregation: applied")
        e = self.engine
        before = (e.max_flows, e.attempt_timeout, e.tcp_idle, e.udp_idle, e.active_timeout)
        after = (
            f["max_flows"],
            f["attempt_timeout_seconds"],
            f["tcp_idle_seconds"],
            f["udp_idle_seconds"],
            f["active_timeout_seconds"],
        )
        if before != after:
            e.set_limits(
                max_flows=after[0],
                attempt_timeout=after[1],
                tcp_idle=after[2],
                udp_idle=after[3],
                active_timeout=after[4],
            )
            changes.append("flows: applied")
        return changes

    def _emit(self, finding: Finding) -> None:
        alert = self.anonymiser.alert(finding, self.clock())
        c = self.counters.alerts
        c[alert.detector] = c.get(alert.detector, 0) + 1
        self.output(alert)

    def _dispatch(self, events: list) -> None:
        """Hand the engine's events to the detectors, in the order they happened."""
        plan = self.plan
        for ev in events:
            code = ev[0]
            if code == EV_OUTCOME:
                flow, outcome, ts = ev[1], ev[2], ev[3]
                for h in plan.on["on_outcome"]:
                    h(flow, outcome, ts)
            elif code == EV_PACKET:
                p, flow = ev[1], ev[2]
                if ev[3]:  # asked for by an on_packet, not only for the deep decoder
                    for h in plan.packet.get(p.proto, ()):
                        h(p)
                deep = self._deep
                if deep is not None and flow is not None and p.payload:
                    app = plan.app
                    for msg in deep(p, flow):
                        for h in app.get(msg.kind, ()):
                            h(msg, flow, p)
            elif code == EV_DNS:  # a DNS message over UDP, read by the engine
                p, flow = ev[1], ev[2]
                if ev[4]:
                    for h in plan.packet.get(p.proto, ()):
                        h(p)
                deep = self._deep
                if deep is not None and (msg := deep.dns(p, flow, ev[3])) is not None:
                    for h in plan.app["dns"]:
                        h(msg, flow, p)
            elif code == EV_END:
                flow = ev[1]
                for h in plan.on["on_flow_end"]:
                    h(flow)
                if self.deep is not None:
                    self.deep.forget(flow.key)
            elif code == EV_CLOSE:
                for h in plan.on["on_close"]:
                    h(ev[1], ev[2])
            elif code == EV_SCAN:
                for h in plan.on["on_scan"]:
                    h(ev[1])
            elif code == EV_AUTH:
                for h in plan.on["on_auth"]:
                    h(ev[1], ev[2])
            elif code == EV_SWEEP:
                for h in plan.on["on_sweep"]:
                    h(ev[1])
            else:  # a record the engine counted for a detector
                plan.counted[code](ev[1:])

    def feed(self, ts: float, linktype: int, wirelen: int, frame: bytes) -> None:
        """One frame (live capture, pcapng)."""
        eng = self.engine
        eng.feed(ts, linktype, wirelen, frame)
        self._dispatch(eng.events())
        if ts >= self._next_tick:
            self.tick(ts)

    def feed_pcap(self, layout: PcapLayout) -> tuple[int, str]:
        """A classic pcap file, walked by the engine: returns (records, damage) where
        damage is "" or the reason the walk stopped early."""
        eng = self.engine
        buf, off, records = layout.buf, layout.start, 0
        while True:
            off, n, status = eng.feed_pcap(
                buf, off, layout.big_endian, layout.scale, layout.linktype,
                layout.hdrsize, layout.swap, MAX_CAPLEN, self._next_tick, EVENTS_PER_BATCH,
            )  # fmt: skip
            records += n
            if not self._walked(status):
                return records, {
                    WALK_DONE: "",
                    WALK_TRUNCATED: "record_truncated",
                    WALK_BAD_LENGTH: "record_bad_length",
                }[status]

    def _walked(self, status: int) -> bool:
        """After an engine walk stopped: its events to the detectors, the tick it stopped
        at (WALK_TICK); whether it stopped early (at a tick, or with events waiting) to go
        on."""
        self._dispatch(self.engine.events())
        if status == WALK_TICK:
            self.tick(self.engine.last_ts)
        return status in (WALK_TICK, WALK_EVENTS)

    def feed_ring(self, block: tuple[Any, int, int], snaplen: int) -> None:
        """A block of the live capture ring, (map, first frame's offset, frames): its
        frames walked by the engine (agent/capture/live.py LiveCapture.blocks)."""
        eng = self.engine
        buf, off, num = block
        while num:
            off, num, _n, status = eng.feed_ring(
                buf, off, num, snaplen, self._next_tick, EVENTS_PER_BATCH
            )
            self._walked(status)

    def feed_pcapng(self, layout: PcapngLayout, stats: ReadStats) -> None:
        """A pcapng file: the engine walks its runs of enhanced packet blocks, the Python
        walker every other block (and counts damage in `stats`)."""
        feed, eng = self.feed, self.engine

        def run(buf: Any, off: int, big: bool, ifaces: list) -> tuple[int, int, float]:
            total, ts = 0, 0.0
            while True:
                off, n, status, ts = eng.feed_pcapng(
                    buf, off, big, ifaces, MAX_CAPLEN, self._next_tick, EVENTS_PER_BATCH
                )
                total += n
                if not self._walked(status):
                    return off, total, ts

        for ts, linktype, wirelen, frame in iter_pcapng(layout, stats, run):
            feed(ts, linktype, wirelen, frame)

    def _restore_learned(self) -> None:
        if self._learned_dir is None:
            return
        for restore in self.plan.on["restore"]:
            d = restore.__self__  # the detector: its name names the file
            if d in self._restored:
                continue
            self._restored.add(d)
            path = self._learned_dir / f"{d.name}.json"
            try:
                restore(json.loads(path.read_text()))
                log.info("learned_restored", detector=d.name)
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                # A damaged file costs a learning period, not the agent.
                log.warning("learned_unreadable", path=str(path), error=str(exc)[:200])

    def save_learned(self) -> None:
        """Write each learning detector's state, atomically (never half a file)."""
        if self._learned_dir is None:
            return
        for learned in self.plan.on["learned"]:
            path = self._learned_dir / f"{learned.__self__.name}.json"
            try:
                write_atomic(path, json.dumps(learned(), separators=(",", ":")).encode(), 0o600)
            except OSError as exc:
                log.warning("learned_not_saved", path=str(path), error=str(exc)[:200])

    def tick(self, now: float) -> None:
        self._next_tick = now + TICK_INTERVAL
        if self._learned_dir is not None and now >= self._next_save:
            if self._next_save:
                self.save_learned()
            self._next_save = now + SAVE_LEARNED_SECONDS
        on = self.plan.on
        if on["on_host"]:
            self._drain_host()
        if not self.log_batches.empty():
            self._drain_logs()
        self.engine.tick(now)
        if self.plan.counters:
            self.engine.dns_tick(now)
        self._counters(now)
        for h in on["on_tick"]:
            h(now)
        # A detector's wants may follow its state (net.ioc's follow its intel list), which
        # its on_tick may just have read.
        if tuple(d.wants for d in [*self.detectors, *self.takers]) != self.plan.wants:
            self._configure()
        if not self.retro.empty():
            self._drain_retro()
        self.aggregator.tick(now)
        # High-water marks of the bounded state, read by stats() (once a tick: free).
        self.flows_peak = max(getattr(self, "flows_peak", 0), len(self.engine))
        self.open_peak = max(getattr(self, "open_peak", 0), len(self.aggregator.open))

    def _counters(self, now: float) -> None:
        """Events the engine queued, then the tick's counters."""
        eng = self.engine
        self._dispatch(eng.events())
        on = self.plan.on
        if on["on_pairs"]:
            pairs = eng.pairs()
            for h in on["on_pairs"]:
                h(pairs, now)
        if on["on_activity"]:
            act = eng.activity()
            if act:
                for h in on["on_activity"]:
                    h(act)

    def stats(self) -> dict[str, int]:
        """Sizes and evictions of the bounded state (flow table, aggregator, detector
        windows), for the final `pipeline_stats` log line and bounds tests."""
        from agent.detect.window import KeyedWindow, Suppressor
        from agent.engine import Table

        dns = self.engine.read_stats()
        forgotten = keys = 0
        for d in self.detectors:
            for v in getattr(d, "__dict__", {}).values():
                if isinstance(v, KeyedWindow | Suppressor | Table | Scan | Sweep):
                    forgotten += v.forgotten
                    keys += len(v)
        return {
            "flows": len(self.engine),
            "flows_peak": max(getattr(self, "flows_peak", 0), len(self.engine)),
            "flows_created": self.engine.created,
            "flows_evicted": self.engine.evicted,
            "aggregator_open": len(self.aggregator.open),
            "aggregator_open_peak": max(getattr(self, "open_peak", 0), len(self.aggregator.open)),
            "aggregator_dropped": self.aggregator.dropped,
            "detector_keys": keys + dns["keys"],
            "detector_keys_forgotten": forgotten + dns["forgotten"],
            "shed_packets": self.shed_packets,
        }

    def finish(self) -> None:
        """End of input: settle what the capture can still tell, then flush every alert."""
        eng = self.engine
        eng.tick(self.last_ts)
        self._dispatch(eng.events())
        eng.flush()
        self._counters(self.last_ts)
        on = self.plan.on
        for h in on["on_tick"]:
            h(self.last_ts)
        if self.plan.counters:
            eng.dns_tick(self.last_ts)
            eng.dns_tick(float("inf"))  # every report paced until now
            self._dispatch(eng.events())
        for h in on["on_finish"]:
            h(self.last_ts)
        if on["on_host"]:
            self._drain_host()
        self._drain_logs()
        self._drain_retro()
        self.aggregator.flush()
        self.save_learned()

    def _drain_logs(self) -> None:
        while True:
            try:
                batch = self.log_batches.get_nowait()
            except queue.Empty:
                return
            for h in self.plan.on["on_log"]:
                for ev in batch.events:
                    h(ev)
            batch.commit()  # its positions: handled, so never read again

    def feed_logs(self, events: list) -> None:
        """Log events in time order (replay-logs): the ticks follow their times."""
        handlers_ = self.plan.on["on_log"]
        for ev in events:
            if ev.ts >= self._next_tick:
                self.tick(ev.ts)
            for h in handlers_:
                h(ev)

    def _drain_host(self) -> None:
        while True:
            try:
                sample = self.host_samples.get_nowait()
            except queue.Empty:
                return
            for h in self.plan.on["on_host"]:
                h(sample)
