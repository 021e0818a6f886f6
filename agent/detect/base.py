"""What every detector shares: declared tunables, an allow-list, a technique, a reporter.

A detector is one small class in one file (agent/detect/<name>.py). It implements only
the events it needs, each a tiny handler:
    on_packet(packet)             a packet the engine hands up: only ARP, ICMP/ICMPv6, and
                                  TCP/UDP payloads the deep decoder reads or that match a
                                  declared `packet_payloads` signature (a Python call per
                                  packet costs more than the engine's whole packet budget)
    on_pairs(records, now)        once per tick (at most every 1 s of capture time, `now`
                                  the tick time): packet counters per (source, destination,
                                  class) covering every decoded IP packet since the last
                                  delivery, in the order of their last packets (ties: in
                                  the order first counted); each record is
                                  (src, dst, cls, packets, nbytes, last_ts, dport): packed
                                  addresses of the packets' sender and receiver (per packet,
                                  not per flow), a PAIR_* class below, the sum of wire
                                  lengths, the time and destination port (0 for ICMP/other)
                                  of the last such packet. The engine's table is bounded
                                  (65,536 pairs a tick): past it, packets towards a
                                  destination count under src b"" ("other sources", never
                                  allowed, many sources). ARP is not counted. `records` is a
                                  sequence whose tuples are made as they are read (the
                                  engine's Records): walk it, do not keep it.
    on_activity(records)          once per tick, the bursts of watched TCP/UDP flows since
                                  the last tick, in the order they happened: (ts, src, dst,
                                  dport, None) when one starts (with its flow, or at a
                                  packet after a silence over the declared gap), (ts, src,
                                  dst, dport, nbytes) when one ends (the next one starts,
                                  or the flow ends): its bytes both ways (wire lengths).
                                  src is the originator; a Records sequence, as for
                                  on_pairs. Watched: originator internal,
                                  responder unicast and external (or internal, if asked),
                                  responder port not ignored — see `activity_watch()`.
    on_close(flow, ts)            the first FIN or RST of a TCP flow whose handshake
                                  succeeded, for responder ports in `close_ports`
    on_outcome(flow, outcome, ts) how a connection attempt ended (success/rejected/unanswered),
                                  for the attempts `outcome_ports` asks for
    on_scan(record)               net.portscan only: a report the engine's scan scoring
                                  queued (agent/engine/scan.c)
    on_flow_end(flow)             a flow expired or was evicted
    on_tick(now)                  time passed (capture time in replay, wall clock live)
    on_finish(now)                end of input (replay): report what is still held back
    on_app(msg, flow, packet)     a deep-decoded application message (agent/decode/deep)

Class or instance attributes let the pipeline (and the native engine) skip work a
detector would throw away at once:
    packet_protocols  the `Packet.proto` values on_packet wants (None: all handed up)
    packet_payloads   ((protocols, destination ports, payload prefix), ...): TCP/UDP
                      payloads the engine hands up to on_packet (at most 8, prefixes of
                      16 bytes or less)
    app_kinds         the message kinds on_app wants ("dns", "tls_client_hello", "smb",
                      "dcerpc", "dicom_assoc", "hl7", "ftp", "telnet", "http"; None: all);
                      the deep decoder only decodes the protocols some detector wants.
    flow_end          which ends on_flow_end wants: "all" (the default), "unresolved"
                      (flows that never had an outcome), "sessions" (established TCP
                      sessions on `close_ports` whose close did not go to on_close);
                      the engine reports no other
    pairs_want        which pairs on_pairs reads: "floods" (SYN, UDP, ICMP towards a
                      unicast address), "outbound" (internal towards external unicast);
                      the engine counts no other (unset: every pair)
    close_ports       the responder ports on_close wants (the engine watches the union);
                      set in __init__ when it depends on the settings.
    outcome_ports     the TCP responder ports whose outcomes on_outcome wants, or None for
                      every outcome (the default); the engine hands up the outcomes some
                      detector wants, and the pipeline reads it again every tick (it may
                      follow the detector's state, as net.ioc's follows its intel list).
A detector with on_activity defines `activity_watch()` returning (responder ports to
ignore, whether internal responders are wanted, the silence in seconds that ends a burst);
the pipeline passes it to the engine.
A detector that matches against the intel list (state_dir/intel.json) defines
`use_intel(provider)`: the pipeline hands it a callable returning the current snapshot.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from common.config import Option

Report = Callable[..., None]

# Classes of the on_pairs records (the native engine uses the same numbers).
PAIR_SYN = 0  # TCP with SYN set and ACK clear: an opening (half-open) attempt
PAIR_TCP = 1  # any other TCP
PAIR_UDP = 2
# ICMP/ICMPv6 that is not an error message: not IPv4 types 3, 4, 5, 11, 12; not ICMPv6
# types 1, 2, 3, 4 or >= 133 (neighbour discovery and other link-local signalling)
PAIR_ICMP = 3
PAIR_ICMP_ERROR = 4  # the rest of ICMP/ICMPv6: answers to someone else's traffic
PAIR_OTHER = 5  # any other IP protocol


def _cidrs(value: list) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            return f"holds {item!r}, which is not an address or CIDR range"
    return None


COMMON_OPTIONS: dict[str, Option] = {
    "enabled": Option(bool, True, "Run this detector."),
    "allow": Option(
        list, [], "Addresses or CIDR ranges this detector never reports as source.", _cidrs
    ),
}


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class Detector:
    name: ClassVar[str]
    technique: ClassVar[str]
    severity: ClassVar[int]
    help: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    packet_protocols: ClassVar[frozenset[int] | None] = None
    app_kinds: ClassVar[frozenset[str] | None] = None
    # Not a ClassVar: detectors whose ports are a setting set it per instance.
    close_ports: frozenset[int] = frozenset()
    outcome_ports: frozenset[int] | None = None
    flow_end: ClassVar[str] = "all"
    packet_payloads: tuple[tuple[frozenset[int], frozenset[int], bytes], ...] = ()

    def __init__(self, settings: dict[str, Any], report: Report) -> None:
        self.settings = settings
        self._report = report
        self._allow = [ipaddress.ip_network(str(n), strict=False) for n in settings["allow"]]
        self._allow_cache: dict[bytes, bool] = {}

    @classmethod
    def schema(cls) -> dict[str, Option]:
        return COMMON_OPTIONS | cls.options

    def allowed(self, packed: bytes) -> bool:
        if not self._allow:
            return False
        hit = self._allow_cache.get(packed)
        if hit is None:
            ip = ipaddress.ip_address(packed)
            hit = any(ip in n for n in self._allow if n.version == ip.version)
            if len(self._allow_cache) > 65536:
                self._allow_cache.clear()
            self._allow_cache[packed] = hit
        return hit

    def report(
        self,
        subject: str,
        ts: float,
        summary: str,
        entities: list[Entity],
        metrics: dict[str, float],
        count: int = 1,
        severity: int | None = None,
    ) -> None:
        self._report(
            detector=self,
            subject=subject,
            ts=ts,
            summary=summary,
            entities=entities,
            metrics=metrics,
            count=count,
            severity=self.severity if severity is None else severity,
        )
