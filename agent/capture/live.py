"""Live capture: an AF_PACKET socket with the BPF filter compiled by libpcap
and run in the kernel, so packets we do not want never reach Python. Kernel drop
counters come from PACKET_STATISTICS.

Two receive paths:
- ring (default): PACKET_MMAP with TPACKET_V3. The kernel fills 1 MB blocks of a ring
  shared with us and hands a block over when it is full or after RETIRE_MS; we wait with
  poll(), so one system call brings hundreds of frames instead of one. The agent hands
  whole blocks to the engine (`blocks()`, Pipeline.feed_ring), which walks their frames
  (tpacket3_hdr) in C; `ring_frames` is the same walk in Python, for `packets()`.
- recv: one recvfrom_into() per frame (MSG_TRUNC gives the length on the wire), for
  kernels or sandboxes where the ring cannot be set up.

`packets()` yields `(ts, linktype, wirelen, frame)` on both paths, or None after a quiet
POLL_SECONDS so the caller can advance time. VLAN tags the kernel took off the frame
(hardware or veth offload) are put back so that the decoder sees the frame as it was on
the wire.
"""

from __future__ import annotations

import contextlib
import mmap
import select
import socket
import struct
import time
from collections.abc import Iterator

from agent.capture import bpf

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_AUXDATA = 8
TPACKET_V3 = 2
LINKTYPE_ETHERNET = 1
PACKET_OUTGOING = 4

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

BLOCK_SIZE = 1 << 20  # 1 MB blocks: a multiple of the page size, and of any frame
FRAME_SIZE = 2048  # only used by the kernel to check the request (V3 packs frames)
RETIRE_MS = 100  # a block that is not full is handed over after this long
POLL_SECONDS = 0.2

# struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
# sizeof_priv, feature_req_word
_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num (u64), ts_first, ts_last
_BLOCK = struct.Struct("=IIIII")
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status,
# tp_mac, tp_net, then hv1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid
_HDR3 = struct.Struct("=IIIIIIHHIIH")
_VLAN = struct.Struct("!HH")
_STATS = struct.Struct("=II")
_STATS3 = struct.Struct("=III")


class CaptureError(Exception):
    pass


