"""Who may see what: one analyst role narrows every read, whichever door it came through
(the gRPC analyst service or the web console). Plain code over the store, no transport.

A national analyst sees everything. A regional analyst (`regional:<code>`) sees the alerts
of their region, the incidents that involve at least one establishment of it (and, of
those, only their region's sites and alerts), and the change feed of those incidents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector.store import Store


class OutsideScope(Exception):
    """The request names a region outside the caller's role (PERMISSION_DENIED / 403)."""


@dataclass(frozen=True)
class Scope:
    role: str  # "national" or "regional:<code>", as common.identity checks it

    @property
    def national(self) -> bool:
        return self.role == "national"

    @property
    def region(self) -> str:
        """The region every query is narrowed to; "" for a national analyst."""
        return "" if self.national else self.role.removeprefix("regional:")

    def refusal(self, asked: str) -> tuple[str, str | None]:
        """(the region to query, or why the request is refused). A regional analyst sees
        only their region, whatever they ask for."""
        if self.national:
            return asked, None
        own = self.region
        if asked and asked != own:
            return own, f"region {asked[:40]!r} is outside your role"
        return own, None

    def region_for(self, asked: str) -> str:
        region, refused = self.refusal(asked)
        if refused:
            raise OutsideScope(refused)
        return region

    def sees_sites(self, sites: Iterable[dict[str, Any]]) -> bool:
        return self.national or any(s["region"] == self.region for s in sites)

    def sites(self, sites: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in sites if self.national or s["region"] == self.region]

    def sees_region(self, region: str) -> bool:
        return self.national or region == self.region

    def incident(self, store: Store, key: str, alert_limit: int = 200):
        """(row, alerts) of an incident the caller may see, its alerts narrowed to the
        role; None when it does not exist or lies outside the role (the caller cannot tell
        which: a regional analyst learns nothing of another region's incidents)."""
        found = store.get_incident(key, alert_limit)
        if found is None or not self.sees_sites(found[0]["sites"]):
            return None
        row, alerts = found
        return row, [(o, a, t) for o, a, t in alerts if self.sees_region(o.region)]

    def changes(
        self, store: Store, cursor: int, region: str = "", limit: int = 100
    ) -> tuple[list[dict], int]:
        """The next incident changes the caller may see (of `region` only, when a national
        analyst asks for one: see `region_for`), and the cursor past every change read (so
        a regional reader moves on past what they do not see)."""
        region = self.region_for(region)
        while True:
            rows = store.list_changes(cursor, limit=limit)
            if not rows:
                return [], cursor
            cursor = rows[-1]["seq"]
            if region:
                rows = [r for r in rows if any(s["region"] == region for s in r["sites"])]
            if rows:
                return rows, cursor

    def agents(self, store: Store) -> list[dict[str, Any]]:
        return [r for r in store.list_agents() if self.sees_region(r["region"])]
