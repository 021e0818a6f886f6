"""Compile a tcpdump-syntax filter with libpcap and attach it to a socket, in the kernel.

libpcap is called directly through ctypes (pcap_open_dead + pcap_compile): the same
compiler scapy uses, without loading scapy's 20 MB into a resident agent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket

SO_ATTACH_FILTER = 26
LINKTYPE_ETHERNET = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class LibpcapMissing(Exception):
    """No libpcap on this machine: the filter may well be right, it cannot be compiled."""

    def __str__(self) -> str:
        return (
            "libpcap is not installed, so the BPF filter cannot be compiled: install it "
            "(Debian/Ubuntu: apt install libpcap0.8; RHEL: dnf install libpcap), or set "
            '[capture] bpf_filter = "" to capture without a kernel filter'
        )


class BpfError(Exception):
    pass


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


_lib: ctypes.CDLL | None = None


def _pcap() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise LibpcapMissing() from None
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_Program),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def compile_filter(
    expr: str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535
) -> list[tuple[int, int, int, int]]:
    """The filter's BPF instructions, or BpfError with libpcap's message."""
    lib = _pcap()
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise BpfError("libpcap could not open a compiler handle")
    prog = _Program()
    try:
        if (
            lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN)
            != 0
        ):
            raise BpfError(lib.pcap_geterr(handle).decode(errors="replace"))
        insns = [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len]]
        lib.pcap_freecode(ctypes.byref(prog))
        return insns
    finally:
        lib.pcap_close(handle)


def attach(sock: socket.socket, expr: str) -> int:
    """Attach the compiled filter to an AF_PACKET socket; return its instruction count."""
    insns = compile_filter(expr)
    array = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    fprog = _SockFprog(len(insns), ctypes.cast(array, ctypes.POINTER(_Insn)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    return len(insns)
