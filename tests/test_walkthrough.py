"""docs/walkthrough.sh: docs/DEPLOYMENT.md's agent and operations steps, run as written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "walkthrough.sh"


def test_deployment_walkthrough_runs(tmp_path: Path) -> None:
    if shutil.which("bash") is None or shutil.which("tar") is None:
        pytest.skip("the walkthrough needs bash and tar")
    bin_dir = Path(tool("vigie-agent")).parent
    # TMPDIR: the script's temporary directory lands under pytest's, removed either way.
    env = os.environ | {"TMPDIR": str(tmp_path)}
    r = subprocess.run(
        ["bash", str(SCRIPT), str(bin_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    out = r.stdout
    assert r.returncode == 0, f"stdout:\n{out}\nstderr:\n{r.stderr}"
    assert out.rstrip().endswith("walkthrough: OK")
    for line in (
        "enrolled as agt-",
        "OK    certificate",
        "OK    collector grpc",
        "identity:    agt-",
        "outbox:      0 alert(s) waiting",
        "analyst jdupont certificate:",
        "net.portscan",
        "before and after restore",
        "without the backed-up anon.key",
    ):
        assert line in out, line
    # Cleaned up: nothing of the walkthrough is left behind.
    assert not list(tmp_path.glob("vigie-walkthrough.*"))


def test_walkthrough_follows_the_documented_commands() -> None:
    """The script runs the commands the document gives, so the two cannot drift apart."""
    doc = (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    script = SCRIPT.read_text(encoding="utf-8")
    for command in (
        "vigie-collector token create",
        "vigie-agent enroll",
        "vigie-agent doctor",
        "vigie-agent status",
        "vigie-collector pki issue-analyst",
        "cli.toml",
        "vigie alerts",
        "anon.key",
    ):
        assert command in doc, command
        assert command.split()[-1] in script, command
    assert "docs/walkthrough.sh" in doc
