"""Helpers for the delivery, fault and enrollment tests: real processes, real captures.

`scanners_pcap` writes a capture in which each of N external sources SYN-scans a few
ports of one server (answered by RST): the agent reports one net.portscan alert (medium)
per source. `arp_claims` adds addresses re-claimed by a second MAC: one net.arp_spoof
alert (high) each. Packets are built with struct: thousands of sources in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

from tests.conftest import Collector, free_port, tool

SERVER = bytes([10, 0, 0, 5])
MAC_SRV, MAC_GW = b"\x02\x00\x00\x00\x00\x05", b"\x02\x00\x00\x00\x00\x01"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


def _eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def _arp_reply(mac: bytes, ip: bytes) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, ip, MAC_SRV, SERVER)
    return _eth(MAC_SRV, mac, 0x0806, arp)


def scanner_ip(i: int) -> bytes:
    return bytes([45, 60 + i // 62500, (i // 250) % 250 + 1, i % 250 + 1])


def scanners_pcap(
    path: Path, sources: int, ports: int = 6, arp_claims: int = 0, t0: float | None = None
) -> Path:
    """A pcap with `sources` scanners (one medium alert each) and `arp_claims` spoofed
    addresses (one high alert each). Timestamps start at t0 (default: one hour ago)."""
    t = time.time() - 3600 if t0 is None else t0
    frames: list[tuple[float, bytes]] = []
    for i in range(sources):
        src = scanner_ip(i)
        for p in range(ports):
            dport = 1000 + p
            syn = _tcp(src, SERVER, 40000 + p, dport, 0x02, 1000, 0)
            rst = _tcp(SERVER, src, dport, 40000 + p, 0x14, 0, 1001)
            frames.append((t, _eth(MAC_SRV, MAC_GW, 0x0800, syn)))
            frames.append((t + 0.0001, _eth(MAC_GW, MAC_SRV, 0x0800, rst)))
            t += 0.0005
    for i in range(arp_claims):
        ip = bytes([10, 9, (i + 1) >> 8, (i + 1) & 0xFF])
        frames.append((t, _arp_reply(b"\x02\xaa\x00\x00" + struct.pack("!H", i), ip)))
        frames.append((t + 0.001, _arp_reply(b"\x02\xbb\x00\x00" + struct.pack("!H", i), ip)))
        t += 0.002
    frames.append((t + 10, _eth(MAC_SRV, MAC_GW, 0x0800, _tcp(SERVER, SERVER, 1, 1, 0x10, 0, 0))))
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
            f.write(frame)
    return path


def empty_pcap(path: Path) -> Path:
    """A capture with no finding: replaying it just drains the outbox."""
    return scanners_pcap(path, 0)


def agent_config(path: Path, **sections: dict) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {v!r}".replace("'", '"').replace("True", "true"))
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def replay(
    pcap: Path, state: Path, address: str, config: Path | None = None, log: Path | None = None
) -> subprocess.Popen:
    """`vigie-agent replay --output collector`, its output in `log` (default state.log)."""
    cmd = [
        tool("vigie-agent"),
        "replay",
        str(pcap),
        "--state-dir",
        str(state),
        "--output",
        "collector",
        "--collector",
        address,
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    log = log or state.parent / f"{state.name}.log"
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def expected_alerts(pcap: Path, state: Path, config: Path | None = None) -> dict[str, int]:
    """What the agent finds in `pcap` (jsonl run): alert ids -> last revision, by detector
    and severity, as {"ids": n, "high": n_high_ids, "revisions": sum of last revisions}."""
    import json

    cmd = [tool("vigie-agent"), "replay", str(pcap), "--state-dir", str(state)]
    if config is not None:
        cmd += ["--config", str(config)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    alerts = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    last: dict[str, dict] = {}
    for a in alerts:
        if a["id"] not in last or a["revision"] > last[a["id"]]["revision"]:
            last[a["id"]] = a
    return {
        "ids": len(last),
        "high": sum(1 for a in last.values() if a["severity"] in ("high", "critical")),
        "revisions": sum(a["revision"] for a in last.values()),
    }


def start(
    state_dir: Path,
    port: int | None = None,
    config: Path | None = None,
    enroll_port: int | None = None,
) -> Collector:
    """A collector process; unlike conftest's, with a config file and an enrollment port."""
    port = port or free_port()
    log = state_dir.parent / f"{state_dir.name}.log"
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    start_at = log.stat().st_size if log.exists() else 0
    cmd = [
        tool("vigie-collector"),
        "serve",
        "--state-dir",
        str(state_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--enroll-listen",
        f"127.0.0.1:{enroll_port}" if enroll_port else "",
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and b"collector_listening" in log.read_bytes()[start_at:]:
            return Collector(f"127.0.0.1:{port}", state_dir, proc, log)
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("collector did not start in 30 s")


def stop(c: Collector) -> None:
    if c.proc.poll() is None:
        c.proc.terminate()
        try:
            c.proc.wait(10)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def outbox_depth(state: Path) -> int:
    db = state / "outbox.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def wait_for(cond, timeout: float = 60.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False
