"""The Debian packages, as an ops team meets them: `./dev package` builds vigie-agent and
vigie-collector; they are installed into this machine's real system (as root), the agent
enrolls with the packaged collector, queues alerts while the collector is down, both are
upgraded to a higher version built here from the same tree plus one store migration, the
queued alerts are then delivered, a downgrade over the migrated store is refused, and
remove and purge do what they say. Everything the packages made is removed in the end,
whatever failed.

Both builds are real (dpkg-buildpackage, the C engine compiled, the libraries installed
from the wheelhouse); they take one to three minutes each on the two-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.root

PACKAGES = ("vigie-agent", "vigie-collector")
USERS = ("vigie-agent", "vigie-collector")
# What the packages create outside the package files themselves.
STATE = (Path("/var/lib/vigie-agent"), Path("/var/lib/vigie-collector"))
AGENT_STATE, COLLECTOR_STATE = STATE
APT = [
    "apt-get",
    "-y",
    "-o",
    "DPkg::Lock::Timeout=600",
    "-o",
    "APT::Sandbox::User=root",
]
ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
UNIT_DIR = Path("/lib/systemd/system")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/vigie-agent.service")
CAPTURE = DATA / "nmap_syn_scan_1000ports.pcap"
QUIET_CAPTURE = DATA / "icmp_echo_5_pings.pcap"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "installs packages into the system: needs root"
    for tool in ("dpkg-buildpackage", "dh", "help2man", "apt-get", "systemd-analyze"):
        if not shutil.which(tool):
            return f"{tool} is missing (./dev test installs the Debian build tools)"
    if not shutil.which("git") or not (ROOT / ".git").exists():
        return "needs the git checkout (./dev package snapshots it)"
    return None


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 600, **kw
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kw.pop("env", ENV),
        stdin=subprocess.DEVNULL,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def version_of(deb: Path) -> str:
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def installed_version(package: str) -> str | None:
    proc = run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], check=False)
    if proc.returncode != 0 or "install ok installed" not in proc.stdout:
        return None
    return proc.stdout.split()[-1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def two_free_ports() -> int:
    """A port whose next one is free too: the collector enrolls on its port + 1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


@dataclass
class Builds:
    v1: dict[str, Path]
    v2: dict[str, Path]
    seconds: float


