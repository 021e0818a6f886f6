"""net.ioc — traffic that touches an indicator on the intel list.

The list comes from the collector (intel bundle, stored by the delivery stream in
state_dir/intel.json) and is read with the host side's tolerant reader
(agent/host/intel.py): addresses and CIDR ranges, domains (a listed domain matches its
subdomains too), TLS JA3 and JA4 fingerprints. A new bundle is picked up without a
restart: the pipeline hands this detector the file's reader, looked at (one stat) at most
every `check_seconds`. Matched:
  flows        the destination (outbound) or source (inbound) address of each flow,
               once per flow, when its attempt ends or, if it never did, when it ends;
  DNS          the query name of each query (listed domain or a subdomain of one);
  TLS          the ClientHello's SNI (as a domain), its JA3 hash and its JA4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.flows.table import Flow
from agent.host.intel import EMPTY, Intel
from common.config import Option, positive
from vigie.v1 import alert_pb2

_WHAT = {
    "ip": "traffic with an address on the indicator list",
    "dns": "DNS query for a domain on the indicator list",
    "sni": "TLS connection to a server name on the indicator list",
    "ja3": "TLS client fingerprint (JA3) on the indicator list",
    "ja4": "TLS client fingerprint (JA4) on the indicator list",
}
_KIND = {
    "ip": alert_pb2.KIND_IP,
    "dns": alert_pb2.KIND_DOMAIN,
    "sni": alert_pb2.KIND_TLS_SNI,
    "ja3": alert_pb2.KIND_JA3,
    "ja4": alert_pb2.KIND_JA4,
}


def listed_domain(name: str, domains: frozenset[str]) -> str:
    """The listed domain `name` is, or is under; "" when none."""
    if not domains or not name:
        return ""
    name = name.rstrip(".")
    while "." in name:
        if name in domains:
            return name
        name = name.split(".", 1)[1]
    return ""


# (DNS wanted, every outcome wanted): one value each, so that the pipeline sees no change
# from one tick to the next until the list's content changes.
_WANTS = {
    (dns, flows): Wants(
        app_kinds=frozenset(("dns", "tls_client_hello")),
        dns=dns,
        flow_end="unresolved",  # a flow with an outcome was matched then
        outcome_ports=None if flows else frozenset(),
    )
    for dns in (False, True)
    for flows in (False, True)
}


class Ioc(Detector):
    name = "net.ioc"
    technique = "T1071"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Indicator matches: addresses/CIDRs, domains, TLS SNI, JA3/JA4 from the intel list."
    options: ClassVar[dict[str, Option]] = {
        "check_seconds": Option(
            float, 1.0, "How often the intel file is looked at for a new bundle.", positive
        ),
        "match_flows": Option(bool, True, "Match flow addresses against the list."),
        "match_dns": Option(bool, True, "Match DNS query names against the list."),
        "match_tls": Option(bool, True, "Match TLS ClientHello SNI, JA3 and JA4."),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self._provider: Callable[[], Intel] = lambda: EMPTY
        self.intel: Intel = EMPTY
        self._next_check = float("-inf")

    def use_intel(self, provider: Callable[[], Intel]) -> None:
        """The pipeline's reader of state_dir/intel.json (or any callable snapshot)."""
        self._provider = provider
        self._next_check = float("-inf")
        self.intel = provider()  # read now: `wants` is read before the first packet

    def _refresh(self, now: float) -> Intel:
        if now >= self._next_check or now < self._next_check - 3600:  # clock stepped back
            self.intel = self._provider()
            self._next_check = now + self.settings["check_seconds"]
        return self.intel

    def on_tick(self, now: float) -> None:
        self._refresh(now)

    @property
    def wants(self) -> Wants:
        """Follows the list (the pipeline reads it every tick, after on_tick looked at the
        file): DNS messages only while it holds domains, every attempt outcome only while
        it holds addresses to match flows against, so that an empty list costs nothing."""
        intel = self.intel
        dns = bool(intel.domains) and self.settings["match_dns"]
        flows = bool(intel.ips or intel.nets) and self.settings["match_flows"]
        return _WANTS[dns, flows]

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        self._flow(flow, ts)

    def on_flow_end(self, flow: Flow) -> None:
        if not flow.outcome:  # never answered nor refused (mid-stream, one-way UDP)
            self._flow(flow, flow.last)

    def _flow(self, flow: Flow, ts: float) -> None:
        intel = self._refresh(ts)
        if not (intel.ips or intel.nets) or not self.settings["match_flows"]:
            return
        dst = ip_text(flow.dst)
        if intel.match(dst):
            client, server, value = flow.src, flow.dst, dst
        else:
            src = ip_text(flow.src)
            if not intel.match(src):
                return
            client, server, value = flow.dst, flow.src, src  # inbound from a listed address
        if self.allowed(client):
            return
        self._emit("ip", value, client, server, flow.dport, ts, intel, inbound=server == flow.src)

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None:
            return
        intel = self._refresh(p.ts)
        kind = msg.kind
        if kind == "dns":
            if msg.qr or not intel.domains or not self.settings["match_dns"]:
                return
            hit = listed_domain(msg.qname, intel.domains)
            if hit and not self.allowed(p.src):
                self._emit("dns", hit, p.src, p.dst, p.dport, p.ts, intel)
        elif kind == "tls_client_hello" and self.settings["match_tls"]:
            if self.allowed(p.src):
                return
            hit = listed_domain(msg.sni, intel.domains)
            if hit:
                self._emit("sni", msg.sni, p.src, p.dst, p.dport, p.ts, intel)
            if msg.ja3_hash and msg.ja3_hash in intel.ja3:
                self._emit("ja3", msg.ja3_hash, p.src, p.dst, p.dport, p.ts, intel)
            if msg.ja4 and msg.ja4 in intel.ja4:
                self._emit("ja4", msg.ja4, p.src, p.dst, p.dport, p.ts, intel)

    def _emit(
        self,
        what: str,
        value: str,
        client: bytes,
        server: bytes,
        port: int,
        ts: float,
        intel: Intel,
        inbound: bool = False,
    ) -> None:
        self.report(
            subject=f"{client.hex()}|{what}|{value}",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client)),
                Entity(alert_pb2.ROLE_INDICATOR, _KIND[what], value),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(server)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
            ],
            summary=_WHAT[what] + (" (inbound)" if inbound else ""),
            metrics={"intel_version": intel.version, "inbound": int(inbound)},
        )
