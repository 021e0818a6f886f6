"""vigie: exit codes a script can rely on, clear errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import Collector, free_port, tool


def _vigie(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_unreachable_collector_exits_3(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    env["VIGIE_COLLECTOR"] = f"127.0.0.1:{free_port()}"
    r = _vigie(env, "alerts")
    assert r.returncode == 3
    assert "unreachable" in r.stderr and "Traceback" not in r.stderr


def test_agent_certificate_is_refused_exit_4(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_agent(tmp_path / "a")
    env = collector.analyst_env(creds) | {
        "VIGIE_CERT": str(creds / "agent.crt"),
        "VIGIE_KEY": str(creds / "agent.key"),
    }
    r = _vigie(env, "alerts")
    assert r.returncode == 4
    assert "refused" in r.stderr


def test_missing_credentials_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIE_")}
    env["VIGIE_CLI_CONFIG"] = "/nonexistent"
    r = _vigie(env, "alerts")
    assert r.returncode == 2
    assert "VIGIE_CA" in r.stderr


def test_settings_from_a_config_file(collector: Collector, tmp_path: Path) -> None:
    creds = collector.issue_analyst(tmp_path / "n")
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'collector = "{collector.address}"\nca = "{creds / "ca.crt"}"\n'
        f'cert = "{creds / "analyst.crt"}"\nkey = "{creds / "analyst.key"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIE_")}
    env["VIGIE_CLI_CONFIG"] = str(cfg)
    r = _vigie(env, "alerts")
    assert r.returncode == 0, r.stderr
    assert "(no alerts)" in r.stdout
    r = _vigie(env, "agents", "--json")
    assert r.returncode == 0 and r.stdout == ""
