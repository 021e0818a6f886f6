"""Shared fixtures: the public capture corpus, a running collector with its PKI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# The labelled capture corpus (shared/pcaps, copied byte for byte with its MANIFEST,
# EXPECT and licences): a clone runs every detection test.
CORPUS = DATA / "corpus"
BIN = Path(sys.executable).parent


def corpus_or_skip() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"capture corpus not found at {CORPUS}")
    return CORPUS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (run ./dev test)")
    return found


@dataclass
class Collector:
    address: str
    state_dir: Path
    proc: subprocess.Popen
    log: Path

    def issue_agent(
        self,
        out: Path,
        finess: str = "999000001",
        ght: str = "GHT-TEST-01",
        region: str = "11",
        agent_id: str = "",
    ) -> Path:
        cmd = [
            tool("vigie-collector"),
            "pki",
            "issue-agent",
            "--state-dir",
            str(self.state_dir),
            "--finess",
            finess,
            "--ght",
            ght,
            "--region",
            region,
            "--out",
            str(out),
        ]
        if agent_id:
            cmd += ["--agent-id", agent_id]
        subprocess.run(cmd, check=True, capture_output=True)
        return out

    def issue_analyst(self, out: Path, name: str = "analyst", role: str = "national") -> Path:
        subprocess.run(
            [
                tool("vigie-collector"),
                "pki",
                "issue-analyst",
                "--state-dir",
                str(self.state_dir),
                "--name",
                name,
                "--role",
                role,
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        return out

    def analyst_env(self, creds: Path) -> dict[str, str]:
        return os.environ | {
            "VIGIE_COLLECTOR": self.address,
            "VIGIE_CA": str(creds / "ca.crt"),
            "VIGIE_CERT": str(creds / "analyst.crt"),
            "VIGIE_KEY": str(creds / "analyst.key"),
            "VIGIE_CLI_CONFIG": "/nonexistent",
        }

    def db(self) -> Path:
        return self.state_dir / "vigie.db"


def start_collector(
    state_dir: Path, port: int | None = None, config: Path | None = None
) -> Collector:
    port = port or free_port()
    log = state_dir.parent / f"{state_dir.name}.log"
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    cmd = [
        tool("vigie-collector"),
        "serve",
        "--state-dir",
        str(state_dir),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and b"collector_listening" in log.read_bytes():
            return Collector(f"127.0.0.1:{port}", state_dir, proc, log)
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("collector did not start in 30 s")


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = start_collector(tmp_path / "collector")
    try:
        yield c
    finally:
        c.proc.terminate()
        try:
            c.proc.wait(10)
        except subprocess.TimeoutExpired:
            c.proc.kill()


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