def _debs(out: Path) -> dict[str, Path]:
    found = {p: next(out.glob(f"{p}_*.deb")) for p in PACKAGES}
    return found


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Builds:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("packages")
    start = time.monotonic()
    # The libraries once (the only network access, none when cached), then both builds
    # side by side: the first from the tree as it is, the upgrade from a snapshot of it
    # (as ./dev package takes it) with one more store migration and a higher version.
    run([str(ROOT / "dev"), "package", "--fetch"], cwd=ROOT)
    src = tmp / "src2"
    files = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    schema = src / "collector/store/schema.py"
    schema.write_text(
        schema.read_text()
        + "\n\n# Added by tests/test_packages.py's upgrade build.\n"
        + 'MIGRATIONS.append((MIGRATIONS[-1][0] + 1, "CREATE TABLE package_upgrade_probe '
        + '(n {INT})"))\n'
    )
    version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=ROOT).stdout.strip()
    jobs = [
        (ROOT, ["--out", str(tmp / "v1")]),
        (src, ["--version", version + "+upgradetest1", "--out", str(tmp / "v2")]),
    ]
    procs = [
        subprocess.Popen(
            [str(top / "dev"), "package", "--no-lintian", *args],
            cwd=top,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for top, args in jobs
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=1500)
        assert proc.returncode == 0, out[-5000:]
    v1 = _debs(tmp / "v1")
    v2 = _debs(tmp / "v2")
    return Builds(v1, v2, time.monotonic() - start)


class Machine:
    """What the test changed on the system, undone in the end whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.users_before = {u for u in USERS if _user_exists(u)}
        # State left by something else (a program run as root on its default state
        # directory): set aside, put back as it was.
        self.aside: dict[Path, Path] = {}
        for path in (*STATE, Path("/etc/vigie")):
            if path.exists():
                moved = tmp / "aside" / path.name
                moved.parent.mkdir(exist_ok=True)
                path.rename(moved)
                self.aside[path] = moved

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=ENV,
            cwd="/",
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        installed = [
            p for p in PACKAGES if run(["dpkg-query", "-W", p], check=False).returncode == 0
        ]
        if installed:
            run([*APT, "purge", *installed], check=False)
        for user in USERS:
            if user not in self.users_before and _user_exists(user):
                run(["userdel", user], check=False)
            if (
                user not in self.users_before
                and run(["getent", "group", user], check=False).returncode == 0
            ):
                run(["groupdel", user], check=False)
        for path in (*STATE, Path("/etc/vigie")):
            if path not in self.aside and path.exists():
                shutil.rmtree(path)
        for path, moved in self.aside.items():
            if path.exists():
                shutil.rmtree(path)
            moved.rename(path)


def _user_exists(user: str) -> bool:
    return run(["getent", "passwd", user], check=False).returncode == 0


def as_user(
    user: str, *cmd: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", user, "--", *cmd], check=check, timeout=timeout, cwd="/")


def agent_status() -> dict:
    out = as_user(
        "vigie-agent", "vigie-agent", "status", "--config", "/etc/vigie/agent.toml", "--json"
    ).stdout
    return json.loads(out)


def waiting(status: dict) -> int:
    """Alerts waiting in the outbox, from `vigie-agent status --json`."""
    return int(status["outbox"]["depth"])


def start_collector(machine: Machine, port: int, log: Path) -> subprocess.Popen:
    proc = machine.spawn(
        [
            "runuser",
            "-u",
            "vigie-collector",
            "--",
            "vigie-collector",
            "serve",
            "--config",
            "/etc/vigie/collector.toml",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        log,
    )
    deadline = time.monotonic() + 90
    while "collector_listening" not in log.read_text():
        assert proc.poll() is None, f"collector exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"collector not listening:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return proc


def migrations() -> list[tuple[int, float]]:
    db = sqlite3.connect(f"file:{COLLECTOR_STATE / 'vigie.db'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
    finally:
        db.close()


def stored_alerts() -> int:
    db = sqlite3.connect(f"file:{COLLECTOR_STATE / 'vigie.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM alerts").fetchone()[0]
    finally:
        db.close()


# Two builds, then the whole life cycle: beyond the suite's 300 s on a loaded machine.
@pytest.mark.timeout(1800)
def test_install_upgrade_remove_purge(builds: Builds, tmp_path: Path) -> None:
    for package in PACKAGES:
        assert installed_version(package) is None, f"{package} is already installed here"
    v1, v2 = builds.v1, builds.v2
    assert (
        run(
            [
                "dpkg",
                "--compare-versions",
                version_of(v2["vigie-agent"]),
                "gt",
                version_of(v1["vigie-agent"]),
            ]
        ).returncode
        == 0
    )
    machine = Machine(tmp_path)
    try:
        # -- install, the documented way: apt install ./vigie-agent_*.deb
        start = time.monotonic()
        run([*APT, "install", str(v1["vigie-agent"]), str(v1["vigie-collector"])])
        install_seconds = time.monotonic() - start
        for package in PACKAGES:
            assert installed_version(package) == version_of(v1[package])
        for user, state in zip(USERS, STATE, strict=True):
            entry = run(["getent", "passwd", user]).stdout.strip().split(":")
            assert int(entry[2]) < 1000, f"{user} is not a system user: {entry}"
            assert entry[5] == str(state) and entry[6] == "/usr/sbin/nologin", entry
            st = state.stat()
            assert (st.st_mode & 0o777, _owner(state)) == (0o700, user), state
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "vigie-agent"]).stdout
        assert "/etc/vigie/agent.toml" in conffiles and "/etc/default/vigie-agent" in conffiles
        assert (
            "/etc/vigie/collector.toml"
            in run(["dpkg-query", "-W", "-f=${Conffiles}", "vigie-collector"]).stdout
        )
        units = [UNIT_DIR / f"{p}.service" for p in PACKAGES]
        verify = run(["systemd-analyze", "verify", *map(str, units)], check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        for program, page in (
            ("vigie-agent", "vigie-agent"),
            ("vigie-collector", "vigie-collector"),
            ("vigie", "vigie"),
        ):
            assert run([f"/usr/bin/{program}", "--help"]).stdout.startswith("usage:")
            assert run(["man", "-w", page]).stdout.strip().endswith(".gz")
        assert Path("/usr/share/doc/vigie-agent/changelog.gz").exists()
        # Installed, not enabled nor started: the agent starts after its enrollment.
        assert not WANTS.exists()

        # -- the collector, its PKI made at first start as its user; the agent enrolls
        port = two_free_ports()
        collector = start_collector(machine, port, tmp_path / "collector1.log")
        token = as_user(
            "vigie-collector",
            "vigie-collector",
            "token",
            "create",
            "--config",
            "/etc/vigie/collector.toml",
            "--region",
            "11",
            "--ght",
            "GHT-PKG",
            "--finess",
            "750000001",
            "--ttl",
            "1h",
        ).stdout.split()[0]
        as_user(
            "vigie-agent",
            "vigie-agent",
            "enroll",
            "--collector",
            f"127.0.0.1:{port + 1}",
            "--token",
            token,
            "--config",
            "/etc/vigie/agent.toml",
        )
        # A local edit of a conffile, as an admin makes it: the collector's address.
        agent_toml = Path("/etc/vigie/agent.toml")
        text, n = re.subn(
            r'(?m)^(\[collector\][^\[]*?^)#?\s*address = "[^"]*"',
            rf'\g<1>address = "127.0.0.1:{port}"',
            agent_toml.read_text(),
            count=1,
        )
        assert n == 1, "no [collector] address in agent.toml"
        agent_toml.write_text(text + "\n# edited on this host\n")
        edited = agent_toml.read_text()
        run(["systemctl", "enable", "vigie-agent.service"])
        assert WANTS.is_symlink()

        # doctor as the unit runs it: the service user with its two capabilities.
        doctor = run(
            [
                "setpriv",
                "--reuid=vigie-agent",
                "--regid=vigie-agent",
                "--init-groups",
                "--inh-caps=+net_raw,+net_admin",
                "--ambient-caps=+net_raw,+net_admin",
                "vigie-agent",
                "doctor",
                "--config",
                "/etc/vigie/agent.toml",
                "--interface",
                "lo",
            ],
            check=False,
            cwd="/",
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "0 failed" in doctor.stdout or "FAIL" not in doctor.stdout, doctor.stdout

        # -- alerts wait in the outbox while the collector is away
        machine.stop(collector)
        offline = as_user(
            "vigie-agent",
            "vigie-agent",
            "replay",
            str(CAPTURE),
            "--config",
            "/etc/vigie/agent.toml",
            "--output",
            "collector",
            timeout=180,
            check=False,
        )
        # 75 (EX_TEMPFAIL): the alerts stay queued for the next start.
        assert offline.returncode == 75 and "outbox_not_drained" in offline.stdout, offline
        queued = waiting(agent_status())
        assert queued > 0, "no alert waiting in the outbox"
        # Keys: 0600, the service user's.
        keys = [AGENT_STATE / "anon.key", AGENT_STATE / "tls/agent.key"]
        for key in keys:
            assert (key.stat().st_mode & 0o777, _owner(key)) == (0o600, "vigie-agent"), key
        collector_keys = sorted((COLLECTOR_STATE / "pki").glob("*.key"))
        assert {k.name for k in collector_keys} >= {"ca.key", "server.key"}, collector_keys
        for key in collector_keys:
            assert (key.stat().st_mode & 0o777, _owner(key)) == (0o600, "vigie-collector"), key

        before = {p: sha(p) for p in [*keys, AGENT_STATE / "tls/agent.crt"]}
        pseudonym = as_user(
            "vigie-agent",
            "vigie-agent",
            "explain-anonymisation",
            "--config",
            "/etc/vigie/agent.toml",
            "10.1.2.3",
        ).stdout
        schema_v1 = migrations()

        # -- upgrade
        start = time.monotonic()
        run([*APT, "install", str(v2["vigie-agent"]), str(v2["vigie-collector"])])
        upgrade_seconds = time.monotonic() - start
        for package in PACKAGES:
            assert installed_version(package) == version_of(v2[package])
        assert {p: sha(p) for p in before} == before, "keys or certificate changed"
        assert agent_toml.read_text() == edited, "the local edit of agent.toml was lost"
        assert WANTS.is_symlink(), "the upgrade disabled the agent"
        assert waiting(agent_status()) == queued
        assert (
            as_user(
                "vigie-agent",
                "vigie-agent",
                "explain-anonymisation",
                "--config",
                "/etc/vigie/agent.toml",
                "10.1.2.3",
            ).stdout
            == pseudonym
        )

        # The new version's migration runs at its first start, once.
        collector = start_collector(machine, port, tmp_path / "collector2.log")
        after = migrations()
        assert after[: len(schema_v1)] == schema_v1
        assert [v for v, _ in after[len(schema_v1) :]] == [schema_v1[-1][0] + 1]
        machine.stop(collector)
        collector = start_collector(machine, port, tmp_path / "collector3.log")
        assert migrations() == after, "a migration ran twice"

        # The alerts queued before the upgrade reach the collector after it.
        as_user(
            "vigie-agent",
            "vigie-agent",
            "replay",
            str(QUIET_CAPTURE),
            "--config",
            "/etc/vigie/agent.toml",
            "--output",
            "collector",
            timeout=180,
        )
        assert waiting(agent_status()) == 0
        assert stored_alerts() >= queued
        machine.stop(collector)

        # -- a downgrade over the migrated store is refused, with the reason
        down = run([*APT, "install", "--allow-downgrades", str(v1["vigie-collector"])], check=False)
        assert down.returncode != 0
        assert "refusing to downgrade" in down.stdout + down.stderr
        assert "schema version" in down.stdout + down.stderr
        assert installed_version("vigie-collector") == version_of(v2["vigie-collector"])

        # -- remove: service disabled, programs gone, state kept
        run([*APT, "remove", *PACKAGES])
        assert not WANTS.exists() and not WANTS.is_symlink()
        assert not Path("/opt/vigie").exists() and not (UNIT_DIR / "vigie-agent.service").exists()
        for path in (*keys, AGENT_STATE / "outbox.db", COLLECTOR_STATE / "pki/ca.key"):
            assert path.exists(), f"remove deleted {path}"
        assert agent_toml.read_text() == edited

        # -- purge: says what it deletes, then deletes it
        purge = run([*APT, "purge", *PACKAGES])
        assert "purge deletes /var/lib/vigie-agent" in purge.stdout
        assert "pseudonymisation key" in purge.stdout and "outbox" in purge.stdout
        assert "purge deletes /var/lib/vigie-collector" in purge.stdout
        for path in (*STATE, Path("/etc/vigie"), Path("/opt/vigie")):
            assert not path.exists(), f"{path} left after purge"
        for user in USERS:
            assert not _user_exists(user)
        sizes = {p: f"{d.stat().st_size / 1e6:.1f} MB" for p, d in v1.items()}
        print(
            f"\npackages: {sizes}; two builds {builds.seconds:.0f} s; install "
            f"{install_seconds:.1f} s; upgrade {upgrade_seconds:.1f} s"
        )
    finally:
        machine.cleanup()


def _owner(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name
