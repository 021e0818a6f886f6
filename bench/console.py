"""Web console speed on a store of one million alerts and ten thousand incidents.

    python bench/console.py [--alerts 1000000] [--incidents 10000] [--db PATH] [--runs 30]

Fills a SQLite store as bench/query.py does (or reuses --db), adds incidents (with their
sites, alerts and change feed) and indexed indicators, starts the console over HTTPS in
this process, signs in (password and TOTP) and requests every page `--runs` times. Prints
each page's server time (request read to response written, measured by the server) p50
and p95, and the bytes a first visit downloads (sign-in page, stylesheet, script, then
the overview). Targets (issue #23): p95 under 300 ms per page, under 500 KB first visit.
The baseline is the overview computed without its cache (every request reading a week
of alerts, as a dashboard without one would); the other pages have no cache to remove.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import query  # noqa: E402  (bench/query.py: the same million alerts)

from collector import settings  # noqa: E402
from collector.console import totp  # noqa: E402
from collector.console.accounts import Accounts  # noqa: E402
from collector.console.server import Console, tls_context  # noqa: E402
from collector.pki import ca as pki  # noqa: E402
from collector.pki.registry import Registry  # noqa: E402
from collector.store import open_store  # noqa: E402
from common import config  # noqa: E402
from tests.console_support import Client  # noqa: E402

RULES = ["multi_site_indicator", "wave", "kill_chain", "dark_site"]
PASSWORD = "bench password 1234"


def add_incidents(db: Path, n: int, now: float) -> None:
    """Incidents as the rules leave them: sites, linked alerts, one change each; and the
    indicators of the alerts they link (what the indicator search reads)."""
    rng = random.Random(11)
    conn = sqlite3.connect(db)
    (max_n,) = conn.execute("SELECT MAX(n) FROM alerts").fetchone()
    (base,) = conn.execute("SELECT value FROM counters WHERE name = 'incident_seq'").fetchone()
    sites = conn.execute("SELECT DISTINCT finess, ght, region FROM alerts").fetchall()
    inc, isites, ialerts, changes, indicators = [], [], [], [], []
    for i in range(n):
        rule = rng.choice(RULES)
        ip = f"203.0.{i // 250 % 256}.{i % 250 + 1}"
        key = f"{rule}:ip:{ip}:{i}"
        first = now - rng.random() * 30 * 86400
        last = min(now, first + rng.random() * 86400)
        status = rng.choice([1, 1, 1, 2, 3, 3])
        seq = base + i + 1
        inc.append(
            (
                key,
                rule,
                f"ip:{ip}",
                rng.choice([3, 4, 4, 5]),
                status,
                "",
                0,
                "",
                first,
                last,
                f"ip {ip} seen by 3 GHTs",
                5,
                seq,
                first,
                last,
            )
        )
        for finess, ght, region in rng.sample(sites, 3):
            isites.append((key, finess, ght, region))
        rows = conn.execute(
            "SELECT agent_id, alert_id, finess, ght, region, last_seen FROM alerts WHERE n IN "
            f"({','.join(str(rng.randint(1, max_n)) for _ in range(5))})"
        ).fetchall()
        for agent, alert, finess, ght, region, seen in rows:
            ialerts.append((key, agent, alert))
            indicators.append((agent, alert, 1, ip, finess, ght, region, seen))
        changes.append((seq, key, "opened", last, ""))
    conn.executemany(f"INSERT INTO incidents VALUES ({','.join('?' * 15)})", inc)
    conn.executemany("INSERT OR IGNORE INTO incident_sites VALUES (?, ?, ?, ?)", isites)
    conn.executemany("INSERT OR IGNORE INTO incident_alerts VALUES (?, ?, ?)", ialerts)
    conn.executemany(
        "INSERT OR IGNORE INTO alert_indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?)", indicators
    )
    conn.executemany("INSERT INTO incident_changes VALUES (?, ?, ?, ?, ?)", changes)
    conn.execute("UPDATE counters SET value = ? WHERE name = 'incident_seq'", (base + n,))
    conn.commit()
    conn.close()


def pages(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    key = conn.execute("SELECT key FROM incidents WHERE status = 1 LIMIT 1").fetchone()[0]
    ip = conn.execute("SELECT value FROM alert_indicators LIMIT 1").fetchone()[0]
    conn.close()
    return [
        ("overview", "/"),
        ("incidents, open", "/incidents"),
        ("incidents, one region", "/incidents?status=any&region=05"),
        ("incidents, one GHT, high", "/incidents?status=any&ght=GHT-042&severity=4"),
        ("incident page", f"/incidents/{key}"),
        ("incident STIX", f"/incidents/{key}/stix"),
        ("alerts, newest", "/alerts"),
        ("alerts, one GHT", "/alerts?ght=GHT-042"),
        ("alerts, detector + high", "/alerts?detector=net.dga&severity=4"),
        ("alerts, one FINESS", "/alerts?finess=000000042"),
        ("alerts, by indicator", f"/alerts?indicator={ip}"),
        ("alerts, 20th page", "DEEP"),
        ("fleet", "/fleet"),
        ("intel", "/intel"),
        ("audit", "/audit"),
    ]


def start(db: Path, state: Path, cache: float) -> tuple[Console, Client]:
    cfg = config.defaults(settings.SCHEMA)["console"]
    cfg["overview_cache_seconds"] = cache
    store = open_store(f"sqlite:///{db}", "NORMAL")
    pki.init(state / "pki", ["localhost", "127.0.0.1"])
    registry = Registry(state / "registry.db")
    console = Console(cfg, store, registry=registry)
    ctx = tls_context(state / "pki" / "server.crt", state / "pki" / "server.key", None)
    port = console.start("127.0.0.1:0", ctx)
    accounts = Accounts(store)
    name = f"bench{int(cache)}"
    try:
        secret = accounts.add_user(name, "national", PASSWORD)
    except ValueError:
        raise SystemExit("reuse the store with a fresh --db copy (account exists)") from None
    import ssl

    client = Client(port, ssl.create_default_context(cafile=str(state / "pki" / "ca.crt")))
    r, _ = client.sign_in(name, PASSWORD, totp.code(secret))
    assert r.status == 303, r.status
    return console, client


def first_visit(port_client: Client) -> int:
    """Bytes a browser downloads on a first visit: the sign-in page and its assets, then
    the overview (the assets are cached by then)."""
    fresh = Client(port_client.port, port_client.ctx)
    total = 0
    for path in ("/login", "/static/console.css", "/static/console.js"):
        _, body = fresh.get(path)
        total += len(body.encode())
    _, page = port_client.get("/")
    return total + len(page.encode())


def measure(console: Console, client: Client, path: str, runs: int) -> tuple[float, float, int]:
    if path == "DEEP":
        _, page = client.get("/alerts")
        for _ in range(19):
            m = re.search(r'href="(/alerts\?before=\d+)"', page)
            assert m, "no next page"
            path = m.group(1).replace("&amp;", "&")
            _, page = client.get(path)
    times = []
    size = 0
    for _ in range(runs):
        console.timings.clear()
        r, body = client.get(path)
        assert r.status == 200, (path, r.status, body[:300])
        times.append(console.timings[-1][1] * 1000)
        size = len(body.encode())
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--alerts", type=int, default=1_000_000)
    ap.add_argument("--incidents", type=int, default=10_000)
    ap.add_argument("--db", type=Path, help="a store filled by bench/query.py (copied)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vigie-console-"))
    now = time.time()
    db = work / "vigie.db"
    if args.db:
        shutil.copy(args.db, db)
        for ext in ("-wal", "-shm"):
            if Path(str(args.db) + ext).exists():
                shutil.copy(str(args.db) + ext, str(db) + ext)
        now = sqlite3.connect(db).execute("SELECT MAX(last_seen) FROM alerts").fetchone()[0]
    else:
        print(f"filling {args.alerts:,} alerts into {db}", file=sys.stderr)
        query.fill(db, args.alerts, now)
    open_store(f"sqlite:///{db}", "OFF").close()  # the console's migration
    # (the fill's own alerts open a few incidents through the rules; these are the rest)
    if not sqlite3.connect(db).execute("SELECT COUNT(*) FROM alert_indicators").fetchone()[0]:
        add_incidents(db, args.incidents, now)
    counts = (
        sqlite3.connect(db)
        .execute("SELECT (SELECT COUNT(*) FROM alerts), (SELECT COUNT(*) FROM incidents)")
        .fetchone()
    )
    plan = pages(db)
    results = {}
    for label, cache in (("console", 30.0), ("no cache", 0.0)):
        console, client = start(db, work / f"state-{int(cache)}", cache)
        if label == "console":
            visit = first_visit(client)
            results[label] = [measure(console, client, p, args.runs) for _, p in plan]
        else:
            results[label] = [measure(console, client, plan[0][1], args.runs)]
        console.stop()
        console.store.close()
    print(
        f"\nweb console on {counts[0]:,} alerts and {counts[1]:,} incidents: server time per "
        f"page over {args.runs} requests (ms), SQLite\n"
    )
    print(f"{'page':<28} {'p50':>8} {'p95':>8} {'bytes':>8}   baseline p95")
    for (label, _), (p50, p95, size) in zip(plan, results["console"], strict=True):
        base = (
            f"{results['no cache'][0][1]:8.1f} (overview uncached)" if label == "overview" else ""
        )
        print(f"{label:<28} {p50:>8.1f} {p95:>8.1f} {size:>8,}   {base}")
    worst = max(p95 for _, p95, _ in results["console"])
    print(f"\nworst p95: {worst:.1f} ms (target < 300 ms)")
    print(f"first visit: {visit:,} bytes (target < 500 KB)")
    print(json.dumps({"worst_p95_ms": round(worst, 1), "first_visit_bytes": visit}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
