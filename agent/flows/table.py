"""Bidirectional flow table with just enough TCP state to tell how an attempt ended.

The originator is whoever sent the first packet we saw. Attempt outcomes are what scan
and brute-force detectors score on; whole flows (on expiry) are what volume, beacon and
exfiltration detectors consume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.decode.packet import ACK, FIN, ICMP, ICMP6, PSH, RST, SYN, TCP, UDP, URG, Packet

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
    __slots__ = (
        "bytes_o",
        "bytes_r",
        "dport",
        "dst",
        "first",
        "key",
        "last",
        "outcome",
        "pkts_o",
        "pkts_r",
        "proto",
        "sport",
        "src",
        "state",
        "stealth",
        "vlan",
    )

    def __init__(self, key: tuple, p: Packet) -> None:
        self.key = key
        self.proto = p.proto
        self.src, self.sport, self.dst, self.dport = p.src, p.sport, p.dst, p.dport
        self.vlan = p.vlan
        self.first = self.last = p.ts
        self.pkts_o = self.pkts_r = 0
        self.bytes_o = self.bytes_r = 0
        self.state = S_MIDSTREAM
        self.outcome = ""  # set once the attempt's outcome is known
        self.stealth = ""  # for TCP probes that open with FIN/NULL/Xmas


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
    """Keyed by the unordered 5-tuple plus VLAN. Bounded: the oldest flows go first."""

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
        sweep_interval: float = 5.0,
    ) -> None:
        self.flows: dict[tuple, Flow] = {}
        self.on_outcome = on_outcome
        self.on_end = on_end
        self.max_flows = max_flows
        self.attempt_timeout = attempt_timeout
        self.idle = {TCP: tcp_idle, UDP: udp_idle}
        self.other_idle = other_idle
        self.sweep_interval = sweep_interval
        self._pending: deque[tuple[float, Flow]] = deque()  # attempts awaiting an answer
        self._next_sweep = 0.0
        self.created = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self.flows)

    def packet(self, p: Packet) -> Flow | None:
        proto = p.proto
        if proto not in (TCP, UDP, ICMP, ICMP6):
            return None
        a, b = (p.src, p.sport), (p.dst, p.dport)
        if proto in (ICMP, ICMP6):
            a, b = (p.src, 0), (p.dst, 0)  # type/code are not a flow identity
        key = (proto, p.vlan, *a, *b) if a <= b else (proto, p.vlan, *b, *a)
        flow = self.flows.get(key)
        ts = p.ts
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self._evict()
            flow = Flow(key, p)
            self.flows[key] = flow
            self.created += 1
            if proto == TCP:
                self._open_tcp(flow, p)
        flow.last = ts
        if p.src == flow.src and p.sport == flow.sport:
            flow.pkts_o += 1
            flow.bytes_o += p.length
        else:
            flow.pkts_r += 1
            flow.bytes_r += p.length
            if proto == TCP:
                self._answer_tcp(flow, p)
            elif proto == UDP and not flow.outcome:
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
        """Advance time: unanswered attempts, then (less often) idle flows."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, flow = pending.popleft()
            if not flow.outcome:
                flow.outcome = UNANSWERED
                self.on_outcome(flow, UNANSWERED, now)
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        idle, other = self.idle, self.other_idle
        dead = [k for k, f in self.flows.items() if now - f.last > idle.get(f.proto, other)]
        for k in dead:
            self.on_end(self.flows.pop(k))
        self.expired += len(dead)

    def _evict(self) -> None:
        # dicts keep insertion order: the first keys are the oldest flows
        n = max(1, self.max_flows // 100)
        for k in list(self.flows)[:n]:
            self.on_end(self.flows.pop(k))
        self.evicted += n

    def flush(self, now: float) -> None:
        """End of input: attempts still pending at the end are not known to have failed."""
        self._pending.clear()
        for flow in self.flows.values():
            self.on_end(flow)
        self.flows.clear()
