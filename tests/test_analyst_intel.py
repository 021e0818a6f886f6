"""vigie intel publish (CSV, JSON, STIX) reaches the agents; vigie export stix."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import stix2

from tests.conftest import DATA, Collector, tool


def _vigie(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("vigie"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_publish_merges_files_and_agents_receive_it(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    (tmp_path / "iocs.csv").write_text(
        "type,value\nip,203.0.113.50\ndomain,c2.example.net\nja3,a607f3a5c94c2ee592af1456f36c8367\n"
    )
    (tmp_path / "iocs.json").write_text(json.dumps({"ips": ["198.51.100.0/24"]}))
    (tmp_path / "iocs.stix").write_text(
        json.dumps(
            {
                "type": "bundle",
                "id": "bundle--0d3b3b36-4e62-4a4a-9e36-1c3c5e3e7a11",
                "objects": [
                    {
                        "type": "indicator",
                        "spec_version": "2.1",
                        "id": "indicator--6a0a8c52-4a3c-4e0e-9e2a-6a2d2f6b7c11",
                        "created": "2026-01-01T00:00:00Z",
                        "modified": "2026-01-01T00:00:00Z",
                        "pattern": "[domain-name:value = 'evil.example.org'] OR "
                        "[ipv4-addr:value = '192.0.2.99']",
                        "pattern_type": "stix",
                        "valid_from": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        )
    )
    versions = []
    for name in ("iocs.csv", "iocs.json", "iocs.stix"):
        r = _vigie(env, "intel", "publish", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        versions.append(int(r.stdout.split()[2]))
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert "ips 3" in r.stdout and "domains 2" in r.stdout and "ja3 1" in r.stdout

    # An agent that connects receives the merged bundle and keeps it in its state dir.
    agent = tmp_path / "agent"
    collector.issue_agent(agent / "tls")
    subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_scan_types_connect_syn_fin_null_xmas.pcapng"),
            "--state-dir",
            str(agent),
            "--output",
            "collector",
            "--collector",
            collector.address,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    deadline = time.monotonic() + 10
    while not (agent / "intel.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    got = json.loads((agent / "intel.json").read_text())
    text = json.dumps(got)
    for ioc in (
        "203.0.113.50",
        "198.51.100.0/24",
        "192.0.2.99",
        "evil.example.org",
        "c2.example.net",
    ):
        assert ioc in text


def test_publish_refuses_what_would_match_everything(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    for body in ("ip,0.0.0.0/0\n", "domain,com\n", "ip,::/0\n"):
        f = tmp_path / "bad.csv"
        f.write_text(body)
        r = _vigie(env, "intel", "publish", str(f))
        assert r.returncode == 2, (body, r.stdout, r.stderr)
        assert "INVALID_ARGUMENT" in r.stderr and "bundle_json" in r.stderr
    f = tmp_path / "bad.csv"
    f.write_text("colour,blue\n")
    r = _vigie(env, "intel", "publish", str(f))
    assert r.returncode == 2 and "bad.csv:1" in r.stderr


def test_only_national_analysts_publish(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "r", "ars", "regional:84"))
    (tmp_path / "i.csv").write_text("ip,203.0.113.50\n")
    r = _vigie(env, "intel", "publish", str(tmp_path / "i.csv"))
    assert r.returncode == 4


def test_export_stix_is_a_valid_bundle(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    r = _vigie(env, "export", "stix", "--since", "7d")
    assert r.returncode == 0, r.stderr
    bundle = stix2.parse(r.stdout, allow_custom=True)
    assert bundle.type == "bundle"
