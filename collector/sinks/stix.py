"""Incidents as STIX 2.1 bundles, built with the `stix2` library, for exchange with CERTs.

One bundle holds, for each incident:
- the collector's Identity (creator of every object) and one Identity per establishment
  involved, named "FINESS <n> (GHT <g>)" (FINESS numbers are public);
- one Indicator per external indicator in its alerts (IP, domain, TLS SNI, file hash,
  JA3/JA4), its pattern checked by the STIX pattern validator;
- one Sighting per indicator, seen where (the establishments' identities), how often,
  first and last seen;
- the Incident itself, named after its rule and subject, with the incident key as an
  external reference (and the ATT&CK techniques of its alerts);
- "related-to" Relationships from the Incident to its indicators and establishments.

Every object refers to one TLP marking definition by the id STIX 2.1 predefines for it
(§7.2.1.4). The marking definition itself is left out of the bundle: the predefined object
has neither `modified` nor `created_by_ref` and must not be altered, while the OASIS
validator's interoperability profile (`--interop`) requires both on every object in a
bundle; consumers know the four predefined TLP ids. The collector's Identity names itself
as its creator (`created_by_ref` on itself), which is how that profile recognises the
producer of the other objects.

Ids are UUIDv5 of stable names (the incident key, the indicator's kind and value, the
FINESS), so exporting the same incident twice yields the same ids, and the same indicator
seen in two incidents is one Indicator with two Sightings. JA3/JA4 have no STIX Cyber
Observable type: their patterns use the custom types `x-ja3` / `x-ja4` (`value`), which
are valid patterns; a JA3 is not a file hash, so `file:hashes` would mislead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from stix2 import v21
from stix2.exceptions import STIXError
from stix2patterns.validator import run_validator

from collector.sinks.base import SinkError, indicators, status_name
from common.alertjson import severity_name
from common.files import write_atomic
from common.pbtime import seconds
from vigie.v1 import analyst_pb2

DEFAULT_IDENTITY_NAME = "Vigie national collector"
# Namespace of every Vigie STIX id: never change it, or re-exports stop matching.
NAMESPACE = uuid.UUID("5a0c7c59-0f1e-4f57-9a53-4b6d2b0c1e11")
# Identities do not change with incidents: a fixed creation time keeps them identical.
IDENTITY_CREATED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TLP = {
    "white": v21.TLP_WHITE,
    "green": v21.TLP_GREEN,
    "amber": v21.TLP_AMBER,
    "red": v21.TLP_RED,
}
_HASH_ALGOS = {32: "MD5", 40: "'SHA-1'", 64: "'SHA-256'", 128: "'SHA-512'"}
_HEX = re.compile(r"[0-9a-f]+")
MAX_COUNT = 999_999_999  # STIX 2.1 Sighting.count maximum


def stix_id(kind: str, *name: str) -> str:
    return f"{kind}--{uuid.uuid5(NAMESPACE, '|'.join((kind, *name)))}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pattern_for(kind: str, value: str) -> str | None:
    """The STIX pattern matching one indicator, or None when it has no valid one."""
    if kind == "ip":
        try:
            version = ipaddress.ip_address(value).version
        except ValueError:
            return None
        pattern = f"[ipv{version}-addr:value = {_quote(value)}]"
    elif kind in ("domain", "tls_sni"):
        pattern = f"[domain-name:value = {_quote(value)}]"
    elif kind == "hash":
        algo = _HASH_ALGOS.get(len(value))
        if algo is None or not _HEX.fullmatch(value):
            return None
        pattern = f"[file:hashes.{algo} = {_quote(value)}]"
    elif kind in ("ja3", "ja4"):
        if kind == "ja3" and not (len(value) == 32 and _HEX.fullmatch(value.lower())):
            return None
        pattern = f"[x-{kind}:value = {_quote(value)}]"
    else:
        return None
    return None if run_validator(pattern, stix_version="2.1") else pattern


def _time(ts) -> dt.datetime:
    # Millisecond precision, as STIX timestamps usually carry.
    ms = round(seconds(ts) * 1000)
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC) + dt.timedelta(milliseconds=ms % 1000)


def _site_name(finess: str, ght: str) -> str:
    return f"FINESS {finess} (GHT {ght})" if ght else f"FINESS {finess}"


class _Builder:
    """Accumulates the objects of one bundle, merging those shared between incidents."""

    def __init__(self, identity_name: str, tlp: str) -> None:
        if tlp not in TLP:
            raise ValueError(f"tlp must be one of {', '.join(TLP)}, got {tlp!r}")
        self.marking = TLP[tlp]
        self.creator = v21.Identity(
            id=stix_id("identity", "collector", identity_name),
            created=IDENTITY_CREATED,
            modified=IDENTITY_CREATED,
            name=identity_name,
            identity_class="system",
            sectors=["healthcare"],
            # The producer refers to itself: the interop profile accepts as creator only
            # an identity that carries created_by_ref.
            created_by_ref=stix_id("identity", "collector", identity_name),
            object_marking_refs=[self.marking.id],
        )
        self.sites: dict[str, tuple[str, str]] = {}  # finess -> (ght, region)
        # (kind, value) -> [first seen, last seen]
        self.seen: dict[tuple[str, str], list[dt.datetime]] = {}
        self.objects: dict[str, object] = {}
        self.keys: list[str] = []

    def common(self) -> dict:
        return {"created_by_ref": self.creator.id, "object_marking_refs": [self.marking.id]}

    def add(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        self.keys.append(f"{incident.key}:{incident.seq}")
        for s in incident.sites:
            self.sites.setdefault(s.finess, (s.ght, s.region))
        for a in alerts:
            if a.origin.finess:
                self.sites.setdefault(a.origin.finess, (a.origin.ght, a.origin.region))
        created = _time(incident.first_seen)
        modified = max(
            created,
            _time(incident.last_seen),
            _time(incident.status_at) if incident.HasField("status_at") else created,
        )
        incident_id = stix_id("incident", incident.key)
        related: list[str] = []

        for kind, value in indicators(alerts):
            if pattern_for(kind, value) is None:
                continue
            carrying = [a for a in alerts if _carries(a, kind, value)]
            first = min(_time(a.alert.first_seen) for a in carrying)
            last = max(max(_time(a.alert.last_seen) for a in carrying), first)
            window = self.seen.setdefault((kind, value), [first, last])
            window[0], window[1] = min(window[0], first), max(window[1], last)
            indicator_id = stix_id("indicator", kind, value)
            related.append(indicator_id)
            where = sorted({stix_id("identity", "site", a.origin.finess) for a in carrying})
            sighting = v21.Sighting(
                id=stix_id("sighting", incident.key, kind, value),
                created=created,
                modified=max(created, last),
                sighting_of_ref=indicator_id,
                where_sighted_refs=where or None,
                count=min(MAX_COUNT, sum(max(1, a.alert.occurrences) for a in carrying)),
                first_seen=first,
                last_seen=last,
                description=f"Seen in Vigie incident {incident.key}",
                external_references=[{"source_name": "vigie", "external_id": incident.key}],
                **self.common(),
            )
            self.objects[sighting.id] = sighting

        finesses = sorted({s.finess for s in incident.sites} | _origins(alerts))
        related += [stix_id("identity", "site", f) for f in finesses]
        techniques = sorted({a.alert.technique for a in alerts if a.alert.technique})
        references = [
            {
                "source_name": "vigie",
                "external_id": incident.key,
                "description": f"Vigie incident key; this export is change seq {incident.seq}",
            }
        ] + [
            # No url: STIX wants a url to come with hashes of what it points to, which a
            # living web page cannot have; ATT&CK-aware tools match on external_id.
            {"source_name": "mitre-attack", "external_id": t}
            for t in techniques
        ]
        severity = severity_name(incident.severity)
        status = status_name(incident.status)
        description = (
            (f"{incident.summary}\n" if incident.summary else "")
            + f"Severity: {severity}. Status: {status}. Alerts: {incident.alert_count}. "
            + (f"Establishments: {len(finesses)}.")
        )
        stix_incident = v21.Incident(
            id=incident_id,
            created=created,
            modified=modified,
            name=f"{incident.rule}: {incident.subject}",
            description=description,
            labels=[incident.rule, f"severity-{severity}", f"status-{status}"],
            external_references=references,
            **self.common(),
        )
        self.objects[stix_incident.id] = stix_incident
        for target in related:
            rel = v21.Relationship(
                id=stix_id("relationship", incident.key, target),
                created=created,
                modified=created,
                relationship_type="related-to",
                source_ref=incident_id,
                target_ref=target,
                **self.common(),
            )
            self.objects[rel.id] = rel

    def build(self) -> str:
        objects: list[object] = [self.creator]  # the TLP marking: see the module docstring
        for finess, (ght, region) in sorted(self.sites.items()):
            objects.append(
                v21.Identity(
                    id=stix_id("identity", "site", finess),
                    created=IDENTITY_CREATED,
                    modified=IDENTITY_CREATED,
                    name=_site_name(finess, ght),
                    description=f"Health establishment, region {region}" if region else None,
                    identity_class="organization",
                    sectors=["healthcare"],
                    **self.common(),
                )
            )
        for (kind, value), (first, last) in sorted(self.seen.items()):
            objects.append(
                v21.Indicator(
                    id=stix_id("indicator", kind, value),
                    created=first,
                    modified=last,
                    name=f"{kind} {value}",
                    description="External indicator seen by Vigie agents in health establishments",
                    indicator_types=["anomalous-activity"],
                    pattern=pattern_for(kind, value),
                    pattern_type="stix",
                    pattern_version="2.1",
                    valid_from=first,
                    **self.common(),
                )
            )
        objects += [self.objects[k] for k in sorted(self.objects)]
        bundle_id = stix_id("bundle", *sorted(self.keys))
        return v21.Bundle(id=bundle_id, objects=objects).serialize()


def _carries(stored: analyst_pb2.StoredAlert, kind: str, value: str) -> bool:
    return (kind, value) in indicators([stored])


def _origins(alerts: Sequence[analyst_pb2.StoredAlert]) -> set[str]:
    return {a.origin.finess for a in alerts if a.origin.finess}


def bundle(
    incidents_with_alerts: Iterable[tuple[analyst_pb2.Incident, Sequence[analyst_pb2.StoredAlert]]],
    *,
    identity_name: str = DEFAULT_IDENTITY_NAME,
    tlp: str = "amber",
) -> str:
    """A STIX 2.1 bundle (JSON text) of incidents and their alerts.

    Used by the STIX sink (one incident per bundle) and by the ExportStix RPC (many).
    Deterministic: the same incidents and alerts give the same text.
    """
    builder = _Builder(identity_name, tlp)
    for incident, alerts in incidents_with_alerts:
        builder.add(incident, alerts)
    return builder.build()


def file_name(key: str, seq: int) -> str:
    """`<key>--<seq>.json`, the key made file-safe (with a hash when that changed it)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:150].lstrip(".") or "incident"
    if safe != key:
        safe += "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return f"{safe}--{seq:012d}.json"


class StixSink:
    name = "stix"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        identity_name: str = DEFAULT_IDENTITY_NAME,
        tlp: str = "amber",
    ) -> None:
        if tlp not in TLP:
            raise ValueError(f"tlp must be one of {', '.join(TLP)}, got {tlp!r}")
        self.directory = Path(directory)
        self.identity_name = identity_name
        self.tlp = tlp
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def send(
        self, incident: analyst_pb2.Incident, alerts: Sequence[analyst_pb2.StoredAlert]
    ) -> None:
        try:
            text = bundle([(incident, alerts)], identity_name=self.identity_name, tlp=self.tlp)
        except (STIXError, ValueError) as exc:
            raise SinkError(f"stix: cannot build a bundle for {incident.key}: {exc}") from exc
        target = self.directory / file_name(incident.key, incident.seq)
        with self._lock:
            try:
                write_atomic(target, text.encode("utf-8"), 0o640)
            except OSError as exc:
                raise SinkError(f"stix: cannot write {target}: {exc}") from exc

    def close(self) -> None:
        pass
