"""Every capture of the labelled corpus (tests/data/corpus), end to end: no internal
address reaches the outbox or the collector's store, and external indicators stay in clear.

The assertions run on whatever alerts each capture produces, so they cover more captures
as detectors are added.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
from pathlib import Path

import pytest

from agent import settings
from agent.anonymise.policy import PSEUDONYM_RE, Anonymiser, load_or_create_secret
from agent.capture.pcapfile import read_capture
from agent.decode import DecodeStats, make_decoder
from agent.outbox.store import Outbox
from agent.pipeline import Pipeline
from collector.store.sqlite import Origin, SqliteStore
from common.config import defaults
from tests.conftest import CORPUS
from vigie.v1 import alert_pb2

SCAN_TARGET = "64.13.134.52"  # scan.nmap.org, the target of scan/nmap_syn_scan_1000ports


def captures() -> list:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no corpus at {CORPUS}"))]
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return [pytest.param(p, id=str(p.relative_to(CORPUS))) for p in files]


def internal_addresses(pcap: Path, anon: Anonymiser) -> tuple[set[bytes], set[bytes]]:
    """Packed internal addresses and MACs seen anywhere in the capture's headers.

    Group and placeholder addresses (unspecified, multicast, broadcast, group MACs) name
    no host, so they are left out: "0.0.0.0" or 16 zero bytes are no leak.
    """
    decode = make_decoder(DecodeStats())
    addrs: dict[bytes, bool] = {}
    macs: set[bytes] = set()
    for ts, linktype, wirelen, frame in read_capture(pcap):
        p = decode(ts, linktype, wirelen, frame)
        if p is None:
            continue
        for a in (p.src, p.dst):
            if len(a) in (4, 16) and a not in addrs:
                ip = ipaddress.ip_address(a)
                group = ip.is_unspecified or ip.is_multicast or a == b"\xff" * 4
                addrs[a] = not group and anon.is_internal_ip(str(ip))
        macs.update(m for m in (p.smac, p.dmac) if len(m) == 6 and not m[0] & 1 and any(m))
    return {a for a, internal in addrs.items() if internal}, macs


def forms(packed: bytes) -> tuple[list[bytes], list[bytes]]:
    """(text forms, binary forms) of a packed address or MAC."""
    if len(packed) == 6:
        text = ":".join(f"{b:02x}" for b in packed)
        return [text.encode(), text.upper().encode(), text.replace(":", "-").encode()], [packed]
    ip = ipaddress.ip_address(packed)
    texts = {str(ip), ip.exploded}
    return [t.encode() for t in texts] + [t.encode("utf-16-le") for t in texts], [packed]


def db_bytes(path: Path) -> bytes:
    return b"".join(
        q.read_bytes() for q in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if q.exists()
    )


def row_values(path: Path) -> list[bytes]:
    """Every stored value of every table, as bytes."""
    db = sqlite3.connect(path)
    out: list[bytes] = []
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in db.execute(f'SELECT * FROM "{t}"'):
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    finally:
        db.close()
    return out


def assert_absent(internal: set[bytes], blob: bytes, values: list[bytes], where: str) -> None:
    """Text forms are searched in the raw file bytes, which include stale pages and WAL
    frames. Binary forms are searched in every stored value: a 4-byte pattern also turns
    up by chance in SQLite's own page headers and WAL checksums, which is not a leak."""
    joined = b"\x00".join(values)
    for a in internal:
        text, binary = forms(a)
        for t in text:
            assert t not in blob, f"{t!r} in {where}"
        for b in binary:
            assert b not in joined, f"packed {b.hex()} in {where}"
            if len(b) == 16:  # no chance match at this length: the whole file too
                assert b not in blob, f"packed {b.hex()} in {where}"


def replay(pcap: Path, state: Path, cfg: dict) -> tuple[Anonymiser, Path]:
    anon = Anonymiser(load_or_create_secret(state / "anon.key"))
    outbox_path = state / "outbox.db"
    outbox = Outbox(outbox_path)
    pipe = Pipeline(cfg, anon, outbox.put, lambda: 1_700_000_000.0)
    for rec in read_capture(pcap):
        pipe.feed(*rec)
    pipe.finish()
    outbox.close()
    return anon, outbox_path


@pytest.mark.parametrize("pcap", captures())
def test_no_internal_address_leaves(pcap: Path, tmp_path: Path) -> None:
    cfg = defaults(settings.SCHEMA)
    anon, outbox_path = replay(pcap, tmp_path, cfg)
    internal, macs = internal_addresses(pcap, anon)
    secrets_ = internal | macs

    assert_absent(secrets_, db_bytes(outbox_path), row_values(outbox_path), "outbox")

    db = sqlite3.connect(outbox_path)
    alerts = [alert_pb2.Alert.FromString(r[0]) for r in db.execute("SELECT payload FROM outbox")]
    db.close()
    for a in alerts:
        assert a.key_epoch == 1
        for e in a.entities:
            if e.pseudonymised:
                assert PSEUDONYM_RE.fullmatch(e.value), e
            elif e.kind == alert_pb2.KIND_IP:
                assert not anon.is_internal_ip(e.value), e  # a clear address is external

    # What the collector keeps of these alerts holds no internal address either.
    store_path = tmp_path / "collector" / "alerts.db"
    store = SqliteStore(store_path)
    if alerts:
        store.ingest(Origin("agent-0001", "750000001", "GHT-TEST", "IDF"), alerts)
    store.close()
    assert_absent(secrets_, db_bytes(store_path), row_values(store_path), "collector store")

    rel = pcap.relative_to(CORPUS).as_posix()
    if rel.startswith("scan/nmap_s"):
        assert alerts, "the port scan detector fires on this capture"
    if rel == "scan/nmap_syn_scan_1000ports.pcap":
        db = sqlite3.connect(store_path)
        stored = [json.loads(r[0]) for r in db.execute("SELECT entities FROM alerts")]
        db.close()
        # [role, kind, value, pseudonymised]: the attacker's target correlates across sites.
        assert any(
            ent[1:] == [alert_pb2.KIND_IP, SCAN_TARGET, False] for ents in stored for ent in ents
        ), stored
        assert SCAN_TARGET.encode() in db_bytes(store_path)
        assert socket.inet_aton("172.16.0.8") in {a for a in internal}  # the scanner, hidden
