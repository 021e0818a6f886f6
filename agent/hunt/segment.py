"""One journal segment on disk: compressed record blocks, then the index that lets a search
skip the segment (or all but a few of its blocks) without reading them.

    "VJS1"                                     magic
    block*    u32 length, zlib(marshal list of records)   (appended as the hour goes)
    index     u32 length, zlib(JSON header), bloom bytes, keys (u64), starts (u32),
              postings (u32 block numbers), IPv4 addresses (u32), IPv6 addresses (16 B)
    footer    u64 index offset, "VJSE"

The open segment (`current.open`) is the magic and its blocks only; a search reads it
block by block, and a crash leaves a file whose whole blocks `recover` turns into a
closed segment. A closed segment is named `seg-<first>-<last>.vjs` (epoch seconds of its
first and last record), so a search by time skips it by name alone.

The index keys are 64-bit hashes of what an indicator names: "i" + a packed address,
"d" + a domain and each of its parent domains (two labels or more), "3" + a JA3 hash,
"4" + a JA4. Each key lists the blocks that hold it. The Bloom filter (about 10 bits a
key, 5 probes: about 1 % false positives) says which segments may hold a key without
reading the key table; CIDR ranges are looked up in the sorted address arrays.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import marshal
import os
import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAGIC, END = b"VJS1", b"VJSE"
FOOTER = struct.Struct("<Q4s")
U32 = struct.Struct("<I")
PROBES = 5  # with 10 bits a key: about 1 % false positives
BITS_PER_KEY = 10
MAX_BLOCK = 64 << 20  # a length past this is damage, not a block
MARSHAL = 2  # write_items' records: binary floats, no references


class SegmentError(ValueError):
    pass


def key(kind: str, value: str | bytes) -> int:
    """64 bits from two CRC-32s (a tenth of a cryptographic hash's cost, and the writer
    hashes every new address and name): a collision only costs reading a block, every
    record read is checked exactly."""
    raw = kind.encode() + (value if isinstance(value, bytes) else value.encode())
    return zlib.crc32(raw) << 32 | zlib.crc32(raw, 0x9E3779B9)


def domain_keys(name: str) -> list[int]:
    """The keys of `name` and of each parent with two labels or more."""
    name = name.rstrip(".").lower()
    out = []
    while "." in name:
        out.append(key("d", name))
        name = name.split(".", 1)[1]
    return out


def _positions(k: int, nbits: int, probes: int = PROBES) -> Iterator[int]:
    h1, h2 = k & 0xFFFFFFFF, (k >> 32) | 1
    for i in range(probes):
        yield (h1 + i * h2) % nbits


def make_bloom(keys: Iterable[int], n: int) -> bytearray:
    nbits = max(64, n * BITS_PER_KEY)
    bits = bytearray((nbits + 7) // 8)
    nbits = len(bits) * 8
    for k in keys:
        for p in _positions(k, nbits):
            bits[p >> 3] |= 1 << (p & 7)
    return bits


def in_bloom(bits: bytes, k: int, probes: int = PROBES) -> bool:
    nbits = len(bits) * 8
    return all(bits[p >> 3] & (1 << (p & 7)) for p in _positions(k, nbits, probes))


def write_block(f: Any, records: list) -> int:
    """Append one block; returns the bytes written. Records are lists of str, int and
    float: marshal writes them ten times faster than JSON (and reads them back faster),
    zlib level 1 compresses four times faster than level 6 for a fifth more bytes. The
    files are the agent's own (0600 in a 0700 directory), never read from elsewhere."""
    data = zlib.compress(marshal.dumps(records, 4), 1)
    f.write(U32.pack(len(data)))
    f.write(data)
    return 4 + len(data)


def write_items(f: Any, n: int, items: list[bytes]) -> int:
    """write_block of records already marshalled one by one (format MARSHAL, which has no
    references between objects, so that they join into one list): the journal's, the
    engine's among them (agent/engine/journal.c)."""
    data = zlib.compress(b"[" + U32.pack(n) + b"".join(items), 1)
    f.write(U32.pack(len(data)))
    f.write(data)
    return 4 + len(data)


