"""net.discovery — host discovery sweeps: ARP, ICMP echo, timestamp and address mask,
IPv6 neighbour discovery.

A sweep is one source probing many addresses it has not probed before, in a burst: nmap
-sn (ARP on its own segment, ICMP beyond it), arp-scan, netdiscover, fping -g. Counted per
source in the engine (agent/engine/sweep.c): each ARP who-has, each ICMP echo,
timestamp or address-mask request, each ICMPv6 echo request or neighbour solicitation
(not from ::) probes its target; the ARP is-at, the matching ICMP reply, the neighbour
advertisement, or an ICMP error sent by the target itself answers it.

A source is flagged when, within `window_seconds` of its first new target, it has probed
`min_targets` addresses new to it, and either at most `max_answered_share` of them
answered or they fill at least `min_coverage` of the smallest prefix covering them. What
stays quiet without any allow-list:
- a monitoring server pinging a fixed list: from its second round on it probes nothing
  new (a source remembers its targets while it keeps probing, and `memory_seconds` after;
  the running agent keeps them across a restart, in state_dir/learned/);
  a first round over a list of live hosts answers and is scattered over the address plan;
- a router or DHCP server resolving or checking addresses one at a time, as clients come:
  too slow to make `min_targets` new ones in a window (a boot storm that does: allow-list
  it); gratuitous ARP and ARP probes from 0.0.0.0 claim addresses, they probe nothing.
Sweeps slower than min_targets per window (nmap -T0/-T1) look like those and are missed.

Technique T1018 (Remote System Discovery): these probes ask which addresses hold a host,
not which services run there; TCP and UDP probes, which ask for a service, are
net.portscan's (T1046), including nmap's -PS/-PA/-PU host discovery.

The answered share is what this link shows: on a switch port only the agent's own host
answers where others can be seen (a mirror port sees every answer).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import KeyedWindow
from agent.engine import SWEEP_ARP, SWEEP_ECHO, SWEEP_MASK, SWEEP_ND, SWEEP_TIMESTAMP, Sweep
from common.config import Option, between, positive
from vigie.v1 import alert_pb2

# Probe kinds: the bits of a record's `kinds`, as the summary names them.
_KINDS = {
    SWEEP_ARP: "ARP",
    SWEEP_ECHO: "ICMP echo",
    SWEEP_TIMESTAMP: "ICMP timestamp",
    SWEEP_MASK: "ICMP address mask",
    SWEEP_ND: "neighbour discovery",
}
MAX_SOURCES = 100_000
KNOWN_KEPT_FROM = 8  # targets a source must know for them to outlive a restart


class Discovery(Detector):
    name = "net.discovery"
    technique = "T1018"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "Host discovery sweeps (ARP, ICMP echo/timestamp/mask, IPv6 ND) of new addresses."
    options: ClassVar[dict[str, Option]] = {
        "window_seconds": Option(
            float, 60.0, "A sweep's new targets are counted over this long.", positive
        ),
        "min_targets": Option(
            int, 24, "Addresses new to a source, probed in one window, make a sweep.", positive
        ),
        "max_answered_share": Option(
            float,
            0.5,
            "A sweep this silent or more (share of its targets answering) is flagged.",
            between(0.0, 1.0),
        ),
        "min_coverage": Option(
            float,
            0.5,
            "A sweep filling this share of its covering prefix is flagged however many answer.",
            between(0.0, 1.0),
        ),
        "memory_seconds": Option(
            float,
            1800.0,
            "A source's targets are remembered (not new) until it is silent this long.",
            positive,
        ),
        "report_interval_seconds": Option(
            float,
            1.0,
            "A flagged source is reported at most this often; probes in between are summed.",
            positive,
        ),
    }

    def __init__(self, settings: dict, report) -> None:
        s = settings
        self.sweep = Sweep(
            window=s["window_seconds"],
            memory=max(s["memory_seconds"], s["window_seconds"]),
            report_interval=s["report_interval_seconds"],
            min_targets=s["min_targets"],
            max_answered=s["max_answered_share"],
            min_coverage=s["min_coverage"],
            max_sources=max(1, min(MAX_SOURCES, KeyedWindow.limit)),
        )
        # The state the engine counts every ARP and ICMP packet into.
        self.wants = Wants(sweep=self.sweep)
        super().__init__(settings, report)  # after the sweep: set_allow applies to it

    def set_allow(self, settings: dict) -> None:
        super().set_allow(settings)
        self.sweep.set_allow([(n.network_address.packed, n.prefixlen) for n in self._allow])

    def learned(self) -> dict[str, Any]:
        """What a restart must not lose (agent/pipeline.py save_learned): the targets each
        source that probes several already probed, as the engine's 64-bit hashes (no
        address), so that a monitoring server's next round is not new to a restarted
        agent. Kept in state_dir/learned/, never sent."""
        least = min(KNOWN_KEPT_FROM, self.settings["min_targets"])
        return {
            "version": 1,
            "sources": [[src.hex(), seen, hashes] for src, seen, hashes in self.sweep.known(least)],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `learned()` returned; raises ValueError on anything else."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not a net.discovery learned state of version 1")
        sources = []
        for src, seen, hashes in state["sources"]:
            if not isinstance(seen, int | float) or not all(
                isinstance(h, int) and 0 <= h < 2**64 for h in hashes
            ):
                raise ValueError("a source's time or target hashes are not numbers")
            packed = bytes.fromhex(src)
            if len(packed) not in (4, 16):
                raise ValueError("a source is not an address")
            sources.append((packed, float(seen), hashes))
        for src, seen, hashes in sources:  # all read before any is taken
            self.sweep.remember(src, seen, hashes)

    def on_sweep(self, record: tuple) -> None:
        """A flagged source's report, queued by the engine at the probe that made it due."""
        self._emit(record)

    def on_tick(self, now: float) -> None:
        for record in self.sweep.tick(now):
            self._emit(record)

    def on_finish(self, now: float) -> None:
        for record in self.sweep.finish():
            self._emit(record)

    def _emit(self, record: tuple) -> None:
        src, ts, count, targets, answered, prefix, network, kinds, rate, in_range = record
        size = 2 ** (len(network) * 8 - prefix)
        coverage = in_range / size
        share = answered / targets if targets else 0.0
        how = " and ".join(n for b, n in _KINDS.items() if kinds & b) or "ICMP"
        self.report(
            subject=src.hex(),
            ts=ts,
            count=count,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                # the swept range, by its network address (pseudonymised when internal)
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_IP, ip_text(network)),
            ],
            summary=(
                f"{how} sweep of a /{prefix}: {targets} addresses probed "
                f"({coverage:.0%} of the range), {answered} answered ({share:.0%})"
            ),
            metrics={
                "targets": targets,
                "answered": answered,
                "answered_share": round(share, 3),
                "prefix_length": prefix,
                "range_size": size,
                "coverage": round(coverage, 3),
                "targets_per_second": round(rate, 1),
            },
        )
