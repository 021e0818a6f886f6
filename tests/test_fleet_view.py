"""The fleet as an operator reads it: every agent by its id, its host (pseudonymised by the
agent, mapped back at the site) or the name the operator gave it, its GHT in full."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests._delivery_kit import replay, stop, wait_for
from tests.conftest import DATA, start_collector, tool

LONG_GHT = "GHT-HAUTS-DE-FRANCE-LITTORAL-ET-ARTOIS-NORD"


def test_agents_show_id_host_and_whole_ght_and_take_a_name(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "collector")
    try:
        state = tmp_path / "agent"
        c.issue_agent(state / "tls", ght=LONG_GHT, agent_id="agt-fleet-view-01")
        replay(DATA / "nmap_syn_scan_1000ports.pcap", state, c.address).wait(120)
        creds = c.issue_analyst(tmp_path / "analyst")
        env = c.analyst_env(creds)

        def agents() -> list[dict]:
            r = subprocess.run(
                [tool("vigie"), "agents", "--json"], capture_output=True, text=True, env=env
            )
            return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]

        assert wait_for(lambda: agents() and agents()[0]["host"], 30)
        (a,) = agents()
        assert a["agent_id"] == "agt-fleet-view-01" and a["ght"] == LONG_GHT
        # The host name never leaves in clear; the site's own key maps it back.
        explained = subprocess.run(
            [tool("vigie-agent"), "explain-anonymisation", "--state-dir", str(state), "--json",
             socket.gethostname()],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert a["host"].startswith("p:") and a["host"] in explained.stdout
        assert socket.gethostname() not in json.dumps(a)

        text = subprocess.run([tool("vigie"), "agents"], capture_output=True, text=True, env=env)
        header, row = text.stdout.splitlines()[:2]
        assert "AGENT" in header and "NAME/HOST" in header
        assert "agt-fleet-view-01" in row and LONG_GHT in row and a["host"] in row

        named = subprocess.run(
            [tool("vigie-collector"), "agent", "rename", "--state-dir", str(c.state_dir),
             "agt-fleet-view-01", "PACS, building B"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert named.returncode == 0, named.stderr
        assert agents()[0]["name"] == "PACS, building B"
        listed = subprocess.run(
            [tool("vigie-collector"), "agent", "list", "--state-dir", str(c.state_dir)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert "PACS, building B" in listed.stdout and LONG_GHT in listed.stdout
        unknown = subprocess.run(
            [tool("vigie-collector"), "agent", "rename", "--state-dir", str(c.state_dir),
             "agt-nobody", "x"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert unknown.returncode == 2 and "no agent agt-nobody" in unknown.stderr
    finally:
        stop(c)
