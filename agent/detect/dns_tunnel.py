"""net.dns_tunnel — data carried in DNS names (iodine, dnscat2, DNSExfiltrator...).

Scored per (client, registered domain) on the queries the deep DNS decoder hands over:
  one long, high-entropy label       enough on its own: an encoded chunk of data
                                     (a base64 blob, 60 hex digits), never a host name;
  many distinct subdomains           of one registered domain, together with either
                                     a high share of TXT/NULL/CNAME/MX queries, long
                                     labels on average, or a high query volume;
NXDOMAIN answers are counted for the metrics. A "registered domain" that is itself data
(a label at least `long_label_length` long: dnscat2 without a domain) groups the
client's queries under no domain, and no domain entity is reported. Reverse lookups
(*.arpa) are not scored; `allow_domains` names registered domains never reported
(security vendors' DNS lookups).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import Packet
from agent.detect.base import Detector, ip_text
from agent.detect.dnsname import entropy, registered_domain
from agent.detect.nets import port_list
from agent.detect.window import Distinct, KeyedWindow, Stamped
from common.config import Option, between, positive
from vigie.v1 import alert_pb2

ODD_TYPES = frozenset((16, 10, 5, 15))  # TXT, NULL, CNAME, MX


def domain_list(value: list) -> str | None:
    """Option check: a list of domain names."""
    for d in value:
        if not isinstance(d, str) or "." not in d.strip(".") or " " in d:
            return f"holds {d!r}, which is not a domain name"
    return None


class _Zone(Stamped):
    __slots__ = (
        "answers", "first", "flagged", "last_report", "last_ts", "len_sum", "long_labels",
        "max_entropy", "max_label", "nx", "odd", "pending", "queries", "resolver", "subs",
    )  # fmt: skip

    def __init__(self, now: float) -> None:
        self.first = self.last_ts = now
        self.queries = self.odd = self.nx = self.answers = 0
        self.subs = Distinct(4096)
        self.len_sum = 0  # longest label of each distinct subdomain, summed
        self.max_label = 0
        self.max_entropy = 0.0
        self.long_labels = 0
        self.flagged = False
        self.pending = 0
        self.last_report = float("-inf")
        self.resolver = b""


class DnsTunnel(Detector):
    name = "net.dns_tunnel"
    technique = "T1071.004"
    severity = alert_pb2.SEVERITY_HIGH
    help = "DNS tunnelling: long high-entropy labels, many subdomains, odd query types."
    app_kinds = frozenset(("dns",))
    options: ClassVar[dict[str, Any]] = {
        "ports": Option(list, [53], "DNS server ports scored (mDNS/LLMNR are not).", port_list),
        "long_label_length": Option(
            int, 45, "A label at least this long, with high entropy, fires alone.", positive
        ),
        "label_entropy": Option(
            float, 3.5, "Shannon entropy (bits/char) of such a label.", between(0.0, 8.0)
        ),
        "unique_subdomains": Option(
            int, 30, "Distinct subdomains of one registered domain from one client.", positive
        ),
        "odd_type_ratio": Option(
            float,
            0.5,
            "Share of TXT/NULL/CNAME/MX queries that, with many subdomains, fires.",
            between(0.0, 1.0),
        ),
        "mean_label_length": Option(
            float,
            20.0,
            "Mean longest-label length of the subdomains that, with many of them, fires.",
            positive,
        ),
        "query_volume": Option(
            int,
            1000,
            "Queries for one registered domain that, with many subdomains, fire.",
            positive,
        ),
        "window_seconds": Option(
            float, 600.0, "A (client, domain) is forgotten after this much silence.", positive
        ),
        "report_interval_seconds": Option(
            float, 1.0, "A flagged (client, domain) is reported at most this often.", positive
        ),
        "allow_domains": Option(
            list, [], "Registered domains (and their subdomains) never reported.", domain_list
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.ports = frozenset(settings["ports"])
        self.allow_domains = tuple(d.lower().strip(".") for d in settings["allow_domains"])
        self.zones: KeyedWindow[_Zone] = KeyedWindow(settings["window_seconds"], _Zone, 50_000)
        self._held: set[tuple[bytes, str]] = set()  # flagged zones with unreported queries
        self._names: dict[str, tuple[str, str, bool, int, float]] = {}

    def _skip(self, reg: str) -> bool:
        if reg.endswith(".arpa"):
            return True
        return any(reg == d or reg.endswith("." + d) for d in self.allow_domains)

    def _name(self, name: str) -> tuple[str, str, bool, int, float]:
        """(registered domain, subdomain, skipped, longest subdomain label, its entropy
        or -1.0 when the label is short) of a query name: worked out once per name, since
        a name comes back in its answer and, for a resolver's clients, many times."""
        info = self._names.get(name)
        if info is not None:
            return info
        long_label = self.settings["long_label_length"]
        reg = registered_domain(name)
        if len(reg) > 2 * long_label or any(len(label) >= long_label for label in reg.split(".")):
            reg = ""  # no domain at all (dnscat2 direct mode): the name is all data
        sub = name if not reg else name[: -len(reg) - 1] if len(name) > len(reg) else ""
        n, ent = 0, -1.0
        if sub:
            longest = max(sub.split("."), key=len)
            n = len(longest)
            if n >= long_label:
                ent = entropy(longest)
        info = (reg, sub, self._skip(reg), n, ent)
        if len(self._names) >= 65536:
            self._names.clear()
        self._names[name] = info
        return info

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None or msg.kind != "dns" or not msg.qname or msg.opcode != 0:
            return
        if p.dport not in self.ports and p.sport not in self.ports:
            return
        reg, sub, skip, n, ent = self._name(msg.qname)
        if msg.qr:  # an answer: the client is its destination
            z = self.zones.peek((p.dst, reg))
            if z is not None:
                z.answers += 1
                z.nx += msg.rcode == 3
            return
        client = p.src
        if skip or self.allowed(client):
            return
        ts = p.ts
        z = self.zones.get((client, reg), ts)
        z.queries += 1
        z.last_ts = ts
        z.resolver = p.dst
        if msg.qtype in ODD_TYPES:
            z.odd += 1
        s = self.settings
        hit = False
        if sub and z.subs.add(sub):
            z.len_sum += n
            if n > z.max_label:
                z.max_label = n
            if ent >= 0.0:
                z.max_entropy = max(z.max_entropy, ent)
                if ent >= s["label_entropy"]:
                    z.long_labels += 1
                    hit = True
        distinct = len(z.subs)
        if not hit and distinct >= s["unique_subdomains"]:
            hit = (
                z.odd >= s["odd_type_ratio"] * z.queries
                or z.len_sum >= s["mean_label_length"] * distinct
                or z.queries >= s["query_volume"]
            )
        if hit or z.flagged:
            z.pending += z.queries if not z.flagged else 1
            z.flagged = True
            self._held.add((client, reg))
            if ts - z.last_report >= s["report_interval_seconds"]:
                self._emit(client, reg, z)

    def _emit(self, client: bytes, reg: str, z: _Zone) -> None:
        count, z.pending, z.last_report = z.pending, 0, z.last_ts
        distinct = len(z.subs)
        odd = z.odd / z.queries if z.queries else 0.0
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client))]
        if reg:
            entities.append(Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN, reg))
        if z.resolver:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(z.resolver)))
        self.report(
            subject=client.hex(),
            ts=z.last_ts,
            count=count,
            entities=entities,
            summary=(
                f"DNS tunnelling: {z.queries} queries with {distinct} distinct subdomains "
                f"{'of one domain' if reg else '(names carry no domain)'}, longest label "
                f"{z.max_label} characters, "
                f"{round(odd * 100)}% TXT/NULL/CNAME/MX"
            ),
            metrics={
                "queries": z.queries,
                "distinct_subdomains": distinct,
                "long_high_entropy_labels": z.long_labels,
                "max_label_length": z.max_label,
                "max_label_entropy": round(z.max_entropy, 3),
                "mean_label_length": round(z.len_sum / distinct, 2) if distinct else 0.0,
                "odd_type_ratio": round(odd, 3),
                "nxdomain_ratio": round(z.nx / z.answers, 3) if z.answers else 0.0,
                "seconds": round(z.last_ts - z.first, 3),
            },
        )

    def _flush(self, reported_before: float) -> None:
        for key in list(self._held):
            z = self.zones.peek(key)
            if z is None or not z.pending:
                self._held.discard(key)
            elif z.last_report <= reported_before:
                self._emit(*key, z)
                self._held.discard(key)

    def on_tick(self, now: float) -> None:
        self._flush(now - self.settings["report_interval_seconds"])
        self.zones.expire(now)

    def on_finish(self, now: float) -> None:
        self._flush(float("inf"))
