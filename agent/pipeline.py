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
from agent.anonymise.policy import BUILTIN_INTERNAL, Anonymiser, Finding
from agent.capture.pcapfile import MAX_CAPLEN, PcapLayout, PcapngLayout, ReadStats, iter_pcapng
from agent.decode import DecodeStats
from agent.decode.deep import PROTOCOL_OF_KIND, TCP_PORTS, DeepDecoder, DeepStats
from agent.decode.deep.auth import HTTP_FIRST, HTTP_METHODS, MAX_HEADERS
from agent.decode.packet import ARP, ICMP, ICMP6, TCP, UDP
from agent.detect import registry
from agent.detect.window import KeyedWindow
from agent.engine import (
    END_ALL,
    END_DEEP,
    END_SESSIONS,
    END_UNRESOLVED,
    EV_CLOSE,
    EV_DGA,
    EV_DNS,
    EV_DNS_TUNNEL,
    EV_END,
    EV_OUTCOME,
    EV_PACKET,
    EV_SCAN,
    PAIRS_FLOODS,
    PAIRS_OUTBOUND,
    Engine,
    Scan,
)
from agent.host.intel import IntelFile
from common import logs
from common.files import write_atomic
from common.suffixes import SHORT_SUFFIXES
from vigie.v1 import alert_pb2

