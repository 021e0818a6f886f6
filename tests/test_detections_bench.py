"""bench/detections.py, the evaluation table, run as a user runs it on the labelled corpus
(no live scenarios: those are tests/test_scenarios_live.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, corpus_or_skip

BENCH = ROOT / "bench" / "detections.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), "--no-live", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _expect(corpus: Path) -> list[tuple[str, str]]:
    rows = []
    for line in (corpus / "EXPECT.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#") and not line.startswith("file\t"):
            name, expected = line.split("\t")[:2]
            rows.append((name, expected))
    return rows


def test_table_counts_every_labelled_capture():
    corpus = corpus_or_skip()
    r = _run("--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    labelled = _expect(corpus)
    quiet = sum(1 for _, e in labelled if e == "quiet")
    rows = {row["detector"]: row for row in out["table"]}
    # every detector the corpus expects has a row, counting exactly its captures
    for det in {e for _, e in labelled if e != "quiet"}:
        assert rows[det]["attacks"] == sum(1 for _, e in labelled if e == det)
    for row in out["table"]:
        assert 0 <= row["caught"] <= row["attacks"]
        assert row["quiet"] in (0, quiet) and 0 <= row["quiet_kept"] <= row["quiet"]
    assert len(out["cases"]) == len(labelled)
    assert all(c["kind"] == "capture" for c in out["cases"])
    assert "--no-live" in out["note"]
    # a known catch: nmap's SYN scan of 1000 ports is net.portscan's
    scan = next(c for c in out["cases"] if c["name"] == "scan/nmap_syn_scan_1000ports.pcap")
    assert "net.portscan" in scan["fired"] and scan["tool"].startswith("nmap")
    assert rows["net.portscan"]["caught"] >= 1


def test_text_and_markdown_tables():
    corpus_or_skip()
    text = _run()
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["detector", "attacks", "caught", "quiet", "kept"]
    assert any(line.startswith("net.portscan ") for line in lines)
    assert any(line.startswith("all ") for line in lines)
    assert "labelled captures" in text.stdout
    md = _run("--markdown")
    assert md.returncode == 0, md.stderr
    table = [line for line in md.stdout.splitlines() if line.startswith("|")]
    assert table[1] == "|---|---|---|"
    assert {line.count("|") for line in table} == {4}  # every row has the header's 3 cells
    assert any(line.startswith("| `net.portscan` | ") for line in table)


def test_misses_and_false_alarms_are_listed(tmp_path):
    """A corpus whose labels are wrong on purpose: the scan labelled quiet is a false
    alarm of net.portscan, the quiet capture labelled as a beacon is a miss."""
    corpus = corpus_or_skip()
    scan, benign = "scan/nmap_syn_scan_1000ports.pcap", "benign/benign_wikipedia_browsing.pcap"
    for rel in (scan, benign):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(corpus / rel)
    (tmp_path / "MANIFEST.tsv").write_text(
        "file\tclass\tdescription\n"
        f"{scan}\tscan\tnmap SYN scan: 1000 ports\n{benign}\tbenign\tbrowser: wikipedia\n"
    )
    (tmp_path / "EXPECT.tsv").write_text(f"file\texpected\n{scan}\tquiet\n{benign}\tnet.beacon\n")
    r = _run("--json", "--corpus", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {row["detector"]: row for row in out["table"]}
    assert (rows["net.beacon"]["caught"], rows["net.beacon"]["attacks"]) == (0, 1)
    assert (rows["net.portscan"]["quiet_kept"], rows["net.portscan"]["quiet"]) == (0, 1)
    assert (rows["net.dos"]["quiet_kept"], rows["net.dos"]["quiet"]) == (1, 1)
    misses = {m["case"]: m for m in out["misses"]}
    assert misses[scan]["what"] == "false alarm: net.portscan"
    assert misses[scan]["tool"] == "nmap SYN scan"
    assert misses[benign]["what"] == "missed: net.beacon did not fire"
    text = _run("--corpus", str(tmp_path)).stdout
    assert "misses (2):" in text and f"capture {scan} [nmap SYN scan]" in text


def test_a_missing_corpus_is_a_clear_error(tmp_path):
    r = _run("--corpus", str(tmp_path))
    assert r.returncode == 2
    assert "EXPECT.tsv" in r.stderr


def test_failed_runs_and_false_alarms_on_attacks():
    """A run that failed counts in no row and is listed; another attack detector firing on
    an attack case is listed without costing the table a quiet case."""
    from bench.detections import Case, misses, table

    cases = [
        Case("scenario", "hydra", "hydra", "net.bruteforce", fired=["net.bruteforce"]),
        Case("scenario", "slow beacon", "python3", "net.beacon", ["net.beacon", "net.bruteforce"]),
        Case("scenario", "quiet job", "ssh", None, fired=[]),
        Case("scenario", "broken", "curl", None, error="AssertionError: agent did not start"),
        Case("scenario", "no tool", "masscan", "net.portscan", skipped="needs masscan"),
    ]
    rows = {r["detector"]: r for r in table(cases)}
    assert (rows["net.bruteforce"]["caught"], rows["net.bruteforce"]["attacks"]) == (1, 1)
    assert (rows["net.bruteforce"]["quiet_kept"], rows["net.bruteforce"]["quiet"]) == (1, 1)
    assert rows["net.portscan"]["attacks"] == 0
    listed = {m["case"]: m["what"] for m in misses(cases)}
    assert listed == {
        "slow beacon": "false alarm: net.bruteforce",
        "broken": "error: AssertionError: agent did not start",
    }
