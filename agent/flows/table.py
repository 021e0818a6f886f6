"""Bidirectional flow table with just enough TCP state to tell how an attempt ended.

The originator is whoever sent the first packet we saw. Attempt outcomes are what scan
and brute-force detectors score on; whole flows (on expiry) are what volume, beacon and
exfiltration detectors consume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice

from agent.decode.packet import ACK, FIN, PSH, RST, SYN, TCP, UDP, URG, Packet

# Attempt outcomes
SUCCESS = "success"  # handshake answered (SYN-ACK) or UDP answered
REJECTED = "rejected"  # RST (or ICMP unreachable) in answer to the attempt
UNANSWERED = "unanswered"  # TCP only: nothing came back before attempt_timeout
# A UDP attempt with no answer is no evidence either way (syslog, NTP, multicast...):
# it ends with no outcome; only an answer or an ICMP unreachable decide.

# TCP states (a small subset of Zeek's conn_state)
S_ATTEMPT, S_PROBE, S_ESTABLISHED, S_REJECTED, S_MIDSTREAM, S_CLOSED = range(6)

STEALTH_NULL, STEALTH_FIN, STEALTH_XMAS, STEALTH_OTHER = "null", "fin", "xmas", "other"


class Flow:
    """One flow. Its endpoints are read from the key (lower endpoint first) and `rev` (the
    originator is the key's second endpoint): stored once, since with 100k flows every
    slot is 800 kB."""

    __slots__ = (
        "bytes_o",
        "bytes_r",
        "first",
        "key",
        "last",
        "outcome",
        "pkts_o",
        "pkts_r",
        "rev",
        "state",
        "stealth",
    )

    def __init__(self, key: tuple, p: Packet) -> None:
        self.key = key
        self.rev = not (key[2] == p.src and key[3] == p.sport)
        self.first = self.last = p.ts
        self.pkts_o = self.pkts_r = 0
        self.bytes_o = self.bytes_r = 0
        self.state = S_MIDSTREAM
        self.outcome = ""  # set once the attempt's outcome is known
        self.stealth = ""  # for TCP probes that open with FIN/NULL/Xmas

    @property
    def proto(self) -> int:
        return self.key[0]

    @property
    def vlan(self) -> int:
        return self.key[1]

    @property
    def src(self) -> bytes:
        return self.key[4 if self.rev else 2]

    @property
    def sport(self) -> int:
        return self.key[5 if self.rev else 3]

    @property
    def dst(self) -> bytes:
        return self.key[2 if self.rev else 4]

    @property
    def dport(self) -> int:
        return self.key[3 if self.rev else 5]


class IcmpFlow(Flow):
    """An ICMP/ICMPv6 flow: its key has no ports, `sport`/`dport` keep the type and code
    of its first packet."""

    __slots__ = ("dport", "sport")

    def __init__(self, key: tuple, p: Packet) -> None:
        super().__init__(key, p)
        self.rev = key[2] != p.src
        self.sport, self.dport = p.sport, p.dport


def stealth_kind(flags: int) -> str:
    f = flags & (FIN | SYN | RST | PSH | ACK | URG)
    if f == 0:
        return STEALTH_NULL
    if f == FIN:
        return STEALTH_FIN
    if f & (FIN | PSH | URG) == FIN | PSH | URG and not f & (SYN | ACK | RST):
        return STEALTH_XMAS
    if not f & (SYN | ACK | RST):
        return STEALTH_OTHER
    return ""


class FlowTable:
    """Keyed by the unordered 5-tuple plus VLAN. Bounded: the oldest flows go first.

    Idle flows end after their protocol's idle timeout; flows still active after
    `active_timeout` are reported (on_end) and go on as a fresh record with the same
    originator, so a day-long transfer shows up hourly instead of once at its end.
    """

    def __init__(
        self,
        on_outcome: Callable[[Flow, str, float], None],
        on_end: Callable[[Flow], None],
        *,
        max_flows: int = 200_000,
        attempt_timeout: float = 3.0,
        tcp_idle: float = 300.0,
        udp_idle: float = 60.0,
        other_idle: float = 30.0,
        active_timeout: float = 3600.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self.flows: dict[tuple, Flow] = {}
        self.on_outcome = on_outcome
        self.on_end = on_end
        self.max_flows = max_flows
        self.attempt_timeout = attempt_timeout
        self.idle = {TCP: tcp_idle, UDP: udp_idle}
        self.other_idle = other_idle
        self.active_timeout = active_timeout
        self.sweep_interval = sweep_interval
        self._pending: deque[tuple[float, Flow]] = deque()  # attempts awaiting an answer
        self._next_sweep = 0.0
        self.created = 0
        self.evicted = 0
        self.expired = 0
        self.restarted = 0  # long flows reported at the active timeout and continued

    def __len__(self) -> int:
        return len(self.flows)

    def packet(self, p: Packet) -> Flow | None:
        # Hot path (every decoded packet): locals only, one dict lookup, no temporaries
        # beyond the key itself.
        proto = p.proto
        src, sport, dst = p.src, p.sport, p.dst
        if proto in (6, 17):  # TCP, UDP (literals: a constant tuple, no global lookups)
            dport = p.dport
            # lo: the sender is the key's first (lower) endpoint
            if lo := src < dst or (src == dst and sport <= dport):
                key = (proto, p.vlan, src, sport, dst, dport)
            else:
                key = (proto, p.vlan, dst, dport, src, sport)
        elif proto in (1, 58):  # ICMP, ICMPv6: type/code are not a flow identity
            if lo := src <= dst:
                key = (proto, p.vlan, src, 0, dst, 0)
            else:
                key = (proto, p.vlan, dst, 0, src, 0)
        else:
            return None
        flows = self.flows
        flow = flows.get(key)
        ts = p.ts
        if flow is None:
            if len(flows) >= self.max_flows:
                self._evict()
            flow = Flow(key, p) if proto == 6 or proto == 17 else IcmpFlow(key, p)
            flows[key] = flow
            self.created += 1
            if proto == TCP:
                self._open_tcp(flow, p)
        flow.last = ts
        # From the originator: sent from the originator's end of the key (and, for ICMP,
        # with the type the flow began with).
        if lo != flow.rev and (proto == 6 or proto == 17 or sport == flow.sport):
            flow.pkts_o += 1
            flow.bytes_o += p.length
        else:
            flow.pkts_r += 1
            flow.bytes_r += p.length
            if flow.outcome:
                pass
            elif proto == TCP:
                self._answer_tcp(flow, p)
            elif proto == UDP:
                flow.outcome = SUCCESS
                self.on_outcome(flow, SUCCESS, ts)
        return flow

    def _open_tcp(self, flow: Flow, p: Packet) -> None:
        flags = p.flags
        if flags & SYN and not flags & ACK:
            flow.state = S_ATTEMPT
            self._pending.append((p.ts + self.attempt_timeout, flow))
        elif kind := stealth_kind(flags):
            flow.state = S_PROBE
            flow.stealth = kind
            self._pending.append((p.ts + self.attempt_timeout, flow))

    def _answer_tcp(self, flow: Flow, p: Packet) -> None:
        if flow.outcome:
            return
        flags = p.flags
        if flow.state == S_ATTEMPT and flags & SYN and flags & ACK:
            flow.state = S_ESTABLISHED
            flow.outcome = SUCCESS
            self.on_outcome(flow, SUCCESS, p.ts)
        elif flow.state in (S_ATTEMPT, S_PROBE) and flags & RST:
            flow.state = S_REJECTED
            flow.outcome = REJECTED
            self.on_outcome(flow, REJECTED, p.ts)

    def icmp_unreachable(self, p: Packet, quoted: tuple | None) -> None:
        """An ICMP unreachable quoting one of our UDP/TCP attempts rejects it."""
        if quoted is None:
            return
        flow = self.flows.get(quoted)
        if flow is not None and not flow.outcome:
            flow.outcome = REJECTED
            flow.state = S_REJECTED
            self.on_outcome(flow, REJECTED, p.ts)

    def tick(self, now: float) -> None:
        """Advance time: unanswered attempts, then (less often) idle and long flows."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, flow = pending.popleft()
            if not flow.outcome:
                flow.outcome = UNANSWERED
                self.on_outcome(flow, UNANSWERED, now)
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        idle, other, active = self.idle, self.other_idle, self.active_timeout
        tcp_idle, udp_idle = idle[TCP], idle[UDP]
        dead, long = [], []
        for k, f in self.flows.items():
            proto = f.key[0]
            limit = tcp_idle if proto == TCP else udp_idle if proto == UDP else other
            if now - f.last > limit:
                dead.append(k)
            elif now - f.first >= active:
                long.append(k)
        flows, on_end = self.flows, self.on_end
        for k in dead:
            on_end(flows.pop(k))
        self.expired += len(dead)
        for k in long:
            old = flows[k]
            on_end(old)
            flows[k] = _continued(old, now)
        self.restarted += len(long)

    def _evict(self) -> None:
        # dicts keep insertion order: the first keys are the oldest flows
        n = max(1, self.max_flows // 100)
        flows, on_end = self.flows, self.on_end
        for k in list(islice(flows, n)):
            on_end(flows.pop(k))
        self.evicted += n

    def flush(self, now: float) -> None:
        """End of input: attempts still pending at the end are not known to have failed."""
        self._pending.clear()
        for flow in self.flows.values():
            self.on_end(flow)
        self.flows.clear()


def _continued(old: Flow, now: float) -> Flow:
    """The record that carries a long flow on after its report at the active timeout."""
    f = type(old).__new__(type(old))
    f.key, f.rev = old.key, old.rev
    if isinstance(old, IcmpFlow):
        f.sport, f.dport = old.sport, old.dport
    f.first = f.last = now
    f.pkts_o = f.pkts_r = f.bytes_o = f.bytes_r = 0
    # Same connection: its attempt already ended, so no second outcome is reported.
    f.state, f.outcome, f.stealth = old.state, old.outcome, old.stealth
    return f
