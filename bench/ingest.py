"""Drive a real collector with N simulated agents; report what it sustains.

    .venv/bin/python bench/ingest.py [--agents 10 100 1000] [--seconds 15] [--rate 5000]

Each simulated agent has its own certificate (issued by the collector's CA) and its own
mutual-TLS bidirectional stream, as a real agent does; agents live as asyncio tasks in a
few client processes. For each N two runs: "max" (every agent keeps the collector's window of
batches in flight: the sustained store rate) and, with --rate, "paced" (the whole fleet
sends RATE alerts/s in small batches: the ack latency a fleet sees in normal operation).
Ack latency is from a batch's send to its acknowledgement, which the collector sends only
after the commit. CPU and RSS are the collector's processes' (psutil, the server and its
writer process), averaged / peak; fleet CPU is the simulated agents'.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import grpc  # noqa: E402
import psutil  # noqa: E402

from collector.pki.ca import Authority, Identity, init  # noqa: E402
from vigie.v1 import alert_pb2, ingest_pb2, ingest_pb2_grpc  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template() -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id="x",
        revision=1,
        detector="net.portscan",
        severity=alert_pb2.SEVERITY_MEDIUM,
        technique="T1046",
        summary="vertical port scan: 12 ports on 1 host",
        occurrences=12,
        key_epoch=1,
    )
    now = int(time.time())
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(now)
    a.entities.add(
        role=alert_pb2.ROLE_SOURCE, kind=alert_pb2.KIND_IP, value="203.0.113.9", pseudonymised=False
    )
    a.entities.add(
        role=alert_pb2.ROLE_TARGET,
        kind=alert_pb2.KIND_IP,
        value="p:" + "ab" * 16,
        pseudonymised=True,
    )
    a.metrics["ports"] = 12
    a.metrics["failed"] = 11
    return a


async def _agent(
    address, ca, key, cert, name, batch, per_agent_rate, t_start, t_end, window_hint
) -> tuple[int, list[float]]:
    """One simulated agent: its own channel, certificate and stream, as a real one."""
    template = _template()
    lat_ms: list[float] = []
    acked = 0
    sent_at: dict[int, float] = {}
    window = asyncio.Semaphore(0)
    ready = asyncio.Event()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    async with grpc.aio.secure_channel(address, creds) as ch:
        call = ingest_pb2_grpc.IngestStub(ch).Stream()

        async def read() -> None:
            nonlocal acked
            try:
                async for msg in call:
                    kind = msg.WhichOneof("body")
                    if kind == "flow_control":
                        for _ in range(min(window_hint, msg.flow_control.max_batches_in_flight)):
                            window.release()
                        ready.set()
                    elif kind == "ack":
                        now = time.monotonic()
                        t0 = sent_at.pop(msg.ack.seq, None)
                        if t0 is not None and t_start <= now <= t_end:
                            lat_ms.append((now - t0) * 1000)
                            acked += msg.ack.stored
                        window.release()
            except grpc.RpcError:
                pass
            finally:
                ready.set()

        reader = asyncio.ensure_future(read())
        try:
            await call.write(
                ingest_pb2.AgentMessage(heartbeat=ingest_pb2.Heartbeat(agent_version="bench"))
            )
            await asyncio.wait_for(ready.wait(), 60)
            seq = 0
            interval = batch / per_agent_rate if per_agent_rate else 0.0
            # Paced agents start at a random phase, as a real fleet does.
            next_send = time.monotonic() + random.random() * interval
            while time.monotonic() < t_end:
                try:
                    await asyncio.wait_for(window.acquire(), 0.5)
                except TimeoutError:
                    continue
                if interval:
                    delay = next_send - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_send = max(next_send + interval, time.monotonic() - interval)
                seq += 1
                b = ingest_pb2.AlertBatch(seq=seq)
                for i in range(batch):
                    a = b.alerts.add()
                    a.CopyFrom(template)
                    a.id = f"{name}-{seq}-{i}"
                sent_at[seq] = time.monotonic()
                await call.write(ingest_pb2.AgentMessage(batch=b))
        except (grpc.RpcError, TimeoutError):
            pass
        finally:
            call.cancel()
            reader.cancel()
    return acked, lat_ms


def _client(address, ca, agents, batch, per_agent_rate, t_start, t_end, window, results):
    """One client process: its share of the fleet as asyncio tasks on one event loop (a
    thread per agent would make the simulated fleet, not the collector, the bottleneck)."""

    async def fleet() -> list:
        return await asyncio.gather(
            *(
                _agent(address, ca, k, c, name, batch, per_agent_rate, t_start, t_end, window)
                for name, k, c in agents
            ),
            return_exceptions=True,
        )

    out = [r for r in asyncio.run(fleet()) if isinstance(r, tuple)]
    stored = sum(a for a, _ in out)
    lat = [x for _, ls in out for x in ls]
    results.put((stored, lat, len(out)))


def _credentials(pki: Path, n: int) -> list[tuple[str, bytes, bytes]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = Authority(pki)
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b")]))
            .sign(key, hashes.SHA256())
        )
        # Spread over France's 136 GHTs and 18 regions, as a national fleet is.
        ght, region = f"GHT-B{i % 136:03d}", f"{11 + i % 18}"
        ident = Identity("agent", f"agt-bench-{i:05d}", f"{750000000 + i:09d}", ght, region)
        cert = ca.sign(csr, identity=ident, days=1)
        out.append(
            (
                ident.name,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                cert.public_bytes(serialization.Encoding.PEM),
            )
        )
    return out


def _pg_schema(url: str) -> tuple[str, str]:
    """A fresh schema in the given PostgreSQL database: (url using it, schema name)."""
    import uuid

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}", schema


def run(
    n: int,
    seconds: float,
    rate: int,
    batch: int,
    procs: int,
    sync: str,
    correlation: bool = True,
    storage: str = "",
    replicas: int = 1,
) -> dict:
    state = Path(tempfile.mkdtemp(prefix="vigie-bench-"))
    try:
        pki = state / "pki"
        init(pki, ["127.0.0.1"])
        port = _free_port()
        cfg = state / "collector.toml"
        cfg.write_text(
            f'sqlite_synchronous = "{sync}"\nlog_level = "warning"\n'
            + (f'storage = "{storage}"\n' if storage else "")
            + f'[pki]\ndir = "{pki}"\nauto_init = false\n'
            f"[ingest]\nworkers = {n + 16}\nmax_alerts_per_second = 1000000\n"
            "max_batches_in_flight = 8\n"
            + (
                ""
                if correlation
                else "".join(
                    f"[correlation.{rule}]\nenabled = false\n"
                    for rule in ("multi_site_indicator", "wave", "kill_chain")
                )
            )
        )
        ports = [port] + [_free_port() for _ in range(replicas - 1)]
        procs_ = []
        for i, p_ in enumerate(ports):
            log = open(state / f"collector{i}.log", "wb")  # noqa: SIM115
            procs_.append(
                subprocess.Popen(
                    [
                        str(BIN / "vigie-collector"),
                        "serve",
                        "--config",
                        str(cfg),
                        "--state-dir",
                        str(state / f"replica{i}"),
                        "--listen",
                        f"127.0.0.1:{p_}",
                        "--enroll-listen",
                        "",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            if i == 0:
                time.sleep(1.5)  # the first one runs the migrations
        time.sleep(2.0)
        pss = [psutil.Process(p_.pid) for p_ in procs_]
        agents = _credentials(pki, n)
        ca = (pki / "ca.crt").read_bytes()
        warmup = 3.0 + n / 200
        t_start = time.monotonic() + warmup
        t_end = t_start + seconds
        per_agent = rate / n if rate else 0.0
        window = 8 if not rate else 2
        results: mp.Queue = mp.Queue()
        k = max(replicas, min(procs, n))
        workers = [
            mp.Process(
                target=_client,
                args=(
                    f"127.0.0.1:{ports[i % replicas]}",
                    ca,
                    agents[i::k],
                    batch,
                    per_agent,
                    t_start,
                    t_end,
                    window,
                    results,
                ),
            )
            for i in range(k)
        ]
        for w in workers:
            w.start()
        time.sleep(max(0, t_start - time.monotonic()))
        # The collector's own processes: the server and its writer process.
        pss = [q for ps in pss for q in (ps, *ps.children())]
        clients = [psutil.Process(w.pid) for w in workers]
        for ps in pss + clients:
            ps.cpu_percent(None)
        rss = 0
        while time.monotonic() < t_end:
            time.sleep(0.5)
            rss = max(rss, sum(ps.memory_info().rss for ps in pss))
        cpu = sum(ps.cpu_percent(None) for ps in pss)
        client_cpu = sum(ps.cpu_percent(None) for ps in clients)
        stored, lat, streams = 0, [], 0
        for _ in workers:
            s, ls, m = results.get(timeout=n / 10 + 120)
            stored += s
            lat += ls
            streams += m
        for w in workers:
            w.join(30)
        for proc in procs_:
            proc.terminate()
        for proc in procs_:
            proc.wait(30)
        lat.sort()
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
        return {
            "agents": n,
            "mode": (f"paced {rate}/s" if rate else "max")
            + (f" x{replicas}" if replicas > 1 else ""),
            "streams": streams,
            "alerts_per_s": stored / seconds,
            "p50": q[49],
            "p99": q[98],
            "cpu": cpu,
            "client_cpu": client_cpu,
            "rss_mb": rss / 2**20,
        }
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=5000, help="paced run: fleet alerts/s (0: none)")
    p.add_argument("--paced-only", action="store_true", help="skip the max runs")
    p.add_argument("--batch", type=int, default=200, help="alerts per batch in the max run")
    p.add_argument("--procs", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    p.add_argument("--sync", choices=("full", "normal"), default="full")
    p.add_argument(
        "--correlation",
        choices=("on", "off", "both"),
        default="on",
        help="both: the max run once without the correlation rules, as baseline",
    )
    p.add_argument(
        "--storage",
        default="",
        help="postgresql://... to bench PostgreSQL (a fresh schema per run)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1],
        help="collector processes sharing the store (PostgreSQL only beyond 1)",
    )
    args = p.parse_args()
    rows = []
    if args.storage:
        for r in args.replicas:
            for n in args.agents:
                url, _ = _pg_schema(args.storage)
                rows.append(
                    run(
                        n,
                        args.seconds,
                        0,
                        args.batch,
                        args.procs,
                        args.sync,
                        storage=url,
                        replicas=r,
                    )
                )
                if args.rate:
                    url, _ = _pg_schema(args.storage)
                    small = max(1, min(args.batch, args.rate // n))
                    rows.append(
                        run(
                            n,
                            args.seconds,
                            args.rate,
                            small,
                            args.procs,
                            args.sync,
                            storage=url,
                            replicas=r,
                        )
                    )
        args.agents = []
    for n in args.agents:
        if args.correlation in ("off", "both") and not args.paced_only:
            row = run(n, args.seconds, 0, args.batch, args.procs, args.sync, correlation=False)
            row["mode"] += " -corr"
            rows.append(row)
        if args.correlation in ("on", "both") and not args.paced_only:
            rows.append(run(n, args.seconds, 0, args.batch, args.procs, args.sync))
        if args.rate:
            small = max(1, min(args.batch, args.rate // n))
            rows.append(run(n, args.seconds, args.rate, small, args.procs, args.sync))
    store = "PostgreSQL" if args.storage else f"SQLite synchronous={args.sync}"
    print(f"\ncollector: {store}; {os.cpu_count()} CPUs shared with clients")
    print(
        f"{'agents':>6} {'mode':<13} {'streams':>7} {'alerts/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'CPU %':>6} {'RSS MB':>7} {'fleet CPU %':>11}"
    )
    for r in rows:
        print(
            f"{r['agents']:>6} {r['mode']:<13} {r['streams']:>7} {r['alerts_per_s']:>9.0f} "
            f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['cpu']:>6.0f} {r['rss_mb']:>7.0f} "
            f"{r['client_cpu']:>11.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
