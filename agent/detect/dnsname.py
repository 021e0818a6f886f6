"""Name helpers the DNS detectors share: registered domain, label entropy.

Registered domain (a deliberately simple heuristic, no public-suffix list to ship and
update): the last two labels, or the last three when the last two are a known short
public suffix (co.uk, gouv.fr, com.au...). "a.b.example.co.uk" -> "example.co.uk",
"x.pirate.sea" -> "pirate.sea". Wrong for private registries we do not list (the name
then groups one level too high), which only makes the per-domain counts coarser.
"""

from __future__ import annotations

import math
from collections import Counter

from common.suffixes import SHORT_SUFFIXES


def registered_domain(name: str) -> str:
    labels = name.rstrip(".").split(".")
    if len(labels) <= 2:
        return name
    last2 = ".".join(labels[-2:])
    if last2 in SHORT_SUFFIXES:
        return ".".join(labels[-3:])
    return last2


def entropy(s: str) -> float:
    """Shannon entropy of the characters of `s`, in bits per character."""
    n = len(s)
    if n < 2:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())
