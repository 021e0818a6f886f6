"""Delivery details: backoff, intel distribution (validated at load, sent on connect,
pushed to connected agents, applied without restart)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from agent.deliver.stream import Credentials, Sender, backoff
from agent.outbox.store import Outbox
from tests import _delivery_kit as kit
from tests.conftest import Collector, tool
from vigie.v1 import ingest_pb2


def test_backoff_is_jittered_exponential_and_capped() -> None:
    gen = backoff(0.5, 8.0)
    draws = [next(gen) for _ in range(200)]
    caps = [min(8.0, 0.5 * 2**i) for i in range(200)]
    assert all(0 <= d <= c for d, c in zip(draws, caps, strict=True))
    assert len({round(d, 6) for d in draws[10:]}) > 150  # jittered, not in step
    assert max(draws[10:]) > 4.0  # and it does reach the cap's range


def _intel(c: Collector, doc: dict, tmp_path: Path, name: str = "intel.json"):
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return subprocess.run(
        [tool("vigie-collector"), "intel", "load", str(f), "--state-dir", str(c.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"ips": ["0.0.0.0/0"]}, "ips[0]"),
        ({"ips": ["::/0"]}, "would match far too much"),
        ({"domains": [""]}, "domains[0] is empty"),
        ({"domains": ["com"]}, "bare top-level domain"),
        ({"domains": ["Co.UK."]}, "is a public suffix"),
        ({"domains": ["*.evil.example"]}, "no wildcards"),
        ({"ja3": ["xyz"]}, "ja3[0]"),
        ({"hashes": ["1234"]}, "hashes[0]"),
        ({"thresholds": {"portscan": 3}}, "detector.option"),
        ({"iocs": []}, "unknown key 'iocs'"),
    ],
)
def test_intel_that_would_match_everything_is_refused(
    collector: Collector, tmp_path: Path, doc: dict, message: str
) -> None:
    r = _intel(collector, doc, tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_intel_sent_on_connect_and_pushed_to_connected_agents(
    collector: Collector, tmp_path: Path
) -> None:
    good = {
        "ips": ["203.0.113.7", "198.51.100.0/24"],
        "domains": ["evil.example"],
        "ja3": ["e7d705a3286e19ea42f587b344ee6865"],
        "hashes": ["d41d8cd98f00b204e9800998ecf8427e"],
        "thresholds": {"net.portscan.fanout_ports": 50},
    }
    r = _intel(collector, good, tmp_path)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stderr
    tls = collector.issue_agent(tmp_path / "tls")
    got: list[dict] = []
    path = tmp_path / "state" / "intel.json"

    def sender() -> tuple[Sender, Outbox]:
        box = Outbox(tmp_path / "outbox.db")
        creds = Credentials(tls / "ca.crt", tls / "agent.crt", tls / "agent.key")
        s = Sender(
            box, collector.address, creds, ingest_pb2.Heartbeat, 10, 0.5, 60.0, path, got.append
        )
        s.start()
        return s, box

    s, box = sender()
    try:
        assert kit.wait_for(lambda: len(got) == 1, 20)  # older (none): sent on connect
        assert got[0]["version"] == 1 and got[0]["domains"] == ["evil.example"]
        assert got[0]["thresholds"] == {"net.portscan.fanout_ports": 50.0}
        assert json.loads(path.read_text())["version"] == 1
        connects = s.connects
        r = _intel(collector, {**good, "domains": ["evil.example", "worse.example"]}, tmp_path)
        assert "version 2" in r.stdout
        assert kit.wait_for(lambda: len(got) == 2, 20)  # pushed, same stream
        assert got[1]["version"] == 2 and len(got[1]["domains"]) == 2
        assert s.connects == connects
    finally:
        s.stop()
        s.join(5)
        box.close()
    # Restarted with version 2 on disk: the heartbeat says so and nothing is re-sent.
    s, box = sender()
    try:
        assert s.intel_version == 2
        assert kit.wait_for(lambda: s.connected.is_set(), 20)
        time.sleep(2)
        assert len(got) == 2
    finally:
        s.stop()
        s.join(5)
        box.close()
