"""The log path end to end with the real programs: rsyslogd (tests/logs_lab.py) receives
what a real sshd attacked by hydra, useradd, usermod, groupadd, gpasswd, chpasswd,
crontab, sudo and su write; the agent follows or replays the files. Accounts made here are
removed in a finally, whatever happens."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench.livelab import ATTACKER_IP, VICTIM_IP, Agent, Lab, agent_bin
from bench.livelab import why_not as lab_why_not
from tests.logs_lab import Syslog, drop_group, drop_user, why_not

pytestmark = pytest.mark.skipif(bool(why_not()), reason=why_not() or "")

USER, GROUP = "vigieh5t", "vigieh5g"  # names no real system holds


@pytest.fixture
def syslog(tmp_path: Path):
    s = Syslog(tmp_path / "syslog")
    try:
        yield s
    finally:
        s.stop()


def replay(files: list[Path], config: Path | None = None, events: bool = False,
           state: Path | None = None) -> list[dict]:  # fmt: skip
    cmd = [agent_bin(), "replay-logs", *map(str, files)]
    if events:
        cmd.append("--events")
    if config is not None:
        cmd += ["--config", str(config)]
    if state is not None:
        cmd += ["--state-dir", str(state)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_account_cron_and_sudo_changes_from_the_real_tools(syslog: Syslog, tmp_path: Path):
    try:
        syslog.run("useradd", "-m", USER)
        syslog.run("usermod", "-aG", "sudo", USER)
        syslog.run("groupadd", GROUP)
        syslog.run("gpasswd", "-a", USER, GROUP)
        syslog.run("chpasswd", input=f"{USER}:Not-a-real-one-42\n")
        syslog.run("passwd", USER, input="Not-a-real-two-43\n" * 2)
        syslog.run("crontab", "-u", USER, "-", input="17 3 * * * /bin/true\n")
        syslog.run("sudo", "-u", USER, "true")
        syslog.run("su", "-s", "/bin/sh", "-c", "true", USER)
        # A second root: useradd -o -u 0, removed at once (userdel -f: uid 0 is "in use").
        syslog.run("useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/nonexistent", USER + "0")
    finally:
        drop_user(USER + "0")
        drop_user(USER)
        drop_group(GROUP)
    assert USER not in Path("/etc/passwd").read_text()
    syslog.settle(syslog.auth, f"name={USER}0")
    syslog.settle(syslog.syslog, "REPLACE")

    events = replay([syslog.auth, syslog.syslog], events=True)
    got = {(e["service"], e["outcome"], e["user"], e["detail"]) for e in events}
    assert ("useradd", "user_added", USER, got_uid(events, USER)) in got
    assert ("usermod", "group_member_added", USER, "sudo") in got
    assert ("groupadd", "group_added", "", GROUP) in got
    assert ("gpasswd", "group_member_added", USER, GROUP) in got
    assert ("chpasswd", "password_changed", USER, "") in got
    assert ("passwd", "password_changed", USER, "") in got
    assert ("crontab", "crontab_changed", USER, "") in got
    assert ("sudo", "sudo", "root", USER) in got
    assert ("su", "su", "root", USER) in got
    assert ("useradd", "user_added", USER + "0", "0") in got
    assert all(isinstance(e["time"], float) and e["time"] > time.time() - 600 for e in events)

    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        "[detectors.privilege]\nlearning_seconds = 0\n"
        "[detectors.persistence]\nlearning_seconds = 0\n"
    )
    alerts = replay([syslog.auth, syslog.syslog], cfg, state=tmp_path / "st")
    by = {(a["detector"], a["technique"], a["summary"].split(" (")[0]) for a in alerts}
    assert ("host.privilege", "T1136.001", "new local account") in by
    assert ("host.privilege", "T1136.001", "new account with uid 0") in by
    assert ("host.privilege", "T1098", "account added to the administrators' group sudo") in by
    assert ("host.privilege", "T1548.003", "first sudo by this account") in by
    assert ("host.persistence", "T1053.003", "a user's crontab was replaced") in by
    # A group that gives nothing (vigieh5g) is a new group, not an administrators' one.
    assert not any(GROUP in a["summary"] for a in alerts)
    out = "\n".join(json.dumps(a) for a in alerts)
    assert USER not in out and "COMMAND=" not in out
    for a in alerts:
        for e in a["entities"]:
            if e["kind"] == "user":
                assert e["pseudonymised"] and e["value"].startswith("p:")


def got_uid(events: list[dict], user: str) -> str:
    return next(e["detail"] for e in events if e["outcome"] == "user_added" and e["user"] == user)


_NO_LAB = lab_why_not(("ip", "hydra", "/usr/sbin/sshd"))
SECRET = "Right-one-7731"


def _attack(
    syslog: Syslog, tmp: Path, max_tries: int, words: list[str], wait: list[str], tasks: int = 4
):
    """A real sshd (MaxAuthTries `max_tries`) in the victim namespace logging through
    rsyslog, the agent running there following auth.log, hydra trying `words` for USER
    from the attacker namespace. Returns (alerts as they came, with their arrival, the
    agent's own log) once each detector in `wait` spoke (or 15 s passed)."""
    lab = Lab("lg").up()
    sshd = agent = None
    try:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", USER], check=True)
        subprocess.run(["chpasswd"], input=f"{USER}:{SECRET}\n", text=True, check=True)
        work = tmp / "sshd"
        work.mkdir()
        key = work / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        conf = work / "sshd_config"
        conf.write_text(
            f"ListenAddress {VICTIM_IP}\nPort 22\nHostKey {key}\nPidFile {work}/sshd.pid\n"
            "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"MaxAuthTries {max_tries}\nMaxStartups 100:30:200\nStrictModes no\n"
            "SyslogFacility AUTH\nLogLevel INFO\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = subprocess.Popen(syslog.cmd("/usr/sbin/sshd", "-D", "-f", str(conf),
                                           net=lab.victim), stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(0.8)
        assert sshd.poll() is None, sshd.stderr.read()
        cfg = tmp / "agent.toml"
        cfg.write_text(
            "[host]\nenabled = false\n[metrics]\nlisten = ''\n"
            "[aggregation]\nupdate_interval_seconds = 1.0\n"
            f'[logs]\nfiles = ["{syslog.auth}"]\njournal = false\npoll_seconds = 0.2\n'
        )
        agent = Agent(lab, tmp / "state", cfg)
        wl = tmp / "words.txt"
        wl.write_text("".join(w + "\n" for w in words))
        t0 = time.monotonic()
        hydra = lab.spawn(
            lab.attacker_cmd("hydra", "-l", USER, "-P", str(wl), "-t", str(tasks), "-f", "-I",
                             f"ssh://{VICTIM_IP}"),
            cwd=tmp,
        )  # fmt: skip
        lab.background.append(hydra)
        for d in wait:
            agent.wait_for(d, t0, 60)
        time.sleep(2.5)  # the next revisions
    finally:
        if agent is not None:
            agent.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        drop_user(USER)
        lab.down()
    assert USER not in Path("/etc/passwd").read_text()
    text = "\n".join(json.dumps(a) for _, a in agent.alerts) + "".join(agent.log)
    for raw in (USER, ATTACKER_IP, "Failed password", "Accepted password", SECRET):
        assert raw not in text, raw  # no raw line, name or address leaves
    return agent.alerts, agent.log


def _first(alerts: list, detector: str) -> tuple[float, dict] | None:
    return next(((t, a) for t, a in alerts if a["detector"] == detector), None)


@pytest.mark.skipif(bool(_NO_LAB), reason=_NO_LAB or "")
def test_hydra_guesses_hidden_in_few_connections_then_the_right_one(syslog, tmp_path):
    """MaxAuthTries above hydra's guesses: a few connections carry 30 guesses, then the
    right password. The logs tell host.auth_guessing, then host.auth_compromise (the
    success after the failures), user and source pseudonymised."""
    words = [f"guess{i:03d}" for i in range(30)] + [SECRET]
    alerts, log = _attack(syslog, tmp_path, 50, words,
                          ["host.auth_guessing", "host.auth_compromise"])  # fmt: skip
    guessing = _first(alerts, "host.auth_guessing")
    compromise = _first(alerts, "host.auth_compromise")
    assert guessing is not None and compromise is not None, "".join(log[-20:])
    assert guessing[0] <= compromise[0]
    c = compromise[1]
    assert c["severity"] == "critical" and c["metrics"]["failures_before"] >= 10
    ents = {e["kind"]: e for e in c["entities"]}
    assert ents["user"]["pseudonymised"] and ents["ip"]["pseudonymised"]
    g = [a for _, a in alerts if a["detector"] == "host.auth_guessing"][-1]
    assert g["metrics"]["failures"] >= 25


@pytest.mark.skipif(bool(_NO_LAB), reason=_NO_LAB or "")
def test_network_and_log_alerts_on_one_source_name_each_other(syslog, tmp_path):
    """MaxAuthTries 2: hydra needs many connections, which net.bruteforce sees on the
    wire while host.auth_guessing reads the failures: two alerts on one source, each
    naming the other (not two unrelated stories)."""
    words = [f"nope{i:03d}" for i in range(200)]
    alerts, log = _attack(
        syslog, tmp_path, 2, words, ["net.bruteforce", "host.auth_guessing"], tasks=16
    )
    net = [a for _, a in alerts if a["detector"] == "net.bruteforce"]
    host = [  # the per-source alert (the per-account one names no source)
        a for _, a in alerts
        if a["detector"] == "host.auth_guessing" and "from one source" in a["summary"]
    ]  # fmt: skip
    assert net and host, "".join(log[-20:])

    def src(a: dict) -> str:
        return next(e["value"] for e in a["entities"] if e["role"] == "source")

    assert src(net[-1]) == src(host[-1])
    assert any(host[-1]["id"] in a["summary"] for a in net)
    assert any(net[-1]["id"] in a["summary"] for a in host)
    assert host[-1]["metrics"]["related_alerts"] == 1
