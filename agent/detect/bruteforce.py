"""net.bruteforce — password guessing against authentication services, recognised by
protocol, not by port.

Like Zeek's detect-bruteforcing: every failed logon from one source to one authentication
service feeds one windowed counter per (source, service); crossing the threshold is brute
force. The service is the one the engine recognised from the first bytes each way of the
flow, on any port (agent/engine/authsvc.h: SSH banner, RDP X.224, SMB, TDS prelogin,
MySQL greeting, PostgreSQL startup, LDAP, Kerberos, VNC); the `ports` list is only the
fallback for sessions whose handshake was not seen. What counts, by service:
- SSH: the attempts made inside the encrypted session, inferred from the sizes and
  directions of its packets after the key exchange (agent/detect/sshauth.py), as they
  come (`on_auth`, every few packets) and when the session closes: a client trying six
  passwords per connection counts six, a session that logs in at once counts nothing;
- MySQL, PostgreSQL, LDAP, Kerberos, HTTP: each failure the server answers in clear (ERR
  1045, SQLSTATE 28P01, invalidCredentials, PREAUTH_FAILED; HTTP 401/403 on connections
  whose first request carries credentials or posts to a login path), counted by the
  engine;
- FTP, Telnet, SMB: their protocol failures (FTP 530, SMB logon failures) from the deep
  decoders (`on_app`);
- RDP, SQL Server, VNC (whose logon is encrypted), and sessions found by port only: a
  session rejected (RST to the SYN), or established but short — few packets, few bytes,
  closed quickly — what a client that tries a password and is thrown out looks like.
"Closed" is the first FIN or RST of the established flow (`on_close`) or the flow's end.

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
from agent.detect.sshauth import infer_auth
from agent.detect.window import Distinct, KeyedWindow, Stamped, key_of
from agent.engine import SERVICES as RECOGNISED
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
# Recognised services whose server answers a failed logon in clear (the engine counts it):
# a session of theirs counts by its failures, never by its shape.
CLEARTEXT = frozenset(("mysql", "postgresql", "ldap", "kerberos", "http"))
# Services recognised by handshake (agent/engine/authsvc.h), watched by default.
WATCHED = tuple(n for n in RECOGNISED if n)


def service_list(value: list) -> str | None:
    """Option check: names of services the engine recognises."""
    for v in value:
        if v not in WATCHED:
            return f"holds {v!r}, which is not one of {', '.join(WATCHED)}"
    return None


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
    __slots__ = ("app", "failures", "first", "flagged", "rejected", "short", "ssh", "targets")

    def __init__(self, now: float) -> None:
        self.first = now
        self.failures = self.rejected = self.short = self.app = self.ssh = 0
        self.targets = Distinct(1024)
        self.flagged = False


class BruteForce(Detector):
    name = "net.bruteforce"
    technique = "T1110"
    severity = alert_pb2.SEVERITY_HIGH
    help = (
        "Password guessing: failed logons to an authentication service recognised by its "
        "handshake (SSH attempts inferred inside the encrypted session), or repeated "
        "rejected or short sessions to an authentication port."
    )
    options: ClassVar[dict[str, Option]] = {
        "services": Option(
            list,
            list(WATCHED),
            "Authentication services recognised by their handshake on any port and watched "
            f"({', '.join(WATCHED)}).",
            service_list,
        ),
        "ports": Option(
            list,
            sorted(SERVICES),
            "Authentication ports watched when no handshake is recognised (SSH, FTP, Telnet, "
            "Kerberos, LDAP, SMB, databases, RDP, VNC): their rejected and short sessions.",
            port_list,
        ),
        "attempts": Option(
            int,
            10,
            "Failed logons (or failed or short sessions) from one source to one service that fire.",
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
            "Open sessions whose failures are followed as they come (bound; oldest dropped).",
            positive,
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.ports = frozenset(s["ports"])
        self.services = frozenset(s["services"])
        self.wants = Wants(
            app_kinds=frozenset(("ftp", "telnet", "smb")),
            # established sessions on its ports (or of a recognised service) that ended
            # without a close
            flow_end="sessions",
            close_ports=self.ports,  # on_close for the sessions followed, no others
            outcome_ports=self.ports,  # on_outcome only counts TCP to these
            auth=True,  # services by handshake, their failures, SSH sizes (on_auth)
        )
        self.sources: KeyedWindow[_Guesses] = KeyedWindow(s["window_seconds"], _Guesses)
        # Open sessions whose failures were counted as they came (protocol failures,
        # SSH attempts), by key_of(src, sport, dst, dport): how many so far. In order.
        self.open: dict[int, int] = {}
        self.dropped_sessions = 0
        self._now = float("-inf")  # the last tick

    # events -------------------------------------------------------------------------------

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        # no payload yet: the port is all there is
        if (
            outcome == REJECTED
            and flow.proto == TCP
            and flow.dport in self.ports
            and not self.allowed(flow.src)
        ):
            self._count(flow, ts, "rejected", SERVICES.get(flow.dport, "auth"))

    def on_close(self, flow: Flow, ts: float) -> None:
        if (svc := self._service(flow)) is not None:
            self._ended(flow, ts, svc)

    def on_flow_end(self, flow: Flow) -> None:
        # also the unresolved ends another detector asked for: only established
        # sessions no close reported, and only while young (see the module docstring)
        if flow.state == S_ESTABLISHED and not flow.closed:
            svc = self._service(flow)
            if svc is None:
                return
            if self._now - flow.first <= self.settings["short_seconds"]:
                self._ended(flow, flow.last, svc)
            else:
                key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
                if svc == "ssh" and key in self.open:
                    self._ssh(flow, flow.last)  # a long session: its attempts still count
                self.open.pop(key, None)

    def on_auth(self, flow: Flow, ts: float) -> None:
        svc = self._service(flow)
        if svc == "ssh":
            self._ssh(flow, ts)
        elif svc in CLEARTEXT:
            self._more(flow, ts, flow.auth_failures, "app", svc)

    def _service(self, flow: Flow) -> str | None:
        """The service `flow` is counted under, or None when it is not watched: the one
        recognised by its handshake, else its port's."""
        if self.allowed(flow.src):
            return None
        svc = flow.service
        if svc:
            return svc if svc in self.services else None
        if flow.proto == TCP and flow.dport in self.ports:
            return SERVICES.get(flow.dport, "auth")
        return None

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
        ts = packet.ts if packet is not None else flow.last
        svc = self._service(flow) or SERVICES.get(flow.dport, kind)
        if flow.proto == TCP and (flow.dport in self.ports or flow.service):
            # the session is counted through its failures, not again when it closes
            key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
            self._more(flow, ts, self.open.get(key, 0) + 1, "app", svc)
        else:
            self._count(flow, ts, "app", svc)

    def on_tick(self, now: float) -> None:
        self.sources.expire(now)
        self._now = now

    # counting -----------------------------------------------------------------------------

    def _more(self, flow: Flow, ts: float, total: int, how: str, svc: str) -> None:
        """The open session has had `total` failures so far: count the new ones."""
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        before = self.open.get(key)
        if before is None:
            if len(self.open) >= self.settings["max_open_sessions"]:
                del self.open[next(iter(self.open))]
                self.dropped_sessions += 1
            before = 0
        self.open[key] = max(before, total)
        for _ in range(total - before):
            self._count(flow, ts, how, svc)

    def _ssh(self, flow: Flow, ts: float) -> bool:
        """Count the SSH session's attempts inferred so far; whether it reached userauth."""
        a = infer_auth(flow.ssh_sizes)
        if a.started:
            self._more(flow, ts, a.failures, "ssh", "ssh")
        return a.started

    def _ended(self, flow: Flow, ts: float, svc: str) -> None:
        key = key_of(flow.src, flow.sport, flow.dst, flow.dport)
        if svc == "ssh" and flow.service == "ssh" and self._ssh(flow, ts):
            self.open.pop(key, None)
            return  # its attempts counted, however it looked
        if key in self.open:
            self.open.pop(key)
            return
        if svc in CLEARTEXT and flow.service:
            return  # its failures are answered in clear: a session's shape says nothing
        s = self.settings
        if (
            ts - flow.first <= s["short_seconds"]
            and flow.pkts_o + flow.pkts_r <= s["short_packets"]
            and flow.bytes_o + flow.bytes_r <= s["short_bytes"]
        ):
            self._count(flow, ts, "short", svc)

    def _count(self, flow: Flow, ts: float, how: str, service: str) -> None:
        port = flow.dport
        # by service: SSH on 22 and on 2222 from one source is one guessing
        g = self.sources.get((flow.src, service if service != "auth" else port), ts)
        g.failures += 1
        if how == "rejected":
            g.rejected += 1
        elif how == "short":
            g.short += 1
        elif how == "ssh":
            g.ssh += 1
        else:
            g.app += 1
        g.targets.add(flow.dst)
        if g.failures < self.settings["attempts"]:
            return
        first = not g.flagged
        g.flagged = True
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(flow.src))]
        if len(g.targets) == 1:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(flow.dst)))
        entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)))
        entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, service))
        what = "failed logons" if g.ssh + g.app == g.failures else "failed or short sessions"
        self.report(
            subject=f"{flow.src.hex()}:{service if service != 'auth' else port}",
            ts=ts,
            count=g.failures if first else 1,
            entities=entities,
            summary=(
                f"{service} brute force: {g.failures} {what} (port {port}) to "
                f"{len(g.targets)} host(s) in {ts - g.first:.0f} s"
            ),
            metrics={
                "failed_sessions": g.failures,
                "rejected": g.rejected,
                "short_sessions": g.short,
                "protocol_failures": g.app,
                "ssh_attempts": g.ssh,
                "distinct_targets": len(g.targets),
                "seconds": round(ts - g.first, 3),
            },
        )
