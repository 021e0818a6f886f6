"""Every live scenario, one module per family; bench/livelab.py runs them.

Add a scenario: a `Scenario` in the family's module (or a new module listed here).
"""

from __future__ import annotations

from bench.livelab import Scenario
from bench.scenarios import beacon, bruteforce, classic, ordinary, recon

SCENARIOS: list[Scenario] = [
    *classic.SCENARIOS,
    *ordinary.SCENARIOS,
    *beacon.SCENARIOS,
    *beacon.SLOW,  # marked slow: minutes each
    *recon.SCENARIOS,
    *recon.SLOW,  # marked slow: a 70 s quiet check
    *bruteforce.SCENARIOS,
]
