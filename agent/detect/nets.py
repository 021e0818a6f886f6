"""Address and port helpers detectors share.

Whether an address is inside the establishment is not answered here: it depends on the
establishment's configured ranges, so every detector asks its `self.inside`
(agent/inside.py), which the pipeline hands it (`Detector.use_inside`).
"""

from __future__ import annotations


def is_unicast(packed: bytes) -> bool:
    if len(packed) == 4:
        return 0 < packed[0] < 224 and packed != b"\xff\xff\xff\xff"
    return packed[0] != 0xFF


def port_list(value: list) -> str | None:
    """Option check: a list of port numbers."""
    for p in value:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536:
            return f"holds {p!r}, which is not a port number"
    return None
