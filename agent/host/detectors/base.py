"""What host detectors share on top of agent.detect.base.Detector.

A host detector implements `on_host(sample)`; the pipeline calls it from its own thread
with each sample the sampler queued. It declares what the sampler must read for it with
`sampler_wants(settings)` (a `HostWants`, agent/detect/hooks.py): the sampler reads only
what the enabled detectors declared. Its allow-list holds process base names (shell
globs), not addresses; everything else (declared options, report, technique) is the
network detectors' own.
"""

from __future__ import annotations

import fnmatch
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector
from agent.detect.hooks import HostWants
from agent.host.sample import HostSample
from common.config import Option
from vigie.v1 import alert_pb2


def names(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or not item.strip():
            return f"holds {item!r}, which is not a name"
    return None


HOST_COMMON: dict[str, Option] = {
    "enabled": Option(bool, True, "Run this detector (needs [host] enabled)."),
    "allow": Option(
        list, [], "Process base names (shell globs) this detector never reports.", names
    ),
}


class HostDetector(Detector):
    options: ClassVar[dict[str, Option]] = {}

    def set_allow(self, settings: dict[str, Any]) -> None:
        # Not Detector's: this allow-list holds process names, not CIDR ranges.
        self.settings = settings
        self._allow_names = [str(n).lower() for n in settings["allow"]]

    @classmethod
    def schema(cls) -> dict[str, Option]:
        return HOST_COMMON | cls.options

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        """What the sampler must read for this detector at these settings (the process
        table is always read)."""
        return HostWants()

    def allowed_process(self, base: str) -> bool:
        b = base.lower()
        return any(fnmatch.fnmatchcase(b, pat) for pat in self._allow_names)

    def on_host(self, sample: HostSample) -> None:
        raise NotImplementedError


def process_entities(base: str, username: str = "") -> list[Entity]:
    """A process as an alert may name it: base name in clear, owner pseudonymised."""
    out = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_PROCESS, base)]
    if username:
        out.append(Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_USER, username))
    return out


def subject(*parts: object) -> str:
    # Subjects stay inside the agent (aggregation keys), but keep them free of argv.
    return "|".join(str(p) for p in parts)
