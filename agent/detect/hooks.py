"""The detector contract: every hook a detector may implement and every declaration it may
make, in one place (as mitmproxy's hooks.py lists every event an addon may handle).

A detector is one plain class in one file (agent/detect/<name>.py, host detectors in
agent/host/detectors/<name>.py). It says what it wants in one typed value, `wants` (a
`Wants`, below: a class attribute, or set in __init__ when it depends on the settings),
and implements only the hooks it needs, each a tiny handler. The pipeline finds the
hooks by name (HOOKS) and reads every declaration in one function (agent/pipeline.py
`plan`), from which the native engine and the deep decoder are configured: a detector
that did not ask for something costs nothing for it. tests/test_layout.py checks that a
detector defines no `on_*` method and no class attribute that is not listed here.

What each hook costs is what the pipeline pays to call it: a Python call per packet costs
more than the engine's whole packet budget, so the per-packet hooks only see what the
declarations let through; the per-tick hooks run at most once a second of capture time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.engine import EV_DGA, EV_DNS_TUNNEL

# Events: called when something happened, in the order it happened.
EVENTS: dict[str, str] = {
    "on_packet": """on_packet(packet): a packet the engine hands up. Only ARP, ICMP/ICMPv6
        and the TCP/UDP payloads the deep decoder reads or that match a declared
        `Wants.packet_payloads` signature; of those, the `Wants.packet_protocols` ones.
        Per packet: the most expensive hook, keep it to what the declarations let in.""",
    "on_pairs": """on_pairs(records, now): once per tick (at most every 1 s of capture time,
        `now` the tick time): packet counters per (source, destination, class) covering
        every decoded IP packet since the last delivery, in the order of their last
        packets (ties: in the order first counted); each record is
        (src, dst, cls, packets, nbytes, last_ts, dport): packed addresses of the packets'
        sender and receiver (per packet, not per flow), a PAIR_* class
        (agent/detect/base.py), the sum of wire lengths, the time and destination port
        (0 for ICMP/other) of the last such packet. The engine's table is bounded (65,536
        pairs a tick): past it, packets towards a destination count under src b""
        ("other sources", never allowed, many sources). ARP is not counted. `records` is a
        sequence whose tuples are made as they are read (the engine's Records): walk it,
        do not keep it. Only the pairs of `Wants.pairs` are counted.""",
    "on_activity": """on_activity(records): once per tick, the bursts of watched TCP/UDP
        flows since the last tick, in the order they happened: (ts, src, dst, dport, None,
        new) when one starts (new: with its flow; else at a data packet after a silence
        over `Wants.activity_gap`: a bare TCP segment, keep-alive or close, starts none),
        (ts, src, dst, dport, out, in) when one ends (a silence over the gap, seen within
        5 s; the flow's end): its bytes from src and from dst (wire lengths). src is the
        originator; a Records sequence, as for on_pairs. Watched: originator internal,
        responder unicast and external (or internal, with `Wants.activity_internal`),
        responder port not in `Wants.activity_ignore` (of every watcher).""",
    "on_close": """on_close(flow, ts): the first FIN or RST of a TCP flow whose handshake
        succeeded, for responder ports in `Wants.close_ports`. Per session.""",
    "on_outcome": """on_outcome(flow, outcome, ts): how a connection attempt ended
        ("success", "rejected", "unanswered"), for the attempts `Wants.outcome_ports` asks
        for. Per attempt: declare ports, or pay for every attempt on the link.""",
    "on_auth": """on_auth(flow, ts): logon attempts seen inside a session of an
        authentication service the engine recognised by its handshake (`Flow.service`,
        agent/engine/authsvc.h): a failure the server answered in clear
        (`Flow.auth_failures` went up) or more SSH packet sizes recorded
        (`Flow.ssh_sizes`), only while some detector declares `Wants.auth`. Sessions of a
        recognised service also have their close (on_close) and, when no close came,
        their end ("sessions") reported, whatever their port.""",
    "on_scan": """on_scan(record): a report the engine's scan scoring queued into the
        `Wants.scan` state (agent/engine/scan.c), at the probe that made it due.""",
    "on_sweep": """on_sweep(record): a report the engine's sweep counting queued into the
        `Wants.sweep` state (agent/engine/sweep.c), at the probe that made it due.""",
    "on_flow_end": """on_flow_end(flow): a flow expired or was evicted; only the ends
        `Wants.flow_end` asks for are reported. Per flow.""",
    "on_counted": """on_counted(record): a record the engine's `Wants.counter` produced
        (agent/engine/dnsstat.c): the detector's per-message work is in C, this turns the
        record into an alert.""",
    "on_app": """on_app(msg, flow, packet): a deep-decoded application message
        (agent/decode/deep) of a kind in `Wants.app_kinds`; DNS messages only while some
        taker's `Wants.dns` is true. Per message.""",
    "on_host": """on_host(sample): a host sample (agent/host/sample.py), in the pipeline's
        thread at its next tick; the sampler reads only what `HostWants` asked for.""",
    "on_log": """on_log(event): an event parsed from the host's logs (agent/logs/event.py
        LogEvent: time from the line, service, outcome, user, source...), in the order
        written, in the pipeline's thread at its next tick (replay-logs: at once).""",
    "on_tick": """on_tick(now): time passed (capture time in replay, wall clock live), at
        most once a second. Where windows expire and held-back reports go out.""",
    "on_finish": """on_finish(now): end of input (replay): report what is still held
        back.""",
}

# Calls: the pipeline asks the detector for something, at configure time or on a schedule.
CALLS: dict[str, str] = {
    "engine_config": """engine_config() -> dict: the settings the engine's `Wants.counter`
        counts with (allow-list included); asked whenever the engine is configured.""",
    "use_intel": """use_intel(provider): the intel list (state_dir/intel.json): the
        pipeline hands a callable returning the current snapshot when the detector
        starts.""",
    "use_inside": """use_inside(inside): the establishment's inside (agent/inside.py: built-in
        and configured ranges and domains, the anonymiser's own), handed by the pipeline
        when the detector starts, before any event; detectors ask
        `self.inside.is_internal(packed)` (agent/detect/base.py implements it).""",
    "learned": """learned() -> dict: what the detector learnt of normal, JSON-ready; saved
        to state_dir/learned/<name>.json every few minutes and at the end (running agent
        only, a replay learns afresh).""",
    "restore": """restore(state): the saved `learned()` of a previous run, once, when the
        detector starts; a damaged file is logged and skipped.""",
    "set_allow": """set_allow(settings): a reload whose only change is the allow-list: the
        detector applies it and keeps its state (agent/detect/base.py implements it).""",
}

HOOKS: dict[str, str] = EVENTS | CALLS

# What a detector class may declare at class level (tests/test_layout.py checks it).
DECLARATIONS: dict[str, str] = {
    "name": "the detector's name on its alerts (net.<x>, host.<x>); [detectors.<x>] config",
    "technique": "the ATT&CK technique of its alerts",
    "severity": "the severity of its alerts (alert_pb2.SEVERITY_*)",
    "help": "one line for `vigie-agent detectors` and the rendered configuration",
    "options": "its tunables (common.config.Option), beside `enabled` and `allow`",
    "wants": "a `Wants`: what the pipeline, engine and deep decoder do for it",
    # Host detectors also define the class method sampler_wants(settings) -> HostWants.
}

# The engine's DNS counters a detector may declare as `Wants.counter`, with the event code
# their records come back under.
COUNTERS: dict[str, int] = {"tunnel": EV_DNS_TUNNEL, "dga": EV_DGA}
FLOW_ENDS = ("all", "unresolved", "sessions")
PAIRS = ("floods", "outbound")

Signature = tuple[frozenset[int], frozenset[int], bytes]  # (protocols, dst ports, prefix)


def handlers(detectors: Iterable[Any], hook: str) -> tuple[Callable[..., Any], ...]:
    """The detectors' methods for `hook`, in the detectors' order: a detector handles the
    hooks it defines, as a mitmproxy addon does."""
    if hook not in HOOKS:
        raise KeyError(f"{hook} is not a hook (agent/detect/hooks.py)")
    return tuple(m for d in detectors if (m := getattr(d, hook, None)) is not None)


@dataclass(frozen=True, slots=True)
class Wants:
    """What one detector asks of the pipeline; the defaults ask for nothing to be skipped.
    Each field only matters with the hook it names."""

    # on_packet: the `Packet.proto` values wanted (None: all handed up).
    packet_protocols: frozenset[int] | None = None
    # on_packet: TCP/UDP payloads the engine hands up, (protocols, destination ports,
    # payload prefix), at most 8 in all, prefixes of 16 bytes or less.
    packet_payloads: tuple[Signature, ...] = ()
    # on_app: the message kinds wanted ("dns", "tls_client_hello", "smb", "dcerpc",
    # "dicom_assoc", "hl7", "ftp", "telnet", "http"; None: all). The deep decoder only
    # decodes the protocols some detector wants; `counter` detectors name "dns" here too.
    app_kinds: frozenset[str] | None = None
    # on_app "http": the request headers read (None: every request is needed). Requests go
    # up only with one of them when every HTTP reader declared its headers.
    http_headers: tuple[str, ...] | None = None
    # on_app "dns": whether DNS messages are wanted now (read again every tick: net.ioc
    # wants them only while its intel list holds domains).
    dns: bool = True
    # on_flow_end: "all", "unresolved" (flows that never had an outcome), "sessions"
    # (established TCP sessions on `close_ports` whose close did not go to on_close).
    flow_end: str = "all"
    # on_pairs: "floods" (SYN, UDP, ICMP towards a unicast address), "outbound" (internal
    # towards external unicast); None: every pair.
    pairs: str | None = None
    # on_close: the responder ports wanted (the engine watches the union).
    close_ports: frozenset[int] = frozenset()
    # on_outcome: the TCP responder ports whose outcomes are wanted (None: every outcome).
    # Read again every tick: it may follow the detector's state (net.ioc's intel list).
    outcome_ports: frozenset[int] | None = None
    # on_activity: responder ports ignored (only those every watcher ignores are skipped),
    # whether internal responders are watched, the silence in seconds that ends a burst.
    activity_ignore: frozenset[int] = frozenset()
    activity_internal: bool = False
    activity_gap: float = 5.0
    # on_counted: the engine DNS counter (a COUNTERS key) run with engine_config().
    counter: str | None = None
    # on_auth: the engine recognises authentication services by their handshake on any
    # port (Flow.service), reads their logon failures and records SSH packet sizes.
    auth: bool = False
    # on_scan: the engine.Scan state the engine scores every attempt outcome into (one
    # detector at most).
    scan: Any = None
    # on_sweep: the engine.Sweep state the engine counts every ARP and ICMP packet into
    # (one detector at most).
    sweep: Any = None

    def __post_init__(self) -> None:
        if self.flow_end not in FLOW_ENDS:
            raise ValueError(f"flow_end {self.flow_end!r} is not one of {FLOW_ENDS}")
        if self.pairs is not None and self.pairs not in PAIRS:
            raise ValueError(f"pairs {self.pairs!r} is not one of {PAIRS}")
        if self.counter is not None and self.counter not in COUNTERS:
            raise ValueError(f"counter {self.counter!r} is not one of {sorted(COUNTERS)}")


@dataclass(frozen=True, slots=True)
class HostWants:
    """What one host detector asks the sampler (agent/host/sampler.py) to read on top of
    the process table it always reads; the defaults ask for nothing more. Declared by the
    class method `HostDetector.sampler_wants(settings)`, since the sampler is built from
    the configuration, apart from the pipeline's detectors."""

    # Per-process write counters ("write_bytes" or "write_chars"; None: not read). Costs
    # one /proc/PID/io read per process per round.
    io_counter: str | None = None
    # A process at or above this CPU % (one core = 100) or this write rate (bytes/s) goes
    # into `HostSample.busy`; its open files are listed at or above `open_files_above`.
    cpu_floor: float = math.inf
    write_floor: float = math.inf
    open_files_above: float = math.inf
    listeners: bool = False  # listening sockets, owners resolved when a new one appears
    ioc: bool = False  # connections to intel-listed addresses
    sessions: bool = False  # interactive sessions (utmp)
    # Files fingerprinted every round (stat; sha256 when the stat moves); `watch_agent`:
    # the agent's own configuration and code too.
    watch_files: tuple[str, ...] = ()
    watch_agent: bool = False
    # A systemd unit's state, checked every `service_check_seconds`.
    service_unit: str = ""
    service_check_seconds: float = math.inf
