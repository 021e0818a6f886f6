"""The kernel's socket tables (/proc/net/{tcp,tcp6,udp,udp6}), read without owners.

Resolving which process owns a socket means reading every file descriptor of every
process (that is what psutil.net_connections does); reading the tables alone is a few
small files. The sampler reads these every round and resolves owners only for sockets
it has not seen and that matter (new listeners, connections to an indicator).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
_TABLES = (("tcp", 4), ("tcp6", 6), ("udp", 4), ("udp6", 6))


@dataclass(frozen=True, slots=True)
class RawSocket:
    proto: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    state: str
    inode: int

    @property
    def listening(self) -> bool:
        if self.proto == "tcp":
            return self.state == TCP_LISTEN
        return self.state == UDP_UNCONNECTED and self.rport == 0


def _addr(hexaddr: str, family: int) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return socket.inet_ntop(af, raw), int(port_hex, 16)


def available(root: str = "/proc") -> bool:
    return Path(root, "net", "tcp").exists()


class SocketTables:
    """Reads the tables, decoding each socket once: a known inode is reused as is."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._known: dict[int, RawSocket] = {}

    def read(self) -> list[RawSocket]:
        out: list[RawSocket] = []
        known = self._known
        fresh: dict[int, RawSocket] = {}
        for name, family in _TABLES:
            proto = name.rstrip("6")
            try:
                with open(f"{self.root}/net/{name}", encoding="ascii") as f:
                    next(f, None)  # header
                    for line in f:
                        parts = line.split()
                        if len(parts) < 10:
                            continue
                        inode = int(parts[9])
                        if inode == 0:
                            continue  # TIME_WAIT and the like: no owner left
                        s = known.get(inode)
                        if s is None or s.state != parts[3]:
                            la, lp = _addr(parts[1], family)
                            ra, rp = _addr(parts[2], family)
                            s = RawSocket(proto, la, lp, ra, rp, parts[3], inode)
                        fresh[inode] = s
                        out.append(s)
            except (FileNotFoundError, PermissionError):
                continue  # no IPv6, or a sandbox hiding a table
        self._known = fresh
        return out
