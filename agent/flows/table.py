"""Flow records: the engine's bidirectional flow table (agent/engine), seen from Python.

The originator is whoever sent the first packet seen. The table is keyed by the
unordered 5-tuple plus VLAN and bounded (the oldest flows go first); idle flows end
after their protocol's idle timeout, and flows still active after the active timeout
are reported and go on as a fresh record. Attempt outcomes are what scan and
brute-force detectors score on; whole flows (on their end) are what IP-indicator and
session detectors consume.
"""

from __future__ import annotations

from agent.engine import (  # TCP states (`Flow.state`), numbered by the engine
    S_ATTEMPT,
    S_CLOSED,
    S_ESTABLISHED,
    S_MIDSTREAM,
    S_PROBE,
    S_REJECTED,
    Flow,
)

__all__ = ["REJECTED", "SUCCESS", "UNANSWERED", "Flow"]

# Attempt outcomes (`Flow.outcome`, and the outcome events)
SUCCESS = "success"  # handshake answered (SYN-ACK) or UDP answered
REJECTED = "rejected"  # RST (or ICMP unreachable) in answer to the attempt
UNANSWERED = "unanswered"  # TCP only: nothing came back before attempt_timeout
# A UDP attempt with no answer is no evidence either way (syslog, NTP, multicast...):
# it ends with no outcome; only an answer or an ICMP unreachable decide.

# TCP states (`Flow.state`, a small subset of Zeek's conn_state): S_ATTEMPT, S_PROBE,
# S_ESTABLISHED, S_REJECTED, S_MIDSTREAM, S_CLOSED, imported above from the engine.
__all__ += ["S_ATTEMPT", "S_CLOSED", "S_ESTABLISHED", "S_MIDSTREAM", "S_PROBE", "S_REJECTED"]

# `Flow.stealth`: how a TCP probe that opened without SYN looked
STEALTH_NULL, STEALTH_FIN, STEALTH_XMAS, STEALTH_OTHER = "null", "fin", "xmas", "other"