class LiveCapture:
    """Capture on `interface`; `ring=False` (or a kernel that refuses the ring) uses recv."""

    def __init__(
        self,
        interface: str,
        bpf_filter: str,
        snaplen: int = 65535,
        rcvbuf: int = 64 * 1024 * 1024,
        *,
        ring: bool = True,
        ring_megabytes: int = 32,
    ) -> None:
        self.interface = interface
        self.snaplen = snaplen
        self.received = 0  # kernel's count of packets that passed the filter (drops included)
        self.dropped = 0  # kernel's count of packets it had no room for
        self.ring_error = ""  # why the ring could not be used, when it could not
        self._map: mmap.mmap | None = None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError(
                "capture needs CAP_NET_RAW (run as root or via the systemd unit)"
            ) from None
        try:
            if bpf_filter:
                # Before bind: no unfiltered packet is queued in between.
                self._attach(bpf_filter)
            if ring:
                try:
                    self._setup_ring(max(2, ring_megabytes) * (1 << 20) // BLOCK_SIZE)
                except OSError as exc:
                    self.ring_error = exc.strerror or str(exc)
                    self._map = None
            if self._map is None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            self.sock.bind((interface, 0))
        except OSError as exc:
            self.close()
            raise CaptureError(
                f"cannot capture on interface {interface!r}: {exc.strerror or exc}"
            ) from None
        self.stats()  # start the kernel's counters from here

    @property
    def mode(self) -> str:
        return "ring" if self._map is not None else "recv"

    def _attach(self, bpf_filter: str) -> None:
        try:
            bpf.attach(self.sock, bpf_filter)
        except bpf.LibpcapMissing as exc:
            self.close()
            raise CaptureError(str(exc)) from None
        except bpf.BpfError as exc:
            self.close()
            raise CaptureError(f"bad BPF filter {bpf_filter!r}: {exc}") from None

    def _setup_ring(self, blocks: int) -> None:
        sock = self.sock
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        req = _REQ3.pack(
            BLOCK_SIZE, blocks, FRAME_SIZE, BLOCK_SIZE // FRAME_SIZE * blocks, RETIRE_MS, 0, 0
        )
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._blocks = blocks
        self._map = mmap.mmap(
            sock.fileno(), BLOCK_SIZE * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )

    def stats(self) -> tuple[int, int]:
        """(received, dropped) as the kernel counts them, accumulated (it resets on read)."""
        if self.sock.fileno() < 0:
            return self.received, self.dropped
        if self._map is not None:
            packets, drops, _freeze = _STATS3.unpack(
                self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
            )
        else:
            packets, drops = _STATS.unpack(
                self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
            )
        self.received += packets
        self.dropped += drops
        return self.received, self.dropped

    def packets(self, stop) -> Iterator[tuple[float, int, int, bytes] | None]:
        """Yield (ts, linktype, wirelen, frame); None on a quiet 0.2 s so callers can tick."""
        if self._map is not None:
            return self._ring_packets(stop)
        return self._recv_packets(stop)

    def blocks(self, stop) -> Iterator[tuple[mmap.mmap, int, int] | None]:
        """Ring only: each block the kernel handed over, as (map, offset of its first
        frame, frames), for a walker that reads the frames itself (the engine:
        Pipeline.feed_ring; `ring_frames` in Python); None on a quiet 0.2 s. The block
        goes back to the kernel when the walker asks for the next one."""
        mm, blocks = self._map, self._blocks
        assert mm is not None
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        poll = poller.poll
        block_hdr = _BLOCK.unpack_from
        release = struct.Struct("=I").pack_into
        timeout_ms = int(POLL_SECONDS * 1000)
        i = 0
        while not stop.is_set():
            base = i * BLOCK_SIZE
            _ver, _priv, status, num, first = block_hdr(mm, base)
            if not status & TP_STATUS_USER:
                if not poll(timeout_ms):
                    yield None
                continue
            yield mm, base + first, num
            release(mm, base + 8, TP_STATUS_KERNEL)  # hand the block back
            i = i + 1 if i + 1 < blocks else 0

    def _ring_packets(self, stop) -> Iterator[tuple[float, int, int, bytes] | None]:
        snaplen = self.snaplen
        for blk in self.blocks(stop):
            if blk is None:
                yield None
            else:
                yield from ring_frames(*blk, snaplen)

    def _recv_packets(self, stop) -> Iterator[tuple[float, int, int, bytes] | None]:
        sock, snaplen = self.sock, self.snaplen
        sock.settimeout(POLL_SECONDS)
        buf = bytearray(snaplen)
        view = memoryview(buf)
        recv = sock.recvmsg_into
        trunc = socket.MSG_TRUNC
        cmsg_space = socket.CMSG_SPACE(32)
        vlan = _VLAN.pack
        while not stop.is_set():
            try:
                n, anc, _flags, _addr = recv([view], cmsg_space, trunc)
            except TimeoutError:
                yield None
                continue
            except InterruptedError:
                continue
            frame = bytes(view[: n if n < snaplen else snaplen])  # n: length on the wire
            for level, kind, data in anc:
                # struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                    status, tci, tpid = struct.unpack_from("=I12xHH", data)
                    if status & TP_STATUS_VLAN_VALID:
                        t = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
                        frame = frame[:12] + vlan(t, tci) + frame[12:]
                        n += 4
            yield time.time(), LINKTYPE_ETHERNET, n, frame

    def close(self) -> None:
        if self._map is not None:
            # BufferError: a frame view still alive; the mapping goes with the process.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self.sock.close()


def ring_frames(
    mm: mmap.mmap | bytes | bytearray, off: int, num: int, snaplen: int
) -> Iterator[tuple[float, int, int, bytes]]:
    """The `num` frames of a ring block from `off` (tpacket3_hdr each), as records; the
    engine's feed_ring reads them the same way."""
    hdr3, vlan = _HDR3.unpack_from, _VLAN.pack
    for _ in range(num):
        nxt, sec, nsec, caplen, wirelen, st, mac, _net, _hash, tci, tpid = hdr3(mm, off)
        start = off + mac
        if caplen > snaplen:
            caplen = snaplen
        frame = mm[start : start + caplen]
        if st & TP_STATUS_VLAN_VALID:
            # The kernel took the 802.1Q tag off: put it back where it was.
            t = tpid if st & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
            frame = frame[:12] + vlan(t, tci) + frame[12:]
            wirelen += 4
        yield sec + nsec * 1e-9, LINKTYPE_ETHERNET, wirelen, bytes(frame)
        off += nxt
