"""Fuzz the agent's decoders for longer than CI does: coverage-guided with atheris.

    .venv/bin/python bench/fuzz.py --seconds 60                 # every target, 60 s each
    .venv/bin/python bench/fuzz.py --seconds 600 --targets smb,tls,deep

Targets and their seeds (real payloads from ../shared/pcaps) are those of
tests/fuzz/targets.py, which the CI suite runs briefly through hypothesis. Each target
runs in its own process (libFuzzer stops at the first crash and owns the process); a
crashing or slow input is written to --out as crash-*/timeout-* for a regression test.
Without atheris (`pip install atheris`: 3.0.0 has a Python 3.11 wheel) a plain
mutation loop over the same seeds runs instead, without coverage feedback.

Prints, per target: inputs tried, inputs per second, crashes (with the file kept).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child_atheris(name: str, seconds: int, out: Path) -> int:
    import atheris

    from tests.fuzz import targets as T

    target = T.TARGETS[name]
    corpus = out / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(T.seeds(name)):
        (corpus / f"seed-{i:04d}").write_bytes(seed)
    atheris.instrument_all()
    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-timeout=5",
        "-rss_limit_mb=2048",
        "-max_len=16384",
        "-print_final_stats=1",
        f"-artifact_prefix={out}/{name}-",
        str(corpus),
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()
    return 0


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            i = rng.randint(0, len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and len(b) > 1:
            i = rng.randrange(len(b) - 1)
            b[i : i + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00"))
        elif op == 4 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xC0, 0xFF))
        elif op == 5 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i : i + rng.randint(1, 64)]  # duplicate a slice
    return bytes(b)


def _child_random(name: str, seconds: int, out: Path) -> int:
    from tests.fuzz import targets as T

    target = T.TARGETS[name]
    pool = list(T.seeds(name)) or [b""]
    rng = random.Random(0x5EED)
    tried = crashes = 0
    slowest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data = _mutate(rng, rng.choice(pool)) if rng.random() < 0.9 else rng.randbytes(256)
        t = time.perf_counter()
        try:
            target(data)
        except Exception:
            crashes += 1
            path = out / f"{name}-crash-{crashes:03d}"
            path.write_bytes(data)
            print(f"crash saved to {path}\n{traceback.format_exc()}", file=sys.stderr)
        slowest = max(slowest, time.perf_counter() - t)
        tried += 1
    print(json.dumps({"runs": tried, "crashes": crashes, "slowest_ms": round(slowest * 1e3, 2)}))
    return 0


def _run(name: str, seconds: int, out: Path, engine: str) -> dict:
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--seconds", str(seconds),
         "--out", str(out), "--engine", engine],
        capture_output=True, text=True, timeout=seconds + 120,
    )  # fmt: skip
    elapsed = time.monotonic() - t
    text = proc.stdout + proc.stderr
    runs = 0
    if engine == "atheris":
        # libFuzzer: "Done 123456 runs in 60 second(s)", or "stat::number_of_executed_units"
        m = re.search(r"Done (\d+) runs", text) or re.search(
            r"stat::number_of_executed_units:\s*(\d+)", text
        )
        runs = int(m.group(1)) if m else 0
        crashes = sorted(p.name for p in out.glob(f"{name}-crash-*")) + sorted(
            p.name for p in out.glob(f"{name}-timeout-*")
        )
    else:
        last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        runs = json.loads(last[-1])["runs"] if last else 0
        crashes = sorted(p.name for p in out.glob(f"{name}-crash-*"))
    if proc.returncode not in (0,) and not crashes:
        crashes = [f"exit status {proc.returncode}: {text.strip().splitlines()[-1:]}"]
    return {
        "target": name,
        "runs": runs,
        "per_second": round(runs / seconds),
        "wall_seconds": round(elapsed),
        "crashes": crashes,
        "log_tail": text.strip().splitlines()[-3:] if crashes else [],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30, help="per target (default 30)")
    ap.add_argument("--targets", default="", help="comma-separated (default: all)")
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--out", default="", help="crash inputs and corpora (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="one JSON object per target")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="vigie-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    if args.child:
        os.chdir(ROOT)
        run = _child_atheris if engine == "atheris" else _child_random
        return run(args.child, args.seconds, out)

    from tests.fuzz.targets import CORPUS, TARGETS

    names = [n for n in args.targets.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if not CORPUS.is_dir():
        print(f"note: no corpus at {CORPUS}, fuzzing from empty seeds", file=sys.stderr)
    print(f"engine {engine}, {args.seconds} s per target, artifacts in {out}", file=sys.stderr)
    total_crashes = 0
    for name in names:
        r = _run(name, args.seconds, out, engine)
        total_crashes += len(r["crashes"])
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{name:10s} {r['runs']:>10d} inputs  {r['per_second']:>7d}/s  "
                  f"crashes: {len(r['crashes'])} {' '.join(r['crashes'])}", flush=True)  # fmt: skip
            for line in r["log_tail"]:
                print(f"    {line}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
