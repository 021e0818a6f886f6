"""capture -> decode -> flows -> detectors -> aggregate -> anonymise -> output.

Time comes from the packets (replay is deterministic) or, when no packet arrives, from
the caller's `tick(now)` (live capture on a quiet link).
"""

from __future__ import annotations

import json
import os
import queue
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.aggregate import Aggregator
from agent.anonymise.policy import Anonymiser, Finding
from agent.decode.deep import PROTOCOL_OF_KIND, DeepDecoder, DeepStats
from agent.decode.fast import DecodeStats, make_decoder
from agent.decode.packet import ARP, ICMP, ICMP6, TCP, UDP, Packet
from agent.detect import registry
from agent.detect.window import KeyedWindow
from agent.flows.table import FlowTable
from agent.host.intel import IntelFile
from common import logs
from vigie.v1 import alert_pb2

log = logs.get("agent.pipeline")
TICK_INTERVAL = 1.0
SAVE_LEARNED_SECONDS = 300.0  # how much learning a crash can lose
HOST_QUEUE = 16  # host samples waiting for a tick; the sampler counts what did not fit


@dataclass
class Counters:
    alerts: dict[str, int] = field(default_factory=dict)  # emitted revisions per detector


def quoted_key(p: Packet) -> tuple | None:
    """The flow key of the packet quoted in an ICMP/ICMPv6 unreachable message."""
    q = p.payload[4:]  # 4 unused bytes after type/code/checksum
    try:
        if p.proto == ICMP and p.sport == 3 and len(q) >= 28 and q[0] >> 4 == 4:
            ihl = (q[0] & 0x0F) * 4
            proto, src, dst = q[9], bytes(q[12:16]), bytes(q[16:20])
            l4 = q[ihl:]
        elif p.proto == ICMP6 and p.sport == 1 and len(q) >= 48 and q[0] >> 4 == 6:
            proto, src, dst = q[6], bytes(q[8:24]), bytes(q[24:40])
            l4 = q[40:]
        else:
            return None
        if proto not in (TCP, UDP) or len(l4) < 4:
            return None
        sport, dport = struct.unpack_from("!HH", l4)
    except (IndexError, struct.error):
        return None
    a, b = (src, sport), (dst, dport)
    return (proto, p.vlan, *a, *b) if a <= b else (proto, p.vlan, *b, *a)


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
        self.decode_stats = DecodeStats()
        self.decode = make_decoder(self.decode_stats)
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
        self.deep_stats = DeepStats()
        self.deep: DeepDecoder | None = None
        # The intel list (state_dir/intel.json, written by the delivery stream when the
        # collector sends a bundle): detectors that match indicators re-read it on change.
        state_dir = cfg.get("state_dir")
        self.intel = IntelFile(Path(state_dir) / "intel.json") if state_dir else None
        # Self-protection (agent/selfguard.py) sets these from its thread.
        self.shed_level = 0
        self._deep_off = False
        self.sample_n = 1  # 1 in N new flows tracked
        self.shed_packets = 0  # packets of untracked flows (not given to the flow table)
        self._handlers()
        f = cfg["flows"]
        self.flows = FlowTable(
            self._outcome,
            self._flow_end,
            max_flows=f["max_flows"],
            attempt_timeout=f["attempt_timeout_seconds"],
            tcp_idle=f["tcp_idle_seconds"],
            udp_idle=f["udp_idle_seconds"],
            active_timeout=f["active_timeout_seconds"],
        )
        self.packets = 0
        self.bytes = 0
        self.last_ts = 0.0
        self._next_tick = 0.0
        self._learned_dir = Path(state_dir) / "learned" if keep_learned and state_dir else None
        # Detectors already given their saved state (weak: a replaced one must not keep
        # its id, which a new detector could reuse, marked as done).
        self._restored: weakref.WeakSet = weakref.WeakSet()
        self._next_save = 0.0
        self._restore_learned()

    def _handlers(self) -> None:
        on = lambda event: [getattr(d, event) for d in self.detectors if hasattr(d, event)]  # noqa: E731
        self._on_packet = on("on_packet")
        self._on_outcome = on("on_outcome")
        self._on_flow_end = on("on_flow_end")
        self._on_tick = on("on_tick")
        self._on_app = on("on_app")
        self._on_host = on("on_host")
        # Per protocol, only the on_packet handlers that declared they want it (or all).
        wanting = [d for d in self.detectors if hasattr(d, "on_packet")]
        protos = {TCP, UDP, ICMP, ICMP6, ARP}
        for d in wanting:
            protos |= d.packet_protocols or set()
        self._pkt = {
            pr: tuple(
                d.on_packet
                for d in wanting
                if d.packet_protocols is None or pr in d.packet_protocols
            )
            for pr in protos
        }
        self._pkt_other = tuple(d.on_packet for d in wanting if d.packet_protocols is None)
        # Per message kind, only the on_app handlers that want it.
        apps = [d for d in self.detectors if hasattr(d, "on_app")]
        self._app = {
            k: tuple(d.on_app for d in apps if d.app_kinds is None or k in d.app_kinds)
            for k in PROTOCOL_OF_KIND
        }
        # The deep decoder decodes only the protocols some detector wants; it is only
        # built when one wants application messages: otherwise no packet pays.
        if self._on_app:
            wanted: set[str] | None = set()
            for d in apps:
                if d.app_kinds is None:
                    wanted = None
                    break
                wanted |= {PROTOCOL_OF_KIND[k] for k in d.app_kinds if k in PROTOCOL_OF_KIND}
            fresh = DeepDecoder(self.deep_stats, protocols=wanted)
            if self.deep is None or self.deep.protocols != fresh.protocols:
                self.deep = fresh
        self._deep = None if self._deep_off or not self._on_app else self.deep
        if self.intel is not None:
            for d in self.detectors:
                if hasattr(d, "use_intel"):
                    d.use_intel(self.intel)

    def intel_changed(self) -> None:
        """A new bundle was stored: re-read it at the next check (safe from any thread)."""
        if self.intel is not None:
            self.intel._stamp = None

    def set_shed(self, level: int) -> None:
        """Self-protection level (see agent/selfguard.py); safe from another thread."""
        self._deep_off = level >= 1
        self.sample_n = 1 if level < 2 else 2 ** (level - 1)
        self._deep = None if self._deep_off or not self._on_app else self.deep
        self.shed_level = level

    def _tracked(self, p: Packet) -> bool:
        """Flow sampling while shedding: existing flows go on, 1 in N new ones start."""
        proto = p.proto
        if proto in (6, 17):
            a, b = (p.src, p.sport), (p.dst, p.dport)
            key = (proto, p.vlan, *a, *b) if a <= b else (proto, p.vlan, *b, *a)
        elif proto in (1, 58):
            key = (
                (proto, p.vlan, p.src, 0, p.dst, 0)
                if p.src <= p.dst
                else (proto, p.vlan, p.dst, 0, p.src, 0)
            )
        else:
            return True
        return key in self.flows.flows or hash(key) % self.sample_n == 0

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
        t = self.flows
        before = (t.max_flows, t.attempt_timeout, dict(t.idle), t.active_timeout)
        t.max_flows = f["max_flows"]
        t.attempt_timeout = f["attempt_timeout_seconds"]
        t.idle[TCP], t.idle[UDP] = f["tcp_idle_seconds"], f["udp_idle_seconds"]
        t.active_timeout = f["active_timeout_seconds"]
        if before != (t.max_flows, t.attempt_timeout, dict(t.idle), t.active_timeout):
            changes.append("flows: applied")
        return changes

    def _emit(self, finding: Finding) -> None:
        alert = self.anonymiser.alert(finding, self.clock())
        c = self.counters.alerts
        c[alert.detector] = c.get(alert.detector, 0) + 1
        self.output(alert)

    def _outcome(self, flow, outcome: str, ts: float) -> None:
        for h in self._on_outcome:
            h(flow, outcome, ts)

    def _flow_end(self, flow) -> None:
        for h in self._on_flow_end:
            h(flow)
        if self.deep is not None:
            self.deep.forget(flow.key)

    def feed(self, ts: float, linktype: int, wirelen: int, frame: bytes) -> None:
        self.packets += 1
        self.bytes += wirelen
        p = self.decode(ts, linktype, wirelen, frame)
        if p is None:
            return
        for h in self._pkt.get(p.proto, self._pkt_other):
            h(p)
        if self.sample_n > 1 and not self._tracked(p):
            self.shed_packets += 1  # shedding: this flow is not tracked, time still runs
        else:
            flow = self.flows.packet(p)
            proto = p.proto
            # Literal protocol numbers make constant tuples: no global lookups per packet.
            deep = self._deep
            if deep is not None and p.payload and proto in (6, 17):  # TCP, UDP
                app = self._app
                for msg in deep(p, flow):
                    for h in app.get(msg.kind, ()):
                        h(msg, flow, p)
            if proto in (1, 58) and p.sport in (1, 3):  # ICMP/ICMPv6 unreachable
                self.flows.icmp_unreachable(p, quoted_key(p))
        if ts > self.last_ts:
            self.last_ts = ts
        if ts >= self._next_tick:
            self.tick(ts)

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
                self._learned_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(d.learned(), f, separators=(",", ":"))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
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
        self.flows.tick(now)
        for h in self._on_tick:
            h(now)
        self.aggregator.tick(now)
        # High-water marks of the bounded state, read by stats() (once a tick: free).
        self.flows_peak = max(getattr(self, "flows_peak", 0), len(self.flows))
        self.open_peak = max(getattr(self, "open_peak", 0), len(self.aggregator.open))

    def stats(self) -> dict[str, int]:
        """Sizes and evictions of the bounded state (flow table, aggregator, detector
        windows), for the final `pipeline_stats` log line and bounds tests."""
        from agent.detect.window import KeyedWindow, Suppressor

        forgotten = keys = 0
        for d in self.detectors:
            for v in getattr(d, "__dict__", {}).values():
                if isinstance(v, KeyedWindow | Suppressor):
                    forgotten += v.forgotten
                    keys += len(v)
        return {
            "flows": len(self.flows),
            "flows_peak": max(getattr(self, "flows_peak", 0), len(self.flows)),
            "flows_created": self.flows.created,
            "flows_evicted": self.flows.evicted,
            "aggregator_open": len(self.aggregator.open),
            "aggregator_open_peak": max(getattr(self, "open_peak", 0), len(self.aggregator.open)),
            "aggregator_dropped": self.aggregator.dropped,
            "detector_keys": keys,
            "detector_keys_forgotten": forgotten,
            "shed_packets": self.shed_packets,
        }

    def finish(self) -> None:
        """End of input: settle what the capture can still tell, then flush every alert."""
        self.flows.tick(self.last_ts)
        self.flows.flush(self.last_ts)
        for h in self._on_tick:
            h(self.last_ts)
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
