"""Configuration: declared, validated, and the committed files match the code."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from agent.settings import SCHEMA as AGENT
from collector.settings import SCHEMA as COLLECTOR
from common import config
from tests.conftest import DATA, ROOT, tool


def _render():
    spec = importlib.util.spec_from_file_location("render", ROOT / "configs" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.rendered()


def test_committed_configs_match_the_declared_settings() -> None:
    for name, text in _render().items():
        committed = (ROOT / "configs" / f"{name}.toml").read_text(encoding="utf-8")
        assert committed == text, f"configs/{name}.toml is stale: python configs/render.py"


@pytest.mark.parametrize(("name", "schema"), [("agent", AGENT), ("collector", COLLECTOR)])
def test_committed_configs_load_to_the_defaults(name: str, schema: dict) -> None:
    assert config.load(ROOT / "configs" / f"{name}.toml", schema) == config.defaults(schema)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("[flows]\nmax_flow = 10\n", "unknown key 'flows.max_flow'"),
        ("[flows]\nmax_flows = 'many'\n", "key 'flows.max_flows' must be an integer"),
        ("[flows]\nmax_flows = 3\n", "key 'flows.max_flows' must be at least 100"),
        (
            "[detectors.portscan]\ntheta_benign = 2.0\n",
            "key 'detectors.portscan.theta_benign' must be between",
        ),
        ("[detectors.portscan]\nallow = ['10.0.0.0/33']\n", "key 'detectors.portscan.allow' holds"),
        ("[collector]\naddress = 'nowhere'\n", "key 'collector.address' must be HOST:PORT"),
        ("flows = 3\n", "key 'flows' must be a table"),
        ("[flows\n", "not valid TOML"),
    ],
)
def test_bad_agent_config_names_key_and_file(tmp_path: Path, body: str, expected: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(body)
    r = subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_syn_scan_1000ports.pcap"),
            "--config",
            str(cfg),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0] and str(cfg) in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_collector_config_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.toml"
    cfg.write_text("[ingest]\nworkers = 'lots'\n")
    r = subprocess.run(
        [tool("vigie-collector"), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "key 'ingest.workers' must be an integer" in r.stderr and str(cfg) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="configuration file not found"):
        config.load(tmp_path / "nope.toml", AGENT)


def test_integers_are_accepted_where_numbers_are_declared() -> None:
    cfg = config.validate({"flows": {"tcp_idle_seconds": 10}}, AGENT, "x")
    assert cfg["flows"]["tcp_idle_seconds"] == 10.0
    assert cfg["flows"]["max_flows"] == 200_000  # untouched keys keep their defaults
