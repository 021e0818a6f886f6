"""net.dga — a client resolving many random-looking domains that do not exist.

Malware with a domain generation algorithm tries dozens of generated names a day until
one its operator registered answers: from the network, one client gets NXDOMAIN for many
distinct registered domains whose second-level label looks random (long enough, high
character entropy). Counted per client on the DNS answers the deep decoder hands over:
distinct random-looking NXDOMAIN domains in a bounded windowed set, and the client's
NXDOMAIN rate. Internal suffixes (.local, .lan...), reverse lookups and `allow_domains`
are never counted. Dictionary-word DGAs (suppobox-like) are out of its reach.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import BUILTIN_INTERNAL_SUFFIXES, Entity
from agent.decode.packet import Packet
from agent.detect.base import Detector, ip_text
from agent.detect.dns_tunnel import domain_list
from agent.detect.dnsname import entropy, registered_domain
from agent.detect.nets import port_list
from agent.detect.window import Distinct, KeyedWindow, Stamped
from common.config import Option, between, positive
from vigie.v1 import alert_pb2

_SKIP = (*BUILTIN_INTERNAL_SUFFIXES, ".arpa")
MAX_INDICATORS = 5  # sample domains carried as entities


class _Client(Stamped):
    __slots__ = ("answers", "domains", "first", "flagged", "last", "nx", "resolver", "sample")

    def __init__(self, now: float) -> None:
        self.first = self.last = now
        self.answers = self.nx = 0
        self.domains = Distinct(1024)  # random-looking NXDOMAIN registered domains
        self.sample: list[str] = []
        self.flagged = False
        self.resolver = b""


class Dga(Detector):
    name = "net.dga"
    technique = "T1568.002"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Domain generation algorithms: many random-looking non-existent domains."
    app_kinds = frozenset(("dns",))
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

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.ports = frozenset(settings["ports"])
        self.allow_domains = tuple(d.lower().strip(".") for d in settings["allow_domains"])
        self.clients: KeyedWindow[_Client] = KeyedWindow(
            settings["window_seconds"], _Client, 50_000
        )

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None or msg.kind != "dns" or not msg.qr or msg.opcode != 0:
            return
        if p.sport not in self.ports:
            return
        client = p.dst
        if self.allowed(client):
            return
        ts = p.ts
        c = self.clients.get(client, ts)
        c.answers += 1
        c.last = ts
        if msg.rcode != 3 or not msg.qname:
            return
        c.nx += 1
        reg = registered_domain(msg.qname)
        if ("." + reg).endswith(_SKIP) or any(
            reg == d or reg.endswith("." + d) for d in self.allow_domains
        ):
            return
        label = reg.split(".", 1)[0]
        s = self.settings
        if len(label) < s["min_label_length"] or entropy(label) < s["label_entropy"]:
            return
        if not c.domains.add(reg):
            return
        c.resolver = p.src
        if len(c.sample) < MAX_INDICATORS:
            c.sample.append(reg)
        n = len(c.domains)
        if n < s["nx_domains"] or c.nx < s["nxdomain_ratio"] * c.answers:
            return
        first = not c.flagged
        c.flagged = True
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client))]
        entities += [Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN, d) for d in c.sample]
        entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(c.resolver)))
        self.report(
            subject=client.hex(),
            ts=ts,
            count=n if first else 1,
            entities=entities,
            summary=(
                f"domain generation algorithm: {n} random-looking non-existent domains, "
                f"{c.nx} NXDOMAIN of {c.answers} answers in {ts - c.first:.0f} s"
            ),
            metrics={
                "nx_random_domains": n,
                "nxdomain": c.nx,
                "answers": c.answers,
                "nxdomain_ratio": round(c.nx / c.answers, 3),
                "seconds": round(ts - c.first, 3),
            },
        )

    def on_tick(self, now: float) -> None:
        self.clients.expire(now)
