"""The host sampler: one round every `interval_seconds`, as cheap as the host allows.

Cost model (bench/host_sampler.py measures it):
  - processes: one psutil.process_iter pass per round with a few cheap attributes (name
    and CPU times from /proc/PID/stat, write counters from /proc/PID/io when the mass
    write detector runs). Per-process state is keyed by (pid, create_time); only a
    process never seen before, or one that exec'd since (its name changed) or whose
    binary vanished, is queried in full (exe, command line, owner).
  - open files: only for processes already writing above the mass-write threshold.
  - sockets: the kernel tables are read every round without owners (procnet.py); the
    expensive owner lookup (psutil.net_connections, which walks every process's file
    descriptors) runs only when a socket that matters appears: a new listener, or a
    connection to an address on the intel list.
  - sessions (utmp), watched files (stat; hashed only when the stat changes), and a
    systemd unit check every `service_every` rounds.
Processes that vanish, deny access or are zombies mid-read are skipped and counted,
never logged one by one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.detect.registry import config_key
from agent.host import procnet
from agent.host.detectors import HOST_DETECTORS
from agent.host.intel import EMPTY, Intel, IntelFile, provider
from agent.host.sample import Busy, HostSample, ProcInfo, ProcKey, SamplerStats, Session, Socket
from common import logs

log = logs.get("agent.host")

WRITE_MODES = frozenset({"w", "a", "r+", "a+"})


@dataclass(frozen=True)
class Needs:
    """What the enabled host detectors need: the sampler reads nothing else."""

    io: bool = True
    io_counter: str = "write_bytes"  # or "write_chars" (counts tmpfs and page-cache writes)
    cpu_floor: float = 90.0  # a process at or above this CPU % goes into `busy`
    write_floor: float = math.inf  # ... or at or above this many bytes/s
    open_files_above: float = math.inf  # list open files only at or above this rate
    listeners: bool = True
    ioc: bool = True
    sessions: bool = True
    exe_recheck_every: int = 1  # re-read /proc/PID/exe every N rounds (deleted binaries)
    watch_files: tuple[str, ...] = ()
    service_unit: str = ""
    service_every: int = 12

    @classmethod
    def from_settings(cls, cfg: dict[str, Any], extra_watch: Iterable[str] = ()) -> Needs:
        """What the enabled host detectors declared (`sampler_wants`), together;
        `extra_watch`: the agent's own files, for a detector that watches them."""
        d = cfg["detectors"]
        wants = [
            c.sampler_wants(d[key])
            for c in HOST_DETECTORS
            if (key := config_key(c)) in d and d[key]["enabled"]
        ]
        counters = [w.io_counter for w in wants if w.io_counter]
        agent = tuple(extra_watch) if any(w.watch_agent for w in wants) else ()
        units = [w for w in wants if w.service_unit]
        every = min((w.service_check_seconds for w in units), default=60.0)
        return cls(
            io=bool(counters),
            io_counter=counters[0] if counters else "write_bytes",
            cpu_floor=min((w.cpu_floor for w in wants), default=math.inf),
            write_floor=min((w.write_floor for w in wants), default=math.inf),
            open_files_above=min((w.open_files_above for w in wants), default=math.inf),
            listeners=any(w.listeners for w in wants),
            ioc=any(w.ioc for w in wants),
            sessions=any(w.sessions for w in wants),
            exe_recheck_every=cfg["host"]["exe_recheck_rounds"],
            watch_files=(*agent, *(f for w in wants for f in w.watch_files)),
            service_unit=units[0].service_unit if units else "",
            service_every=max(1, round(every / cfg["host"]["interval_seconds"])),
        )


@dataclass(slots=True)
class _Proc:
    name: str
    base: str
    username: str
    link: str | None  # raw /proc/PID/exe target; None when not readable
    kthread: bool  # no binary, no command line: kernel threads never exec
    cpu: float | None = None
    written: int | None = None
    denied_io: bool = False


@dataclass
class _Counters:
    rounds: int = 0
    full_queries: int = 0
    owner_lookups: int = 0
    vanished: int = 0
    denied: int = 0
    zombies: int = 0
    dropped: int = 0


def _readlink_exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None  # kernel thread, gone, or not ours to see


