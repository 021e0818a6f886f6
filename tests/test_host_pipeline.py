"""Host samples through the same path as network findings: pipeline queue -> host
detectors -> aggregator -> anonymiser -> output. Command lines, user and host names
never appear in the bytes that would leave the agent."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.detect import registry
from agent.host.detectors import HOST_DETECTORS
from agent.host.detectors.ransomware_precursor import BUILTIN_RULES, compile_rules
from agent.host.intel import IntelFile
from agent.host.sampler import HostSampler, Needs
from agent.pipeline import Pipeline
from common import config
from vigie.v1 import alert_pb2

PY = sys.executable
SLEEPER = "import time; time.sleep(30)"


class Run:
    """A pipeline with every detector at its defaults, fed by a sampler that only looks
    at the processes this test starts."""

    def __init__(self, **sampler_kw) -> None:
        self.procs: list[subprocess.Popen] = []
        self.alerts: list[alert_pb2.Alert] = []
        self.pipe = Pipeline(
            config.defaults(settings.SCHEMA), Anonymiser(b"k" * 32), self.alerts.append, time.time
        )
        sampler_kw.setdefault("scope", lambda pid: pid in {p.pid for p in self.procs})
        self.sampler = HostSampler(sampler_kw.pop("needs", Needs()), **sampler_kw)

    def start(self, *argv: str) -> None:
        self.procs.append(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL))

    def round(self) -> None:
        self.pipe.host_samples.put_nowait(self.sampler.sample())
        self.pipe.tick(time.time())

    def of(self, detector: str) -> list[alert_pb2.Alert]:
        return [a for a in self.alerts if a.detector == detector]

    def wire(self) -> bytes:
        return b"".join(a.SerializeToString() for a in self.alerts)


@pytest.fixture
def run() -> Iterator[Run]:
    runs: list[Run] = []

    def make(**kw) -> Run:
        runs.append(Run(**kw))
        return runs[-1]

    yield make
    for r in runs:
        for p in r.procs:
            p.kill()
        for p in r.procs:
            p.wait()


def test_shadow_copy_deletion_command_line(run) -> None:
    r = run()
    r.round()
    # A harmless sleeper whose argv only looks like the real thing.
    r.start(PY, "-c", SLEEPER, "vssadmin", "delete", "shadows", "/all", "/quiet")
    time.sleep(0.3)
    r.round()
    (a,) = r.of("host.ransomware_precursor")
    assert a.technique == "T1490"
    assert a.severity == alert_pb2.SEVERITY_CRITICAL
    assert "vss_delete_shadows" in a.summary
    procs = [e.value for e in a.entities if e.kind == alert_pb2.KIND_PROCESS]
    assert len(procs) == 1 and procs[0].startswith("python")
    wire = r.wire()
    # The rule name is in the summary; the command line is not.
    for fragment in (b"delete shadows", b"/quiet", b"/all", b"vssadmin delete", b"time.sleep"):
        assert fragment not in wire


def test_service_stop_burst(run, tmp_path: Path) -> None:
    r = run()
    r.round()
    for i in range(1, 6):
        r.start(PY, "-c", SLEEPER, "systemctl", "stop", f"svc{i}")
    time.sleep(0.3)
    r.round()
    (a,) = r.of("host.ransomware_precursor")
    assert a.technique == "T1489"
    assert a.metrics["services"] == 5
    assert b"svc" not in r.wire() and b"systemctl stop" not in r.wire()


def test_service_stops_below_the_burst_are_quiet(run) -> None:
    r = run()
    r.round()
    for i in range(1, 5):
        r.start(PY, "-c", SLEEPER, "systemctl", "stop", "same-unit" if i % 2 else f"svc{i}")
    time.sleep(0.3)
    r.round()
    assert r.of("host.ransomware_precursor") == []


def test_backup_deletion(run) -> None:
    r = run()
    r.round()
    r.start(PY, "-c", SLEEPER, "sh", "-c", "rm -rf /var/backups/pacs")
    time.sleep(0.3)
    r.round()
    (a,) = r.of("host.ransomware_precursor")
    assert "backup_delete" in a.summary and b"pacs" not in r.wire()


User = namedtuple("User", "name terminal host started pid")


def test_new_login_is_pseudonymised(run) -> None:
    sessions = [User("alice.martin", "pts/0", "10.1.2.3", 1000.0, 10)]
    r = run(users=lambda: list(sessions))
    r.round()
    assert r.alerts == []  # open before the agent started: baseline
    sessions.append(User("jdupont", "pts/7", "poste-cardio-12.chu.local", 2000.0, 11))
    r.round()
    (a,) = r.of("host.login")
    assert a.technique == "T1078"
    assert "pts/7" in a.summary and "remote" in a.summary
    kinds = {e.kind: e for e in a.entities}
    assert kinds[alert_pb2.KIND_USER].pseudonymised
    assert kinds[alert_pb2.KIND_HOSTNAME].pseudonymised
    wire = r.wire()
    assert b"jdupont" not in wire and b"poste-cardio" not in wire and b"alice" not in wire


def test_agent_file_changed_and_service_stopped(run, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("log_level = 'info'\n")
    states = {"ActiveState": "active", "UnitFileState": "enabled"}
    r = run(
        needs=Needs(watch_files=(str(cfg),), service_unit="vigie-agent.service", service_every=1),
        service=lambda unit: dict(states),
    )
    r.round()
    assert r.alerts == []
    cfg.write_text("log_level = 'debug'\n")
    states["UnitFileState"] = "disabled"
    r.round()
    alerts = r.of("host.agent_tamper")
    assert {a.technique for a in alerts} == {"T1562.001"}
    assert sorted(a.summary for a in alerts) == [
        "agent tampering: 1 watched agent file(s) changed",
        "agent tampering: agent service disabled",
    ]
    assert str(tmp_path).encode() not in r.wire()


def test_sampler_thread_feeds_the_queue() -> None:
    q: queue.Queue = queue.Queue(maxsize=2)
    s = HostSampler(Needs(), scope=lambda pid: False)
    s.start(q.put_nowait, 0.05)
    time.sleep(0.5)
    s.stop()
    assert q.qsize() == 2
    assert s.stats.dropped > 0  # a full queue is counted, not waited on


def test_vanishing_and_denied_processes_are_counted(monkeypatch) -> None:
    import psutil

    def denied(self):
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "cmdline", denied)
    churn = [subprocess.Popen(["true"]) for _ in range(30)]
    s = HostSampler(Needs())
    for _ in range(3):
        s.sample()
    for p in churn:
        p.wait()
    assert s.stats.denied > 0


def test_intel_file_is_read_tolerantly(tmp_path: Path) -> None:
    path = tmp_path / "intel.json"
    read = IntelFile(path)
    assert not read()
    path.write_text(
        '{"version": 4, "ips": ["203.0.113.9", "nonsense"], "cidrs": ["198.51.100.0/24"]}'
    )
    intel = read()
    assert intel.version == 4 and intel.skipped == 1
    assert intel.match("198.51.100.77") and intel.match("::ffff:203.0.113.9")
    assert not intel.match("192.0.2.1")
    path.write_text("{half")
    assert not read()


def test_host_detectors_are_registered_without_key_collisions() -> None:
    keys = [registry.config_key(d) for d in registry.DETECTORS]
    assert len(keys) == len(set(keys))
    for d in HOST_DETECTORS:
        assert d in registry.DETECTORS and d.name.startswith("host.")
        assert d.technique and d.help
    defaults = config.defaults(settings.SCHEMA)
    assert defaults["host"]["enabled"] is True
    assert defaults["host"]["interval_seconds"] == 5.0


def test_bad_rule_names_the_key() -> None:
    bad = {"detectors": {"ransomware_precursor": {"extra_rules": [{"name": "x", "pattern": "("}]}}}
    with pytest.raises(config.ConfigError, match=r"detectors\.ransomware_precursor\.extra_rules"):
        config.validate(bad, settings.SCHEMA, "agent.toml")
    ok = {
        "detectors": {
            "ransomware_precursor": {
                "extra_rules": [
                    {"name": "esx_kill", "pattern": "esxcli .*kill", "technique": "T1489"}
                ]
            }
        }
    }
    cfg = config.validate(ok, settings.SCHEMA, "agent.toml")
    rules = compile_rules(cfg["detectors"]["ransomware_precursor"]["extra_rules"], [])
    assert len(rules) == len(BUILTIN_RULES) + 1


def test_needs_follow_the_enabled_detectors() -> None:
    cfg = config.defaults(settings.SCHEMA)
    cfg["detectors"]["mass_write"]["enabled"] = False
    cfg["detectors"]["login"]["enabled"] = False
    n = Needs.from_settings(cfg)
    assert not n.io and not n.sessions and n.listeners
