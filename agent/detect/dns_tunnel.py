"""net.dns_tunnel — data carried in DNS names (iodine, dnscat2, DNSExfiltrator...).

Scored per (client, registered domain, see dnsname.py) on DNS queries over UDP:
  one long, high-entropy label       enough on its own: an encoded chunk of data
                                     (a base64 blob, 60 hex digits), never a host name;
  many distinct subdomains           of one registered domain, together with either
                                     a high share of TXT/NULL/CNAME/MX queries, long
                                     labels on average, or a high query volume;
NXDOMAIN answers are counted for the metrics. A "registered domain" that is itself data
(a label at least `long_label_length` long: dnscat2 without a domain) groups the
client's queries under no domain, and no domain entity is reported. Reverse lookups
(*.arpa) and inside names (a registered domain under a built-in internal suffix or a
configured `internal_domains`, agent/inside.py: the establishment's own zones) are not
scored; `allow_domains` names registered domains never reported (security vendors' DNS
lookups). A flagged pair is reported at most once per `report_interval_seconds`, with
the queries in between as the count.

The engine counts every message (agent/engine/dnsstat.c, where the rules above are
code); this module declares the tunables and words the alert.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import port_list
from common.config import Option, between, positive
from vigie.v1 import alert_pb2


def domain_list(value: list) -> str | None:
    """Option check: a list of domain names."""
    for d in value:
        if not isinstance(d, str) or "." not in d.strip(".") or " " in d:
            return f"holds {d!r}, which is not a domain name"
    return None


class DnsTunnel(Detector):
    name = "net.dns_tunnel"
    technique = "T1071.004"
    severity = alert_pb2.SEVERITY_HIGH
    help = "DNS tunnelling: long high-entropy labels, many subdomains, odd query types."
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

    # The engine counts each message (agent/engine/dnsstat.c): a resolver's clients send
    # too many for a Python call each. This class declares and validates the tunables and
    # turns the engine's records into alerts.
    wants = Wants(app_kinds=frozenset(("dns",)), counter="tunnel")

    def engine_config(self) -> dict[str, Any]:
        """The settings the engine counts with."""
        s = self.settings
        return {
            **{k: s[k] for k in self.options if k != "allow_domains"},
            # inside names (agent/inside.py: built-in suffixes, configured internal_domains)
            # are the establishment's own resolvers' zones: no tunnel leaves through them
            "allow_domains": [d.lower().strip(".") for d in s["allow_domains"]]
            + [x.strip(".") for x in self.inside.suffixes],
            "allow": [(n.network_address.packed, n.prefixlen) for n in self._allow],
        }

    def on_counted(self, rec: tuple) -> None:
        """A flagged (client, registered domain) with queries to report, from the engine:
        (client, domain, resolver, count, queries, distinct subdomains, long high-entropy
        labels, longest label, highest label entropy, sum of the subdomains' longest
        labels, TXT/NULL/CNAME/MX queries, NXDOMAIN answers, answers, first, last)."""
        (client, reg, resolver, count, queries, distinct, long_labels, max_label, max_entropy,
         len_sum, odd, nx, answers, first, last) = rec  # fmt: skip
        odd_ratio = odd / queries if queries else 0.0
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client))]
        if reg:
            entities.append(Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_DOMAIN, reg))
        if resolver:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(resolver)))
        self.report(
            subject=client.hex(),
            ts=last,
            count=count,
            entities=entities,
            summary=(
                f"DNS tunnelling: {queries} queries with {distinct} distinct subdomains "
                f"{'of one domain' if reg else '(names carry no domain)'}, longest label "
                f"{max_label} characters, "
                f"{round(odd_ratio * 100)}% TXT/NULL/CNAME/MX"
            ),
            metrics={
                "queries": queries,
                "distinct_subdomains": distinct,
                "long_high_entropy_labels": long_labels,
                "max_label_length": max_label,
                "max_label_entropy": round(max_entropy, 3),
                "mean_label_length": round(len_sum / distinct, 2) if distinct else 0.0,
                "odd_type_ratio": round(odd_ratio, 3),
                "nxdomain_ratio": round(nx / answers, 3) if answers else 0.0,
                "seconds": round(last - first, 3),
            },
        )
