"""Analyst query speed on a store of one million alerts.

    python bench/query.py [--alerts 1000000] [--db PATH] [--keep]

Fills a SQLite store (or reuses --db) with alerts spread over 30 days, 135 GHTs in 18
regions, 1,300 establishments and 15 detectors, then times the common queries through
the real gRPC analyst service (mutual TLS, as `vigie` runs them), best of 5. The
baseline, measured side by side on the same data, is the same query on a copy of the
store without its secondary indexes: what a naive schema gives.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector import server, settings  # noqa: E402
from collector.pki import ca as pki  # noqa: E402
from collector.store import Origin, open_store  # noqa: E402
from common import config  # noqa: E402
from vigie.v1 import alert_pb2, analyst_pb2, analyst_pb2_grpc  # noqa: E402

DETECTORS = [
    "net.portscan",
    "net.bruteforce",
    "net.lateral",
    "net.dos",
    "net.dns_tunnel",
    "net.dga",
    "net.beacon",
    "net.exfil",
    "net.tunnel",
    "net.arp_spoof",
    "net.ioc",
    "net.cleartext_credentials",
    "net.medical",
    "host.listener",
    "host.login",
]


def fill(db: Path, n: int, now: float) -> None:
    store = open_store(f"sqlite:///{db}", "OFF")
    rng = random.Random(7)
    sites = [
        Origin(f"agt-{i:05d}", f"{i:09d}", f"GHT-{i % 135:03d}", f"{(i % 135) % 18:02d}")
        for i in range(1300)
    ]
    batch = 1000
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        origin = rng.choice(sites)
        alerts = []
        for j in range(start, min(n, start + batch)):
            t = now - rng.random() * 30 * 86400
            a = alert_pb2.Alert(
                id=f"a{j}",
                revision=1,
                detector=rng.choice(DETECTORS),
                severity=rng.choice([2, 3, 3, 3, 4, 4, 5]),
                technique="T1046",
                summary="bench alert",
                occurrences=rng.randint(1, 50),
            )
            for f in (a.first_seen, a.last_seen, a.observed_at):
                f.FromNanoseconds(int(t * 1e9))
            a.entities.add(
                role=1, kind=1, value=f"p:{rng.getrandbits(64):016x}", pseudonymised=True
            )
            alerts.append(a)
        store.ingest(origin, alerts)
        if start % 100_000 == 0:
            print(
                f"  filled {start:>9,} alerts ({time.perf_counter() - t0:.0f} s)", file=sys.stderr
            )
    store.close()


def serve(db: Path, state: Path):
    cfg = config.defaults(settings.SCHEMA)
    cfg.update(state_dir=str(state), storage=f"sqlite:///{db}", listen="127.0.0.1:0")
    cfg["enroll"]["listen"] = ""
    cfg["correlation"]["dark_site"]["enabled"] = False
    store = server.open_store(cfg)
    srv, port = server.build(cfg, store)
    srv.start()
    authority = pki.Authority(state / "pki")
    authority.issue(
        state / "analyst", "analyst", identity=pki.Identity("analyst", "bench", role="national")
    )
    creds = grpc.ssl_channel_credentials(
        (state / "pki" / "ca.crt").read_bytes(),
        (state / "analyst" / "analyst.key").read_bytes(),
        (state / "analyst" / "analyst.crt").read_bytes(),
    )
    return srv, store, grpc.secure_channel(f"127.0.0.1:{port}", creds)


def queries(now: float):
    def ts(msg, field, value):
        getattr(msg, field).FromSeconds(int(value))
        return msg

    hour = ts(analyst_pb2.ListAlertsRequest(min_severity=4, page_size=100), "since", now - 3600)
    ght = ts(analyst_pb2.ListAlertsRequest(ght="GHT-042", page_size=100), "since", now - 86400)
    return [
        ("last hour, severity >= high", "ListAlerts", hour),
        ("one GHT, last day", "ListAlerts", ght),
        (
            "counts per detector (30 days)",
            "CountAlerts",
            analyst_pb2.CountAlertsRequest(by="detector"),
        ),
        (
            "counts per GHT, last day",
            "CountAlerts",
            ts(analyst_pb2.CountAlertsRequest(by="ght"), "since", now - 86400),
        ),
        (
            "counts per hour, last day",
            "CountAlerts",
            ts(analyst_pb2.CountAlertsRequest(by="hour"), "since", now - 86400),
        ),
    ]


def timed(stub, method: str, req, runs: int = 5) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(runs):
        t = time.perf_counter()
        resp = getattr(stub, method)(req, timeout=120)
        best = min(best, time.perf_counter() - t)
        size = len(resp.alerts) if method == "ListAlerts" else len(resp.counts)
    return best * 1000, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--alerts", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vigie-query-"))
    now = time.time()
    db = args.db or work / "vigie.db"
    if not db.exists():
        print(f"filling {args.alerts:,} alerts into {db}", file=sys.stderr)
        t = time.perf_counter()
        fill(db, args.alerts, now)
        print(f"  filled in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    naive = work / "naive.db"
    shutil.copy(db, naive)
    with sqlite3.connect(naive) as conn:
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND "
            "sql IS NOT NULL AND tbl_name = 'alerts'"
        ).fetchall():
            conn.execute(f"DROP INDEX {name}")
    results = []
    for label, path in (("vigie", db), ("baseline (no indexes)", naive)):
        srv, store, channel = serve(path, work / f"state-{label[:5]}")
        stub = analyst_pb2_grpc.AnalystStub(channel)
        results.append([timed(stub, m, r) for _, m, r in queries(now)])
        channel.close()
        srv.stop(0)
        store.close()
    count = sqlite3.connect(db).execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    print(f"\nanalyst queries through gRPC on {count:,} alerts (best of 5, ms)\n")
    print(f"{'query':<32} {'vigie':>10} {'baseline':>10} {'speed-up':>9} {'rows':>6}")
    for (label, _, _), (v, rows), (b, _) in zip(queries(now), results[0], results[1], strict=True):
        print(f"{label:<32} {v:>10.1f} {b:>10.1f} {b / v:>8.1f}x {rows:>6}")
    print(
        f"\nmedian vigie: {statistics.median(r[0] for r in results[0]):.1f} ms; "
        f"target: every query under 200 ms"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
