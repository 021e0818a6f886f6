"""The per-packet path, in C (`_engine.c`): capture-file walking, frame decoding, the
flow table, and the counters detectors read instead of packets; `Scan` is net.portscan's
per-source state, scored by the engine (scan.c).

Python sees a packet only when a detector declared that it wants it; everything else
arrives as events and per-tick counters. `Engine`'s docstrings list them.
"""

from agent.engine._engine import (
    END_ALL,
    END_DEEP,
    END_SESSIONS,
    END_UNRESOLVED,
    EV_CLOSE,
    EV_DGA,
    EV_DNS,
    EV_DNS_TUNNEL,
    EV_END,
    EV_OUTCOME,
    EV_PACKET,
    EV_SCAN,
    PAIRS_FLOODS,
    PAIRS_OUTBOUND,
    REASONS,
    Engine,
    Flow,
    Packet,
    Scan,
    Table,
    decode,
    parse_dns,
)

__all__ = [
    "END_ALL",
    "END_DEEP",
    "END_SESSIONS",
    "END_UNRESOLVED",
    "EV_CLOSE",
    "EV_DGA",
    "EV_DNS",
    "EV_DNS_TUNNEL",
    "EV_END",
    "EV_OUTCOME",
    "EV_PACKET",
    "EV_SCAN",
    "PAIRS_FLOODS",
    "PAIRS_OUTBOUND",
    "REASONS",
    "Engine",
    "Flow",
    "Packet",
    "Scan",
    "Table",
    "decode",
    "parse_dns",
]
