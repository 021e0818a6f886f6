"""`vigie-agent explain-anonymisation`: what the agent would send for a given value.

For the establishment's data protection officer. It goes through the same decision as
every alert (`Anonymiser.decide`), so what it prints is exactly what would leave. It
never creates the secret: without one it still explains the classification.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from typing import Any

from agent.anonymise.policy import KIND_NAMES, Anonymiser, secret_path
from vigie.v1 import alert_pb2

_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_AE_TITLE_MAX = 16  # DICOM AE titles are at most 16 characters


def kinds_for(value: str) -> list[int]:
    """The entity kinds a value could be reported as."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return [alert_pb2.KIND_IP]
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        pass
    else:
        return [alert_pb2.KIND_IP]
    if _MAC.fullmatch(value):
        return [alert_pb2.KIND_MAC]
    kinds = [
        alert_pb2.KIND_HOSTNAME,
        alert_pb2.KIND_DOMAIN,
        alert_pb2.KIND_TLS_SNI,
        alert_pb2.KIND_USER,
    ]
    if len(value) <= _AE_TITLE_MAX:
        kinds.append(alert_pb2.KIND_AE_TITLE)
    return kinds


def explain(values: list[str], cfg: dict[str, Any]) -> dict[str, Any]:
    a = cfg["anonymisation"]
    path = secret_path(cfg["state_dir"], a["secret_file"], a["key_epoch"])
    note = ""
    try:
        anon = Anonymiser.from_settings(a, cfg["state_dir"], create=False)
    except (FileNotFoundError, PermissionError) as exc:
        # Classification needs no secret; pseudonyms do. A placeholder secret gives the
        # classification, and every pseudonymised value is withheld below.
        note = (
            f"secret {path} not readable ({exc.strerror}): pseudonyms cannot be shown; "
            "run as the agent's user, or start the agent once to create it"
        )
        anon = Anonymiser(
            b"\0" * 32,
            a["key_epoch"],
            a["internal_ranges"],
            a["internal_domains"],
            {k: v for k, v in a.items() if k.startswith("clear_")},
            a["prefix_preserving"],
        )
    rows = []
    for value in values:
        for kind in kinds_for(value):
            d = anon.decide(kind, value)
            sent = None if (note and d.pseudonymised) else d.value
            rows.append(
                {
                    "input": value,
                    "as": KIND_NAMES[kind],
                    "classification": d.classification,
                    "reason": d.reason,
                    "sent": sent,
                    "pseudonymised": d.pseudonymised,
                }
            )
    out: dict[str, Any] = {
        "secret_file": str(path),
        "key_epoch": a["key_epoch"],
        "prefix_preserving": a["prefix_preserving"],
        "values": rows,
    }
    if note:
        out["note"] = note
    return out


def render_table(report: dict[str, Any]) -> str:
    head = ("VALUE", "AS", "CLASS", "SENT", "WHY")
    rows = [
        (
            r["input"],
            r["as"],
            r["classification"],
            r["sent"] if r["sent"] is not None else "(pseudonym: secret unavailable)",
            r["reason"],
        )
        for r in report["values"]
    ]
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head) - 1)]
    lines = [
        f"key epoch {report['key_epoch']}, secret {report['secret_file']}, "
        f"prefix-preserving IPv4 {'on' if report['prefix_preserving'] else 'off'}",
        "",
    ]
    previous = None
    for row in [head, *rows]:
        cells = list(row)
        if row is not head and cells[0] == previous:
            cells[0] = ""  # one value, several kinds: name it once
        else:
            previous = row[0]
        lines.append(
            "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))
            + "  "
            + str(cells[-1])
        )
    if "note" in report:
        lines += ["", f"note: {report['note']}"]
    return "\n".join(lines) + "\n"


def cmd_explain(values: list[str], cfg: dict[str, Any], as_json: bool) -> int:
    report = explain(values, cfg)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render_table(report))
    return 0
