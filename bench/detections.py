"""How well the detectors do, on everything labelled in the repository, in one table.

    .venv/bin/python bench/detections.py [--no-live] [--json | --markdown] [--only TEXT]

Cases:
- every labelled capture of the corpus (tests/data/corpus/EXPECT.tsv: the detector that
  must fire, or "quiet"), replayed through the agent's pipeline at default settings, no
  intel loaded, as `vigie-agent replay` does;
- every live scenario of bench/scenarios (real tools against a live agent between network
  namespaces, bench/livelab.py), each with ordinary background traffic running
  (bench/scenarios/ordinary.py: HTTP downloads, DNS, SSH logins), when root and network
  namespaces are available; `--no-live` skips them.

Per detector: attacks caught / attacks (cases that expect it, and where it fired), and
quiet cases that stayed quiet / quiet cases (a quiet case where this attack detector fired
is a false alarm for it). Then every miss: the case (capture or scenario), its tool, what
was expected and what fired; an attack case where another attack detector fired as well
is listed there too (a false alarm riding on the attack, not counted in the table), and
so is a case whose run failed. `--markdown` prints the same for docs/DETECTIONS.md;
`--json` the cases and the table for other programs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.livelab import ATTACK_DETECTORS  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "corpus"
QUIET = "quiet"


@dataclass
class Case:
    kind: str  # "capture" or "scenario"
    name: str  # capture path under the corpus, or scenario name
    tool: str  # what made the traffic
    expected: str | None  # the detector that must fire; None: quiet
    fired: list[str] = field(default_factory=list)  # detectors with at least one alert
    skipped: str = ""  # why it did not run ("" when it did)
    error: str = ""  # how the run failed ("" when it did not): counted as a miss

    @property
    def caught(self) -> bool:
        return self.expected is not None and self.expected in self.fired

    @property
    def false_alarms(self) -> list[str]:
        return sorted(d for d in self.fired if d in ATTACK_DETECTORS and d != self.expected)


# Captures ------------------------------------------------------------------------------------


def labelled(corpus: Path = CORPUS) -> list[tuple[str, str | None, str]]:
    """(capture, expected detector or None, tool) for every line of EXPECT.tsv; the tool
    is the capture's description in MANIFEST.tsv, up to its first colon."""
    described: dict[str, str] = {}
    manifest = corpus / "MANIFEST.tsv"
    if manifest.exists():
        lines = manifest.read_text().splitlines()
        head = lines[0].split("\t")
        col = head.index("description") if "description" in head else len(head) - 1
        for line in lines[1:]:
            cells = line.split("\t")
            if len(cells) > col:
                described[cells[0]] = cells[col].split(":")[0].strip()[:60]
    out = []
    for line in (corpus / "EXPECT.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, expected = line.split("\t")[:2]
        if name == "file":  # the header
            continue
        exp = None if expected.strip() == QUIET else expected.strip()
        out.append((name, exp, described.get(name, "")))
    return out


def replay(path: Path) -> list[str]:
    """The detectors that raised an alert on `path`, replayed at default settings."""
    from agent import settings
    from agent.anonymise.policy import Anonymiser
    from agent.capture.pcapfile import PcapLayout, ReadStats, open_capture
    from agent.pipeline import Pipeline
    from common import config

    cfg = config.defaults(settings.SCHEMA)
    out: list = []
    pipe = Pipeline(cfg, Anonymiser(b"bench-detections-secret-01234567"), out.append, time.time)
    capture = open_capture(str(path), ReadStats())
    if isinstance(capture, PcapLayout):
        try:
            pipe.feed_pcap(capture)
        finally:
            capture.close()
    else:
        pipe.feed_pcapng(capture, ReadStats())
    pipe.finish()
    return sorted({a.detector for a in out})


def capture_cases(corpus: Path = CORPUS, only: str = "") -> list[Case]:
    cases = []
    for name, expected, tool in labelled(corpus):
        if only and only not in name:
            continue
        case = Case("capture", name, tool, expected)
        path = corpus / name
        if not path.exists():
            case.skipped = "capture missing"
        else:
            try:
                case.fired = replay(path)
            except Exception as exc:  # a crash is a finding of the evaluation, not its end
                case.error = _error(exc)
        cases.append(case)
    return cases


# Live scenarios ------------------------------------------------------------------------------


def scenario_cases(only: str = "") -> tuple[list[Case], str]:
    """Every live scenario, run with ordinary background traffic; and "" or the reason
    none could run."""
    from bench.livelab import Lab, play, why_not
    from bench.scenarios import SCENARIOS
    from bench.scenarios.ordinary import ordinary

    chosen = [s for s in SCENARIOS if not only or only in s.name]
    reason = why_not()
    if reason is None:
        try:
            lab = Lab("d").up()
        except Exception as exc:  # no namespaces here: say so, run the rest
            reason = f"cannot create network namespaces: {getattr(exc, 'stderr', exc)}"
    if reason is not None:
        return [
            Case("scenario", s.name, s.tool, s.detector, skipped=reason) for s in chosen
        ], reason
    cases = []
    try:
        with tempfile.TemporaryDirectory(prefix="vigie-detections-") as tmp:
            for i, sc in enumerate(chosen):
                case = Case("scenario", sc.name, sc.tool, sc.detector)
                missing = [t for t in (sc.tool, *sc.needs) if not _have(t)]
                if missing:
                    case.skipped = f"needs {', '.join(missing)}"
                else:
                    try:
                        out = play(lab, sc, Path(tmp) / f"s{i}", background=ordinary)
                        case.fired = sorted(out.ids)
                    except Exception as exc:  # one broken scenario does not stop the rest
                        case.error = _error(exc)
                cases.append(case)
                print(f"  {sc.name}: {', '.join(case.fired) or case.skipped or 'quiet'}",
                      file=sys.stderr)  # fmt: skip
    finally:
        lab.down()
    return cases, ""


def _error(exc: BaseException) -> str:
    """One line for a failed run: the exception and the last line of its message (where a
    child's traceback ends with its own error)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    tail = f"{lines[0]} ... {lines[-1]}" if len(lines) > 1 else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {tail}"[:300]


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or (tool.startswith("/") and Path(tool).exists())


# The table -----------------------------------------------------------------------------------


def table(cases: list[Case]) -> list[dict[str, Any]]:
    """One row per detector: attacks caught / attacks, quiet kept / quiet cases. A case
    that did not run, or whose run failed, counts in no row (failures are misses)."""
    ran = [c for c in cases if not c.skipped and not c.error]
    quiet = [c for c in ran if c.expected is None]
    names = sorted(
        ATTACK_DETECTORS
        | {c.expected for c in ran if c.expected}
        | {d for c in ran for d in c.fired if d in ATTACK_DETECTORS}
    )
    rows = []
    for d in names:
        attacks = [c for c in ran if c.expected == d]
        rows.append(
            {
                "detector": d,
                "caught": sum(c.caught for c in attacks),
                "attacks": len(attacks),
                "quiet_kept": sum(d not in c.fired for c in quiet),
                "quiet": len(quiet) if d in ATTACK_DETECTORS else 0,
            }
        )
    return rows


def misses(cases: list[Case]) -> list[dict[str, Any]]:
    out = []
    for c in cases:
        if c.skipped:
            continue
        if c.error:
            what = f"error: {c.error}"
        elif c.expected is not None and not c.caught:
            what = f"missed: {c.expected} did not fire"
            if c.false_alarms:
                what += f"; false alarm: {', '.join(c.false_alarms)}"
        elif c.false_alarms:
            what = f"false alarm: {', '.join(c.false_alarms)}"
        else:
            continue
        out.append({"case": c.name, "kind": c.kind, "tool": c.tool, "what": what,
                    "fired": c.fired})  # fmt: skip
    return out


def _ratio(a: int, b: int) -> str:
    return f"{a}/{b}" if b else "-"


def render_text(rows: list[dict], miss: list[dict], cases: list[Case], note: str) -> str:
    head = ("detector", "attacks caught", "quiet kept")
    body = [(r["detector"], _ratio(r["caught"], r["attacks"]), _ratio(r["quiet_kept"], r["quiet"]))
            for r in rows]  # fmt: skip
    total = _totals(rows, cases)
    body.append(("all", total[0], total[1]))
    w = [max(len(x[i]) for x in [head, *body]) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(head)).rstrip()]
    lines.append("  ".join("-" * x for x in w))
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in body]
    lines.append("")
    lines.append(_counted(cases, note))
    lines.append("")
    lines.append(f"misses ({len(miss)}):" if miss else "misses: none")
    for m in miss:
        lines.append(f"  {m['kind']} {m['case']} [{m['tool']}]: {m['what']}")
    return "\n".join(lines)


def render_markdown(rows: list[dict], miss: list[dict], cases: list[Case], note: str) -> str:
    lines = ["| detector | attacks caught | quiet cases kept quiet |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['detector']}` | {_ratio(r['caught'], r['attacks'])} | "
                     f"{_ratio(r['quiet_kept'], r['quiet'])} |")  # fmt: skip
    total = _totals(rows, cases)
    lines.append(f"| all | {total[0]} | {total[1]} |")
    lines += ["", _counted(cases, note), ""]
    if miss:
        lines.append("Misses:")
        lines.append("")
        for m in miss:
            lines.append(f"- {m['kind']} `{m['case']}` ({m['tool']}): {m['what']}")
    else:
        lines.append("Misses: none.")
    return "\n".join(lines)


def _totals(rows: list[dict], cases: list[Case]) -> tuple[str, str]:
    ran = [c for c in cases if not c.skipped and not c.error]
    attacks = [c for c in ran if c.expected is not None]
    quiet = [c for c in ran if c.expected is None]
    return (
        _ratio(sum(c.caught for c in attacks), len(attacks)),
        _ratio(sum(not c.false_alarms for c in quiet), len(quiet)),
    )


def _counted(cases: list[Case], note: str) -> str:
    caps = [c for c in cases if c.kind == "capture" and not c.skipped and not c.error]
    live = [c for c in cases if c.kind == "scenario" and not c.skipped and not c.error]
    skipped = [c for c in cases if c.skipped]
    failed = [c for c in cases if c.error]
    text = f"{len(caps)} labelled captures, {len(live)} live scenarios"
    if failed:
        text += f"; {len(failed)} failed to run (listed below, counted nowhere else)"
    if skipped:
        text += f"; {len(skipped)} skipped"
    if note:
        text += f" ({note})"
    return text + "."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-live", action="store_true", help="skip the live scenarios")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="cases, table and misses as JSON")
    fmt.add_argument("--markdown", action="store_true", help="the table for docs/DETECTIONS.md")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="the labelled corpus folder")
    ap.add_argument("--only", default="", help="only cases whose name contains this text")
    args = ap.parse_args(argv)
    if not (args.corpus / "EXPECT.tsv").exists():
        print(f"no labelled corpus: {args.corpus / 'EXPECT.tsv'} is missing", file=sys.stderr)
        return 2
    cases = capture_cases(args.corpus, args.only)
    note = "live scenarios not run: --no-live" if args.no_live else ""
    if not args.no_live:
        live, why = scenario_cases(args.only)
        cases += live
        if why:
            note = f"live scenarios not run: {why}"
    rows, miss = table(cases), misses(cases)
    if args.json:
        print(json.dumps({"table": rows, "misses": miss, "note": note,
                          "cases": [asdict(c) for c in cases]}, indent=2))  # fmt: skip
    elif args.markdown:
        print(render_markdown(rows, miss, cases, note))
    else:
        print(render_text(rows, miss, cases, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
