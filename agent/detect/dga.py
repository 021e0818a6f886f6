"""net.dga — a client resolving many random-looking domains that do not exist.

Malware with a domain generation algorithm tries dozens of generated names a day until
one its operator registered answers: from the network, one client gets NXDOMAIN for many
distinct registered domains whose second-level label looks random (long enough, high
character entropy). Counted per client on the DNS answers over UDP:
distinct random-looking NXDOMAIN domains in a bounded windowed set, and the client's
NXDOMAIN rate. Inside names (built-in suffixes .local, .lan..., and the establishment's
`internal_domains`, agent/inside.py), reverse lookups and `allow_domains` are never
counted. Dictionary-word DGAs (suppobox-like) are out of its reach.

The engine counts every answer (agent/engine/dnsstat.c, where the rules above are code,
distinct domains remembered as 64-bit hashes); this module declares the tunables and
words the alert.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.dns_tunnel import domain_list
from agent.detect.hooks import Wants
from agent.detect.nets import port_list
from common.config import Option, between, positive
from vigie.v1 import alert_pb2


class Dga(Detector):
    name = "net.dga"
    technique = "T1568.002"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Domain generation algorithms: many random-looking non-existent domains."
    options: ClassVar[dict[str, Any]] = {
        "ports": Option(list, [53], "DNS server ports scored (mDNS/LLMNR are not).", port_list),
        "nx_domains": Option(
            int, 10, "Distinct random-looking NXDOMAIN domains per client that fire.", positive
        ),
        "nxdomain_ratio": Option(
            float,
            0.2,
            "Share of the client's answers that must be NXDOMAIN.",
            between(0.0, 1.0),
        ),
        "min_label_length": Option(
            int, 7, "Shortest second-level label that can look random.", positive
        ),
        "label_entropy": Option(
            float,
            2.8,
            "Shannon entropy (bits/char) from which a second-level label looks random.",
            between(0.0, 8.0),
        ),
        "window_seconds": Option(
            float, 900.0, "A client's evidence is forgotten after this much silence.", positive
        ),
        "allow_domains": Option(
            list, [], "Registered domains (and their subdomains) never counted.", domain_list
        ),
    }

    # The engine counts each answer (agent/engine/dnsstat.c); this class declares and
    # validates the tunables and turns the engine's records into alerts.
    wants = Wants(app_kinds=frozenset(("dns",)), counter="dga")

    def engine_config(self) -> dict[str, Any]:
        """The settings the engine counts with."""
        s = self.settings
        return {
            **{k: s[k] for k in self.options if k != "allow_domains"},
            "allow_domains": [d.lower().strip(".") for d in s["allow_domains"]],
            "allow": [(n.network_address.packed, n.prefixlen) for n in self._allow],
            # inside names (built-in suffixes, configured internal_domains) and reverse
            # lookups: an internal resolver's NXDOMAIN for them is no DGA
            "skip_suffixes": [*self.inside.suffixes, ".arpa"],
        }

    def on_counted(self, rec: tuple) -> None:
        """A client past the thresholds, from the engine: (client, resolver, sample
        domains, count, random NXDOMAIN domains, NXDOMAIN answers, answers, first, last)."""
        client, resolver, sample, count, n, nx, answers, first, ts = rec
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client))]
        entities += [Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN, d) for d in sample]
        entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(resolver)))
        self.report(
            subject=client.hex(),
            ts=ts,
            count=count,
            entities=entities,
            summary=(
                f"domain generation algorithm: {n} random-looking non-existent domains, "
                f"{nx} NXDOMAIN of {answers} answers in {ts - first:.0f} s"
            ),
            metrics={
                "nx_random_domains": n,
                "nxdomain": nx,
                "answers": answers,
                "nxdomain_ratio": round(nx / answers, 3),
                "seconds": round(ts - first, 3),
            },
        )
