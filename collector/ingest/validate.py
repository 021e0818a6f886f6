"""What an agent may send. Anything else is refused with INVALID_ARGUMENT, naming the field."""

from __future__ import annotations

import re
import time

from common.pbtime import seconds as _ts
from vigie.v1 import alert_pb2

MAX_ALERTS_PER_BATCH = 1000
MAX_ENTITIES = 64
MAX_METRICS = 64
# \Z, not $: "$" also matches before a trailing newline ("a1\n" passed as an id).
# [0-9], not \d: \d takes any Unicode digit.
ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
DETECTOR_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]{1,62}\Z")
TECHNIQUE_RE = re.compile(r"^T[0-9]{4}(\.[0-9]{3})?\Z")
EARLIEST = 946684800.0  # 2000-01-01: no capture of ours is older
FUTURE_SLACK = 86400.0  # clocks drift; a day ahead is an error, not drift


# Computed once: .values() builds a new list at every call, on the hot path.
SEVERITIES = frozenset(v for v in alert_pb2.Severity.values() if v)
ROLES = frozenset(v for v in alert_pb2.EntityRole.values() if v)
KINDS = frozenset(v for v in alert_pb2.EntityKind.values() if v)


class Invalid(ValueError):
    pass


def check_alert(a: alert_pb2.Alert, i: int, now: float | None = None) -> None:
    now = time.time() if now is None else now
    where = f"alerts[{i}]"
    if not ID_RE.match(a.id):
        raise Invalid(f"{where}.id must be 1-128 characters of [A-Za-z0-9._:-]")
    if not DETECTOR_RE.match(a.detector):
        raise Invalid(f"{where}.detector is not a detector name")
    if a.severity not in SEVERITIES:
        raise Invalid(f"{where}.severity {a.severity} is not a known severity")
    if a.technique and not TECHNIQUE_RE.match(a.technique):
        raise Invalid(f"{where}.technique must be a MITRE ATT&CK id such as T1046")
    if not a.summary or len(a.summary) > 1024:
        raise Invalid(f"{where}.summary must hold 1-1024 characters")
    if a.occurrences < 1:
        raise Invalid(f"{where}.occurrences must be at least 1")
    for name in ("first_seen", "last_seen", "observed_at"):
        t = _ts(getattr(a, name))
        if not EARLIEST <= t <= now + FUTURE_SLACK:
            raise Invalid(f"{where}.{name} is out of range")
    if _ts(a.last_seen) < _ts(a.first_seen):
        raise Invalid(f"{where}.last_seen is before first_seen")
    if len(a.entities) > MAX_ENTITIES:
        raise Invalid(f"{where}.entities holds more than {MAX_ENTITIES} entries")
    for j, e in enumerate(a.entities):
        if e.role not in ROLES:
            raise Invalid(f"{where}.entities[{j}].role is not a known role")
        if e.kind not in KINDS:
            raise Invalid(f"{where}.entities[{j}].kind is not a known kind")
        if not e.value or len(e.value) > 512:
            raise Invalid(f"{where}.entities[{j}].value must hold 1-512 characters")
    if len(a.metrics) > MAX_METRICS:
        raise Invalid(f"{where}.metrics holds more than {MAX_METRICS} entries")
    for k, v in a.metrics.items():
        if not k or len(k) > 64 or v != v or v in (float("inf"), float("-inf")):
            raise Invalid(f"{where}.metrics[{k[:64]!r}] must be a finite number under a short name")


def check_batch(alerts, now: float | None = None) -> None:
    if not alerts:
        raise Invalid("batch.alerts is empty")
    if len(alerts) > MAX_ALERTS_PER_BATCH:
        raise Invalid(f"batch.alerts holds more than {MAX_ALERTS_PER_BATCH} alerts")
    seen = set()
    for i, a in enumerate(alerts):
        check_alert(a, i, now)
        if a.id in seen:
            raise Invalid(f"alerts[{i}].id is repeated within the batch")
        seen.add(a.id)
