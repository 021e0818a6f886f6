"""Host detectors on real processes: each test starts the behaviour, samples, and checks
the alert (detector, technique, entities) and that no command line leaves the agent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.detectors import HOST_DETECTORS
from agent.host.intel import Intel
from agent.host.sampler import HostSampler, Needs
from common import config
from vigie.v1 import alert_pb2

SLEEP = shutil.which("sleep") or "/bin/sleep"
PY = sys.executable


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    def __call__(self, **kw) -> None:
        self.reports.append(kw)

    def by(self, detector: str) -> list[dict]:
        return [r for r in self.reports if r["detector"].name == detector]


def build(name: str, rec: Recorder, **over):
    cls = next(c for c in HOST_DETECTORS if c.name == name)
    return cls(config.defaults(cls.schema()) | over, rec)


class Kids:
    """Processes a test starts; the sampler looks at these only, so whatever else runs
    on the machine (other test suites) cannot make a test pass or fail."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *argv: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def scope(self, pid: int) -> bool:
        return pid in self.pids()


@pytest.fixture
def kids() -> Iterator[Kids]:
    k = Kids()
    yield k
    for p in k.procs:
        p.kill()
    for p in k.procs:
        p.wait()


def rounds(sampler: HostSampler, detectors: list, n: int, pause: float = 0.3) -> None:
    for i in range(n):
        if i:
            time.sleep(pause)
        sample = sampler.sample()
        for d in detectors:
            d.on_host(sample)


