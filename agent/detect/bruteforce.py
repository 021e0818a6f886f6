"""net.bruteforce — password guessing against authentication services, from flows.

Like Zeek's detect-bruteforcing: every failed or suspiciously short session from one
source to one authentication service feeds one windowed counter per (source, service);
crossing the threshold is brute force. A session counts when it is rejected (RST to the
SYN), or established but short: few packets, few bytes, closed quickly — what a client
that tries one or a few passwords and is thrown out looks like. "Closed" is the first FIN
or RST of the established flow (`on_close`, reported by the engine for the watched ports)
or the flow's end. Protocol-level failures (FTP 530, SMB logon failures) arrive through
`on_app` from the deep decoders.

No state is kept per session: the flow brings its counters and first packet's time to
`on_close`, and the engine reports the end only of sessions no FIN or RST closed. A
session that ends without a close is counted only if it was still young at the last tick
(an idle pooled database connection expiring minutes later is not a failed guess).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import TCP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import port_list
from agent.detect.window import Distinct, KeyedWindow, Stamped, key_of
from agent.flows.table import REJECTED, S_ESTABLISHED, Flow
from common.config import Option, positive
from vigie.v1 import alert_pb2

SERVICES = {
    22: "ssh",
    21: "ftp",
    23: "telnet",
    88: "kerberos",
    389: "ldap",
    445: "smb",
    636: "ldaps",
    1433: "mssql",
    3306: "mysql",
    3389: "rdp",
    5432: "postgresql",
    5900: "vnc",
}
# NTSTATUS values an SMB server answers a failed logon with.
SMB_LOGON_FAILURES = frozenset(
    (
        0xC000006D,  # STATUS_LOGON_FAILURE
        0xC000006A,  # STATUS_WRONG_PASSWORD
        0xC0000064,  # STATUS_NO_SUCH_USER
        0xC000006E,  # STATUS_ACCOUNT_RESTRICTION
        0xC0000072,  # STATUS_ACCOUNT_DISABLED
        0xC0000234,  # STATUS_ACCOUNT_LOCKED_OUT
        0xC0000071,  # STATUS_PASSWORD_EXPIRED
    )
)


class _Guesses(Stamped):
    __slots__ = ("app", "failures", "first", "flagged", "rejected", "short", "targets")

    def __init__(self, now: float) -> None:
        self.first = now
        self.failures = self.rejected = self.short = self.app = 0
        self.targets = Distinct(1024)
        self.flagged = False


class BruteForce(Detector):
    name = "net.bruteforce"
    technique = "T1110"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Password guessing: repeated rejected or short sessions to an authentication port."
    options: ClassVar[dict[str, Option]] = {
        "ports": Option(
            list,
            sorted(SERVICES),
            "Authentication service ports watched (SSH, FTP, Telnet, Kerberos, LDAP, SMB, "
            "databases, RDP, VNC).",
            port_list,
        ),
        "attempts": Option(
            int,
            10,
            "Failed or short sessions from one source to one service that fire.",
            positive,
        ),
        "window_seconds": Option(
            float, 600.0, "A source's count is forgotten after this much silence.", positive
        ),
        "short_seconds": Option(
            float, 30.0, "An established session closed within this is short.", positive
        ),
        "short_packets": Option(
            int, 60, "...and carrying at most this many packets (both ways).", positive
        ),
        "short_bytes": Option(int, 20000, "...and at most this many bytes (both ways).", positive),
        "max_open_sessions": Option(
            int,
            50000,
            "Open sessions with protocol logon failures followed at once (bound; oldest dropped).",
            positive,
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.ports = frozenset(s["ports"])
        self.wants = Wants(
            app_kinds=frozenset(("ftp", "telnet", "smb")),
            # established sessions on its ports that ended without a close
            flow_end="sessions",
            close_ports=self.ports,  # on_close for the sessions followed, no others
            outcome_ports=self.ports,  # on_outcome only counts TCP to these
        )
        self.sources: KeyedWindow[_Guesses] = KeyedWindow(s["window_seconds"], _Guesses)
        # Open sessions already counted through their protocol failures (on_app), by
        # key_of(src, sport, dst, dport): their close is not counted again. In order.
        self.app_failed: dict[int, None] = {}
        self.dropped_sessions = 0
        self._now = float("-inf")  # the last tick

    # events -------------------------------------------------------------------------------

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        if outcome == REJECTED and self._watched(flow):
            self._count(flow, ts, "rejected")

    def on_close(self, flow: Flow, ts: float) -> None:
        if self._watched(flow):
            self._ended(flow, ts)

    def on_flow_end(self, flow: Flow) -> None:
        # also the unresolved ends another detector asked for: only established
        # sessions no close reported, and only while young (see the module docstring)
        if flow.state == S_ESTABLISHED and not flow.closed and self._watched(flow):
            if self._now - flow.first <= self.settings["short_seconds"]:
                self._ended(flow, flow.last)
            else:
                self.app_failed.pop(key_of(flow.src, flow.sport, flow.dst, flow.dport), None)

    def _watched(self, flow: Flow) -> bool:
        return flow.proto == TCP and flow.dport in self.ports and not self.allowed(flow.src)

    def on_app(self, msg: Any, flow: Flow | None, packet: Packet | None) -> None:
        """Protocol-level logon failures from the deep decoders, duck-typed (no import):
        kind "ftp" or "telnet" with a true `login_failed` or `event == "login_failed"`;
        kind "smb" with `action == "logon_failure"`, a true `logon_failed`, or a
        logon-failure NTSTATUS in `status`."""
        if flow is None:
            return
        kind = getattr(msg, "kind", None)
        if kind == "ftp" or kind == "telnet":
            failed = bool(getattr(msg, "login_failed", False)) or (
                getattr(msg, "event", "") == "login_failed"
            )
        elif kind == "smb":
            failed = (
                bool(getattr(msg, "logon_failed", False))
                or getattr(msg, "action", "") == "logon_failure"
                or getattr(msg, "status", None) in SMB_LOGON_FAILURES
            )
        else:
            return
        if not failed or self.allowed(flow.src):
            return
        if flow.proto == TCP and flow.dport in self.ports:
            # the session is counted through its failures, not again when it closes
            if len(self.app_failed) >= self.settings["max_open_sessions"]:
                del self.app_failed[next(iter(self.app_failed))]
                self.dropped_sessions += 1
            self.app_failed[key_of(flow.src, flow.sport, flow.dst, flow.dport)] = None
        ts = packet.ts if packet is not None else flow.last
        self._count(flow, ts, "app")

    def on_tick(self, now: float) -> None:
        self.sources.expire(now)
        self._now = now

    # counting -----------------------------------------------------------------------------

    def _ended(self, flow: Flow, ts: float) -> None:
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        if key in self.app_failed:
            del self.app_failed[key]
            return
        s = self.settings
        if (
            ts - flow.first <= s["short_seconds"]
            and flow.pkts_o + flow.pkts_r <= s["short_packets"]
            and flow.bytes_o + flow.bytes_r <= s["short_bytes"]
        ):
            self._count(flow, ts, "short")

    def _count(self, flow: Flow, ts: float, how: str) -> None:
        g = self.sources.get((flow.src, flow.dport), ts)
        g.failures += 1
        if how == "rejected":
            g.rejected += 1
        elif how == "short":
            g.short += 1
        else:
            g.app += 1
        g.targets.add(flow.dst)
        if g.failures < self.settings["attempts"]:
            return
        first = not g.flagged
        g.flagged = True
        service = SERVICES.get(flow.dport, "auth")
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(flow.src))]
        if len(g.targets) == 1:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(flow.dst)))
        entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(flow.dport)))
        entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, service))
        self.report(
            subject=f"{flow.src.hex()}:{flow.dport}",
            ts=ts,
            count=g.failures if first else 1,
            entities=entities,
            summary=(
                f"{service} brute force: {g.failures} failed or short sessions on port "
                f"{flow.dport} to {len(g.targets)} host(s) in {ts - g.first:.0f} s"
            ),
            metrics={
                "failed_sessions": g.failures,
                "rejected": g.rejected,
                "short_sessions": g.short,
                "protocol_failures": g.app,
                "distinct_targets": len(g.targets),
                "seconds": round(ts - g.first, 3),
            },
        )
