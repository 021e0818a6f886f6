"""host.login — a new interactive session (T1078, Valid Accounts).

Sessions come from utmp (psutil.users()); those open when the agent started are the
baseline. The user name, and the remote host (name or address), go out as entities the
anonymiser pseudonymises; the summary says only the terminal and local/remote.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.hooks import HostWants
from agent.host.detectors.base import HostDetector, names
from agent.host.sample import HostSample, Session
from common.config import Option
from vigie.v1 import alert_pb2


def _remote(host: str) -> Entity | None:
    h = host.strip()
    if not h or h.startswith(":") or h in ("localhost", "tmux", "screen"):
        return None  # a local display or multiplexer, not a peer
    try:
        ipaddress.ip_address(h.split("%")[0])
    except ValueError:
        return Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_HOSTNAME, h)
    return Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, h.split("%")[0])


class Login(HostDetector):
    name = "host.login"
    technique = "T1078"
    severity = alert_pb2.SEVERITY_LOW
    help = "A new interactive session (terminal, remote host), user and host pseudonymised."
    options: ClassVar[dict[str, Option]] = {
        "allow": Option(list, [], "User names (shell globs) never reported.", names),
        "remote_only": Option(bool, False, "Report only sessions from a remote host."),
    }

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        return HostWants(sessions=True)

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.known: set[Session] | None = None

    def on_host(self, sample: HostSample) -> None:
        if sample.sessions is None:
            return
        current = set(sample.sessions)
        if self.known is None:
            self.known = current  # open before the agent: the baseline
            return
        new = current - self.known
        self.known = current
        for s in sorted(new, key=lambda x: x.started):
            remote = _remote(s.host)
            if self.allowed_process(s.user) or (self.settings["remote_only"] and not remote):
                continue
            ents = [Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_USER, s.user)]
            if remote is not None:
                ents.append(remote)
            terminal = s.terminal if s.terminal.replace("/", "").isalnum() else "unknown"
            where = "remote" if remote is not None else "local"
            self.report(
                subject=f"{s.user}|{s.terminal}|{s.host}|{s.started}",
                ts=sample.ts,
                summary=f"new interactive session on {terminal or 'no terminal'} ({where})",
                entities=ents,
                metrics={"sessions": len(current), "remote": int(remote is not None)},
                severity=alert_pb2.SEVERITY_MEDIUM if s.user == "root" and remote else None,
            )
