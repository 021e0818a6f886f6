"""Alerts as plain JSON objects: the agent's --output jsonl and the analysts' --json."""

from __future__ import annotations

import datetime as dt
from typing import Any

from common.pbtime import seconds
from vigie.v1 import alert_pb2


def iso(t) -> str:
    secs = seconds(t)
    return dt.datetime.fromtimestamp(secs, dt.UTC).isoformat(timespec="milliseconds")


def severity_name(value: int) -> str:
    try:
        return alert_pb2.Severity.Name(value).removeprefix("SEVERITY_").lower()
    except ValueError:
        return str(value)


def alert_dict(a: alert_pb2.Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "revision": a.revision,
        "detector": a.detector,
        "severity": severity_name(a.severity),
        "technique": a.technique,
        "summary": a.summary,
        "entities": [
            {
                "role": alert_pb2.EntityRole.Name(e.role).removeprefix("ROLE_").lower(),
                "kind": alert_pb2.EntityKind.Name(e.kind).removeprefix("KIND_").lower(),
                "value": e.value,
                "pseudonymised": e.pseudonymised,
            }
            for e in a.entities
        ],
        "metrics": dict(sorted(a.metrics.items())),
        "occurrences": a.occurrences,
        "first_seen": iso(a.first_seen),
        "last_seen": iso(a.last_seen),
        "observed_at": iso(a.observed_at),
        "key_epoch": a.key_epoch,
    }
