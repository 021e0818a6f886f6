"""The metadata journal: what the agent saw, kept on this server for retro-hunting.

A pipeline taker (it declares `wants` and hooks as detectors do, agent/detect/hooks.py,
but raises no alert): every flow end, DNS exchange, TLS ClientHello, HTTP request and
SMB/DCE-RPC action becomes one record. Flow ends and DNS exchanges over UDP, most of a
busy server's records, are made by the engine itself (agent/engine/journal.c: handed up
one by one they cost three times the whole replay), which this takes a block at a time,
marshalled, with the block's index keys (`use_engine`, then each tick); TLS, HTTP, SMB and
DCE-RPC come from the messages the pipeline already decodes, and DNS over TCP from the
deep decoder. No per-packet work of its own. Records are buffered, written a block at a time
(compressed) to `state_dir/journal/current.open`, and the segment is closed every
`segment_minutes` of capture time: its index is appended, the file fsync'd and renamed
(agent/hunt/segment.py). Retention drops the oldest closed segments past `max_age_days`
or `max_megabytes`, and counts them (journal/stats.json, the `journal_dropped` log).

Records (lists, the first item says which; `FIELDS` names the rest):
    c  connection  first, last, src, sport, dst, dport, proto, state, bytes and packets
                   from the originator then from the responder
    d  DNS         ts, client, sport, server, dport, qname, qtype, rcode (-1: no answer
                   seen), ancount (the answer count), answers: what the first 8 A, AAAA
                   and CNAME answers say, as text (addresses, CNAME targets), indexed as
                   the record's addresses and names are, so that searching a C2 address
                   finds the clients that resolved a name to it. Records written before
                   answers were kept have no such item (10 in all): readers check.
    t  TLS         ts, client, sport, server, dport, sni, ja3, ja4
    h  HTTP        ts, client, sport, server, dport, host, method (no path, no body)
    s  SMB         ts, client, sport, server, dport, command, share, file, action
    r  DCE-RPC     ts, client, sport, server, dport, interface, operation, action
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import marshal
import os
import socket
import sys
import time
from array import array
from pathlib import Path
from typing import Any, ClassVar

from agent.detect.hooks import Wants
from agent.engine import S_ATTEMPT, S_CLOSED, S_ESTABLISHED, S_MIDSTREAM, S_PROBE, S_REJECTED
from agent.engine._engine import sorted_u32
from agent.hunt import segment as seg
from common import logs
from common.config import Option, at_least, positive

log = logs.get("agent.hunt")

FIELDS = {
    "c": ("first", "last", "src", "sport", "dst", "dport", "proto", "state",
          "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"),
    "d": ("ts", "src", "sport", "dst", "dport", "qname", "qtype", "rcode", "ancount",
          "answers"),
    "t": ("ts", "src", "sport", "dst", "dport", "sni", "ja3", "ja4"),
    "h": ("ts", "src", "sport", "dst", "dport", "host", "method"),
    "s": ("ts", "src", "sport", "dst", "dport", "command", "share", "file", "action"),
    "r": ("ts", "src", "sport", "dst", "dport", "interface", "operation", "action"),
}  # fmt: skip
TYPES = {"c": "conn", "d": "dns", "t": "tls", "h": "http", "s": "smb", "r": "dcerpc"}
_TCP_STATE = {
    S_ATTEMPT: "attempt", S_PROBE: "probe", S_ESTABLISHED: "established",
    S_REJECTED: "rejected", S_MIDSTREAM: "midstream", S_CLOSED: "closed",
}  # fmt: skip
_SMB_KEPT = frozenset(("create", "tree_connect"))
_APP = frozenset(("tls_client_hello", "http", "smb", "dcerpc"))
OPEN_NAME = "current.open"
KEYS_NAME = "current.keys"  # the open segment's block keys, read back at its close
DNS_WAIT = 10.0  # a query unanswered this long is written without its answer
MAX_PENDING_DNS = 65_536
# Address strings and domain keys kept for the next records: small, because a scan or a
# busy proxy brings a new address per connection (a 200k cache held 55 MB at 100k flows).
ADDR_CACHE = 4096
# Index entries (block keys and addresses) the open segment may hold before it is closed
# early: 8 bytes a key, 4 an IPv4 address, so about 16 MB at most, however busy the hour.
MAX_HELD = 2_000_000

OPTIONS: dict[str, Option] = {
    "enabled": Option(
        bool,
        True,
        "Keep the metadata journal (connections, DNS, TLS, HTTP, SMB/DCE-RPC) in "
        "state_dir/journal for retro-hunts and `vigie-agent hunt`. It never leaves this "
        "server (docs/PRIVACY.md: what it holds, how to purge it).",
    ),
    "max_age_days": Option(float, 14.0, "Segments older than this are deleted.", positive),
    "max_megabytes": Option(
        int, 2048, "Bound on the journal's size; the oldest segments go first.", at_least(1)
    ),
    "segment_minutes": Option(
        float, 60.0, "Capture time one segment covers (each has its own index).", positive
    ),
    "block_records": Option(
        int, 2048, "Records compressed together; a search decompresses whole blocks.", at_least(16)
    ),
    "flush_seconds": Option(
        float,
        30.0,
        "Buffered records are written at least this often (what a crash can lose, and how "
        "old the newest record `vigie-agent hunt` sees may be).",
        positive,
    ),
    "retro_duty": Option(
        float,
        0.25,
        "Share of one core a retro-hunt may take (it sleeps the rest, at the lowest CPU "
        "priority): live capture goes first.",
        lambda v: None if 0 < v <= 1 else f"must be in (0, 1], got {v}",
    ),
}


def answer_address(text: str) -> bytes | None:
    """A DNS answer's packed address, None for a name. Told by its text alone, as the engine
    does for its records (a CNAME target spelled as an address counts as that address)."""
    if ":" in text:
        family = socket.AF_INET6
    elif text[-1:].isdigit():
        family = socket.AF_INET
    else:
        return None
    try:
        return socket.inet_pton(family, text)
    except (OSError, ValueError):  # not an address; a NUL or non-ASCII character in it
        return None


def journal_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["state_dir"]) / "journal"


def segments(directory: Path) -> list[Path]:
    """Closed segments, oldest first."""
    try:
        names = [p for p in directory.iterdir() if p.name.endswith(".vjs")]
    except FileNotFoundError:
        return []
    return sorted(names, key=span)


def span(p: Path) -> tuple[float, float]:
    """(first, last) record time of a closed segment, from its name."""
    try:
        _, a, b = p.stem.split("-")
        return float(a), float(b)
    except ValueError:
        return 0.0, 0.0


class Journal:
    """The writer (one per agent, in the pipeline's thread)."""

    # "dns" makes the engine read DNS over UDP (for its records) and the deep decoder
    # read DNS over TCP; neither flow ends nor UDP DNS messages go up as events for it.
    wants: ClassVar[Wants] = Wants(
        app_kinds=frozenset(("dns", "tls_client_hello", "http", "smb", "dcerpc")),
        http_headers=("host",),
        dns=False,
    )

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.settings = settings
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.stats = self._read_stats()
        self._addr: dict[bytes, tuple[str, int]] = {}
        self._engine: Any = None
        self._dropped = 0
        self._names: dict[str, list[int]] = {}
        self._dns: dict[tuple, list] = {}
        self._f: Any = None
        self._new_segment_state()
        self.recover()
        self.enforce(time.time())

    # segment state ---------------------------------------------------------------------
    def _new_segment_state(self) -> None:
        # the block being filled: its records marshalled one by one (the engine's come
        # marshalled), and how many
        self._parts: list[bytes] = []
        self._n = 0
        self._offsets: list[int] = []
        # each written block's index keys wait in KEYS_NAME (how many, then the keys), not
        # in memory: a busy hour has millions; the segment's IPv4 addresses (as ints,
        # repeats removed now and then) and IPv6 ones stay, compact (a Python int in a
        # set costs about 70 bytes)
        self._keys_f: Any = None
        self._seg_v4 = array("I")
        self._seg_v4_sorted = 0  # the array's length after its last compaction
        self._seg_v6: set[bytes] = set()
        self._held = 0
        self._bk: set[int] = set()  # the keys and addresses of the block being filled
        self._ba: set[bytes] = set()
        self._postings: dict[int, set[int]] = {}  # recover()'s, key by key
        self._v4: set[int] = set()
        self._v6: set[bytes] = set()
        self._first = float("inf")
        self._last = float("-inf")
        self._counts: dict[str, int] = {}
        self._slot: float | None = None  # segment start (aligned)
        self._flushed_at = 0.0

    def _open(self) -> Any:
        if self._f is None:
            path = self.dir / OPEN_NAME
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            # a block at a time is written, then flushed: no need for a big buffer
            self._f = os.fdopen(fd, "wb", buffering=1 << 16)
            self._f.write(seg.MAGIC)
            fd = os.open(self.dir / KEYS_NAME, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._keys_f = os.fdopen(fd, "w+b", buffering=1 << 16)
        return self._f

    def _index(self, k: int) -> None:
        self._bk.add(k)

    def _address(self, packed: bytes) -> str:
        got = self._addr.get(packed)
        if got is None:
            if len(self._addr) >= ADDR_CACHE:
                self._addr.clear()
            family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
            text = socket.inet_ntop(family, packed)
            got = self._addr[packed] = (text, seg.key("i", packed))
        self._bk.add(got[1])
        self._ba.add(packed)
        return got[0]

    def _domain(self, name: str) -> None:
        ks = self._names.get(name)
        if ks is None:
            if len(self._names) >= ADDR_CACHE:
                self._names.clear()
            ks = self._names[name] = seg.domain_keys(name)
        self._bk.update(ks)

    def _rotate(self, last: float) -> None:
        """Close the open segment when this record's time is past its span (before the
        record's keys are indexed: they belong to the next one)."""
        if not self._past_slot(last):
            return
        if self._slot is not None:
            self.close_segment()
        length = self.settings["segment_minutes"] * 60
        self._slot = last - last % length

    def _past_slot(self, t: float) -> bool:
        """No segment is open yet, or `t` is past the open one's span."""
        slot = self._slot
        return slot is None or t >= slot + self.settings["segment_minutes"] * 60

    def _add(self, rec: list, first: float, last: float) -> None:
        self._parts.append(marshal.dumps(rec, seg.MARSHAL))
        self._n += 1
        if first < self._first:
            self._first = first
        if last > self._last:
            self._last = last
        t = rec[0]
        self._counts[t] = self._counts.get(t, 0) + 1
        if self._n >= self.settings["block_records"]:
            self.flush()

    # the engine's records ---------------------------------------------------------------
    def use_engine(self, engine: Any) -> None:
        """Have `engine` make the connection and UDP DNS records (the pipeline calls this
        when it adds the journal)."""
        engine.configure_journal(True, max_pending_dns=MAX_PENDING_DNS)
        self._engine = engine

    def _take(self) -> None:
        """The engine's records so far, a block's room at a time, each segment's own."""
        eng = self._engine
        length = self.settings["segment_minutes"] * 60
        block = self.settings["block_records"]
        while True:
            slot = self._slot
            until = float("inf") if slot is None else slot + length
            got = eng.journal_take(0 if slot is None else block - self._n, until)
            if got[1]:
                self._bulk(*got)
            nxt = got[2]
            if nxt is None:
                return
            if slot is None or nxt >= until:
                self._rotate(nxt)

    def _bulk(
        self, items: bytes, n: int, _next: Any, keys: set, packed: set, first: float,
        last: float, conns: int, dns: int, dropped: int,
    ) -> None:  # fmt: skip
        self._parts.append(items)
        self._n += n
        if first < self._first:
            self._first = first
        if last > self._last:
            self._last = last
        counts = self._counts
        if conns:
            counts["c"] = counts.get("c", 0) + conns
        if dns:
            counts["d"] = counts.get("d", 0) + dns
        self._bk |= keys
        self._ba |= packed
        if dropped > self._dropped:
            log.warning("journal_records_dropped", records=dropped - self._dropped)
            self._dropped = dropped
        if self._n >= self.settings["block_records"]:
            self.flush()

    # records from Python -----------------------------------------------------------------
    def flow_end(self, flow: Any) -> None:
        """A flow's record from its Flow (without an engine; tests)."""
        self._rotate(flow.last)
        src, dst = self._address(flow.src), self._address(flow.dst)
        if flow.proto == 6:
            state = _TCP_STATE.get(flow.state, "other")
        else:
            state = "answered" if flow.pkts_r else "one-way"
        self._add(
            ["c", flow.first, flow.last, src, flow.sport, dst, flow.dport,
             flow.proto, state, flow.bytes_o, flow.bytes_r, flow.pkts_o, flow.pkts_r],
            flow.first, flow.last,
        )  # fmt: skip

    def on_app(self, msg: Any, flow: Any, p: Any) -> None:
        if p is None:
            return
        kind = msg.kind
        if self._engine is not None:
            if kind == "dns" and p.proto == 17:
                return  # the engine's record (when net.ioc has UDP DNS go up too)
            if self._past_slot(p.ts):
                # The engine's records of the closing segment go in it first; otherwise
                # they wait for the tick (a take per message cost a tenth of a replay).
                self._take()
        if kind == "dns":
            self._dns_message(msg, p)
            return
        if kind not in _APP:
            return
        if kind == "smb" and not (msg.action or msg.command_name in _SMB_KEPT):
            return  # reads and writes in bulk are not actions a hunter asks about
        if kind == "dcerpc" and msg.ptype != "request":
            return
        self._rotate(p.ts)
        ts = p.ts
        if kind == "smb" and msg.response:  # the client first, as for every record
            src, dst, sport, dport = self._address(p.dst), self._address(p.src), p.dport, p.sport
        else:
            src, dst, sport, dport = self._address(p.src), self._address(p.dst), p.sport, p.dport
        if kind == "tls_client_hello":
            if msg.sni:
                self._domain(msg.sni)
            if msg.ja3_hash:
                self._index(seg.key("3", msg.ja3_hash))
            if msg.ja4:
                self._index(seg.key("4", msg.ja4))
            rec = ["t", ts, src, sport, dst, dport, msg.sni, msg.ja3_hash, msg.ja4]
        elif kind == "http":
            if msg.host:
                self._domain(msg.host.split(":", 1)[0])
            rec = ["h", ts, src, sport, dst, dport, msg.host, msg.method]
        elif kind == "smb":
            rec = ["s", ts, src, sport, dst, dport, msg.command_name, msg.share,
                   msg.filename, msg.action]  # fmt: skip
        else:
            rec = ["r", ts, src, sport, dst, dport, msg.interface_name or msg.interface,
                   msg.operation, msg.action]  # fmt: skip
        self._add(rec, p.ts, p.ts)

    def _dns_message(self, msg: Any, p: Any) -> None:
        if not msg.qname:
            return
        if not msg.qr:
            pend = self._dns
            if len(pend) >= MAX_PENDING_DNS:
                self._dns_expire(float("inf"), MAX_PENDING_DNS // 2)
            pend[(p.src, p.sport, p.dst, msg.id, msg.qname)] = [
                "d", p.ts, p.src, p.sport, p.dst, p.dport, msg.qname, msg.qtype, -1, 0, [],
            ]  # fmt: skip
            return
        rec = self._dns.pop((p.dst, p.dport, p.src, msg.id, msg.qname), None)
        if rec is None:  # the answer alone (the query was not seen)
            rec = ["d", p.ts, p.dst, p.dport, p.src, p.sport, msg.qname, msg.qtype,
                   0, 0, []]  # fmt: skip
        rec[8], rec[9], rec[10] = msg.rcode, msg.ancount, list(msg.answers)
        self._dns_write(rec)

    def _dns_write(self, rec: list) -> None:
        self._rotate(rec[1])
        rec[2], rec[4] = self._address(rec[2]), self._address(rec[4])
        self._domain(rec[6])
        for a in rec[10]:
            packed = answer_address(a)
            if packed is None:
                self._domain(a)
            else:
                self._address(packed)  # its key and the segment's address arrays
        self._add(rec, rec[1], rec[1])

    def _dns_expire(self, before: float, keep: int | None = None) -> None:
        """Write pending queries asked before `before` (or, with `keep`, the oldest until
        that many are left) without their answer."""
        pend = self._dns
        while pend:
            k = next(iter(pend))
            rec = pend[k]
            if (rec[1] > before) if keep is None else (len(pend) <= keep):
                break
            del pend[k]
            self._dns_write(rec)

    def on_tick(self, now: float) -> None:
        if self._engine is not None:
            self._engine.journal_expire(now - DNS_WAIT)
            self._take()
        if self._dns:
            self._dns_expire(now - DNS_WAIT)
        if self._n and now - self._flushed_at >= self.settings["flush_seconds"]:
            self.flush()
            self._flushed_at = now
        if self._slot is not None and now >= self._slot + self.settings["segment_minutes"] * 60:
            self.close_segment()  # a quiet hour: the next record opens the next segment
            self.enforce(now)

    def on_finish(self, now: float) -> None:
        self.close(now)

    # writing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """The buffered records as one block of the open segment (not fsync'd)."""
        if not self._n:
            return
        f = self._open()
        # The block's keys and addresses as they are: the segment's index is made from
        # them at its close (in C: a busy hour holds millions of key and block pairs).
        keys = array("Q", self._bk)
        self._keys_f.write(seg.U32.pack(len(keys)))
        self._keys_f.write(keys.tobytes())
        v4 = self._seg_v4
        block_v4 = array("I", b"".join(a for a in self._ba if len(a) == 4))
        if len(block_v4) != len(self._ba):
            self._seg_v6.update(a for a in self._ba if len(a) == 16)
        if sys.byteorder == "little":  # the packed addresses are big-endian
            block_v4.byteswap()
        v4.extend(block_v4)
        if len(v4) > 2 * self._seg_v4_sorted + 65_536:
            self._seg_v4 = v4 = array("I", sorted_u32(v4))
            self._seg_v4_sorted = len(v4)
        self._held += len(self._bk)
        self._bk, self._ba = set(), set()
        self._offsets.append(f.tell())
        seg.write_items(f, self._n, self._parts)
        self._parts, self._n = [], 0
        f.flush()
        if self._held + len(v4) + len(self._seg_v6) * 4 >= MAX_HELD:
            log.info("journal_segment_cut", reason="index_entries", entries=MAX_HELD)
            self.close_segment()

    def close_segment(self) -> Path | None:
        """Index, fsync and rename the open segment; returns its new path."""
        self.flush()
        if self._f is None:
            self._new_segment_state()
            return None
        f = self._f
        seg.write_index_blocks(
            f, self._offsets, self._read_block_keys(), array("I", sorted_u32(self._seg_v4)),
            self._seg_v6,
            {"first": self._first, "last": self._last, "counts": self._counts},
        )  # fmt: skip
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None
        final = self._free_name()
        os.replace(self.dir / OPEN_NAME, final)
        _fsync_dir(self.dir)
        self._keys_f.close()
        self._keys_f = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / KEYS_NAME).unlink()
        self._new_segment_state()
        return final

    def _read_block_keys(self) -> list[array]:
        kf = self._keys_f
        kf.flush()
        kf.seek(0)
        data = kf.read()
        out, at = [], 0
        while at < len(data):
            (n,) = seg.U32.unpack_from(data, at)
            at += 4
            out.append(array("Q", data[at : at + 8 * n]))
            at += 8 * n
        if len(out) != len(self._offsets):
            raise OSError(f"{KEYS_NAME}: {len(out)} blocks of keys for {len(self._offsets)}")
        return out

    def _free_name(self) -> Path:
        """`seg-<first>-<last>.vjs` for the open segment, its end pushed a second on when
        an earlier segment (cut early in the same seconds) has that name: never replaced."""
        first, end = int(self._first), int(self._last) + 1
        while (final := self.dir / f"seg-{first}-{end}.vjs").exists():
            end += 1
        return final

    def close(self, now: float | None = None) -> None:
        """End of capture: pending DNS queries, the open segment, retention."""
        if self._engine is not None:
            self._engine.journal_expire(float("inf"))
            self._take()
        self._dns_expire(float("inf"))
        self.close_segment()
        self.enforce(time.time() if now is None else max(now, time.time()))

    def recover(self) -> Path | None:
        """A `current.open` left by a crash becomes a closed segment of its whole blocks."""
        path = self.dir / OPEN_NAME
        with contextlib.suppress(FileNotFoundError):
            (self.dir / KEYS_NAME).unlink()  # the keys are made again from the records
        if not path.exists():
            return None
        blocks = list(seg.read_blocks(path))
        if not blocks:
            path.unlink()
            return None
        fd = os.open(path, os.O_RDWR)
        with os.fdopen(fd, "r+b") as f:
            last_off = blocks[-1][0]
            f.seek(last_off)
            (n,) = seg.U32.unpack(f.read(4))
            f.truncate(last_off + 4 + n)
            f.seek(0, os.SEEK_END)
            for b, (_, records) in enumerate(blocks):
                for rec in records:
                    self._reindex(rec, b)
            self._offsets = [off for off, _ in blocks]
            seg.write_index(
                f, self._offsets, self._postings, self._v4, self._v6,
                {"first": self._first, "last": self._last, "counts": self._counts},
            )  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        final = self._free_name()
        os.replace(path, final)
        _fsync_dir(self.dir)
        log.info("journal_recovered", segment=final.name, blocks=len(blocks))
        self._new_segment_state()
        return final

    def _reindex(self, rec: list, b: int) -> None:
        t = rec[0]
        first = rec[1]
        last = rec[2] if t == "c" else rec[1]
        self._first, self._last = min(self._first, first), max(self._last, last)
        self._counts[t] = self._counts.get(t, 0) + 1
        addrs = (rec[3], rec[5]) if t == "c" else (rec[2], rec[4])
        for a in addrs:
            packed = ipaddress.ip_address(a).packed
            self._postings.setdefault(seg.key("i", packed), set()).add(b)
            if len(packed) == 4:
                self._v4.add(int.from_bytes(packed, "big"))
            else:
                self._v6.add(packed)
        names = {"d": rec[6] if t == "d" else "", "t": rec[6] if t == "t" else ""}
        name = names.get(t) or (rec[6].split(":", 1)[0] if t == "h" else "")
        for k in seg.domain_keys(name) if name else ():
            self._postings.setdefault(k, set()).add(b)
        for a in rec[10] if t == "d" and len(rec) > 10 else ():
            packed = answer_address(a)
            if packed is None:
                for k in seg.domain_keys(a):
                    self._postings.setdefault(k, set()).add(b)
                continue
            self._postings.setdefault(seg.key("i", packed), set()).add(b)
            if len(packed) == 4:
                self._v4.add(int.from_bytes(packed, "big"))
            else:
                self._v6.add(packed)
        if t == "t":
            if rec[7]:
                self._postings.setdefault(seg.key("3", rec[7]), set()).add(b)
            if rec[8]:
                self._postings.setdefault(seg.key("4", rec[8]), set()).add(b)

    # retention ---------------------------------------------------------------------------
    def enforce(self, now: float) -> tuple[int, int]:
        """Drop closed segments past the age or size bound, oldest first; counted."""
        max_age = self.settings["max_age_days"] * 86400
        max_bytes = self.settings["max_megabytes"] << 20
        segs = [(p, p.stat().st_size) for p in segments(self.dir)]
        total = sum(s for _, s in segs)
        dropped = freed = 0
        for p, size in segs:
            too_old = span(p)[1] < now - max_age
            if not too_old and total <= max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            total -= size
            dropped += 1
            freed += size
            log.info("journal_dropped", segment=p.name, reason="age" if too_old else "size")
        if dropped:
            self.stats["dropped_segments"] += dropped
            self.stats["dropped_bytes"] += freed
            self._write_stats()
        return dropped, freed

    def _read_stats(self) -> dict[str, int]:
        try:
            doc = json.loads((self.dir / "stats.json").read_text())
            return {k: int(doc.get(k, 0)) for k in ("dropped_segments", "dropped_bytes")}
        except (OSError, ValueError, TypeError, AttributeError):
            return {"dropped_segments": 0, "dropped_bytes": 0}

    def _write_stats(self) -> None:
        from common.files import write_atomic

        write_atomic(self.dir / "stats.json", json.dumps(self.stats).encode(), 0o600)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
