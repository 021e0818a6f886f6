"""Two network namespaces joined by a veth pair, for benchmarks and root tests.

Addresses live only inside the namespaces: nothing touches the host's interfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def available() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    probe = f"vgprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` does not work here: {err.decode(errors='replace').strip()}"
    _ip("netns", "del", probe)
    return None


class NetnsPair:
    """`a` (server side, addr_a) <-veth-> `b` (client side, addr_b), both /24."""

    def __init__(
        self,
        tag: str,
        addr_a: str = "10.77.0.1",
        addr_b: str = "10.77.0.2",
        mtu: int = 1500,
        extra_a: Sequence[str] = (),
    ) -> None:
        tag = f"{tag}{os.getpid() % 100000}"
        self.a, self.b = f"vga{tag}", f"vgb{tag}"
        self.if_a, self.if_b = f"va{tag}"[:15], f"vb{tag}"[:15]
        self.addr_a, self.addr_b = addr_a, addr_b
        self.mtu = mtu
        self.extra_a = list(extra_a)

    def __enter__(self) -> NetnsPair:
        try:
            _ip("netns", "add", self.a)
            _ip("netns", "add", self.b)
            _ip("link", "add", self.if_a, "netns", self.a, "type", "veth", "peer", "name",
                self.if_b, "netns", self.b)  # fmt: skip
            for ns, ifname, addr in ((self.a, self.if_a, self.addr_a),
                                     (self.b, self.if_b, self.addr_b)):  # fmt: skip
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
                _ip("-n", ns, "link", "set", ifname, "mtu", str(self.mtu), "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                # Real frame sizes on the wire (no 64 KB segmentation-offload super-frames).
                if shutil.which("ethtool"):
                    off = ["tso", "off", "gso", "off", "gro", "off"]
                    subprocess.run(
                        ["ip", "netns", "exec", ns, "ethtool", "-K", ifname, *off],
                        capture_output=True,
                    )
            for extra in self.extra_a:
                _ip("-n", self.a, "addr", "add", f"{extra}/24", "dev", self.if_a)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(ns, argv), **kw)

    def popen(self, ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(ns, argv), **kw)
