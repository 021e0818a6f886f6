"""What every detector shares: declared tunables, an allow-list, a technique, a reporter.

A detector is one small class in one file (agent/detect/<name>.py). What it may declare
(`wants`, a `Wants`) and every hook it may implement (`on_packet`, `on_pairs`, `on_app`,
...) are listed, with when they are called and what they cost, in agent/detect/hooks.py.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.hooks import Wants
from agent.engine import PAIR_ICMP as PAIR_ICMP
from agent.engine import PAIR_ICMP_ERROR as PAIR_ICMP_ERROR
from agent.engine import PAIR_OTHER as PAIR_OTHER
from agent.engine import PAIR_SYN as PAIR_SYN
from agent.engine import PAIR_TCP as PAIR_TCP
from agent.engine import PAIR_UDP as PAIR_UDP
from agent.inside import BUILTIN, Inside
from common.config import Option, cidrs

Report = Callable[..., None]

# Classes of the on_pairs records, defined by the engine (engine.h) and re-exported here:
# PAIR_SYN   TCP with SYN set and ACK clear: an opening (half-open) attempt
# PAIR_TCP   any other TCP
# PAIR_UDP
# PAIR_ICMP  ICMP/ICMPv6 that is not an error message: not IPv4 types 3, 4, 5, 11, 12;
#            not ICMPv6 types 1, 2, 3, 4 or >= 133 (neighbour discovery and other
#            link-local signalling)
# PAIR_ICMP_ERROR  the rest of ICMP/ICMPv6: answers to someone else's traffic
# PAIR_OTHER  any other IP protocol


def _cidrs(value: list) -> str | None:
    return cidrs(value)


COMMON_OPTIONS: dict[str, Option] = {
    "enabled": Option(bool, True, "Run this detector."),
    "allow": Option(
        list, [], "Addresses or CIDR ranges this detector never reports as source.", _cidrs
    ),
}


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class _As:
    """The detector as the aggregator sees it, under one rule's technique."""

    __slots__ = ("name", "technique")

    def __init__(self, name: str, technique: str) -> None:
        self.name, self.technique = name, technique


class Detector:
    name: ClassVar[str]
    technique: ClassVar[str]
    severity: ClassVar[int]
    help: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    # Not a ClassVar: detectors whose wants follow their settings set it in __init__.
    wants: Wants = Wants()

    def __init__(self, settings: dict[str, Any], report: Report) -> None:
        self._report = report
        # The built-in inside until the pipeline hands the establishment's (use_inside).
        self.inside: Inside = BUILTIN
        self.set_allow(settings)

    def use_inside(self, inside: Inside) -> None:
        """The establishment's inside (agent/inside.py), from the pipeline, before any
        event: what `self.inside.is_internal(packed)` answers."""
        self.inside = inside

    def set_allow(self, settings: dict[str, Any]) -> None:
        """Take `settings`, whose allow-list may be new, keeping every other state (a
        reload that changed nothing else); the pipeline then configures the engine again,
        which reads the allow-list through engine_config()."""
        self.settings = settings
        self._allow = [ipaddress.ip_network(str(n), strict=False) for n in settings["allow"]]
        self._allow_cache: dict[bytes, bool] = {}

    @classmethod
    def schema(cls) -> dict[str, Option]:
        return COMMON_OPTIONS | cls.options

    def allowed(self, packed: bytes) -> bool:
        if not self._allow:
            return False
        hit = self._allow_cache.get(packed)
        if hit is None:
            ip = ipaddress.ip_address(packed)
            hit = any(ip in n for n in self._allow if n.version == ip.version)
            if len(self._allow_cache) > 65536:
                self._allow_cache.clear()
            self._allow_cache[packed] = hit
        return hit

    def report(
        self,
        subject: str,
        ts: float,
        summary: str,
        entities: list[Entity],
        metrics: dict[str, float],
        count: int = 1,
        severity: int | None = None,
    ) -> None:
        self._send(self, subject, ts, summary, entities, metrics, count, severity)

    def report_rule(
        self,
        technique: str,
        subject: str,
        ts: float,
        summary: str,
        entities: list[Entity],
        metrics: dict[str, float],
        count: int = 1,
        severity: int | None = None,
    ) -> None:
        """`report` under one of several techniques (a host or log detector with a rule
        per technique): aggregated and mapped as that technique."""
        as_rule = _As(self.name, technique)
        self._send(as_rule, subject, ts, summary, entities, metrics, count, severity)

    def _send(
        self, detector: Any, subject: str, ts: float, summary: str, entities: list[Entity],
        metrics: dict[str, float], count: int, severity: int | None,
    ) -> None:  # fmt: skip
        self._report(
            detector=detector,
            subject=subject,
            ts=ts,
            summary=summary,
            entities=entities,
            metrics=metrics,
            count=count,
            severity=self.severity if severity is None else severity,
        )