def entities(report: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for e in report["entities"]:
        out.setdefault(e.kind, []).append(e.value)
    return out


def test_quiet_baseline_raises_nothing(kids: Kids) -> None:
    kids.start(SLEEP, "30")
    rec = Recorder()
    dets = [
        build(c.name, rec, learning_seconds=0.2)
        if c.name == "host.listener"
        else build(c.name, rec)
        for c in HOST_DETECTORS
    ]
    own = os.getpid()
    sampler = HostSampler(Needs(), scope=lambda pid: pid == own or kids.scope(pid))
    rounds(sampler, dets, 4)
    assert rec.reports == []
    assert sampler.stats.rounds == 4


def test_new_listener_after_learning(kids: Kids) -> None:
    rec = Recorder()
    det = build("host.listener", rec, learning_seconds=0.2)
    sampler = HostSampler(Needs(), scope=kids.scope)
    rounds(sampler, [det], 2)
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(30)\n"
    )
    p = kids.start(PY, "-c", code, stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    rounds(sampler, [det], 1)
    (r,) = rec.by("host.listener")
    assert r["detector"].technique == "T1571"
    ents = entities(r)
    assert ents[alert_pb2.KIND_PORT] == [str(port)]
    assert ents[alert_pb2.KIND_PROCESS][0].startswith("python")
    assert ents[alert_pb2.KIND_PROTOCOL] == ["tcp"]
    rounds(sampler, [det], 1)
    assert len(rec.by("host.listener")) == 1  # known now


def test_binary_run_from_temp_directory(kids: Kids, tmp_path: Path) -> None:
    exe = tmp_path / "sleep"
    shutil.copy(SLEEP, exe)
    kids.start(str(exe), "30")
    time.sleep(0.2)
    rec = Recorder()
    temp = ["/tmp", "/var/tmp", "/dev/shm", str(tmp_path)]
    det = build("host.suspicious_exec", rec, temp_dirs=temp)
    rounds(HostSampler(Needs(), scope=kids.scope), [det], 1)
    (r,) = rec.by("host.suspicious_exec")
    assert r["detector"].technique == "T1204.002"
    assert entities(r)[alert_pb2.KIND_PROCESS] == ["sleep"]
    assert r["metrics"]["reason_temp_dir"] == 1
    assert str(tmp_path) not in repr(r)


def test_binary_deleted_after_start(kids: Kids, tmp_path: Path) -> None:
    exe = tmp_path / "worker"
    shutil.copy(SLEEP, exe)
    kids.start(str(exe), "30")
    time.sleep(0.2)
    rec = Recorder()
    det = build("host.suspicious_exec", rec, temp_dirs=[])  # only the deletion counts here
    sampler = HostSampler(Needs(), scope=kids.scope)
    rounds(sampler, [det], 1)
    assert rec.reports == []
    exe.unlink()
    rounds(sampler, [det], 1)
    (r,) = rec.by("host.suspicious_exec")
    assert r["detector"].technique == "T1070.004"
    assert r["metrics"]["reason_deleted_binary"] == 1
    assert entities(r)[alert_pb2.KIND_PROCESS] == ["worker"]


def test_offensive_tool_name(kids: Kids, tmp_path: Path) -> None:
    exe = tmp_path / "xmrig"
    shutil.copy(SLEEP, exe)
    kids.start(str(exe), "30")
    time.sleep(0.2)
    rec = Recorder()
    det = build("host.suspicious_exec", rec)
    rounds(HostSampler(Needs(), scope=kids.scope), [det], 1)
    (r,) = rec.by("host.suspicious_exec")
    assert r["detector"].technique == "T1588.002"


def test_mass_write_to_many_files(kids: Kids, tmp_path: Path) -> None:
    code = (
        "import os, sys, time\n"
        "d = sys.argv[1]\n"
        "fs = [open(os.path.join(d, f'f{i}.dat'), 'wb') for i in range(25)]\n"
        "chunk = b'x' * 65536\n"
        "end = time.time() + 20\n"
        "while time.time() < end:\n"
        "    for f in fs:\n"
        "        f.seek(0); f.write(chunk); f.flush()\n"
        "    time.sleep(0.01)\n"
    )
    kids.start(PY, "-c", code, str(tmp_path))
    time.sleep(0.3)
    rec = Recorder()
    # write_chars: counts every write call, whatever the file system under tmp_path is
    # (write_bytes misses tmpfs and rewrites of still-dirty pages).
    settings = dict(
        write_bytes_per_second=2e6, consecutive_samples=3, min_files=10, counter="write_chars"
    )
    det = build("host.mass_write", rec, **settings)
    needs = Needs(io_counter="write_chars", write_floor=2e6, open_files_above=2e6)
    rounds(HostSampler(needs, scope=kids.scope), [det], 5)
    reports = rec.by("host.mass_write")
    assert reports, "no mass-write alert"
    r = reports[0]
    assert r["detector"].technique == "T1486"
    assert r["metrics"]["files"] >= 10
    assert entities(r)[alert_pb2.KIND_PROCESS][0].startswith("python")
    assert str(tmp_path) not in repr(r)


def test_cpu_saturation(kids: Kids) -> None:
    kids.start(PY, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass")
    time.sleep(0.2)
    rec = Recorder()
    # A low bar: the suite shares two cores with other jobs, the busy loop may get little.
    det = build("host.cpu_saturation", rec, cpu_percent=10.0, consecutive_samples=2)
    rounds(HostSampler(Needs(cpu_floor=10.0), scope=kids.scope), [det], 6, pause=0.5)
    (r, *_) = rec.by("host.cpu_saturation")
    assert r["detector"].technique == "T1496"
    assert r["metrics"]["cpu_percent"] >= 10


def test_cpu_saturation_allow_list(kids: Kids) -> None:
    kids.start(PY, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass")
    time.sleep(0.2)
    rec = Recorder()
    det = build(
        "host.cpu_saturation", rec, cpu_percent=30.0, consecutive_samples=2, allow=["python*"]
    )
    rounds(HostSampler(Needs(cpu_floor=30.0), scope=kids.scope), [det], 4)
    assert rec.reports == []


def test_connection_to_indicator(kids: Kids) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        code = (
            "import socket, sys, time\n"
            "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "print('up', flush=True); time.sleep(30)\n"
        )
        p = kids.start(PY, "-c", code, str(port), stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "up"
        rec = Recorder()
        det = build("host.ioc_connection", rec)
        intel = Intel(ips=["127.0.0.1"], version=7)
        rounds(HostSampler(Needs(), intel=intel, scope=kids.scope), [det], 1)
        (r,) = rec.by("host.ioc_connection")
        assert r["detector"].technique == "T1071"
        ents = entities(r)
        assert ents[alert_pb2.KIND_IP] == ["127.0.0.1"]
        assert ents[alert_pb2.KIND_PORT] == [str(port)]
        assert ents[alert_pb2.KIND_PROCESS][0].startswith("python")
        assert r["metrics"]["intel_version"] == 7
    finally:
        srv.close()
