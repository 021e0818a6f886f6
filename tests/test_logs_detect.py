"""The log detectors through the pipeline's own path (aggregation, anonymisation), their
tunables, allow-lists and learned state; the aggregation linking network and log alerts on
one source; the [logs] configuration's errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import settings
from agent.aggregate import Aggregator
from agent.anonymise.policy import Entity
from agent.logs.event import LogEvent
from agent.output import anonymiser
from agent.pipeline import Pipeline
from common import config
from common.alertjson import alert_dict
from vigie.v1 import alert_pb2

T0 = 1_790_000_000.0


def cfg_for(tmp: Path, toml: str = "") -> dict:
    f = tmp / "agent.toml"
    f.write_text(toml)
    c = config.load(str(f), settings.SCHEMA)
    c["state_dir"] = str(tmp / "st")
    return c


def run(tmp: Path, evs: list[LogEvent], toml: str = "", keep: bool = False) -> list[dict]:
    c = cfg_for(tmp, toml)
    out: list = []
    pipe = Pipeline(c, anonymiser(c), out.append, time.time, keep_learned=keep)
    pipe.feed_logs(evs)
    pipe.finish()
    return [alert_dict(a) for a in out]


def ssh(ts: float, outcome: str, user: str, src: str, method: str = "password") -> LogEvent:
    return LogEvent(ts, "sshd", outcome, user=user, source=src, method=method, pid=int(ts))


def last(alerts: list[dict], detector: str, needle: str = "") -> dict:
    return [a for a in alerts if a["detector"] == detector and needle in a["summary"]][-1]


def test_guessing_per_source_then_the_success_is_a_compromise(tmp_path):
    evs = [ssh(T0 + i * 7, "failure", "alice", "203.0.113.9") for i in range(12)]
    evs.append(ssh(T0 + 90, "success", "alice", "203.0.113.9"))
    alerts = run(tmp_path, evs)
    g = last(alerts, "host.auth_guessing", "from one source")
    assert g["metrics"]["failures"] == 12 and g["technique"] == "T1110.001"
    c = last(alerts, "host.auth_compromise")
    assert c["severity"] == "critical" and c["metrics"]["failures_before"] == 12
    ents = {e["kind"]: e for e in c["entities"]}
    # A public source stays in clear (the national service correlates on it); the
    # account never does.
    assert ents["ip"]["value"] == "203.0.113.9" and not ents["ip"]["pseudonymised"]
    assert ents["user"]["pseudonymised"] and "alice" not in str(alerts)


def test_below_thresholds_nothing_and_slow_guessing_outside_the_window(tmp_path):
    evs = [ssh(T0 + i, "failure", "alice", "10.1.1.1") for i in range(9)]
    evs += [ssh(T0 + 1000 + i * 700, "failure", "bob", "10.1.1.2") for i in range(15)]
    evs.append(ssh(T0 + 20000, "success", "carol", "10.1.1.3"))  # no failures before
    assert run(tmp_path, evs) == []


def test_spray_many_accounts_few_guesses_and_enumeration(tmp_path):
    # Another tool's shape than hydra's: one guess for each of 8 accounts.
    spray = [ssh(T0 + i, "failure", f"user{i}", "198.51.100.4") for i in range(8)]
    enum = [ssh(T0 + i, "unknown_user", f"ghost{i}", "198.51.100.5", "username")
            for i in range(6)]  # fmt: skip
    alerts = run(tmp_path, spray + enum)
    s = last(alerts, "host.auth_guessing", "password spraying")
    assert s["technique"] == "T1110.003" and s["metrics"]["users"] == 8
    e = last(alerts, "host.auth_guessing", "account enumeration")
    assert e["metrics"]["unknown_users"] == 6
    assert not any("authentications from one source" in a["summary"] for a in alerts)


def test_one_account_guessed_from_many_sources(tmp_path):
    evs = [ssh(T0 + i, "failure", "admin", f"198.51.100.{i}") for i in range(25)]
    a = last(run(tmp_path, evs), "host.auth_guessing", "against one account")
    assert a["metrics"]["sources"] == 25
    assert not any(e["kind"] == "ip" for e in a["entities"])


def test_allow_list_by_range_and_by_account(tmp_path):
    evs = [ssh(T0 + i, "failure", "nagios", "10.5.0.9") for i in range(30)]
    assert run(tmp_path, evs, '[detectors.auth_guessing]\nallow = ["10.5.0.0/16"]\n') == []
    assert run(tmp_path, evs, '[detectors.auth_guessing]\nallow = ["nag*"]\n') == []
    assert run(tmp_path, evs) != []


def test_new_source_after_learning_and_the_learning_survives_a_restart(tmp_path):
    toml = "[detectors.auth_compromise]\nlearning_seconds = 100\n"
    learn = [ssh(T0, "success", "alice", "10.0.0.5"), ssh(T0 + 50, "success", "bob", "10.0.0.6")]
    assert run(tmp_path, learn, toml, keep=True) == []
    later = [ssh(T0 + 500, "success", "alice", "10.0.0.5"),  # known: nothing
             ssh(T0 + 600, "success", "alice", "10.9.9.9")]  # fmt: skip
    alerts = run(tmp_path, later, toml, keep=True)  # a restart: from state_dir/learned
    assert [(a["detector"], a["technique"]) for a in alerts] == [("host.auth_compromise", "T1078")]
    assert alerts[0]["metrics"]["known_sources"] == 1


def test_privilege_and_persistence(tmp_path):
    E = LogEvent
    evs = [
        E(T0, "useradd", "user_added", user="svc", detail="1002"),
        E(T0 + 1, "useradd", "user_added", user="toor", detail="0"),
        E(T0 + 2, "usermod", "group_member_added", user="svc", detail="wheel"),
        E(T0 + 3, "usermod", "group_member_added", user="svc", detail="video"),
        E(T0 + 4, "sudo", "sudo", user="svc", detail="root"),
        E(T0 + 5, "files", "key_file_changed", user="root", method="changed",
          detail="/root/.ssh/authorized_keys"),
        E(T0 + 6, "crontab", "crontab_changed", user="svc"),
        E(T0 + 7, "cron", "cron_reload", user="*system*evil", detail="/etc/cron.d/evil"),
        E(T0 + 8, "systemd", "unit_started", detail="evil.timer"),
        E(T0 + 9, "systemd", "unit_started", detail="session-4.scope"),
        E(T0 + 10, "systemd", "unit_started", detail="evil.timer"),
    ]  # fmt: skip
    toml = ("[detectors.privilege]\nlearning_seconds = 0\n"
            "[detectors.persistence]\nlearning_seconds = 0\n")  # fmt: skip
    alerts = run(tmp_path, evs, toml)
    got = sorted((a["detector"], a["technique"], a["severity"]) for a in alerts)
    assert got == sorted([
        ("host.privilege", "T1136.001", "medium"),
        ("host.privilege", "T1136.001", "high"),  # uid 0
        ("host.privilege", "T1098", "high"),  # wheel (video is no admin group)
        ("host.privilege", "T1548.003", "medium"),
        ("host.privilege", "T1098.004", "medium"),
        ("host.persistence", "T1053.003", "medium"),  # crontab
        ("host.persistence", "T1053.003", "medium"),  # cron.d
        ("host.persistence", "T1053.006", "medium"),  # a timer, once
    ])  # fmt: skip
    # During learning, first sudo and new units are learnt, not reported.
    quiet = run(tmp_path, [evs[4], evs[8]])
    assert quiet == []


def test_log_tampering_and_its_journal_threshold(tmp_path):
    E = LogEvent
    evs = [
        E(T0, "file", "log_truncated", detail="/var/log/auth.log"),
        E(T0 + 1, "file", "log_deleted", detail="/var/log/audit/audit.log"),
        E(T0 + 2, "journald", "journal_removed", detail="30"),
        E(T0 + 3, "journald", "journal_removed", detail="9999999"),  # journald's own
        E(T0 + 4, "auditd", "audit_stopped"),
    ]
    alerts = run(tmp_path, evs)
    assert sorted((a["technique"], a["summary"]) for a in alerts) == sorted([
        ("T1070.002", "a followed log was truncated outside rotation"),
        ("T1070.002", "a followed log was deleted outside rotation"),
        ("T1070.002", "journal entries were removed before they were read"),
        ("T1562.012", "the audit daemon stopped"),
    ])  # fmt: skip
    assert all(a["severity"] == "high" for a in alerts)


class _Det:
    def __init__(self, name: str) -> None:
        self.name, self.technique = name, "T1110"


def test_aggregation_links_network_and_log_alerts_on_one_source():
    out: list = []
    agg = Aggregator(lambda f: out.append((f.detector, f.id, f.revision, f.summary)), 3600, 60)

    def report(det: str, src: str, ts: float, subject: str = "") -> None:
        agg.report(detector=_Det(det), subject=subject or src, ts=ts, summary="guessing",
                   entities=[Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, src)],
                   metrics={}, count=1, severity=3)  # fmt: skip

    report("net.bruteforce", "10.0.0.7", T0)
    report("host.auth_guessing", "::ffff:10.0.0.7", T0 + 5)
    report("host.auth_guessing", "10.0.0.8", T0 + 6)  # another source: not linked
    net_id = out[0][1]
    host = [o for o in out if o[0] == "host.auth_guessing"]
    assert net_id in host[0][3]
    revised = [o for o in out if o[1] == net_id and o[2] == 2]
    assert revised and host[0][1] in revised[0][3]
    assert "same source" not in host[1][3]
    # A later revision keeps the link in its words.
    report("host.auth_guessing", "10.0.0.7", T0 + 100, subject="::ffff:10.0.0.7")
    agg.flush()
    assert net_id in [o for o in out if o[1] == host[0][1]][-1][3]


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[logs]\nfiles = ["var/log/auth.log"]\n', "logs.files"),
        ("[logs]\ncatch_up = -1\n", "logs.catch_up"),
        ("[logs]\ncatchup = 5\n", "logs.catchup"),
        ('[detectors.auth_guessing]\nsource_failures = "ten"\n', "detectors.auth_guessing"),
    ],
)
def test_bad_logs_configuration_names_the_key(tmp_path, toml, key):
    f = tmp_path / "agent.toml"
    f.write_text(toml)
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.load(str(f), settings.SCHEMA)
