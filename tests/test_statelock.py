"""One agent per state directory: a second command that would write the same identity or
outbox is refused, clearly; the lock goes with the process that held it, even on kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DATA, tool

HOLD = (
    "import sys, time; from agent import statelock; "
    "statelock.hold(sys.argv[1], 'run'); print('held', flush=True); time.sleep(60)"
)


def _holder(state: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"held"
    return p


def _replay(state: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            tool("vigie-agent"),
            "replay",
            str(DATA / "nmap_syn_scan_1000ports.pcap"),
            "--state-dir",
            str(state),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_agent_on_one_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    holder = _holder(state)
    try:
        # Streaming to a collector uses the outbox and the identity: refused at once.
        r = _replay(state, "--output", "collector", "--collector", "127.0.0.1:9")
        assert r.returncode == 75, r.stderr
        assert "in use by another vigie-agent" in r.stderr
        assert f"pid {holder.pid}, run" in r.stderr and "--state-dir" in r.stderr
        assert "Traceback" not in r.stderr
        enroll = subprocess.run(
            [tool("vigie-agent"), "enroll", "--collector", "127.0.0.1:9", "--token", "x",
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert enroll.returncode == 75 and "in use" in enroll.stderr
        # Alerts on stdout write neither: a replay to look at a capture still runs.
        assert _replay(state).returncode == 0
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # kill -9 released it: the next agent starts (here: fails later, on the collector).
    t0 = time.monotonic()
    r = _replay(
        state, "--output", "collector", "--collector", "127.0.0.1:9", "--config", "/dev/null"
    )
    assert "in use by another" not in r.stderr
    assert time.monotonic() - t0 < 100
