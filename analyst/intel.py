"""Read an IOC file an analyst has at hand into the collector's intel bundle format.

    .json  {"ips": [...], "domains": [...], "ja3": [...], "ja4": [...], "hashes": [...]}
    .csv   one indicator per line: TYPE,VALUE[,comment] with TYPE among ip, cidr, domain,
           sni, ja3, ja4, md5, sha1, sha256, hash (a header line "type,value" is allowed)
    .stix  a STIX 2.1 bundle: its indicators' patterns of the form [x:y = 'v'] joined by OR
The collector validates the result strictly (nothing that would match everything).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

CSV_KINDS = {
    "ip": "ips",
    "cidr": "ips",
    "ipv4": "ips",
    "ipv6": "ips",
    "domain": "domains",
    "sni": "domains",
    "fqdn": "domains",
    "ja3": "ja3",
    "ja4": "ja4",
    "md5": "hashes",
    "sha1": "hashes",
    "sha256": "hashes",
    "hash": "hashes",
}
STIX_KINDS = {
    "ipv4-addr:value": "ips",
    "ipv6-addr:value": "ips",
    "domain-name:value": "domains",
    "x-ja3:value": "ja3",
    "x-ja4:value": "ja4",
}
COMPARISON = re.compile(r"([a-z0-9-]+:[a-z0-9_.'\-]+)\s*=\s*'((?:[^'\\]|\\.)*)'", re.I)


class IntelFileError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """`--retro`: 14d, 36h, 90m or seconds; at most 366 days (the collector checks too)."""
    t = text.strip().lower()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise IntelFileError(
            f"--retro {text!r}: expected a duration such as 14d, 36h or 90m"
        ) from None
    if not 0 < value <= 366 * 86400:
        raise IntelFileError(f"--retro {text!r}: between 1 second and 366 days")
    return value


def read(path: str | Path) -> dict[str, list[str]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise IntelFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise IntelFileError(f"{p}: not UTF-8 text") from None
    suffix = p.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IntelFileError(f"{p}: not JSON: {exc}") from None
        if isinstance(doc, dict) and doc.get("type") == "bundle":
            return _stix(doc, p)
        return doc
    if suffix == ".csv":
        return _csv(text, p)
    if suffix in (".stix", ".stix2"):
        try:
            return _stix(json.loads(text), p)
        except json.JSONDecodeError as exc:
            raise IntelFileError(f"{p}: not a STIX JSON bundle: {exc}") from None
    raise IntelFileError(f"{p}: use a .json, .csv or .stix file")


def _csv(text: str, p: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].strip().startswith("#"):
            continue
        kind = row[0].strip().lower()
        if n == 1 and kind == "type":
            continue
        if kind not in CSV_KINDS or len(row) < 2:
            raise IntelFileError(
                f"{p}:{n}: expected TYPE,VALUE with TYPE among {', '.join(sorted(CSV_KINDS))}"
            )
        out.setdefault(CSV_KINDS[kind], []).append(row[1].strip())
    return out


def _stix(doc: object, p: Path) -> dict[str, list[str]]:
    if not isinstance(doc, dict) or doc.get("type") != "bundle":
        raise IntelFileError(f"{p}: not a STIX bundle")
    out: dict[str, list[str]] = {}
    for obj in doc.get("objects", []):
        if not isinstance(obj, dict) or obj.get("type") != "indicator":
            continue
        for path, value in COMPARISON.findall(str(obj.get("pattern", ""))):
            path = path.lower()
            if path.startswith("file:hashes."):
                out.setdefault("hashes", []).append(value)
            elif path in STIX_KINDS:
                out.setdefault(STIX_KINDS[path], []).append(value)
    if not out:
        raise IntelFileError(f"{p}: no indicator pattern Vigie understands")
    return out
