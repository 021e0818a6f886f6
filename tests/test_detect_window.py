"""The shared windowed counting facility: bounded, eviction counted."""

from __future__ import annotations

import pytest

from agent.detect.window import (
    Distinct,
    KeyedWindow,
    LeakyBucket,
    Series,
    Suppressor,
    bowley_skewness,
    median_abs_deviation,
    quartiles,
)
from agent.engine import Table


def test_leaky_bucket_overflows_on_bursts_not_on_a_sustained_low_rate():
    b = LeakyBucket(capacity=10, leak=2, now=0.0)
    assert not any(b.pour(t * 1.0) for t in range(100))  # 1/s under a 2/s leak
    b = LeakyBucket(capacity=10, leak=2, now=0.0)
    hits = [b.pour(1.0 + i * 0.01) for i in range(20)]
    assert hits.index(True) == 10  # the 11th event in a burst overflows
    assert b.poured == 20
    b.pour(100.0)
    assert b.level == 1.0  # leaked empty meanwhile


def test_suppressor_allows_once_per_window_and_is_bounded():
    s = Suppressor(window=10, max_keys=100)
    assert s.allow("a", 0.0)
    assert not s.allow("a", 5.0)
    assert s.allow("a", 10.0)
    assert s.suppressed == 1
    for i in range(250):
        s.allow(i, 20.0)
    assert len(s) <= 100 and s.forgotten > 0
    s.expire(100.0)
    assert len(s) == 0


def test_keyed_window_forgets_idle_and_oldest_keys_and_reports_them():
    gone = []
    w = KeyedWindow(5.0, lambda now: [now], max_keys=100, on_forget=lambda k, st: gone.append(k))
    for i in range(150):
        w.get(i, float(i) / 100)
    assert len(w) <= 100 and w.forgotten == 50 and gone[:2] == [0, 1]
    w.expire(100.0)
    assert len(w) == 0 and len(gone) == 150


def test_distinct_stops_remembering_but_keeps_counting():
    d = Distinct(cap=3)
    for x in "abcdef":
        d.add(x)
    assert len(d) == 6 and len(d.items) == 3 and d.overflow == 3


def test_series_is_bounded_and_gives_intervals():
    s = Series(cap=8)
    for i in range(20):
        s.add(i * 15.0, 100)
    assert len(s) == 8 and s.dropped == 12
    assert s.intervals() == [15.0] * 7


def test_interval_statistics():
    assert quartiles([1, 2, 3, 4, 5]) == (2, 3, 4)
    assert bowley_skewness([1, 2, 3, 4, 5]) == 0.0
    assert bowley_skewness([1, 1, 1, 2, 50]) == pytest.approx(1.0)
    # a narrow distribution's skewness is noise: damped by the resolution
    assert abs(bowley_skewness([15.0, 15.01, 15.01, 15.02, 15.1], resolution=1.5)) < 0.01
    assert median_abs_deviation([15, 15, 16, 14, 15, 100]) == (15, 0.5)


def test_table_keeps_numbers_per_key_windowed_and_bounded():
    t = Table(2, 60.0, 1000)
    assert t.get(0, 1.0) == (0.0, 0.0)  # key 0 is a key like any other
    t.set(0, (3, 4.5))
    assert t.peek(0) == (3.0, 4.5) and 0 in t and 1 not in t
    assert not t.touch(1, 2.0) and 1 not in t  # touch makes nothing
    with pytest.raises(KeyError):
        t.set(1, (1, 1))
    with pytest.raises(ValueError, match="2 values"):
        t.set(0, (1,))
    assert t.pop(0) == (1.0, (3.0, 4.5)) and t.pop(0) is None and len(t) == 0
    for i in range(5000):  # past max_keys: the keys seen longest ago go, counted
        t.get(i * 7919 + (1 << 62), float(i))
    assert len(t) == 1000 and t.forgotten == 4000
    assert all(t.peek(i * 7919 + (1 << 62)) is not None for i in range(4000, 5000))
    assert t.touch(4000 * 7919 + (1 << 62), 5000.0)  # seen again: stays
    assert t.expire(5059.5) == 999 and len(t) == 1  # unseen for over 60 s
