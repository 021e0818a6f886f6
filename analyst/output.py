"""How the analysts' commands show what the collector answered: text tables for a terminal,
one JSON object per line for scripts. Nothing here talks to the collector."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any

from common.alertjson import alert_dict, iso, severity_name
from common.identity import status_name
from vigie.v1 import alert_pb2

SEV_TAG = {"critical": "CRIT", "high": "HIGH", "medium": "MED", "low": "LOW", "info": "INFO"}
SEV_COLOUR = {
    "CRIT": "\033[1;37;41m",
    "HIGH": "\033[1;31m",
    "MED": "\033[33m",
    "LOW": "\033[36m",
    "INFO": "\033[2m",
}


def _local(t: Any) -> str:
    secs = t.seconds + t.nanos / 1e9
    return dt.datetime.fromtimestamp(secs).astimezone().strftime("%Y-%m-%d %H:%M")


def _local_hour(key: str) -> str:
    return dt.datetime.fromtimestamp(int(key)).astimezone().strftime("%Y-%m-%d %H:00")


def _sev(name: str, colour: bool) -> str:
    tag = SEV_TAG.get(name, name.upper()[:4])
    return f"{SEV_COLOUR[tag]}{tag:<4}\033[0m" if colour and tag in SEV_COLOUR else f"{tag:<4}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _width() -> int:
    return max(80, shutil.get_terminal_size((80, 24)).columns)


def print_alerts(items: Sequence[Any], as_json: bool, colour: bool) -> None:
    if as_json:
        for it in items:
            d = alert_dict(it.alert)
            d["origin"] = {
                "agent_id": it.origin.agent_id,
                "finess": it.origin.finess,
                "ght": it.origin.ght,
                "region": it.origin.region,
            }
            print(json.dumps(d, separators=(",", ":")))
        return
    width = _width()
    # One header line per alert, then what happened and who was involved, indented:
    # fits 80 columns without cutting the site or the summary short.
    print(f"{'LAST SEEN':<16}  {'SEV':<4}  {'DETECTOR':<18}  {'GHT / FINESS':<26}  COUNT")
    for it in items:
        a = it.alert
        site = f"{it.origin.ght} / {it.origin.finess}"
        print(
            f"{_local(a.last_seen):<16}  {_sev(severity_name(a.severity), colour)}  "
            f"{_fit(a.detector, 18):<18}  {_fit(site, 26):<26}  {a.occurrences:>5}"
        )
        print(_fit(f"    {a.summary}", width))
        ents = "  ".join(
            f"{alert_pb2.EntityRole.Name(e.role).removeprefix('ROLE_').lower()}="
            f"{e.value}{'*' if e.pseudonymised else ''}"
            for e in a.entities
        )
        print(_fit(f"    {a.technique}  {ents}", width))
    if not items:
        print("(no alerts)")
    else:
        print("* pseudonymised by the agent (internal address, host or user name)")


def print_agents(agents: Sequence[Any], as_json: bool) -> None:
    if as_json:
        for a in agents:
            print(
                json.dumps(
                    {
                        "agent_id": a.origin.agent_id,
                        "name": a.name,
                        "host": a.host_label,
                        "finess": a.origin.finess,
                        "ght": a.origin.ght,
                        "region": a.origin.region,
                        "last_seen": _local(a.last_seen),
                        "version": a.agent_version,
                        "packets_dropped": a.packets_dropped,
                        "outbox_depth": a.outbox_depth,
                        "outbox_shed": a.outbox_shed,
                        "dead_letters": a.dead_letters,
                        "silent": a.silent,
                    }
                )
            )
        return
    # Columns as wide as their longest value: a GHT or an agent id cut short is the one
    # an operator then cannot find. HOST is the agent's pseudonymised host name (its
    # site maps it back), NAME the operator's (vigie-collector agent rename).
    agent_w = max([5, *(len(a.origin.agent_id) for a in agents)])
    name_w = max([4, *(len(a.name or a.host_label) for a in agents)])
    ght_w = max([3, *(len(a.origin.ght) for a in agents)])
    print(
        f"{'STATE':<7} {'LAST SEEN':<16} {'AGENT':<{agent_w}} {'NAME/HOST':<{name_w}} "
        f"{'GHT':<{ght_w}} {'FINESS':<9} {'VERSION':<10} {'DROPS':>7} {'BACKLOG':>8} {'HELD':>5}"
    )
    for a in agents:
        # HELD: alerts of this agent the collector could not store (its dead letters).
        print(
            f"{'SILENT' if a.silent else 'ok':<7} {_local(a.last_seen):<16} "
            f"{a.origin.agent_id:<{agent_w}} {a.name or a.host_label or '-':<{name_w}} "
            f"{a.origin.ght:<{ght_w}} {a.origin.finess:<9} {_fit(a.agent_version, 10):<10} "
            f"{a.packets_dropped:>7} {a.outbox_depth:>8} {a.dead_letters:>5}"
        )
    if not agents:
        print("(no agents)")


def incident_dict(inc: Any) -> dict[str, Any]:
    return {
        "key": inc.key,
        "rule": inc.rule,
        "subject": inc.subject,
        "severity": severity_name(inc.severity),
        "status": status_name(inc.status),
        "status_by": inc.status_by,
        "status_comment": inc.status_comment,
        "first_seen": iso(inc.first_seen),
        "last_seen": iso(inc.last_seen),
        "summary": inc.summary,
        "alert_count": inc.alert_count,
        "seq": inc.seq,
        "sites": [{"finess": s.finess, "ght": s.ght, "region": s.region} for s in inc.sites],
    }


def print_incidents(items: Sequence[Any], as_json: bool, colour: bool, header: bool = True) -> None:
    if as_json:
        # Flushed line by line: `vigie watch --json` feeds other programs as incidents come.
        for inc in items:
            print(json.dumps(incident_dict(inc), separators=(",", ":")), flush=True)
        return
    width = _width()
    if header:
        print(
            f"{'LAST SEEN':<16}  {'SEV':<4}  {'STATUS':<12}  {'RULE':<20}  {'SITES':>5}  "
            f"{'ALERTS':>6}"
        )
    for inc in items:
        print(
            f"{_local(inc.last_seen):<16}  {_sev(severity_name(inc.severity), colour)}  "
            f"{status_name(inc.status):<12}  {_fit(inc.rule, 20):<20}  "
            f"{len(inc.sites):>5}  {inc.alert_count:>6}"
        )
        # Wrapped, not cut: its end says when the traffic happened (multi_site_indicator).
        print(
            textwrap.fill(
                inc.summary,
                width,
                initial_indent="    ",
                subsequent_indent="    ",
                max_lines=4,
                placeholder=" …",
            )
        )
        print(f"    key {inc.key}")
        if inc.status_by:
            print(
                _fit(
                    f"    {status_name(inc.status)} by {inc.status_by} "
                    f"{_local(inc.status_at)}: {inc.status_comment}",
                    width,
                )
            )
    if header and not items:
        print("(no incidents)")


def print_incident_detail(detail: Any, as_json: bool, colour: bool) -> None:
    """One incident, then its sites and the alerts behind it."""
    if as_json:
        d = incident_dict(detail.incident)
        d["alerts"] = [
            alert_dict(a.alert)
            | {
                "origin": {
                    "finess": a.origin.finess,
                    "ght": a.origin.ght,
                    "region": a.origin.region,
                }
            }
            for a in detail.alerts
        ]
        print(json.dumps(d, separators=(",", ":")))
        return
    print_incidents([detail.incident], False, colour)
    print("\nSITES")
    for s in detail.incident.sites:
        print(f"    {s.ght:<20} {s.finess:<9}  region {s.region}")
    print("\nALERTS")
    print_alerts(list(detail.alerts), False, colour)


def print_status_change(inc: Any) -> None:
    print(f"{status_name(inc.status)}: {inc.key}")


def print_counts(counts: Sequence[Any], by: str, as_json: bool) -> None:
    """`vigie stats`: one bar per key, hours shown in local time."""
    if as_json:
        for c in counts:
            key = _local_hour(c.key) if by == "hour" else c.key
            print(json.dumps({by: key, "count": c.count}))
        return
    top = max((c.count for c in counts), default=1)
    print(f"{by.upper():<24} {'ALERTS':>8}")
    for c in counts:
        key = _local_hour(c.key) if by == "hour" else c.key
        bar = "#" * max(1, round(40 * c.count / top))
        print(f"{_fit(key, 24):<24} {c.count:>8}  {bar}")
    if not counts:
        print("(no alerts)")


def print_published(resp: Any) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(resp.counts.items()) if v)
    print(
        f"intel version {resp.version} published ({counts or 'empty'}); agents pick it up "
        "on their stream"
    )


def print_intel_status(st: Any, as_json: bool) -> None:
    """A publication's retro-hunt: agents per state, then those not done."""
    since = dt.datetime.fromtimestamp(st.since).astimezone().strftime("%Y-%m-%d %H:%M")
    published = dt.datetime.fromtimestamp(st.published_at).astimezone().strftime("%Y-%m-%d %H:%M")
    if as_json:
        print(
            json.dumps(
                {
                    "version": st.version,
                    "published_at": published,
                    "since": since,
                    "counts": dict(st.counts),
                    "agents": [
                        {
                            "agent_id": a.agent_id,
                            "finess": a.finess,
                            "ght": a.ght,
                            "region": a.region,
                            "state": a.state,
                            "matches": a.matches,
                        }
                        for a in st.agents
                    ],
                }
            )
        )
        return
    c = st.counts
    print(
        f"intel version {st.version} (published {published}, look-back from {since}): "
        f"{c.get('done', 0)} finished, {c.get('searching', 0)} searching, "
        f"{c.get('waiting', 0)} not started, {c.get('offline', 0)} offline"
    )
    for a in st.agents:
        if a.state != "done" or a.matches:
            print(f"  {a.state:<10} {a.ght:<16} {a.finess:<10} {a.agent_id}  {a.matches} matches")
