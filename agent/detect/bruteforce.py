"""net.bruteforce — password guessing against authentication services, from flows.

Like Zeek's detect-bruteforcing: every failed or suspiciously short session from one
source to one authentication service feeds one windowed counter per (source, service);
crossing the threshold is brute force. A session counts when it is rejected (RST to the
SYN), or established but short: few packets, few bytes, closed quickly — what a client
that tries one or a few passwords and is thrown out looks like. "Closed" is the first FIN
or RST of the established flow (`on_close`, reported by the engine for the watched ports)
or the flow's end. Protocol-level failures (FTP 530, SMB logon failures) arrive through
`on_app` from the deep decoders.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import TCP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.nets import port_list
from agent.detect.window import Distinct, KeyedWindow, Stamped, key_of
from agent.flows.table import REJECTED, SUCCESS, Flow
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
    app_kinds = frozenset(("ftp", "telnet", "smb"))
    flow_end = "sessions"  # only sessions it holds open end here
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
            "Established sessions followed at once (bound; oldest dropped).",
            positive,
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.ports = frozenset(s["ports"])
        self.close_ports = self.ports  # on_close for the sessions followed, no others
        self.outcome_ports = self.ports  # on_outcome only counts TCP to these
        self.sources: KeyedWindow[_Guesses] = KeyedWindow(s["window_seconds"], _Guesses)
        # Established sessions on watched ports: their first packet's time, by
        # key_of(src, sport, dst, dport) (their end brings the flow and its counters).
        self.open: dict[int, float] = {}
        self.app_failed: set[int] = set()  # of those, sessions with protocol failures
        self.dropped_sessions = 0

    # events -------------------------------------------------------------------------------

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        if flow.proto != TCP or flow.dport not in self.ports or self.allowed(flow.src):
            return
        if outcome == REJECTED:
            self._count(flow, ts, "rejected")
        elif outcome == SUCCESS:
            if len(self.open) >= self.settings["max_open_sessions"]:
                oldest = next(iter(self.open))
                del self.open[oldest]
                self.app_failed.discard(oldest)
                self.dropped_sessions += 1
            self.open[key_of(flow.src, flow.sport, flow.dst, flow.dport)] = flow.first

    def on_close(self, flow: Flow, ts: float) -> None:
        if not self.open:
            return
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        if self.open.pop(key, None) is not None:
            self._ended(flow, key, ts)

    def on_flow_end(self, flow: Flow) -> None:
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        if self.open.pop(key, None) is not None:
            self._ended(flow, key, flow.last)

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
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        if key in self.open:
            self.app_failed.add(key)  # the session is counted through its failures instead
        ts = packet.ts if packet is not None else flow.last
        self._count(flow, ts, "app")

    def on_tick(self, now: float) -> None:
        self.sources.expire(now)
        limit = self.settings["short_seconds"]
        long = [k for k, first in self.open.items() if now - first > limit]
        for k in long:
            del self.open[k]  # no longer short: an ordinary session
            self.app_failed.discard(k)

    # counting -----------------------------------------------------------------------------

    def _ended(self, flow: Flow, key: int, ts: float) -> None:
        if key in self.app_failed:
            self.app_failed.discard(key)
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
