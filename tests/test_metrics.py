"""Prometheus metrics: the text format, the loopback server, and both programs' endpoints."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from common import config, metrics
from tests.conftest import DATA, free_port, start_collector, tool


def scrape(address: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


def promtool_clean(text: str) -> None:
    """Prometheus' own linter on a metrics page: no error, no lint problem."""
    r = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_text_format() -> None:
    reg = metrics.Registry()
    c = reg.counter("x_total", "Things.", labels=("kind",))
    c.inc(2, "a")
    c.inc(1, 'b"q')
    g = reg.gauge("level", "A level.")
    g.set(3)
    h = reg.histogram("lat_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    reg.callback("packets_total", "Packets.", lambda: 42, kind="counter")
    reg.callback("by_det", "Per detector.", lambda: [(("scan",), 2)], labels=("detector",))
    reg.callback("broken", "Fails.", lambda: 1 / 0)
    text = reg.render()
    assert "# TYPE x_total counter" in text and "# HELP level A level." in text
    s = metrics.parse(text)
    assert s['x_total{kind="a"}'] == 2 and s['x_total{kind="b\\"q"}'] == 1
    assert s["level"] == 3 and s["packets_total"] == 42 and s['by_det{detector="scan"}'] == 2
    assert s['lat_seconds_bucket{le="0.1"}'] == 1 and s['lat_seconds_bucket{le="1.0"}'] == 2
    assert s['lat_seconds_bucket{le="+Inf"}'] == 3 and s["lat_seconds_count"] == 3
    assert s["lat_seconds_sum"] == 5.55
    assert "broken" not in text  # a failing source is left out, the scrape still works


def test_server_loopback_and_disabled() -> None:
    reg = metrics.Registry()
    reg.gauge("up", "Up.").set(1)
    assert metrics.serve("", reg) is None
    srv = metrics.serve("127.0.0.1:0", reg)
    assert srv is not None
    try:
        ctype, body = scrape(srv.address)
        assert ctype.startswith("text/plain; version=0.0.4") and "up 1" in body
        # A port in use: logged and skipped, never fatal.
        assert metrics.serve(srv.address, reg) is None
    finally:
        srv.close()


def test_listen_check() -> None:
    assert config.check_listen("") is None and config.check_listen("127.0.0.1:9750") is None
    assert "HOST:PORT" in (config.check_listen("9750") or "")


def test_collector_and_agent_metrics(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    c = start_collector(tmp_path / "collector", config=cfg)
    try:
        _, body = scrape(f"127.0.0.1:{port}")
        assert metrics.parse(body)["vigie_collector_connected_agents"] == 0
        c.issue_agent(tmp_path / "agent" / "tls")
        r = subprocess.run(
            [
                tool("vigie-agent"),
                "replay",
                str(DATA / "nmap_syn_scan_1000ports.pcap"),
                "--output",
                "collector",
                "--collector",
                c.address,
                "--state-dir",
                str(tmp_path / "agent"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while True:
            s = metrics.parse(scrape(f"127.0.0.1:{port}")[1])
            if s["vigie_collector_connected_agents"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert s["vigie_collector_alerts_stored_total"] >= 1
        assert s["vigie_collector_batches_total"] >= 1
        # One observation per transaction; batches and heartbeats arriving together share one.
        tx = s["vigie_collector_ingest_seconds_count"]
        assert 1 <= tx <= s["vigie_collector_batches_total"] + s["vigie_collector_heartbeats_total"]
        assert s["vigie_collector_heartbeats_total"] >= 1
        assert "vigie_collector_incident_changes" in s
        # The failure counters exist from the start, at zero, so that an alerting rule on
        # their rate has a series to read.
        for name in (
            'vigie_collector_batches_failed_total{reason="unavailable"}',
            'vigie_collector_dead_letters_total{kind="store"}',
            'vigie_collector_correlation_errors_total{rule="kill_chain"}',
            'vigie_collector_refused_total{reason="unauthenticated"}',
            "vigie_collector_dead_letters_held",
        ):
            assert s[name] == 0, name
        promtool_clean(body)
        promtool_clean(scrape(f"127.0.0.1:{port}")[1])
    finally:
        c.proc.terminate()
        c.proc.wait(10)


def test_agent_metrics_registry(tmp_path: Path) -> None:
    """The agent's families, read from a pipeline fed by a replay (no capture needed)."""
    from agent import cli, settings
    from agent.anonymise.policy import Anonymiser
    from agent.capture.pcapfile import read_capture
    from agent.pipeline import Pipeline
    from common import config

    cfg = config.defaults(settings.SCHEMA)
    cfg["state_dir"] = str(tmp_path)
    svc = cli._Service.__new__(cli._Service)  # no signal handlers in a test process
    svc.reloads = {"applied": 0, "refused": 0}
    svc.delivery = None
    svc.logs = None  # no log reader: [logs] sources are tested in test_logs_*
    out: list = []
    svc.pipe = Pipeline(
        cfg, Anonymiser.from_settings(cfg["anonymisation"], tmp_path), out.append, time.time
    )
    for rec in read_capture(DATA / "nmap_syn_scan_1000ports.pcap"):
        svc.pipe.feed(*rec)
    svc.pipe.finish()
    reg = cli.agent_metrics(svc, None, lambda: (7, 1))  # type: ignore[arg-type]
    s = metrics.parse(reg.render())
    assert s["vigie_agent_packets_total"] == svc.pipe.packets > 0
    assert s["vigie_agent_kernel_dropped_total"] == 1
    assert s['vigie_agent_alerts_total{detector="net.portscan"}'] >= 1
    assert s["vigie_agent_selfguard_level"] == 0 and s["vigie_agent_rss_bytes"] > 0
    promtool_clean(reg.render())
