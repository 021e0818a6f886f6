"""net.cleartext_credentials — passwords sent where anyone on the path can read them.

FTP USER/PASS, Telnet logins and HTTP Basic authentication, as the deep decoders report
them. The alert says that it happened and where (client, server, protocol, how many
logins sent and accepted), never the credential: the decoders drop passwords unread, and
the user name only leaves as a user entity, which the anonymiser pseudonymises (or not
at all, with `report_users = false`). Anonymous FTP is not a credential and is ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import Distinct, KeyedWindow, Stamped
from common.config import Option, positive
from vigie.v1 import alert_pb2

MAX_USERS = 3  # user entities carried per alert


class _Pair(Stamped):
    __slots__ = ("accepted", "first", "sent", "users")

    def __init__(self, now: float) -> None:
        self.first = now
        self.sent = self.accepted = 0
        self.users = Distinct(64)


class _Session(Stamped):
    __slots__ = ("sent", "user")

    def __init__(self, now: float) -> None:
        self.user = ""
        self.sent = False


class CleartextCredentials(Detector):
    name = "net.cleartext_credentials"
    technique = "T1040"
    severity = alert_pb2.SEVERITY_LOW
    help = "Credentials sent in clear: FTP USER/PASS, Telnet logins, HTTP Basic authentication."
    wants = Wants(
        app_kinds=frozenset(("ftp", "telnet", "http")),
        # Of HTTP, only requests with these headers matter (Basic credentials): the engine
        # counts the others without handing them up.
        http_headers=("authorization", "proxy-authorization"),
    )
    options: ClassVar[dict[str, Option]] = {
        "protocols": Option(
            list,
            ["ftp", "telnet", "http"],
            "Protocols watched (ftp, telnet, http).",
            lambda v: next(
                (f"holds {x!r}: not ftp, telnet or http" for x in v if x not in _PROTOS), None
            ),
        ),
        "ignore_users": Option(
            list, ["anonymous", "ftp"], "User names that are not credentials (anonymous FTP)."
        ),
        "report_users": Option(
            bool, True, "Carry user names as (pseudonymised) user entities; false: never."
        ),
        "window_seconds": Option(
            float, 3600.0, "A (client, server) pair's counts are forgotten after this.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.protocols = frozenset(settings["protocols"])
        self.ignore = frozenset(str(u).lower() for u in settings["ignore_users"])
        self.pairs: KeyedWindow[_Pair] = KeyedWindow(settings["window_seconds"], _Pair, 20_000)
        self.sessions: KeyedWindow[_Session] = KeyedWindow(600.0, _Session, 20_000)

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None or flow is None:
            return
        kind = msg.kind
        if kind not in self.protocols:
            return
        if kind == "http":
            if msg.basic_auth:
                self._sent("http", p.src, p.dst, p.dport, p.ts, msg.basic_user)
            return
        ev = msg.event
        if ev == "user" or ev == "user_sent":
            self.sessions.get(flow.key, p.ts).user = msg.user
        elif ev == "password" or ev == "password_sent":
            ses = self.sessions.get(flow.key, p.ts)
            if ses.user.lower() in self.ignore:
                return
            ses.sent = True
            self._sent(kind, p.src, p.dst, p.dport, p.ts, ses.user)
        elif ev == "login_ok":
            ses = self.sessions.peek(flow.key)
            if ses is not None and ses.sent:
                ses.sent = False
                self._sent(kind, p.dst, p.src, p.sport, p.ts, ses.user, accepted=True)

    def _sent(
        self,
        proto: str,
        client: bytes,
        server: bytes,
        port: int,
        ts: float,
        user: str,
        accepted: bool = False,
    ) -> None:
        if self.allowed(client):
            return
        pair = self.pairs.get((client, server, proto), ts)
        if accepted:
            pair.accepted += 1
        else:
            pair.sent += 1
        if user:
            pair.users.add(user)
        entities = [
            Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client)),
            Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(server)),
            Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
            Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, proto),
        ]
        if self.settings["report_users"]:
            entities += [
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_USER, u)
                for u in sorted(pair.users.items)[:MAX_USERS]
            ]
        self.report(
            subject=f"{client.hex()}>{server.hex()}:{proto}",
            ts=ts,
            count=0 if accepted else 1,
            entities=entities,
            summary=(
                f"cleartext {proto.upper()} credentials: {pair.sent} login(s) sent in clear "
                f"on port {port}, {pair.accepted} accepted, {len(pair.users)} user name(s)"
            ),
            metrics={
                "logins_sent": pair.sent,
                "logins_accepted": pair.accepted,
                "distinct_users": len(pair.users),
            },
            severity=alert_pb2.SEVERITY_MEDIUM if pair.accepted else None,
        )

    def on_tick(self, now: float) -> None:
        self.pairs.expire(now)
        self.sessions.expire(now)


_PROTOS = frozenset(("ftp", "telnet", "http"))