def read_blocks(path: Path) -> Iterator[tuple[int, list]]:
    """(offset, records) of each whole block; stops at a damaged or partial tail or at
    the index of a closed segment."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            return
        end = _index_offset(f)
        f.seek(4)
        while True:
            off = f.tell()
            if end is not None and off >= end:
                return
            head = f.read(4)
            if len(head) < 4:
                return
            (n,) = U32.unpack(head)
            data = f.read(n) if n <= MAX_BLOCK else b""
            if len(data) < n or not data:
                return
            try:
                records = marshal.loads(zlib.decompress(data))
            except (zlib.error, ValueError, EOFError, TypeError):
                return
            if not isinstance(records, list):
                return
            yield off, records


def _index_offset(f: Any) -> int | None:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < 4 + FOOTER.size:
        return None
    f.seek(size - FOOTER.size)
    off, end = FOOTER.unpack(f.read(FOOTER.size))
    return off if end == END and 4 <= off < size else None


def write_index(
    f: Any, offsets: list[int], postings: dict[int, set[int]], v4: set[int], v6: set[bytes],
    header: dict,
) -> None:  # fmt: skip
    """Append the index and the footer at the end of the blocks (f positioned there)."""
    keys = array("Q", sorted(postings))
    starts, posts = array("I", [0]), array("I")
    for k in keys:
        posts.extend(sorted(postings[k]))
        starts.append(len(posts))
    bloom = make_bloom(keys, len(keys))
    _write_index(f, offsets, keys.tobytes(), starts.tobytes(), posts.tobytes(), bloom,
                 array("I", sorted(v4)), v6, header)  # fmt: skip


def write_index_blocks(
    f: Any, offsets: list[int], block_keys: list, v4: array, v6: set[bytes],
    header: dict,
) -> None:  # fmt: skip
    """write_index from each block's keys (block_keys[n]: block n's), the arrays made in
    C (the writer's way: a busy hour holds millions of key and block pairs); `v4` sorted,
    each address once."""
    from agent.engine._engine import index_arrays

    keys, starts, posts, bloom = index_arrays(block_keys, PROBES)
    _write_index(f, offsets, keys, starts, posts, bloom, v4, v6, header)


def _write_index(
    f: Any, offsets: list[int], keys: bytes, starts: bytes, posts: bytes, bloom: bytes,
    a4: array, v6: set[bytes], header: dict,
) -> None:  # fmt: skip
    at = f.tell()
    a6 = b"".join(sorted(v6))
    head = dict(header, blocks=offsets, nkeys=len(keys) // 8, bloom=len(bloom), probes=PROBES,
                nposts=len(posts) // 4,
                v4=len(a4), v6=len(a6) // 16)  # fmt: skip
    hz = zlib.compress(json.dumps(head, separators=(",", ":")).encode())
    f.write(U32.pack(len(hz)))
    f.write(hz)
    for part in (bloom, keys, starts, posts, a4.tobytes(), a6):
        f.write(part)
    f.write(FOOTER.pack(at, END))


class Segment:
    """A closed segment, read lazily: the header and Bloom filter first, the key table and
    address arrays only when a query may match."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close() / __exit__)
        if self._f.read(4) != MAGIC:
            self._f.close()
            raise SegmentError(f"{path}: not a journal segment")
        at = _index_offset(self._f)
        if at is None:
            self._f.close()
            raise SegmentError(f"{path}: no index (damaged or still open)")
        self._f.seek(at)
        (n,) = U32.unpack(self._f.read(4))
        self.header = json.loads(zlib.decompress(self._f.read(n)))
        self._base = at + 4 + n
        self.bloom = self._f.read(self.header["bloom"])
        self._keys: array | None = None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        h, f = self.header, self._f
        f.seek(self._base + h["bloom"])
        self._keys = array("Q", f.read(8 * h["nkeys"]))
        self._starts = array("I", f.read(4 * (h["nkeys"] + 1)))
        self._posts = array("I", f.read(4 * h["nposts"]))
        self._v4 = array("I", f.read(4 * h["v4"]))
        raw6 = f.read(16 * h["v6"])
        self._v6 = [raw6[i : i + 16] for i in range(0, len(raw6), 16)]

    def blocks_of(self, k: int) -> list[int]:
        """The blocks holding key `k` (none if the Bloom filter rules it out)."""
        if not in_bloom(self.bloom, k, self.header.get("probes", PROBES)):
            return []
        if self._keys is None:
            self._load()
        keys = self._keys
        i = bisect.bisect_left(keys, k)
        if i == len(keys) or keys[i] != k:
            return []
        return list(self._posts[self._starts[i] : self._starts[i + 1]])

    def addresses_in(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[bytes]:
        """The segment's addresses inside `net`, packed."""
        if self._keys is None:
            self._load()
        lo, hi = net.network_address.packed, net.broadcast_address.packed
        if net.version == 4:
            a, b = int.from_bytes(lo, "big"), int.from_bytes(hi, "big")
            v4 = self._v4
            return [
                x.to_bytes(4, "big")
                for x in v4[bisect.bisect_left(v4, a) : bisect.bisect_right(v4, b)]
            ]
        v6 = self._v6
        return v6[bisect.bisect_left(v6, lo) : bisect.bisect_right(v6, hi)]

    def block(self, n: int) -> list:
        f = self._f
        f.seek(self.header["blocks"][n])
        (size,) = U32.unpack(f.read(4))
        return marshal.loads(zlib.decompress(f.read(size)))

    def all_blocks(self) -> Iterator[list]:
        for n in range(len(self.header["blocks"])):
            yield self.block(n)
