"""Live capture: an AF_PACKET socket with the BPF filter compiled by libpcap (via scapy)
and run in the kernel, so packets we do not want never reach Python. Kernel drop
counters come from PACKET_STATISTICS.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
LINKTYPE_ETHERNET = 1
PACKET_OUTGOING = 4


class CaptureError(Exception):
    pass


class LiveCapture:
    def __init__(
        self, interface: str, bpf_filter: str, snaplen: int = 65535, rcvbuf: int = 64 * 1024 * 1024
    ) -> None:
        self.interface = interface
        self.snaplen = snaplen
        self.received = 0
        self.dropped = 0
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError(
                "capture needs CAP_NET_RAW (run as root or via the systemd unit)"
            ) from None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if bpf_filter:
                self._attach(bpf_filter)
            self.sock.bind((interface, 0))
        except OSError as exc:
            self.sock.close()
            raise CaptureError(
                f"cannot capture on interface {interface!r}: {exc.strerror}"
            ) from None
        self.sock.settimeout(0.2)

    def _attach(self, bpf_filter: str) -> None:
        from scapy.arch.linux import attach_filter  # costly import: only for live capture
        from scapy.error import Scapy_Exception

        try:
            attach_filter(self.sock, bpf_filter, self.interface)
        except Scapy_Exception as exc:
            raise CaptureError(f"bad BPF filter {bpf_filter!r}: {exc}") from None

    def stats(self) -> tuple[int, int]:
        """(received, dropped) as the kernel counts them; the kernel resets on read."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        self.received += packets
        self.dropped += drops
        return self.received, self.dropped

    def packets(self, stop) -> Iterator[tuple[float, int, int, bytes] | None]:
        """Yield (ts, linktype, wirelen, frame); None on a quiet 0.2 s so callers can tick."""
        sock, snaplen = self.sock, self.snaplen
        recv = sock.recvfrom
        while not stop.is_set():
            try:
                frame, _addr = recv(snaplen, socket.MSG_TRUNC)
            except TimeoutError:
                yield None
                continue
            except InterruptedError:
                continue
            yield time.time(), LINKTYPE_ETHERNET, len(frame), frame

    def close(self) -> None:
        self.sock.close()
