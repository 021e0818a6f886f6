"""Do two trees raise the same alerts? Replays every capture through `vigie-agent replay`
and keeps each alert but its random id and observed_at; `--compare` says which captures
differ. For restructuring work: save before, compare after.

    .venv/bin/python bench/same_alerts.py --save /tmp/before [CAPTURE ...]
    .venv/bin/python bench/same_alerts.py --compare /tmp/before [CAPTURE ...]

Default captures: tests/data/*.pcap* and the labelled corpus tests/data/corpus/**. Every
replay starts from an empty state directory holding the same pseudonymisation key (made
on the first --save), so that pseudonyms compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = Path(sys.executable).parent / "vigie-agent"


def captures(given: list[str]) -> list[Path]:
    if given:
        return [Path(p) for p in given]
    found = sorted((ROOT / "tests" / "data").glob("*.pcap*"))
    corpus = ROOT / "tests" / "data" / "corpus"
    found += sorted(p for p in corpus.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return found


def alerts_of(capture: Path, key: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        if key.exists():
            shutil.copy(key, Path(d) / "anon.key")
        r = subprocess.run(
            [str(AGENT), "replay", str(capture), "--state-dir", d],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if not key.exists() and (Path(d) / "anon.key").exists():
            shutil.copy(Path(d) / "anon.key", key)
    if r.returncode != 0:
        return [f"exit {r.returncode}: {r.stderr.strip()[-300:]}"]
    out = []
    for line in r.stdout.splitlines():
        if line.strip():
            a = json.loads(line)
            a.pop("id", None)
            a.pop("observed_at", None)
            out.append(json.dumps(a, sort_keys=True))
    return sorted(out)


def name(capture: Path) -> str:
    """The same for a capture wherever the tree is checked out."""
    return f"{capture.parent.name}__{capture.name}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", metavar="DIR")
    mode.add_argument("--compare", metavar="DIR")
    p.add_argument("captures", nargs="*")
    args = p.parse_args()
    ref = Path(args.save or args.compare)
    ref.mkdir(parents=True, exist_ok=True)
    key = ref / "anon.key"
    differ = 0
    total = 0
    for cap in captures(args.captures):
        got = alerts_of(cap, key)
        total += len(got)
        path = ref / f"{name(cap)}.jsonl"
        if args.save:
            path.write_text("".join(line + "\n" for line in got))
            print(f"{len(got):6d} alerts  {cap}")
            continue
        want = [x for x in path.read_text().splitlines() if x] if path.exists() else None
        same = want == got
        differ += not same
        print(f"{'same' if same else 'DIFFERENT':9} {len(got):6d} alerts  {cap}")
    print(f"{total} alerts" + ("" if args.save else f", {differ} capture(s) differ"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
