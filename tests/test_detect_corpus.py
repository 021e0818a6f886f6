"""The corpus's verdicts (EXPECT.tsv): quiet captures raise no attack alert at default
settings; captures expecting one of the flow detectors raise it."""

from __future__ import annotations

import pytest

from agent.detect import registry
from tests.detect_support import ATTACK_DETECTORS, CORPUS, corpus, replay


def _expect() -> list[tuple[str, str]]:
    p = CORPUS / "EXPECT.tsv"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if line.startswith("#") or line.startswith("file\t") or not line.strip():
            continue
        f, expected = line.split("\t")[:2]
        rows.append((f, expected))
    return rows


ROWS = _expect()
OURS = {d.name for d in registry.DETECTORS}


@pytest.mark.parametrize("rel", [f for f, e in ROWS if e == "quiet"] or ["<no corpus>"])
def test_quiet_captures_raise_no_attack_alert(rel):
    alerts = replay(corpus(rel))
    attacks = [f"{a.detector}: {a.summary}" for a in alerts if a.detector in ATTACK_DETECTORS]
    assert attacks == []


@pytest.mark.parametrize(
    "rel,expected", [(f, e) for f, e in ROWS if e in OURS] or [("<no corpus>", "")]
)
def test_expected_detector_fires(rel, expected):
    alerts = replay(corpus(rel))
    assert expected in {a.detector for a in alerts}
