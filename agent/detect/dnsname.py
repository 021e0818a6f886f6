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

# Second-level public suffixes seen in practice from French hospitals' traffic, and the
# common ones elsewhere. Extend here; the list is documented in docs/DETECTIONS.md.
SHORT_SUFFIXES = frozenset((
    "co.uk", "org.uk", "ac.uk", "gov.uk", "nhs.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk",
    "gouv.fr", "asso.fr", "com.fr", "tm.fr", "nom.fr", "presse.fr", "com.au", "net.au",
    "org.au", "edu.au", "gov.au", "asn.au", "id.au", "co.nz", "org.nz", "govt.nz", "ac.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "com.br", "gov.br", "com.cn", "gov.cn",
    "com.hk", "com.tw", "com.sg", "com.my", "co.in", "gov.in", "co.za", "org.za", "com.mx",
    "com.ar", "com.tr", "co.kr", "co.il", "gc.ca", "qc.ca", "com.es", "gob.es", "gv.at",
    "co.at", "ac.be",
))  # fmt: skip


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
