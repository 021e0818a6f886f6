"""What log detectors share. A log detector implements `on_log(event)` (a `LogEvent`,
agent/logs/event.py), called in the pipeline's thread in the order the lines were written,
and may keep learned state like the network detectors (`learned`/`restore`). Its
allow-list holds user names, source addresses or CIDR ranges, and names (units, groups,
paths) as shell globs: an event any of whose fields it matches is never reported."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector
from agent.logs.event import LogEvent
from common.config import Option, positive
from vigie.v1 import alert_pb2


def _names_or_ranges(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or not item.strip():
            return f"holds {item!r}, which is not a name, address or range"
    return None


LOG_COMMON: dict[str, Option] = {
    "enabled": Option(bool, True, "Run this detector (needs [logs] enabled)."),
    "allow": Option(
        list,
        [],
        "Never reported: user names, source addresses or CIDR ranges, unit, group or path "
        "names (shell globs).",
        _names_or_ranges,
    ),
}
LEARNING = Option(
    float,
    7 * 86400.0,
    "Seconds of logs to learn what is usual before anything new is reported (kept in "
    "state_dir/learned across restarts).",
    lambda v: None if v >= 0 else "must be at least 0",
)
WINDOW = Option(float, 600.0, "Seconds a count runs over.", positive)


def entities(ev: LogEvent, user_role: int = alert_pb2.ROLE_TARGET) -> list[Entity]:
    """The event's source (address or host name) and user, for the anonymiser to
    pseudonymise; the service in clear."""
    out: list[Entity] = []
    if ev.source:
        out.append(Entity(alert_pb2.ROLE_SOURCE, source_kind(ev.source), ev.source))
    if ev.user:
        out.append(Entity(user_role, alert_pb2.KIND_USER, ev.user))
    if ev.service:
        out.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, ev.service))
    return out


@functools.lru_cache(maxsize=4096)  # a guessing source reports at every failure
def source_kind(source: str) -> int:
    try:
        ipaddress.ip_address(source.split("%")[0])
    except ValueError:
        return alert_pb2.KIND_HOSTNAME
    return alert_pb2.KIND_IP


class LogDetector(Detector):
    options: ClassVar[dict[str, Option]] = {}

    @classmethod
    def schema(cls) -> dict[str, Option]:
        return LOG_COMMON | cls.options

    def set_allow(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._nets = []
        self._globs = []
        for item in settings["allow"]:
            try:
                self._nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._globs.append(item.lower())

    def allowed_event(self, ev: LogEvent, *more: str) -> bool:
        if ev.source and self._nets:
            try:
                ip = ipaddress.ip_address(ev.source.split("%")[0])
                if any(ip in n for n in self._nets if n.version == ip.version):
                    return True
            except ValueError:
                pass
        if self._globs:
            for v in (ev.user, ev.source, ev.detail, *more):
                if v and any(fnmatch.fnmatchcase(v.lower(), g) for g in self._globs):
                    return True
        return False

    def on_log(self, ev: LogEvent) -> None:
        raise NotImplementedError


class Learning:
    """When learning started (the first event's time), kept with the learned state."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None

    def learning(self, ts: float) -> bool:
        if self.since is None:
            self.since = ts
        return ts - self.since < self.seconds
