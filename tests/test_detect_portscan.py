"""net.portscan on nmap captures: the alert, and the once-a-second reporting of a
flagged source (probes in between are summed, none lost)."""

from __future__ import annotations

import time

from agent import settings
from agent.capture.pcapfile import read_capture
from agent.pipeline import Pipeline
from common import config
from tests.detect_support import ANON, data, entity, latest, pseudonym
from vigie.v1 import alert_pb2


def test_syn_scan_reported_at_most_once_a_second_without_losing_probes():
    cfg = config.validate({}, settings.SCHEMA, "test")
    out: list = []
    pipe = Pipeline(cfg, ANON, out.append, time.time)
    first = last = None
    for ts, *rest in read_capture(str(data("nmap_syn_scan_1000ports.pcap"))):
        first = ts if first is None else first
        last = ts
        pipe.feed(ts, *rest)
    pipe.finish()
    found = latest(out, "net.portscan")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1046"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym("172.16.0.8")]
    # every failed probe is counted once, though reports came at most once a second
    assert a.occurrences == a.metrics["failed_probes"] >= 900
    assert pipe.aggregator.reports <= (last - first) + 3
