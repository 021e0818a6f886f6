"""The store: one class assembled from one module per concern, each writing its queries
once for SQLite and PostgreSQL (what differs is the backend's Dialect, backends.py).

    schema.py     migrations
    alerts.py     storing alerts (and correlating them), dead letters, reading alerts
    incidents.py  incidents and their change feed, as analysts read and update them
    jobs.py       periodic jobs once across replicas; retention; the dark-site check
    audit.py      the audit trail

Each part is a mixin over the same three attributes (backend, events, correlator): one
object for the callers, every method written once, no method that only forwards.
"""

from __future__ import annotations

from typing import Any

from collector.store.alerts import AlertFilter, Alerts, Events, Origin, Stored
from collector.store.audit import Audit
from collector.store.backends import Postgres, Sqlite
from collector.store.incidents import Incidents
from collector.store.jobs import Jobs
from collector.store.schema import MIGRATIONS, Schema

__all__ = ["MIGRATIONS", "AlertFilter", "Events", "Origin", "Store", "Stored"]


class Store(Schema, Alerts, Incidents, Jobs, Audit):
    def __init__(
        self, backend: Sqlite | Postgres, correlation: dict[str, Any] | None = None
    ) -> None:
        # Imported here: the rules import the store's backends, hence this package.
        from collector.correlate.rules import OPTIONS, Correlator
        from common.config import defaults

        self.backend = backend
        self.dialect = backend.dialect.name  # "sqlite" or "postgresql", for logs and doctor
        self.events = Events()
        self.migrate()
        self.correlator = Correlator(correlation or defaults(OPTIONS), backend.dialect)
