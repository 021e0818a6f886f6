"""The records one host sample carries. Immutable: the sampler thread builds them, the
pipeline thread reads them, nothing is shared after the hand-over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.host.intel import Intel

ProcKey = tuple[int, float]  # (pid, create_time): a pid alone is reused


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """A process seen for the first time, after an exec, or whose binary went away."""

    key: ProcKey
    event: str  # "new", "exec" or "deleted"
    name: str  # kernel comm name
    exe: str  # '' when unknown (kernel thread, access denied)
    exe_deleted: bool
    exe_replaced: bool  # deleted, but a file is back at that path (a package upgrade)
    exe_dir_mode: int | None  # st_mode of the executable's directory, None if unknown
    cmdline: tuple[str, ...]  # never leaves the host: detectors match on it, that's all
    username: str
    baseline: bool  # seen in the sampler's first round

    @property
    def pid(self) -> int:
        return self.key[0]

    @property
    def base(self) -> str:
        """The executable's base name: all a host alert says of a process."""
        if self.exe:
            return self.exe.rsplit("/", 1)[-1]
        return self.cmdline[0].rsplit("/", 1)[-1] if self.cmdline else self.name


@dataclass(frozen=True, slots=True)
class Busy:
    """A process above the cheapest detector floor for CPU or writes in this round."""

    key: ProcKey
    process: str  # executable base name
    username: str
    cpu_percent: float  # one full core = 100
    write_rate: float  # bytes per second since the previous round
    write_files: tuple[str, ...] | None  # files open for writing; None when not looked at


@dataclass(frozen=True, slots=True)
class Socket:
    proto: str  # "tcp" or "udp"
    laddr: str
    lport: int
    raddr: str
    rport: int
    pid: int | None  # None when not resolved (not needed, or not ours to see)
    process: str  # executable base name, '' when unknown
    username: str = ""


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    terminal: str
    host: str
    started: float


@dataclass(frozen=True, slots=True)
class SamplerStats:
    rounds: int = 0
    processes: int = 0
    full_queries: int = 0  # processes queried in full (new or exec'd): the diff at work
    owner_lookups: int = 0  # times the socket owners were resolved (psutil.net_connections)
    vanished: int = 0  # NoSuchProcess while reading a process
    denied: int = 0  # AccessDenied
    zombies: int = 0  # ZombieProcess
    dropped: int = 0  # samples the pipeline had no room for


@dataclass(frozen=True, slots=True)
class HostSample:
    ts: float
    interval: float  # seconds since the previous round, 0 for the first
    baseline: bool  # the first round: what was already there when the agent started
    processes: tuple[ProcInfo, ...] = ()
    busy: tuple[Busy, ...] = ()
    gone: tuple[ProcKey, ...] = ()
    listeners: tuple[Socket, ...] | None = None  # None: sockets not read this round
    ioc_connections: tuple[Socket, ...] = ()
    sessions: tuple[Session, ...] | None = None
    files: dict[str, str] = field(default_factory=dict)  # watched path -> sha256 or "missing"
    service: dict[str, str] | None = None  # systemd unit properties, None when not checked
    intel: Intel | None = None
    stats: SamplerStats = SamplerStats()
