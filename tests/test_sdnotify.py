"""sd_notify and the service life cycle: READY, WATCHDOG fed only while the loop makes
progress, RELOADING/READY on SIGHUP (a bad file refused, the old settings kept),
STOPPING on SIGTERM, and no alert lost when SIGTERM lands in the middle of streaming.

The live tests run `vigie-agent run` on the root-namespace end of a veth pair whose other
end is in a network namespace the test makes (frames are sent from there), with the
test's own NOTIFY_SOCKET. They need root and `ip netns`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.pipeline import Pipeline
from common import config, sdnotify
from tests.conftest import DATA, ROOT, Collector, free_port

sys.path.insert(0, str(ROOT / "bench"))
from netns import available

BIN = Path(sys.executable).parent


# The protocol ---------------------------------------------------------------------------


class Listener:
    """The test's NOTIFY_SOCKET: collects (monotonic time, message) in a thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait(self, line: str, after: float = 0.0, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, msg in list(self.messages):
                if t >= after and line in msg.splitlines():
                    return t
            time.sleep(0.02)
        raise AssertionError(f"no {line} after {after}: {self.messages[-10:]}")

    def since(self, after: float, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if t >= after and line in m.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def test_notifier_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = sdnotify.Notifier()
    assert not n.enabled and n.ready() is False and n.stopping() is False


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    address = f"@vigie-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    lst = Listener(address)
    try:
        n = sdnotify.Notifier(address)
        assert n.ready("up")
        assert n.reloading()
        assert n.stopping()
        lst.wait("READY=1", timeout=5)
        lst.wait("STOPPING=1", timeout=5)
        msgs = [m for _, m in lst.messages]
        assert msgs[0] == "READY=1\nSTATUS=up"
        reload = msgs[1].splitlines()
        assert reload[0] == "RELOADING=1" and reload[1].startswith("MONOTONIC_USEC=")
        usec = int(reload[1].split("=")[1])
        assert abs(usec / 1e6 - time.monotonic()) < 5  # CLOCK_MONOTONIC, as systemd wants
    finally:
        lst.close()


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    n = sdnotify.Notifier(str(tmp_path / "nobody"))
    assert n.enabled and n.ready() is False  # nothing raised


def test_watchdog_period_honours_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_seconds() == 4.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_seconds() == 0.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_seconds() == 4.0
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_seconds() == 0.0


def test_watchdog_is_fed_only_when_the_loop_advanced(tmp_path: Path) -> None:
    lst = Listener(str(tmp_path / "n"))
    try:
        wd = sdnotify.Watchdog(sdnotify.Notifier(lst.address), 1.0, lambda: "fine")
        assert wd.feed_if_alive()  # first feed
        assert not wd.feed_if_alive()  # no beat since: no ping
        wd.beat()
        assert wd.feed_if_alive()
        assert not wd.feed_if_alive() and wd.missed == 1
        lst.wait("WATCHDOG=1", timeout=5)
        time.sleep(0.2)
        assert [m for _, m in lst.messages] == ["WATCHDOG=1\nSTATUS=fine"] * 2
    finally:
        lst.close()


# Reload on the pipeline ------------------------------------------------------------------


def _pipe(cfg: dict, tmp_path: Path, out: list) -> Pipeline:
    return Pipeline(
        cfg, Anonymiser.from_settings(cfg["anonymisation"], tmp_path), out.append, time.time
    )


def test_reconfigure_keeps_flows_and_open_alerts(tmp_path: Path) -> None:
    from agent.capture.pcapfile import read_capture

    cfg = config.defaults(settings.SCHEMA)
    out: list = []
    pipe = _pipe(cfg, tmp_path, out)
    records = list(read_capture(DATA / "nmap_syn_scan_1000ports.pcap"))
    for rec in records[: len(records) // 2]:
        pipe.feed(*rec)
    flows, open_alerts = len(pipe.engine), len(pipe.aggregator.open)
    assert flows and open_alerts
    before = {type(d).__name__: d for d in pipe.detectors}
    new = config.validate(
        {
            "detectors": {
                "portscan": {"allow": ["192.0.2.0/24"]},
                "bruteforce": {"attempts": 3},
                "beacon": {"enabled": False},
            },
            "aggregation": {"update_interval_seconds": 5},
        },
        settings.SCHEMA,
        "test",
    )
    changes = pipe.reconfigure(new)
    after = {type(d).__name__: d for d in pipe.detectors}
    assert after["PortScan"] is before["PortScan"]  # allow-list only: state kept
    assert after["PortScan"]._allow and after["PortScan"].settings["allow"] == ["192.0.2.0/24"]
    assert after["BruteForce"] is not before["BruteForce"]
    assert after["BruteForce"].settings["attempts"] == 3
    assert "Beacon" not in after
    assert pipe.aggregator.update_interval == 5
    assert "detectors.portscan.allow: applied" in changes
    assert "detectors.bruteforce: restarted" in changes
    assert "detectors.beacon: disabled" in changes
    assert len(pipe.engine) == flows and len(pipe.aggregator.open) == open_alerts
    for rec in records[len(records) // 2 :]:
        pipe.feed(*rec)
    pipe.finish()
    assert any(a.detector == "net.portscan" for a in out)


# Live: the agent under a systemd-like supervisor -----------------------------------------


@dataclass
class Wire:
    ns: str
    iface: str  # root-namespace end: the agent captures here
    peer: str  # in `ns`: frames are sent from here


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def wire(tag: str) -> Iterator[Wire]:
    if reason := available():
        pytest.skip(f"live service test skipped: {reason}")
    n = os.getpid() % 100000
    w = Wire(f"vgsd{tag}{n}", f"vr{tag}{n}"[:15], f"vp{tag}{n}"[:15])
    try:
        _ip("netns", "add", w.ns)
        _ip("link", "add", w.iface, "type", "veth", "peer", "name", w.peer, "netns", w.ns)
        Path(f"/proc/sys/net/ipv6/conf/{w.iface}/disable_ipv6").write_text("1")
        _ip("link", "set", w.iface, "up")
        _ip("-n", w.ns, "link", "set", w.peer, "up")
        _ip("-n", w.ns, "link", "set", "lo", "up")
        yield w
    finally:
        subprocess.run(["ip", "link", "del", w.iface], capture_output=True)
        subprocess.run(["ip", "netns", "del", w.ns], capture_output=True)


# SYN probes from `sources` spoofed addresses to 20 ports each, to a MAC nobody owns:
# the agent sees them, no stack answers, every attempt ends unanswered (a port scan).
SCAN = r"""
import sys, time
from scapy.all import Ether, IP, TCP, sendp
iface, first, count, rounds, pause = {iface!r}, {first}, {count}, {rounds}, {pause}
eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
for r in range(rounds):
    pk = []
    for k in range(first + r * count, first + (r + 1) * count):
        src = "198.51.%d.%d" % (k // 250, k % 250 + 1)
        pk += [eth / IP(src=src, dst="10.77.0.1") / TCP(sport=40000, dport=p, flags="S")
               for p in range(1, 21)]
    sendp(pk, iface=iface, verbose=False)
    print("round", r, flush=True)
    time.sleep(pause)
"""


def scan(w: Wire, first: int = 0, count: int = 3, rounds: int = 1, pause: float = 0.0):
    code = SCAN.format(iface=w.peer, first=first, count=count, rounds=rounds, pause=pause)
    return subprocess.Popen(
        ["ip", "netns", "exec", w.ns, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def agent_config(path: Path, extra: str = "", top: str = "") -> Path:
    path.write_text(
        top + "[host]\nenabled = false\n"
        '[metrics]\nlisten = ""\n'
        "[flows]\nattempt_timeout_seconds = 0.5\n"
        "[aggregation]\nupdate_interval_seconds = 1.0\n" + extra
    )
    return path


def start_agent(w: Wire, tmp: Path, cfg: Path, env: dict, output: str = "jsonl", log=None):
    log = log or tmp / "agent.log"
    argv = [str(BIN / "vigie-agent"), "run", "-i", w.iface, "--output", output,
            "--config", str(cfg), "--state-dir", str(tmp / "state")]  # fmt: skip
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        argv,
        stdout=out if output == "collector" else subprocess.DEVNULL,
        stderr=out,
        env=os.environ | env,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.mark.root
def test_agent_notifies_systemd_through_its_life(tmp_path: Path) -> None:
    period = 1.0
    lst = Listener(str(tmp_path / "notify"))
    cfg = agent_config(tmp_path / "agent.toml")
    with wire("n") as w:
        env = {
            "NOTIFY_SOCKET": lst.address,
            "WATCHDOG_USEC": str(int(period * 1e6)),
            "VIGIE_TEST_STALL": "1",
        }
        proc = start_agent(w, tmp_path, cfg, env)
        log = tmp_path / "agent.log"
        try:
            ready = lst.wait("READY=1")
            # Quiet link: the tick loop still advances and keeps feeding the watchdog.
            time.sleep(3 * period)
            feeds = lst.since(ready, "WATCHDOG=1")
            assert len(feeds) >= 4, lst.messages
            assert max(b - a for a, b in itertools.pairwise(feeds)) < period
            # Traffic: still fed.
            scan(w).wait(60)
            t = time.monotonic()
            time.sleep(2 * period)
            assert len(lst.since(t, "WATCHDOG=1")) >= 2

            # SIGHUP with a good change: RELOADING=1 (+ MONOTONIC_USEC), then READY=1.
            agent_config(cfg, "[detectors.portscan]\nfanout_ports = 40\n")
            t = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            t_reload = lst.wait("RELOADING=1", after=t, timeout=10)
            assert lst.wait("READY=1", after=t_reload, timeout=10) >= t_reload
            msg = next(m for tm, m in lst.messages if tm == t_reload)
            assert "MONOTONIC_USEC=" in msg
            # SIGHUP with a bad file: refused, key named, READY again, still running.
            cfg.write_text(cfg.read_text() + "[selfguard]\ncpu_percent = 'lots'\n")
            t = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            t_reload = lst.wait("RELOADING=1", after=t, timeout=10)
            lst.wait("READY=1", after=t_reload, timeout=10)
            time.sleep(0.3)
            events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            reloaded = [e for e in events if e["event"] == "reloaded"]
            assert reloaded and "detectors.portscan.fanout_ports" in reloaded[0]["changed"]
            refused = [e for e in events if e["event"] == "reload_refused"]
            assert refused and "selfguard.cpu_percent" in refused[0]["error"]
            assert proc.poll() is None

            # A stalled pipeline (a blocked loop) stops the watchdog.
            proc.send_signal(signal.SIGUSR2)
            time.sleep(period)  # a feed already under way may still land
            t = time.monotonic()
            time.sleep(2.5 * period)
            assert lst.since(t, "WATCHDOG=1") == [], "watchdog fed while the loop is stalled"
            assert proc.poll() is None

            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            lst.wait("STOPPING=1", after=t, timeout=10)
            assert proc.wait(30) == 0
        finally:
            _stop(proc)
            lst.close()
    text = log.read_text()
    assert '"capture_stopped"' in text


def test_collector_notifies_ready_and_stopping(tmp_path: Path) -> None:
    lst = Listener(f"@vigie-collector-test-{os.getpid()}")  # abstract namespace
    cfg = tmp_path / "collector.toml"
    cfg.write_text('[metrics]\nlisten = ""\n')
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "vigie-collector"),
            "serve",
            "--state-dir",
            str(tmp_path / "c"),
            "--listen",
            f"127.0.0.1:{port}",
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"NOTIFY_SOCKET": lst.address, "WATCHDOG_USEC": "1000000"},
    )
    try:
        ready = lst.wait("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # READY means listening
        time.sleep(1.5)
        assert len(lst.since(ready, "WATCHDOG=1")) >= 2
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        lst.wait("STOPPING=1", after=t, timeout=10)
        assert proc.wait(30) == 0
    finally:
        _stop(proc)
        lst.close()


# SIGTERM in the middle of streaming --------------------------------------------------------


def _emitted(log: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if '"alert_queued"' in line:
            e = json.loads(line)
            out[e["id"]] = max(out.get(e["id"], 0), e["revision"])
    return out


def _rows(db: Path, sql: str) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute(sql).fetchall())
    finally:
        con.close()


@pytest.mark.root
def test_sigterm_while_streaming_loses_no_alert(collector: Collector, tmp_path: Path) -> None:
    state = tmp_path / "state"
    collector.issue_agent(state / "tls")
    cfg = agent_config(
        tmp_path / "agent.toml",
        f'[collector]\naddress = "{collector.address}"\nheartbeat_seconds = 1.0\n',
        top='log_level = "debug"\n',
    )
    log = tmp_path / "agent.log"
    with wire("d") as w:
        proc = start_agent(w, tmp_path, cfg, {}, output="collector", log=log)
        try:
            deadline = time.monotonic() + 30
            while b"stream_connected" not in log.read_bytes():
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
            sender = scan(w, count=4, rounds=8, pause=0.5)  # new scanners for ~5 s
            time.sleep(3)
            assert sender.poll() is None, "the scan should still be running"
            proc.send_signal(signal.SIGTERM)  # mid-stream, mid-scan
            assert proc.wait(30) == 0
            sender.wait(60)
        finally:
            _stop(proc)
        emitted = _emitted(log)
        assert len(emitted) >= 4, log.read_text()[-3000:]
        stored = _rows(collector.db(), "SELECT alert_id, revision FROM alerts")
        queued = _rows(state / "outbox.db", "SELECT id, revision FROM outbox")
        for alert_id, rev in emitted.items():
            assert stored.get(alert_id, 0) >= rev or queued.get(alert_id, 0) >= rev, alert_id

        # Restart: what was queued goes out, and then every detected alert is stored.
        started = log.read_bytes().count(b'"capture_started"')
        proc = start_agent(w, tmp_path, cfg, {}, output="collector", log=log)
        try:
            deadline = time.monotonic() + 60
            while log.read_bytes().count(b'"capture_started"') == started:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            while _rows(state / "outbox.db", "SELECT id, revision FROM outbox"):
                assert time.monotonic() < deadline, "outbox did not drain after restart"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            _stop(proc)
    stored = _rows(collector.db(), "SELECT alert_id, revision FROM alerts")
    missing = {a: r for a, r in emitted.items() if stored.get(a, 0) < r}
    assert not missing, missing