log = logs.get("agent.pipeline")
TICK_INTERVAL = 1.0
SAVE_LEARNED_SECONDS = 300.0  # how much learning a crash can lose
HOST_QUEUE = 16  # host samples waiting for a tick; the sampler counts what did not fit
EVENTS_PER_BATCH = 4096  # events the engine queues before Python handles them
# The engine classifies internal addresses for the activity counters with the same
# built-in ranges detectors use (agent/detect/nets.py).
_INTERNAL_NETS = [(n.network_address.packed, n.prefixlen) for n in BUILTIN_INTERNAL]
_FLOW_ENDS = {"all": END_ALL, "unresolved": END_UNRESOLVED, "sessions": END_SESSIONS}


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
        self._deep_stats = DeepStats()
        self.deep: DeepDecoder | None = None
        self._counting: dict[str, Any] = {}  # engine-counted detectors, as configured
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
        self._handlers()
        self._next_tick = 0.0
        self._learned_dir = Path(state_dir) / "learned" if keep_learned and state_dir else None
        # Detectors already given their saved state (weak: a replaced one must not keep
        # its id, which a new detector could reuse, marked as done).
        self._restored: weakref.WeakSet = weakref.WeakSet()
        self._next_save = 0.0
        self._restore_learned()

    def _handlers(self) -> None:
        on = lambda event: [getattr(d, event) for d in self.detectors if hasattr(d, event)]  # noqa: E731
        self._on_outcome = on("on_outcome")
        self._on_scan = on("on_scan")
        self._on_flow_end = on("on_flow_end")
        self._on_close = on("on_close")
        self._on_pairs = on("on_pairs")
        self._on_activity = on("on_activity")
        self._on_tick = on("on_tick")
        self._on_app = on("on_app")
        self._on_host = on("on_host")
        # Per protocol, the on_packet handlers that declared they want it. The engine only
        # hands up packets some detector asked for: ARP, ICMP, or TCP/UDP payloads that
        # the deep decoder reads or that match a declared `packet_payloads` signature.
        wanting = [d for d in self.detectors if hasattr(d, "on_packet")]
        protos = {TCP, UDP, ICMP, ICMP6, ARP}
        self._pkt = {
            pr: tuple(d.on_packet for d in wanting if pr in (d.packet_protocols or protos))
            for pr in protos
        }
        # Detectors the engine counts for (their per-message work is in C): their records
        # by event code.
        counted = [d for d in self.detectors if hasattr(d, "engine_counts")]
        codes = {"tunnel": EV_DNS_TUNNEL, "dga": EV_DGA}
        self._counted = {codes[d.engine_counts]: d.on_counted for d in counted}
        # Per message kind, only the on_app handlers that want it.
        apps = [d for d in self.detectors if hasattr(d, "on_app")]
        self._dns_takers = [d for d in apps if d.app_kinds is None or "dns" in d.app_kinds]
        http = [d for d in apps if d.app_kinds is None or "http" in d.app_kinds]
        # HTTP requests go up only with a header some reader needs, when every reader
        # declared the headers it needs
        self._http_headers = (
            sorted({h for d in http for h in d.http_headers})
            if all(hasattr(d, "http_headers") for d in http)
            else []
        )
        self._app = {
            k: tuple(d.on_app for d in apps if d.app_kinds is None or k in d.app_kinds)
            for k in PROTOCOL_OF_KIND
        }
        self._app_dns = self._app["dns"]
        # The deep decoder decodes only the protocols some detector wants; it is only
        # built when one wants application messages: otherwise no packet pays.
        if self._on_app or counted:
            wanted: set[str] | None = set()
            for d in apps + counted:
                if d.app_kinds is None:
                    wanted = None
                    break
                wanted |= {PROTOCOL_OF_KIND[k] for k in d.app_kinds if k in PROTOCOL_OF_KIND}
            fresh = DeepDecoder(self._deep_stats, protocols=wanted)
            if self.deep is None or self.deep.protocols != fresh.protocols:
                self.deep = fresh
        self._deep = None if self._deep_off or not (self._on_app or counted) else self.deep
        if self.intel is not None:
            for d in self.detectors:
                if hasattr(d, "use_intel"):
                    d.use_intel(self.intel)
        self._configure_engine()

    def _configure_engine(self) -> None:
        watchers = [d for d in self.detectors if hasattr(d, "on_activity")]
        ignore: frozenset[int] = frozenset()
        internal = False
        gap = 5.0
        if watchers:
            # One filter for all: ports every watcher ignores; detectors filter again.
            watches = [d.activity_watch() for d in watchers]
            ignore = frozenset.intersection(*(w[0] for w in watches))
            internal = any(w[1] for w in watches)
            gap = min(w[2] for w in watches)
        deep = self._deep.protocols if self._deep is not None else None
        # net.portscan scores attempts in the engine, into the detector's own state.
        scanners = [d for d in self.detectors if hasattr(d, "engine_state")]
        self._outcomes = self._outcome_wants()
        self.engine.configure(
            pairs=bool(self._on_pairs),
            arp=bool(self._pkt[ARP]),
            icmp=bool(self._pkt[ICMP] or self._pkt[ICMP6]),
            signatures=[sig for d in self.detectors for sig in getattr(d, "packet_payloads", ())],
            deep=deep,
            deep_tcp_ports=[p for p, proto in TCP_PORTS.items() if deep and proto in deep],
            http_first=bytes(sorted(HTTP_FIRST)),
            close_ports=frozenset().union(
                *(d.close_ports for d in self.detectors if hasattr(d, "on_close"))
            ),
            activity=bool(watchers),
            activity_ignore=ignore,
            activity_internal=internal,
            internal_nets=_INTERNAL_NETS,
            ends=self._ends(),
            outcomes=self._outcomes[0],
            outcome_ports=self._outcomes[1],
            scan=scanners[0].engine_state() if scanners else None,
            activity_gap=gap,
            pairs_want=self._pairs_want(),
        )
        self._configure_counting()
        self.engine.configure_http(
            methods=[m.decode() for m in HTTP_METHODS],
            headers=self._http_headers,
            max_headers=MAX_HEADERS,
        )

    def _configure_counting(self) -> None:
        """The engine's counting for detectors that declared `engine_counts`: a detector
        new since the last call (enabled, or restarted by new tunables) starts from empty
        windows; one that stays keeps them (an allow-list change only re-applies)."""
        eng = self.engine
        now = {d.engine_counts: d for d in self.detectors if hasattr(d, "engine_counts")}
        for which in ("tunnel", "dga"):
            d = now.get(which)
            eng.configure_dns(
                **{which: d.engine_config() if d is not None else None},
                fresh=d is not None and self._counting.get(which) is not d,
                short_suffixes=sorted(SHORT_SUFFIXES),
            )
        self._counting = now
        self._dns_up = None
        self._check_dns_up()

    def _check_dns_up(self) -> None:
        """DNS messages go up to Python only while an on_app handler wants them (net.ioc
        only while its intel list holds domains)."""
        up = any(d.wants_dns() if hasattr(d, "wants_dns") else True for d in self._dns_takers)
        if up != self._dns_up:
            self.engine.configure_dns(up=up)
            self._dns_up = up

    def _pairs_want(self) -> int:
        """The pairs on_pairs handlers read (`pairs_want`: "floods", "outbound"), as the
        engine's PAIRS_* bits; 0 (all) when one did not say."""
        bits = {"floods": PAIRS_FLOODS, "outbound": PAIRS_OUTBOUND}
        want = 0
        for d in self.detectors:
            if hasattr(d, "on_pairs"):
                w = getattr(d, "pairs_want", None)
                if w is None:
                    return 0
                want |= bits[w]
        return want

    def _outcome_wants(self) -> tuple[bool, frozenset[int]]:
        """The attempt outcomes on_outcome handlers want: (all of them, else the TCP ones
        on these responder ports). Handlers still filter: this only spares the others."""
        ports: set[int] = set()
        for d in self.detectors:
            if hasattr(d, "on_outcome"):
                want = d.outcome_ports
                if want is None:
                    return True, frozenset()
                ports |= want
        return False, frozenset(ports)

    def _ends(self) -> int:
        """The flow ends the engine reports: what on_flow_end handlers declared, and the
        TCP flows the deep decoder may hold state for (forgotten at their end)."""
        mask = END_DEEP if self.deep is not None else 0
        for d in self.detectors:
            if hasattr(d, "on_flow_end"):
                mask |= _FLOW_ENDS[d.flow_end]
        return mask

    def intel_changed(self) -> None:
        """A new bundle was stored: re-read it at the next check (safe from any thread)."""
        if self.intel is not None:
            self.intel._stamp = None

    def set_shed(self, level: int) -> None:
        """Self-protection level (see agent/selfguard.py); safe from another thread (the
        engine runs under the GIL from start to end of each call)."""
        self._deep_off = level >= 1
        self.sample_n = 1 if level < 2 else 2 ** (level - 1)
        self._deep = None if self._deep_off or not self._on_app else self.deep
        self.engine.set_limits(sample_n=self.sample_n)
        self._configure_engine()
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
            fresh = cls(new, self.aggregator.report)
            if cur is not None and {k for k in new if new[k] != cur.settings.get(k)} == {"allow"}:
                for attr in ("_allow", "_allow_cache", "_allow_names"):
                    if hasattr(fresh, attr):
                        setattr(cur, attr, getattr(fresh, attr))
                cur.settings = new
                detectors.append(cur)
                changes.append(f"detectors.{key}.allow: applied")
                continue
            detectors.append(fresh)
            changes.append(f"detectors.{key}: " + ("restarted" if cur else "enabled"))
        self.detectors = detectors
        self._handlers()
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
        for ev in events:
            code = ev[0]
            if code == EV_OUTCOME:
                flow, outcome, ts = ev[1], ev[2], ev[3]
                for h in self._on_outcome:
                    h(flow, outcome, ts)
            elif code == EV_PACKET:
                p, flow = ev[1], ev[2]
                if ev[3]:  # asked for by an on_packet, not only for the deep decoder
                    for h in self._pkt.get(p.proto, ()):
                        h(p)
                deep = self._deep
                if deep is not None and flow is not None and p.payload:
                    app = self._app
                    for msg in deep(p, flow):
                        for h in app.get(msg.kind, ()):
                            h(msg, flow, p)
            elif code == EV_DNS:  # a DNS message over UDP, read by the engine
                p, flow = ev[1], ev[2]
                if ev[4]:
                    for h in self._pkt.get(p.proto, ()):
                        h(p)
                deep = self._deep
                if deep is not None and (msg := deep.dns(p, flow, ev[3])) is not None:
                    for h in self._app_dns:
                        h(msg, flow, p)
            elif code == EV_END:
                flow = ev[1]
                for h in self._on_flow_end:
                    h(flow)
                if self.deep is not None:
                    self.deep.forget(flow.key)
            elif code == EV_CLOSE:
                for h in self._on_close:
                    h(ev[1], ev[2])
            elif code == EV_SCAN:
                for h in self._on_scan:
                    h(ev[1])
            else:  # a record the engine counted for a detector
                self._counted[code](ev[1:])

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
                return records, {0: "", -1: "record_truncated", -2: "record_bad_length"}[status]

    def _walked(self, status: int) -> bool:
        """After an engine walk stopped: its events to the detectors, the tick it stopped
        at (status 1); whether it stopped early (1, or 2: events waiting) to go on."""
        self._dispatch(self.engine.events())
        if status == 1:
            self.tick(self.engine.last_ts)
        return status in (1, 2)

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
        for d in self.detectors:
            if not hasattr(d, "restore") or d in self._restored:
                continue
            self._restored.add(d)
            path = self._learned_dir / f"{d.name}.json"
            try:
                d.restore(json.loads(path.read_text()))
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
        for d in self.detectors:
            if not hasattr(d, "learned"):
                continue
            path = self._learned_dir / f"{d.name}.json"
            try:
                write_atomic(path, json.dumps(d.learned(), separators=(",", ":")).encode(), 0o600)
            except OSError as exc:
                log.warning("learned_not_saved", path=str(path), error=str(exc)[:200])

    def tick(self, now: float) -> None:
        self._next_tick = now + TICK_INTERVAL
        if self._learned_dir is not None and now >= self._next_save:
            if self._next_save:
                self.save_learned()
            self._next_save = now + SAVE_LEARNED_SECONDS
        if self._on_host:
            self._drain_host()
        self.engine.tick(now)
        if self._counting:
            self.engine.dns_tick(now)
        self._counters(now)
        for h in self._on_tick:
            h(now)
        if self._dns_takers:
            self._check_dns_up()
        # net.ioc wants every outcome only while its intel list holds addresses, which
        # its on_tick may just have read.
        if self._on_outcome and self._outcome_wants() != self._outcomes:
            self._configure_engine()
        self.aggregator.tick(now)
        # High-water marks of the bounded state, read by stats() (once a tick: free).
        self.flows_peak = max(getattr(self, "flows_peak", 0), len(self.engine))
        self.open_peak = max(getattr(self, "open_peak", 0), len(self.aggregator.open))

    def _counters(self, now: float) -> None:
        """Events the engine queued, then the tick's counters."""
        eng = self.engine
        self._dispatch(eng.events())
        if self._on_pairs:
            pairs = eng.pairs()
            for h in self._on_pairs:
                h(pairs, now)
        if self._on_activity:
            act = eng.activity()
            if act:
                for h in self._on_activity:
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
                if isinstance(v, KeyedWindow | Suppressor | Table | Scan):
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
        for h in self._on_tick:
            h(self.last_ts)
        if self._counting:
            eng.dns_tick(self.last_ts)
            eng.dns_tick(float("inf"))  # every report paced until now
            self._dispatch(eng.events())
        for d in self.detectors:
            if hasattr(d, "on_finish"):
                d.on_finish(self.last_ts)
        if self._on_host:
            self._drain_host()
        self.aggregator.flush()
        self.save_learned()

    def _drain_host(self) -> None:
        while True:
            try:
                sample = self.host_samples.get_nowait()
            except queue.Empty:
                return
            for h in self._on_host:
                h(sample)