def _systemctl_show(unit: str) -> dict[str, str] | None:
    try:
        r = subprocess.run(
            ["systemctl", "show", unit, "-p", "ActiveState", "-p", "UnitFileState"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


class HostSampler:
    """Usable on its own: `sample()` runs one round and returns it; `start(sink)` runs
    rounds in a thread and hands each to `sink` (a bounded queue's put_nowait)."""

    def __init__(
        self,
        needs: Needs | None = None,
        *,
        clock: Callable[[], float] = time.time,
        intel: Any = None,
        scope: Callable[[int], bool] | None = None,
        service: Callable[[str], dict[str, str] | None] | None = None,
        users: Callable[[], list] = psutil.users,
    ) -> None:
        self.needs = needs or Needs()
        self.clock = clock
        self._intel = provider(intel)
        self.scope = scope  # restrict to some pids (tests; one watched service)
        self._service = service or _systemctl_show
        self._users = users
        self._linux = sys.platform.startswith("linux")
        self._tables = procnet.SocketTables() if procnet.available() else None
        self._procs: dict[ProcKey, _Proc] = {}
        self._owners: dict[int, tuple[int | None, str, str]] = {}  # inode -> pid, base, user
        self._stamps: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._last_ts = 0.0
        self.c = _Counters()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._errors: dict[str, int] = {}
        self._service_ok = bool(
            self.needs.service_unit
            and (
                service is not None
                or (shutil.which("systemctl") and os.environ.get("INVOCATION_ID"))
            )
        )

    # One round -------------------------------------------------------------------------

    def sample(self) -> HostSample:
        now = self.clock()
        dt = now - self._last_ts if self._last_ts else 0.0
        self._last_ts = now
        baseline = self.c.rounds == 0
        self.c.rounds += 1
        changed, busy, gone, names = self._processes(dt, baseline)
        intel = self._intel() if self.needs.ioc else EMPTY
        listeners, iocs = self._sockets(intel, names)
        sessions = self._sessions() if self.needs.sessions else None
        service = None
        if self._service_ok and (self.c.rounds - 1) % self.needs.service_every == 0:
            service = self._service(self.needs.service_unit)
        c = self.c
        return HostSample(
            ts=now,
            interval=dt,
            baseline=baseline,
            processes=tuple(changed),
            busy=tuple(busy),
            gone=tuple(gone),
            listeners=listeners,
            ioc_connections=iocs,
            sessions=sessions,
            files=self._files(),
            service=service,
            intel=intel,
            stats=SamplerStats(
                c.rounds,
                len(self._procs),
                c.full_queries,
                c.owner_lookups,
                c.vanished,
                c.denied,
                c.zombies,
                c.dropped,
            ),
        )

    @property
    def stats(self) -> SamplerStats:
        c = self.c
        return SamplerStats(
            c.rounds, len(self._procs), c.full_queries, c.owner_lookups, c.vanished, c.denied,
            c.zombies, c.dropped,
        )  # fmt: skip

    def _processes(
        self, dt: float, baseline: bool
    ) -> tuple[list[ProcInfo], list[Busy], list[ProcKey], dict[int, tuple[str, str]]]:
        n = self.needs
        # An exec shows as a new /proc/PID/exe target, read every `exe_recheck_every`
        # rounds. Where it is not readable (not Linux, not ours), the kernel's name for
        # the process is compared instead; asking psutil for it on every process every
        # round would double the round's cost (it reads the command line of long names).
        by_link = self._linux and n.exe_recheck_every > 0
        recheck = by_link and (self.c.rounds - 1) % n.exe_recheck_every == 0
        attrs = ["cpu_times"] + (["io_counters"] if n.io else []) + ([] if by_link else ["name"])
        procs, scope = self._procs, self.scope
        changed: list[ProcInfo] = []
        busy: list[Busy] = []
        names: dict[int, tuple[str, str]] = {}
        seen: set[ProcKey] = set()
        for p in psutil.process_iter(attrs, ad_value=None):
            pid = p.pid
            if scope is not None and not scope(pid):
                continue
            try:
                key = (pid, p.create_time())  # cached by psutil on the Process object
            except psutil.ZombieProcess:
                self.c.zombies += 1
                continue
            except psutil.NoSuchProcess:
                self.c.vanished += 1
                continue
            except psutil.AccessDenied:
                self.c.denied += 1
                continue
            info = p.info
            st = procs.get(key)
            event = ""
            if st is None:
                event = "new"
            elif st.link is not None and recheck:
                link = _readlink_exe(pid)
                if link is not None and link != st.link:
                    event = "deleted" if link == st.link + " (deleted)" else "exec"
            elif (st.link is None and not st.kthread) or not by_link:
                name = info.get("name") or self._get(p.name, None)
                if name is not None and name != st.name:
                    event = "exec"  # comm changes on exec: the command line is a new one
            if event:
                got = self._query(p, key, event, baseline)
                if got is None:
                    continue
                fresh, pinfo = got
                if st is not None:  # keep the counters: rates stay continuous over an exec
                    fresh.cpu, fresh.written, fresh.denied_io = st.cpu, st.written, st.denied_io
                procs[key] = st = fresh
                changed.append(pinfo)
            seen.add(key)
            names[pid] = (st.base, st.username)
            cpu_pct = wrate = 0.0
            ct = info["cpu_times"]
            if ct is not None:
                cpu = ct.user + ct.system
                if st.cpu is not None and dt > 0:
                    cpu_pct = (cpu - st.cpu) / dt * 100.0
                st.cpu = cpu
            if n.io:
                io = info.get("io_counters")
                if io is None:
                    if not st.denied_io:
                        st.denied_io = True
                        self.c.denied += 1
                else:
                    w = getattr(io, n.io_counter)
                    if st.written is not None and dt > 0:
                        wrate = max(0.0, (w - st.written) / dt)
                    st.written = w
            if cpu_pct >= n.cpu_floor or wrate >= n.write_floor:
                files = self._open_for_write(p) if wrate >= n.open_files_above else None
                busy.append(Busy(key, st.base, st.username, cpu_pct, wrate, files))
        gone = [k for k in procs if k not in seen]
        for k in gone:
            del procs[k]
        return changed, busy, gone, names

    def _query(
        self, p: psutil.Process, key: ProcKey, event: str, baseline: bool
    ) -> tuple[_Proc, ProcInfo] | None:
        self.c.full_queries += 1
        try:
            with p.oneshot():
                name = self._get(p.name, "")
                cmdline = tuple(self._get(p.cmdline, ()))
                username = self._get(p.username, "")
                link = _readlink_exe(p.pid) if self._linux else self._get(p.exe, "") or None
        except psutil.ZombieProcess:
            self.c.zombies += 1
            return None
        except psutil.NoSuchProcess:
            self.c.vanished += 1
            return None
        exe, deleted = link or "", False
        if exe.endswith(" (deleted)"):
            exe, deleted = exe[: -len(" (deleted)")], True
        mode, replaced = None, deleted and os.path.exists(exe)
        if exe:
            with contextlib.suppress(OSError):
                mode = os.stat(os.path.dirname(exe)).st_mode
        info = ProcInfo(key, event, name, exe, deleted, replaced, mode, cmdline, username, baseline)
        return _Proc(name, info.base, username, link, link is None and not cmdline), info

    def _get(self, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except psutil.AccessDenied:
            self.c.denied += 1
            return default

    def _open_for_write(self, p: psutil.Process) -> tuple[str, ...] | None:
        try:
            return tuple(f.path for f in p.open_files() if f.mode in WRITE_MODES)
        except psutil.ZombieProcess:
            self.c.zombies += 1
        except psutil.NoSuchProcess:
            self.c.vanished += 1
        except psutil.AccessDenied:
            self.c.denied += 1
        return None

    def _sockets(
        self, intel: Intel, names: dict[int, tuple[str, str]]
    ) -> tuple[tuple[Socket, ...] | None, tuple[Socket, ...]]:
        n = self.needs
        if not (n.listeners or (n.ioc and intel)):
            return None, ()
        raws = self._tables.read() if self._tables is not None else self._psutil_sockets()
        listen = [s for s in raws if s.listening] if n.listeners else []
        hits = (
            [s for s in raws if not s.listening and s.rport and intel.match(s.raddr)]
            if n.ioc and intel
            else []
        )
        owners = self._owners
        if any(s.inode not in owners for s in listen) or any(s.inode not in owners for s in hits):
            self._resolve(raws, names)
        live = {s.inode for s in raws}
        for inode in [i for i in owners if i not in live]:
            del owners[inode]

        def out(s: procnet.RawSocket) -> Socket | None:
            pid, base, user = owners.get(s.inode, (None, "", ""))
            if self.scope is not None and (pid is None or not self.scope(pid)):
                return None
            return Socket(s.proto, s.laddr, s.lport, s.raddr, s.rport, pid, base, user)

        return (
            tuple(x for x in map(out, listen) if x) if n.listeners else None,
            tuple(x for x in map(out, hits) if x),
        )

    def _resolve(self, raws: list[procnet.RawSocket], names: dict[int, tuple[str, str]]) -> None:
        self.c.owner_lookups += 1
        by_addr: dict[tuple, int] = {}
        try:
            conns = psutil.net_connections(kind="inet")
        except psutil.AccessDenied:
            self.c.denied += 1
            conns = []
        for c in conns:
            if c.pid is None:
                continue
            proto = "tcp" if c.type == 1 else "udp"  # SOCK_STREAM
            r = (c.raddr.ip, c.raddr.port) if c.raddr else ("", 0)
            by_addr[(proto, c.laddr.ip, c.laddr.port, *r)] = c.pid
        for s in raws:
            if s.inode in self._owners:
                continue
            r = ("", 0) if s.rport == 0 else (s.raddr, s.rport)
            pid = by_addr.get((s.proto, s.laddr, s.lport, *r))
            base, user = names.get(pid, ("", "")) if pid is not None else ("", "")
            if pid is not None and not base:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    base, user = proc.name(), proc.username()
            # An unresolved owner is remembered too: asking again every round would
            # make a socket we cannot see cost a full lookup each time.
            self._owners[s.inode] = (pid, base, user)

    def _psutil_sockets(self) -> list[procnet.RawSocket]:
        # Without /proc/net (not Linux): psutil's table, owners and all, every round.
        out = []
        for i, c in enumerate(psutil.net_connections(kind="inet")):
            proto = "tcp" if c.type == 1 else "udp"
            r = (c.raddr.ip, c.raddr.port) if c.raddr else ("", 0)
            state = procnet.TCP_LISTEN if c.status == psutil.CONN_LISTEN else ""
            if proto == "udp" and not c.raddr:
                state = procnet.UDP_UNCONNECTED
            inode = -(i + 1)
            self._owners[inode] = (c.pid, "", "")
            out.append(procnet.RawSocket(proto, c.laddr.ip, c.laddr.port, *r, state, inode))
        return out

    def _sessions(self) -> tuple[Session, ...]:
        try:
            users = self._users()
        except (OSError, psutil.Error):
            return ()
        return tuple(
            Session(u.name or "", u.terminal or "", u.host or "", float(u.started or 0))
            for u in users
        )

    def _files(self) -> dict[str, str]:
        out = {}
        for path in self.needs.watch_files:
            try:
                st = os.stat(path)
            except OSError:
                out[path] = "missing"
                continue
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            old = self._stamps.get(path)
            if old is None or old[0] != stamp:
                # Hashed only when the stat moved: the common round costs one stat.
                try:
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                except OSError:
                    digest = "unreadable"
                self._stamps[path] = (stamp, digest)
            out[path] = self._stamps[path][1]
        return out

    # The thread ------------------------------------------------------------------------

    def start(self, sink: Callable[[HostSample], None], interval: float) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(sink, interval), name="vigie-host", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._errors:
            log.warning("host_sampler_errors", **self._errors)

    def _loop(self, sink: Callable[[HostSample], None], interval: float) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                s = self.sample()
            except Exception as exc:  # a bad round must not end host monitoring
                kind = type(exc).__name__
                self._errors[kind] = self._errors.get(kind, 0) + 1
                if self._errors[kind] == 1:  # once per kind: no log flood
                    log.warning("host_sample_failed", error=kind)
            else:
                try:
                    sink(s)
                except queue.Full:
                    self.c.dropped += 1
            self._stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def agent_files(config_path: str | None) -> list[str]:
    """What agent_tamper watches of the agent itself: its configuration, its entry
    point and its own code."""
    files = [str(Path(config_path).resolve())] if config_path else []
    if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]):
        files.append(str(Path(sys.argv[0]).resolve()))
    pkg = Path(__file__).resolve().parents[1]
    files += sorted(str(p) for p in pkg.rglob("*.py"))
    return files


def from_settings(cfg: dict[str, Any], config_path: str | None = None) -> HostSampler:
    """The sampler `vigie-agent run` starts, reading intel from state_dir/intel.json."""
    needs = Needs.from_settings(cfg, agent_files(config_path))
    return HostSampler(needs, intel=IntelFile(Path(cfg["state_dir"]) / "intel.json"))
