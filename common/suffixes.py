"""Second-level public suffixes (co.uk, gouv.fr...): where a registered domain has three
labels. The agent groups DNS names by registered domain with them; the collector refuses
them as intel domains (each would match a whole country's companies). No public-suffix
list to ship and update: the ones seen in practice from French hospitals' traffic, and the
common ones elsewhere. Extend here; the list is documented in docs/DETECTIONS.md.
"""

from __future__ import annotations

SHORT_SUFFIXES = frozenset((
    "co.uk", "org.uk", "ac.uk", "gov.uk", "nhs.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk",
    "gouv.fr", "asso.fr", "com.fr", "tm.fr", "nom.fr", "presse.fr", "com.au", "net.au",
    "org.au", "edu.au", "gov.au", "asn.au", "id.au", "co.nz", "org.nz", "govt.nz", "ac.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "com.br", "gov.br", "com.cn", "gov.cn",
    "com.hk", "com.tw", "com.sg", "com.my", "co.in", "gov.in", "co.za", "org.za", "com.mx",
    "com.ar", "com.tr", "co.kr", "co.il", "gc.ca", "qc.ca", "com.es", "gob.es", "gv.at",
    "co.at", "ac.be",
))  # fmt: skip
