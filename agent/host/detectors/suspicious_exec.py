"""host.suspicious_exec — binaries run from temporary or world-writable directories,
binaries deleted after start or living only in memory, and known offensive tools.

Techniques, per finding: T1204.002 (User Execution: Malicious File) for a binary run
from a temporary or world-writable directory, where droppers land; T1070.004 (Indicator
Removal: File Deletion) for a binary deleted while it runs; T1588.002 (Obtain
Capabilities: Tool) for a known offensive tool; T1059 (Command and Scripting
Interpreter) for netcat/socat handing a shell to the network. A deleted binary whose
path holds a file again is a package upgrade, not reported.
"""

from __future__ import annotations

import fnmatch
import stat
from typing import ClassVar

from agent.host.detectors.base import HostDetector, names, process_entities
from agent.host.sample import HostSample, ProcInfo
from common.config import Option
from vigie.v1 import alert_pb2

TOOLS = [
    "mimikatz*",
    "chisel*",
    "xmrig*",
    "xmr-stak*",
    "linpeas*",
    "linenum*",
    "les.sh",
    "pspy*",
    "lazagne*",
    "rubeus*",
    "sharphound*",
    "bloodhound*",
    "ligolo*",
    "frpc",
    "kerbrute*",
    "crackmapexec*",
    "netexec",
    "nxc",
    "impacket-*",
    "secretsdump*",
    "psexec.py",
    "cobaltstrike*",
    "sliver*",
    "meterpreter*",
]
NETCATS = {"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"}


class SuspiciousExec(HostDetector):
    name = "host.suspicious_exec"
    technique = "T1204.002"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Binaries run from temp/world-writable dirs, deleted after start, offensive tools."
    options: ClassVar[dict[str, Option]] = {
        "temp_dirs": Option(
            list,
            ["/tmp", "/var/tmp", "/dev/shm", "/run/shm"],
            "Directories (and their subdirectories) no service binary should run from.",
            names,
        ),
        "world_writable": Option(
            bool, True, "Also report binaries in any world-writable directory without sticky bit."
        ),
        "deleted_binary": Option(bool, True, "Report processes whose binary was deleted."),
        "tools": Option(list, TOOLS, "Offensive tool base names (shell globs).", names),
        "shell_relays": Option(bool, True, "Report nc/ncat with -e/-c and socat exec:/system:."),
    }

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.temp = tuple(d.rstrip("/") for d in settings["temp_dirs"])
        self.tools = [t.lower() for t in settings["tools"]]

    def reasons(self, p: ProcInfo) -> list[tuple[str, str]]:
        """(reason, technique) for one process; empty when nothing is wrong."""
        s = self.settings
        out = []
        base = p.base.lower()
        if p.exe:
            d = p.exe.rsplit("/", 1)[0] or "/"
            if any(d == t or d.startswith(t + "/") for t in self.temp):
                out.append(("temp_dir", "T1204.002"))
            elif (
                s["world_writable"]
                and p.exe_dir_mode is not None
                and p.exe_dir_mode & stat.S_IWOTH
                and not p.exe_dir_mode & stat.S_ISVTX
            ):
                out.append(("world_writable_dir", "T1204.002"))
        if p.exe.startswith("/memfd:"):
            # Run from an anonymous memory file: fileless loading (T1620). Some runtimes
            # do it on purpose (runc re-executes itself so): allow-list their names.
            out.append(("memory_only_binary", "T1620"))
        elif s["deleted_binary"] and p.exe_deleted and not p.exe_replaced:
            out.append(("deleted_binary", "T1070.004"))
        if any(fnmatch.fnmatchcase(base, t) for t in self.tools):
            out.append(("offensive_tool", "T1588.002"))
        if s["shell_relays"] and p.cmdline:
            args = [a.lower() for a in p.cmdline[1:]]
            if (base in NETCATS and any(a in ("-e", "-c") or a.startswith("-e") for a in args)) or (
                base == "socat" and any(a.startswith(("exec:", "system:")) for a in args)
            ):
                out.append(("shell_relay", "T1059"))
        return out

    def on_host(self, sample: HostSample) -> None:
        for p in sample.processes:
            if self.allowed_process(p.base):
                continue
            found = self.reasons(p)
            if not found:
                continue
            why = [r for r, _ in found]
            # The most specific finding names the technique: tool > relay > deleted > dir.
            order = ["offensive_tool", "shell_relay", "memory_only_binary", "deleted_binary"]
            tech = next((t for o in order for r, t in found if r == o), found[0][1])
            self.report_rule(
                tech,
                subject=f"{p.base}|{'+'.join(why)}",
                ts=sample.ts,
                summary="suspicious process: " + ", ".join(r.replace("_", " ") for r in why),
                entities=process_entities(p.base, p.username),
                metrics={
                    "pid": p.pid,
                    "running_at_start": int(p.baseline),
                    **{f"reason_{r}": 1 for r in why},
                },
            )
