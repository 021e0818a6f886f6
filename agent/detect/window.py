"""The shared windowed state detectors count with, instead of each counting its own way.

`KeyedWindow` holds one small state object per key (a source address, a pair...) and
forgets keys idle for longer than the window; it is bounded in keys, oldest forgotten
first, and counts what it forgot, so an attacker spoofing sources cannot grow it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class KeyedWindow(Generic[S]):
    # Set by the pipeline from [flows] max_flows before it builds detectors: no detector
    # keeps state for more keys than the flow table keeps flows, so a flood of spoofed
    # sources is bounded everywhere by the one setting an operator knows.
    limit: int = 10_000_000

    def __init__(
        self,
        window: float,
        factory: Callable[[float], S],
        max_keys: int = 100_000,
        on_forget: Callable[[object, S], None] | None = None,
    ):
        self.window = window
        self.factory = factory
        self.max_keys = max(1, min(max_keys, KeyedWindow.limit))
        self.on_forget = on_forget  # called with (key, state) for every key dropped
        self._state: dict[object, S] = {}
        self._seen: dict[object, float] = {}
        self.forgotten = 0

    def get(self, key: object, now: float) -> S:
        st = self._state.get(key)
        if st is None:
            if len(self._state) >= self.max_keys:
                self._forget_oldest()
            st = self._state[key] = self.factory(now)
        self._seen[key] = now
        return st

    def peek(self, key: object) -> S | None:
        return self._state.get(key)

    def items(self):
        return self._state.items()

    def expire(self, now: float) -> None:
        old = [k for k, t in self._seen.items() if now - t > self.window]
        for k in old:
            self._drop(k)

    def _drop(self, key: object) -> None:
        st = self._state.pop(key)
        del self._seen[key]
        if self.on_forget is not None:
            self.on_forget(key, st)

    def _forget_oldest(self) -> None:
        n = max(1, self.max_keys // 100)
        for k in list(self._state)[:n]:
            self._drop(k)
        self.forgotten += n

    def __len__(self) -> int:
        return len(self._state)


class Distinct:
    """Distinct items, bounded: past `cap` items it keeps counting but stops remembering."""

    __slots__ = ("cap", "items", "overflow")

    def __init__(self, cap: int = 4096) -> None:
        self.items: set = set()
        self.cap = cap
        self.overflow = 0

    def add(self, item: object) -> bool:
        """True when the item is new."""
        if item in self.items:
            return False
        if len(self.items) >= self.cap:
            self.overflow += 1
            return True
        self.items.add(item)
        return True

    def __len__(self) -> int:
        return len(self.items) + self.overflow


class LeakyBucket:
    """CrowdSec-like bucket: each event pours `n`, the bucket leaks `leak` per second;
    it overflows when the level passes `capacity`. Constant memory."""

    __slots__ = ("capacity", "last", "leak", "level", "poured")

    def __init__(self, capacity: float, leak: float, now: float) -> None:
        self.capacity = capacity
        self.leak = leak
        self.level = 0.0
        self.last = now
        self.poured = 0  # events poured since the bucket was made

    def pour(self, now: float, n: float = 1.0) -> bool:
        """Add `n` events at `now`; True when the bucket overflows."""
        if now > self.last:
            self.level = max(0.0, self.level - (now - self.last) * self.leak)
            self.last = now
        self.level += n
        self.poured += 1
        return self.level > self.capacity


class Suppressor:
    """Once per key per `window`: `allow(key, now)` is True the first time and then again
    only after `window` seconds. Bounded in keys, oldest forgotten first (counted)."""

    def __init__(self, window: float, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._last: dict[object, float] = {}
        self.suppressed = 0
        self.forgotten = 0

    def allow(self, key: object, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self.suppressed += 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            n = max(1, self.max_keys // 100)
            for k in list(self._last)[:n]:
                del self._last[k]
            self.forgotten += n
        self._last.pop(key, None)  # re-insert: dict order stays oldest-first
        self._last[key] = now
        return True

    def expire(self, now: float) -> None:
        old = [k for k, t in self._last.items() if now - t >= self.window]
        for k in old:
            del self._last[k]

    def __len__(self) -> int:
        return len(self._last)


class Series:
    """The last `cap` (time, size) samples of a recurring event, e.g. the connections one
    host makes to one service; older samples are dropped and counted."""

    __slots__ = ("cap", "dropped", "sizes", "times")

    def __init__(self, cap: int = 128) -> None:
        self.cap = cap
        self.times: deque[float] = deque(maxlen=cap)
        self.sizes: deque[float] = deque(maxlen=cap)
        self.dropped = 0

    def add(self, ts: float, size: float | None = None) -> None:
        if len(self.times) == self.cap:
            self.dropped += 1
        self.times.append(ts)
        if size is not None:
            self.sizes.append(size)

    def intervals(self) -> list[float]:
        t = self.times
        return [t[i] - t[i - 1] for i in range(1, len(t))]

    def __len__(self) -> int:
        return len(self.times)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Q1, median, Q3 (linear interpolation, like numpy's default)."""
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        x = p * (n - 1)
        i = int(x)
        return v[i] if i + 1 >= n else v[i] + (v[i + 1] - v[i]) * (x - i)

    return q(0.25), q(0.5), q(0.75)


def bowley_skewness(values: list[float], resolution: float = 0.0) -> float:
    """Quartile skewness in [-1, 1]; 0 for a symmetric (or degenerate) distribution.

    Skewness of a very narrow distribution is noise (15.01, 15.02, 15.09 s): with a
    `resolution`, it is scaled down by the interquartile range over that resolution."""
    q1, q2, q3 = quartiles(values)
    iqr = q3 - q1
    if iqr <= 0:
        return 0.0
    skew = (q1 + q3 - 2 * q2) / iqr
    return skew * min(1.0, iqr / resolution) if resolution > 0 else skew


def median_abs_deviation(values: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation)."""
    med = quartiles(values)[1]
    return med, quartiles([abs(x - med) for x in values])[1]


class Ewma:
    """Exponentially weighted moving average of a per-interval quantity."""

    __slots__ = ("alpha", "samples", "value")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value = 0.0
        self.samples = 0

    def update(self, x: float) -> None:
        self.value = x if self.samples == 0 else self.value + self.alpha * (x - self.value)
        self.samples += 1
