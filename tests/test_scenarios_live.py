"""Live scenarios: real attack tools against a live agent, between network namespaces.

Every scenario of bench/scenarios/ (bench/livelab.py has the lab: victim 10.200.0.1,
attacker 10.200.0.2, an "outside" address, all existing only inside the namespaces), each
with a fresh agent capturing on the victim's end: an attack must be detected by the right
detector within its deadline (10 s) and once (one alert, revised, not a storm); a quiet
check must raise no attack alert. Ordinary traffic (HTTP downloads, DNS, SSH logins:
bench/scenarios/ordinary.py) runs throughout every scenario. Needs root, `ip netns` and
each scenario's tool (./dev installs them on CI).
"""

from __future__ import annotations

import shutil
import time

import pytest

from bench.livelab import Lab, play, stop, why_not
from bench.scenarios import SCENARIOS
from bench.scenarios.ordinary import ordinary, results

pytestmark = pytest.mark.root

if (_reason := why_not()) is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def lab():
    try:
        lab = Lab().up()
    except Exception as exc:  # any failure to build the lab is a reason to skip
        pytest.skip(f"cannot create network namespaces here: {getattr(exc, 'stderr', exc)}")
    try:
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize(
    "sc",
    [pytest.param(s, marks=pytest.mark.slow) if s.slow else s for s in SCENARIOS],
    ids=[s.name for s in SCENARIOS],
)
def test_scenario(lab, tmp_path, sc):
    missing = [t for t in (sc.tool, *sc.needs) if not shutil.which(t) and not t.startswith("/")]
    if missing:
        pytest.skip(f"{sc.name} needs {', '.join(missing)} (./dev installs it)")
    out = play(lab, sc, tmp_path, background=ordinary)  # ordinary traffic throughout
    if sc.detector is None:
        assert not out.false_alarms, f"{sc.name}: should stay quiet, raised {out.false_alarms}"
        return
    seen = sorted(out.ids)
    assert out.latency is not None, (
        f"{sc.name}: no {sc.detector} alert within {sc.watch:.0f} s (saw {seen})"
    )
    print(f"\n{sc.name}: {sc.detector} after {out.latency:.2f} s")
    n = len(out.ids[sc.detector])
    assert n == 1, f"{sc.name}: {n} distinct {sc.detector} alerts for one attack"
    first = out.first
    if sc.technique:
        assert first["technique"] == sc.technique
    if sc.check:
        sc.check(first)


def test_ordinary_traffic_succeeds(lab, tmp_path):
    """The background of every scenario is real traffic: DNS answered, downloads whole,
    SSH key logins that succeed (the first try of each may race its server's start)."""
    procs = ordinary(lab, tmp_path)
    try:
        time.sleep(6)  # each activity starts at once, then every few seconds
        got = results(tmp_path)
    finally:
        for p in procs:
            stop(p)
    for kind in ("dns", "http", "ssh"):
        assert got.get(f"{kind}_ok", 0) >= 1 and got.get(f"{kind}_failed", 0) <= 1, got
