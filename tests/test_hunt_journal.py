"""The metadata journal (agent/hunt): what real captures leave in it, searches by address,
CIDR, domain and fingerprint, segments skipped by their index, retention by age and
size, recovery after a crash, and `vigie-agent hunt`."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import settings
from agent.capture.pcapfile import read_capture
from agent.commands import EX_USAGE
from agent.hunt import segment as seg
from agent.hunt.journal import OPTIONS, Journal, journal_dir, segments
from agent.hunt.search import Query, QueryError, search
from agent.pipeline import Pipeline
from common import config
from tests.conftest import tool
from tests.detect_support import ANON, data

JA3 = "a607f3a5c94c2ee592af1456f36c8367"
CAPTURES = (
    "dns_mixed_ad_srv_queries.pcap",
    "tls12_chrome34_google_de.pcap",
    "benign_mixed_ssh_http_ftp_dns_ntp.pcap",
    "smb2_psexec_service_add_user.pcap",
)


def _cfg(state: Path, **journal) -> dict:
    return config.validate(
        {"state_dir": str(state), "journal": {"max_age_days": 100_000.0, **journal}},
        settings.SCHEMA,
        "test",
    )


def replay(cfg: dict, *names: str, shift: float = 0.0) -> None:
    """Each capture through a pipeline with the journal, as the running agent has it."""
    for name in names:
        pipe = Pipeline(cfg, ANON, [].append, time.time)
        pipe.add_taker(Journal(journal_dir(cfg), cfg["journal"]))
        for ts, *rest in read_capture(str(data(name))):
            pipe.feed(ts + shift, *rest)
        pipe.finish()


@pytest.fixture(scope="module")
def corpus_journal(tmp_path_factory) -> dict:
    cfg = _cfg(tmp_path_factory.mktemp("state"))
    replay(cfg, *CAPTURES)
    return cfg


def _hits(cfg: dict, **q) -> list:
    return list(search(journal_dir(cfg), Query.build(**q)))


def test_captures_leave_connections_dns_tls_http_and_smb_actions(corpus_journal):
    cfg = corpus_journal
    tls = _hits(cfg, domains=["google.de"])
    assert [(h.type, h.what) for h in tls] == [("t", "sni")]
    rec = tls[0].record
    assert rec[2] == "192.168.4.149" and rec[4] == "74.125.239.152" and rec[5] == 443
    assert rec[7] == JA3 and rec[8].startswith("t12d")
    assert [h.record for h in _hits(cfg, ja3=[JA3])] == [rec]
    assert [h.record for h in _hits(cfg, ja4=[rec[8]])] == [rec]
    # The connection itself: both directions' bytes and packets, its end state.
    conns = [h.record for h in _hits(cfg, ips=["74.125.239.152"]) if h.type == "c"]
    assert len(conns) == 1
    c = conns[0]
    assert c[3:7] == ["192.168.4.149", rec[3], "74.125.239.152", 443] and c[7] == 6
    assert c[9] > 0 and c[10] > 0 and c[11] > 0 and c[12] > 0
    # A DNS exchange: the query and its answer in one record (rcode, answer count, answers).
    dns = [h.record for h in _hits(cfg, domains=["netbsd.org"]) if h.type == "d"]
    assert dns and all(r[6] == "www.netbsd.org" and r[8] == 0 and r[9] >= 1 for r in dns)
    assert ["204.152.190.12"] in [r[10] for r in dns]
    nx = _hits(cfg, domains=["example.notginh"])
    assert [h.record[8] for h in nx] == [3]  # NXDOMAIN
    # HTTP: host and method only.
    http = [h.record for h in _hits(cfg, domains=["www.google.com"]) if h.type == "h"]
    assert http and all(r[7] == "GET" and len(r) == 8 for r in http)
    # SMB/DCE-RPC actions the deep decoders see (PsExec).
    smb = [h.record for h in _hits(cfg, ips=["192.168.10.10"])]
    actions = {r[9] for r in smb if r[0] == "s"} | {r[8] for r in smb if r[0] == "r"}
    assert {"admin_share_write", "service_create", "service_start"} <= actions
    assert any(r[0] == "s" and r[8] == "PSEXESVC.exe" for r in smb)


def test_subdomains_and_cidrs_match_exactly(corpus_journal):
    cfg = corpus_journal
    subs = {h.record[6] for h in _hits(cfg, domains=["google.com"]) if h.type == "d"}
    assert {"www.google.com", "mail.google.com", "www.l.google.com"} <= subs
    assert "google.com.evil" not in subs
    assert not _hits(cfg, domains=["oogle.com"])  # a suffix of a label is not a parent
    net = _hits(cfg, ips=["74.125.239.0/24"])
    assert net and {h.value for h in net} == {"74.125.239.0/24"}
    assert not _hits(cfg, ips=["74.125.238.0/24"])
    assert not _hits(cfg, ips=["203.0.113.9"], domains=["absent.example"], ja3=["0" * 32])


def test_an_answer_address_finds_the_clients_that_resolved_to_it(corpus_journal):
    cfg = corpus_journal
    # The address www.netbsd.org resolved to: the DNS exchange, though neither its client
    # nor its server is that address.
    hits = [h for h in _hits(cfg, ips=["204.152.190.12"]) if h.type == "d"]
    assert hits and {(h.what, h.value) for h in hits} == {("answer", "204.152.190.12")}
    assert {h.record[6] for h in hits} == {"www.netbsd.org"}
    assert all(h.record[10] == ["204.152.190.12"] for h in hits)
    assert {h.record[2] for h in hits} == {"192.168.170.8"}  # the client that asked
    # A range covering it, IPv4 or IPv6 (the segment's address arrays hold the answers).
    net = [h for h in _hits(cfg, ips=["204.152.190.0/24"]) if h.type == "d"]
    assert [h.record for h in net] == [h.record for h in hits]
    assert {h.value for h in net} == {"204.152.190.0/24"}
    v6 = [h for h in _hits(cfg, ips=["2001:4f8:4:7::/64"]) if h.type == "d"]
    assert v6 and all("2001:4f8:4:7:2e0:81ff:fe52:9a6b" in h.record[10] for h in v6)
    assert {h.what for h in v6} == {"answer"}
    # A CNAME target: the name that was asked for, aliased to the listed domain.
    cname = [h for h in _hits(cfg, domains=["l.google.com"]) if h.what == "cname"]
    assert "www.google.com" in {h.record[6] for h in cname}
    assert all(h.value == "l.google.com" and h.type == "d" for h in cname)
    www = next(h.record for h in cname if h.record[6] == "www.google.com")
    assert www[10] == ["www.l.google.com"]


def test_records_written_before_answers_were_kept_still_read(tmp_path):
    """A segment of DNS records without their answers (10 items), left open by a crash:
    recovered, searched and printed as before."""
    old = ["d", 1_700_000_000.0, "10.9.9.9", 5353, "10.9.9.53", 53, "old.example.org", 1, 0, 2]
    with open(tmp_path / "current.open", "wb") as f:
        f.write(seg.MAGIC)
        seg.write_block(f, [old])
    Journal(tmp_path, {k: o.default for k, o in OPTIONS.items()} | {"max_age_days": 1e5})
    hits = list(search(tmp_path, Query.build(ips=["10.9.9.9"], domains=["example.org"])))
    assert [(h.what, h.record) for h in hits] == [("ip", old), ("dns", old)]
    from agent.hunt.command import as_dict

    d = as_dict(old, "ip", "10.9.9.9")
    assert d["ancount"] == 2 and d["answers"] == []


def test_files_are_private_to_the_agent(corpus_journal):
    d = journal_dir(corpus_journal)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert segments(d) and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments(d))


def test_a_search_skips_segments_that_cannot_match(tmp_path, monkeypatch):
    j = Journal(tmp_path, {k: o.default for k, o in OPTIONS.items()} | {"max_age_days": 1e5})
    t0 = 1_699_999_200.0  # on the hour
    for i in range(48 * 60):  # two days, one flow a minute: 48 hourly segments
        j.flow_end(_flow(f"10.0.{i % 7}.1", f"198.51.{i // 60}.{i % 60 + 1}", t0 + 60 * i))
    j.close(t0)
    assert len(segments(tmp_path)) == 48
    read: list[int] = []
    monkeypatch.setattr(seg.Segment, "block", _counting(seg.Segment.block, read))
    hits = list(search(tmp_path, Query.build(ips=["198.51.30.5"])))
    assert len(hits) == 1 and hits[0].record[5] == "198.51.30.5"
    assert len(read) == 1  # one block of one segment decompressed, out of 48 segments
    read.clear()
    assert not list(search(tmp_path, Query.build(ips=["198.51.99.1"], domains=["x.example"])))
    assert read == []
    # A CIDR is looked up in each segment's sorted addresses, not scanned.
    hits = list(search(tmp_path, Query.build(ips=["198.51.12.0/24"])))
    assert len(hits) == 60 and len(read) <= 2


def test_a_busy_hour_is_cut_into_segments_that_lose_nothing(tmp_path, monkeypatch):
    """The open segment's index entries are bounded: past MAX_HELD the segment closes
    early, even within the same second, and every record is still found."""
    from agent.hunt import journal as jmod

    monkeypatch.setattr(jmod, "MAX_HELD", 200)
    opts = {k: o.default for k, o in OPTIONS.items()} | {"max_age_days": 1e5, "block_records": 16}
    j = Journal(tmp_path, opts)
    t0 = 1_700_000_000.0
    for i in range(2000):  # one second: every cut segment has the same first and last
        j.flow_end(_flow("10.4.0.1", f"198.51.{i // 250}.{i % 250 + 1}", t0 + i / 4000))
    j.close(t0)
    cut = segments(tmp_path)
    assert len(cut) > 5
    assert len({p.name for p in cut}) == len(cut)
    hits = list(search(tmp_path, Query.build(ips=["10.4.0.1"])))
    assert len(hits) == 2000
    assert len(list(search(tmp_path, Query.build(ips=["198.51.7.250"])))) == 1


def _counting(fn, log):
    def block(self, n):
        log.append(n)
        return fn(self, n)

    return block


def _flow(src: str, dst: str, ts: float, **kw) -> SimpleNamespace:
    return SimpleNamespace(
        src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed,
        sport=40000, dport=443, proto=6, state=5, first=ts, last=ts + 1.5,
        bytes_o=kw.get("bytes_o", 600), bytes_r=4000, pkts_o=6, pkts_r=5,
    )  # fmt: skip


def test_segments_past_age_or_size_are_dropped_oldest_first_and_counted(tmp_path):
    now = time.time()
    opts = {k: o.default for k, o in OPTIONS.items()}
    j = Journal(tmp_path, opts)
    for day in range(20, -1, -1):  # 21 days, oldest first, a few segments a day
        for h in (17, 9, 1):
            t = now - day * 86400 - h * 3600
            for i in range(50):
                j.flow_end(_flow("10.1.1.1", f"203.0.113.{i + 1}", t + i))
    j.close(now)  # retention runs at each segment close and at the end
    left = segments(tmp_path)
    oldest = min(float(p.stem.split("-")[2]) for p in left)
    assert oldest >= now - 14 * 86400
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["dropped_segments"] >= 6 * 3 and stats["dropped_bytes"] > 0
    # The size bound: a smaller one drops the oldest until the journal fits.
    before = segments(tmp_path)
    size = sum(p.stat().st_size for p in before)
    small = Journal(tmp_path, opts | {"max_megabytes": 1})
    small.settings = opts | {"max_megabytes": 0}  # below anything: keep bound at 0 bytes
    dropped, freed = small.enforce(now)
    assert dropped == len(before) and freed == size and segments(tmp_path) == []
    stats2 = json.loads((tmp_path / "stats.json").read_text())
    assert stats2["dropped_segments"] == stats["dropped_segments"] + dropped


def test_size_bound_keeps_the_newest(tmp_path):
    opts = {k: o.default for k, o in OPTIONS.items()} | {"max_age_days": 1e5, "max_megabytes": 1}
    j = Journal(tmp_path, opts)
    t0 = (time.time() // 3600 - 40) * 3600  # on the hour: 40 segments
    rnd = 0
    for hour in range(40):
        for i in range(3000):  # incompressible-ish counters: about 50 KB a segment
            rnd = (rnd * 1103515245 + 12345) & 0x7FFFFFFF
            j.flow_end(_flow("10.2.2.2", f"192.0.2.{i % 250 + 1}", t0 + hour * 3600 + i,
                                bytes_o=rnd))  # fmt: skip
    j.close(t0)
    left = segments(tmp_path)
    assert sum(p.stat().st_size for p in left) <= 1 << 20
    assert 0 < len(left) < 40
    assert float(left[-1].stem.split("-")[2]) >= t0 + 39 * 3600  # the newest stayed
    assert json.loads((tmp_path / "stats.json").read_text())["dropped_segments"] == 40 - len(left)


def test_a_crash_loses_at_most_the_unflushed_records(tmp_path):
    opts = {k: o.default for k, o in OPTIONS.items()} | {"max_age_days": 1e5}
    t0 = 1_700_000_000.0
    j = Journal(tmp_path, opts | {"block_records": 16})
    for i in range(100):
        j.flow_end(_flow("10.3.3.3", "203.0.113.77", t0 + i))
    j._f.flush()  # what the OS has; the process then dies without closing
    with open(tmp_path / "current.open", "ab") as f:
        f.write(b"\x40\x00\x00\x00half a block")  # torn tail
    Journal(tmp_path, opts)  # the next start turns the open file into a segment
    assert not (tmp_path / "current.open").exists()
    hits = list(search(tmp_path, Query.build(ips=["203.0.113.77"])))
    assert len(hits) == 96  # six whole blocks of 16; the last 4 records were buffered


def _hunt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("vigie-agent"), "hunt", *args], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_hunt_command_prints_matches_in_clear(corpus_journal):
    state = corpus_journal["state_dir"]
    r = _hunt("--domain", "google.de", "--since", "100000d", "--json", "--state-dir", state)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["type"] == "tls"
    assert rows[0]["src"] == "192.168.4.149" and rows[0]["sni"] == "google.de"
    assert rows[0]["matched"] == "sni:google.de" and rows[0]["ts"].startswith("2014-04-24")
    r = _hunt("--ip", "192.168.4.149", "--state-dir", state, "--since", "100000d")
    assert r.returncode == 0 and r.stdout.startswith("#type\t")
    assert "74.125.239.152" in r.stdout and "2 records matched" in r.stderr  # TLS and conn
    # A DNS record's answers, in JSON and in text (comma-separated, as Zeek writes them).
    r = _hunt("--ip", "204.152.190.12", "--since", "100000d", "--json", "--state-dir", state)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    dns = [row for row in rows if row["type"] == "dns"]
    assert dns and all(row["answers"] == ["204.152.190.12"] for row in dns)
    assert {row["matched"] for row in dns} == {"answer:204.152.190.12"}
    assert all(row["qname"] == "www.netbsd.org" and row["ancount"] >= 1 for row in dns)
    r = _hunt("--domain", "isc.org", "--since", "100000d", "--state-dir", state)
    head, *lines = [x for x in r.stdout.splitlines() if "www.isc.org" in x or x.startswith("#")]
    assert head.split("\t")[-2:] == ["answers", "matched"]
    assert any(x.split("\t")[-2] == "2001:4f8:0:2::d,204.152.184.88" for x in lines)
    # The default look-back (14 days) does not reach a capture from 2014.
    r = _hunt("--ip", "192.168.4.149", "--state-dir", state)
    assert r.returncode == 0 and r.stdout == "" and "0 records matched" in r.stderr


def test_hunt_command_names_a_bad_value(tmp_path):
    r = _hunt("--ip", "10.0.0.300", "--state-dir", str(tmp_path))
    assert r.returncode == EX_USAGE and "'10.0.0.300' is not an address" in r.stderr
    r = _hunt("--state-dir", str(tmp_path))
    assert r.returncode == EX_USAGE and "at least one" in r.stderr
    with pytest.raises(QueryError, match="JA3"):
        Query.build(ja3=["abc"])


def test_disabled_journal_writes_nothing(tmp_path):
    from agent.hunt import service

    cfg = _cfg(tmp_path, enabled=False)
    assert service.start(cfg, None) is None
    assert not (tmp_path / "journal").exists()
    assert os.listdir(tmp_path) == []
