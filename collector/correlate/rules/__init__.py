"""Correlation rules, evaluated inside the transaction that stores a batch.

One module per rule, each with its options, its matching and its incident wording (base.py
holds what they share). Adding a rule: a new module here and its class in RULES; the
configuration schema ([correlation.<name>]) is assembled from the rules' own options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.correlate.rules.base import INDICATOR_KINDS, Batch, Rule
from collector.correlate.rules.dark_site import DarkSite
from collector.correlate.rules.kill_chain import (
    DEFAULT_STAGE_DETECTORS,
    STAGES,
    KillChain,
    chain_from_spans,
    longest_ordered_stages,
)
from collector.correlate.rules.multi_site_indicator import MultiSiteIndicator
from collector.correlate.rules.wave import Wave
from collector.store.backends import Dialect, Tx, transient

__all__ = [
    "DEFAULT_STAGE_DETECTORS",
    "INDICATOR_KINDS",
    "OPTIONS",
    "RULES",
    "STAGES",
    "Correlator",
    "chain_from_spans",
    "longest_ordered_stages",
]

# Every rule, in the order they run on a batch.
RULES: list[type[Rule]] = [MultiSiteIndicator, Wave, KillChain, DarkSite]

OPTIONS: dict[str, Any] = {rule.name: rule.options for rule in RULES}


class Correlator:
    """Runs the rules: on every stored batch (those with on_ingest_rule), each isolated in
    a savepoint; the dark-site check when its job asks."""

    def __init__(self, settings: dict[str, Any], dialect: Dialect) -> None:
        self.s = settings
        self.dialect = dialect
        self.rules = {rule.name: rule(settings, dialect) for rule in RULES}
        self.on_ingest = [r for r in self.rules.values() if r.on_ingest_rule]

    def on_batch(
        self, tx: Tx, origin: Any, facts: Sequence[tuple], now: float
    ) -> list[tuple[str, Exception]]:
        """The rules over one batch just stored: facts are (alert id, detector, first_seen,
        last_seen, [(role, kind, value, pseudonymised), ...]) per alert stored. The store
        calls this batch after batch, even inside one group commit, so that grouping never
        changes which incidents open.

        Each rule runs in a savepoint of its own: a rule that fails (a bug, a value the
        database refuses) undoes only its own writes and is returned with its error, never
        raised, so that the alerts stay stored and the other rules run. Only a transient
        failure (the database itself) is raised."""
        parts = [Batch(origin, facts)]
        self.dialect.lock(tx, *(n for rule in self.on_ingest for n in rule.lock_names(parts)))
        failures: list[tuple[str, Exception]] = []
        for rule in self.on_ingest:
            if not self.s[rule.name]["enabled"]:
                continue
            try:
                with tx.savepoint():
                    rule.on_ingest(tx, parts, now)
            except Exception as exc:
                if transient(exc):
                    raise
                failures.append((rule.name, exc))
        return failures

    def run_rule(self, tx: Tx, rule: str, origin: Any, facts: Sequence[tuple], now: float) -> None:
        """One rule over stored alerts again (a dead letter's retry); raises on failure."""
        if self.s[rule]["enabled"]:
            with tx.savepoint():
                self.rules[rule].on_ingest(tx, [Batch(origin, facts)], now)

    def dark_sites(self, tx: Tx, now: float) -> int:
        """Establishments whose agents all went silent after being healthy. Returns count."""
        return self.rules["dark_site"].check(tx, now)
