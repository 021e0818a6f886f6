"""Self-protection: levels, the order work is shed in, hysteresis, and what it does to
the pipeline (deep decoding off first, then 1 in N new flows tracked)."""

from __future__ import annotations

import time
from pathlib import Path

from agent import selfguard, settings
from agent.anonymise.policy import Anonymiser
from agent.capture.pcapfile import read_capture
from agent.pipeline import Pipeline
from agent.selfguard import Budget, SelfGuard
from common import config
from tests.conftest import DATA


class FakeProc:
    def cpu_percent(self, _interval=None) -> float:
        return 0.0


def guard(applied: list[int]) -> SelfGuard:
    return SelfGuard(Budget(cpu_percent=40, rss_mb=200), applied.append, FakeProc())  # type: ignore[arg-type]


def test_sheds_one_level_per_sustained_overload_and_restores_with_hysteresis() -> None:
    applied: list[int] = []
    g = guard(applied)
    assert g.observe(90, 50) == 0  # one sample over budget is not enough
    assert g.observe(90, 50) == 1  # sustained: deep decoding off
    assert g.observe(90, 50) == 1
    assert g.observe(90, 50) == 2  # then flow sampling, 1 in 2
    for _ in range(20):
        g.observe(90, 50)
    assert g.level == selfguard.MAX_LEVEL and selfguard.sample_rate(g.level) == 32
    # Just under budget (but above RELAX of it): hold, no flapping.
    for _ in range(10):
        assert g.observe(35, 50) == selfguard.MAX_LEVEL
    # Comfortably under: one level back per DOWN_AFTER samples.
    for _ in range(selfguard.DOWN_AFTER):
        g.observe(5, 50)
    assert g.level == selfguard.MAX_LEVEL - 1
    for _ in range(selfguard.DOWN_AFTER * selfguard.MAX_LEVEL):
        g.observe(5, 50)
    assert g.level == 0
    assert applied[: selfguard.MAX_LEVEL] == list(range(1, selfguard.MAX_LEVEL + 1))
    assert applied[-1] == 0


def test_memory_over_budget_sheds_too() -> None:
    g = guard([])
    g.observe(1, 500)
    assert g.observe(1, 500) == 1


def test_order_is_stated() -> None:
    assert selfguard.describe(0) == "full"
    assert selfguard.describe(1) == "deep decoding off"
    assert selfguard.describe(3) == "deep decoding off, 1 in 4 new flows tracked"


def _run(level: int, tmp_path: Path) -> Pipeline:
    cfg = config.defaults(settings.SCHEMA)
    pipe = Pipeline(
        cfg, Anonymiser.from_settings(cfg["anonymisation"], tmp_path), lambda a: None, time.time
    )
    pipe.set_shed(level)
    for rec in read_capture(DATA / "nmap_syn_scan_1000ports.pcap"):
        pipe.feed(*rec)
    pipe.finish()
    return pipe


def test_pipeline_sheds_deep_decoding_then_flows(tmp_path: Path) -> None:
    full = _run(0, tmp_path)
    assert full.deep is not None and full._deep is full.deep
    deep_off = _run(1, tmp_path)
    assert deep_off._deep is None and deep_off.sample_n == 1
    assert deep_off.engine.created == full.engine.created and deep_off.shed_packets == 0
    sampled = _run(4, tmp_path)  # 1 in 8
    assert sampled.sample_n == 8 and sampled.shed_packets > 0
    ratio = sampled.engine.created / full.engine.created
    assert 0.05 < ratio < 0.25, ratio
    restored = _run(0, tmp_path)
    assert restored.engine.created == full.engine.created


def test_from_settings(tmp_path: Path) -> None:
    cfg = config.defaults(settings.SCHEMA)
    assert cfg["selfguard"] == {
        "enabled": True,
        "cpu_percent": 40.0,
        "rss_mb": 200.0,
        "interval_seconds": 5.0,
    }
    cfg["selfguard"]["enabled"] = False
    assert selfguard.from_settings(cfg, lambda _l: None) is None
    cfg["selfguard"].update(enabled=True, interval_seconds=0.1, cpu_percent=0.0001, rss_mb=1)
    levels: list[int] = []
    g = selfguard.from_settings(cfg, levels.append)
    assert g is not None
    try:
        deadline = time.monotonic() + 5
        while not levels and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        g.stop()
    assert levels and levels[0] == 1  # a real process over a tiny budget: shed


def test_deep_decoder_comes_back_for_engine_counted_detectors(tmp_path: Path) -> None:
    """With no on_app detector left, net.dns_tunnel still needs DNS read: a shed-and-restore
    cycle must bring it back as the configure step had it (it used to stay off)."""
    cfg = config.defaults(settings.SCHEMA)
    for key in ("bruteforce", "lateral", "ioc", "cleartext_credentials", "medical"):
        cfg["detectors"][key]["enabled"] = False
    out: list = []
    pipe = Pipeline(
        cfg, Anonymiser.from_settings(cfg["anonymisation"], tmp_path), out.append, time.time
    )
    pipe.set_shed(1)
    pipe.set_shed(0)
    for rec in read_capture(DATA / "iodine_dns_tunnel_pirate_sea.pcap"):
        pipe.feed(*rec)
    pipe.finish()
    assert any(a.detector == "net.dns_tunnel" for a in out)
