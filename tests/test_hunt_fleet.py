"""One publication with a look-back, three agents in three GHTs that each saw the C2 on a
different day before it was known: the collector raises one multi-site incident, and
`vigie intel status` shows the three searches finished."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from agent import settings
from agent.hunt import service as hunt
from agent.output import Delivery, anonymiser
from agent.pipeline import Pipeline
from common import config
from tests.conftest import Collector, tool
from tests.test_hunt_retro import C2, _day_d


def _vigie(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("vigie"), *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def _run_agent(state: Path, collector: Collector, version: int, timeout: float = 60) -> None:
    """The running agent's parts, without the capture: delivery (intel in, alerts and
    heartbeats out), the pipeline ticking, the journal and the retro-hunter."""
    cfg = config.validate(
        {"state_dir": str(state), "journal": {"enabled": True},
         "collector": {"address": collector.address, "heartbeat_seconds": 0.3}},
        settings.SCHEMA, "test",
    )  # fmt: skip
    anon = anonymiser(cfg)
    delivery = Delivery(cfg, lambda: (0, 0), anon)
    pipe = Pipeline(cfg, anon, delivery, time.time)
    delivery.start()
    hunter = hunt.start(cfg, pipe, delivery)
    try:
        deadline = time.monotonic() + timeout
        while (version, "done") not in {(v, s) for v, s, _ in hunter.status()}:
            assert time.monotonic() < deadline, hunter.status()
            hunter.wake()
            pipe.tick(time.time())
            time.sleep(0.05)
        time.sleep(1.0)  # a heartbeat or two with the finished search
    finally:
        hunter.stop()
        pipe.finish()
        delivery.finish(wait=True)


def test_one_publication_three_ghts_one_incident(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    agents = []
    for i, days_ago in enumerate((12, 7, 2)):
        state = tmp_path / f"agent{i}"
        collector.issue_agent(state / "tls", finess=f"99910000{i}", ght=f"GHT-RETRO-{i}")
        _day_d(state, days_ago)  # each saw the C2 on its own day, weeks before it was known
        agents.append(state)
    (tmp_path / "c2.csv").write_text(f"type,value\nip,{C2}\n")
    r = _vigie(env, "intel", "publish", str(tmp_path / "c2.csv"), "--retro", "14d")
    assert r.returncode == 0, r.stderr
    version = int(r.stdout.split()[2])
    for state in agents:
        _run_agent(state, collector, version)
        assert json.loads((state / "intel.json").read_text())["retro"][0]["ips"] == [C2]
    deadline = time.monotonic() + 20
    while True:
        r = _vigie(env, "incidents", "--json")
        assert r.returncode == 0, r.stderr
        found = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        multi = [x for x in found if x.get("rule") == "multi_site_indicator"]
        if multi or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(multi) == 1, found
    inc = multi[0]
    assert C2 in json.dumps(inc) and "3 GHTs" in inc["summary"]
    # The incident's alerts carry the days the traffic happened, 12 to 2 days ago.
    r = _vigie(env, "alerts", "--json", "--detector", "net.ioc")
    alerts = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    retro = [a for a in alerts if a.get("metrics", {}).get("retro")]
    assert len(retro) == 3 and len({a["origin"]["ght"] for a in retro}) == 3, alerts
    # The incident says so: the days of that traffic, found by the retro-hunt; and the
    # analyst's table shows it whole (wrapped, not cut at 80 columns).
    first = min(a["first_seen"] for a in retro)[:10]
    last = max(a["last_seen"] for a in retro)[:10]
    span = f"between {first} and {last}, found by retro-hunt"
    assert inc["summary"].endswith(span), inc["summary"]
    r = _vigie(env, "incidents", "--no-colour")
    assert r.returncode == 0 and span in " ".join(r.stdout.split()), r.stdout
    r = _vigie(env, "intel", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["version"] == version and st["counts"]["done"] == 3, st
    r = _vigie(env, "intel", "status")
    assert "3 finished, 0 searching" in r.stdout


def test_publish_without_look_back_asks_no_search(collector: Collector, tmp_path: Path) -> None:
    env = collector.analyst_env(collector.issue_analyst(tmp_path / "n"))
    (tmp_path / "c2.csv").write_text(f"ip,{C2}\n")
    assert _vigie(env, "intel", "publish", str(tmp_path / "c2.csv")).returncode == 0
    r = _vigie(env, "intel", "status")
    assert r.returncode != 0 and "no publication with a look-back" in r.stderr
    r = _vigie(env, "intel", "publish", str(tmp_path / "c2.csv"), "--retro", "400d")
    assert r.returncode != 0 and "366 days" in r.stderr
