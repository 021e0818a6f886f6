"""The shared windowed state detectors count with, instead of each counting its own way.

`KeyedWindow` holds one small state object per key (a source address, a pair...) and
forgets keys idle for longer than the window; it is bounded in keys, oldest forgotten
first, and counts what it forgot, so an attacker spoofing sources cannot grow it.

Memory: with 100k active flows a detector may hold 100k keys, so every per-key byte counts
(a dict entry is ~50 B, an empty set 216 B, an object header 32 B). States are `__slots__`
classes deriving from `Stamped` (the last-seen time lives in the state, not in a second
dict), and `Distinct` holds one item as is and a few in a tuple before it makes a set.
Many keys with a few numbers each are cheaper still in an engine `Table` (~40 B a key,
agent/engine/table.c). Keys are best small ints (`key_of`): a 60-bit int is 32 B where a
tuple of two addresses is 64 B plus the addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Generic, TypeVar

S = TypeVar("S")

_KEY_BITS = (1 << 60) - 1


def key_of(*parts: object) -> int:
    """A compact key for a tuple of addresses and ports: its hash cut to 60 bits, so the
    int takes two 30-bit digits (32 B). Two tuples that collide would share one state:
    Python salts the hashes of bytes per process, so no one can craft such a pair, and by
    chance one pair among 100k keys collides with odds of about one in 200 million."""
    return hash(parts) & _KEY_BITS


class Stamped:
    """Base of per-key states that carry their own last-seen time, so that a KeyedWindow
    of them keeps one dict rather than a second one for the times."""

    __slots__ = ("seen",)


class KeyedWindow(Generic[S]):
    """Per-key states, forgotten after `window` seconds unseen. A state is a `Stamped`
    object, or anything else (its times are then kept in a second dict)."""

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
        # Last-seen times of states that are not Stamped (plain values, lists); None once
        # the first state made turns out to be Stamped.
        self._seen: dict[object, float] | None = {}
        self._stamped: bool | None = None  # unknown until the first state is made
        self.forgotten = 0

    def get(self, key: object, now: float) -> S:
        st = self._state.get(key)
        if st is None:
            if len(self._state) >= self.max_keys:
                self._forget_oldest()
            st = self._state[key] = self.factory(now)
            if self._stamped is None:
                self._stamped = isinstance(st, Stamped)
                if self._stamped:
                    self._seen = None
        if self._stamped:
            st.seen = now
        else:
            self._seen[key] = now
        return st

    def peek(self, key: object) -> S | None:
        return self._state.get(key)

    def items(self):
        return self._state.items()

    def seen(self) -> list[tuple[object, float]]:
        """(key, last seen) of every key, oldest first: what a detector saves to disk."""
        if self._stamped:
            return [(k, st.seen) for k, st in self._state.items()]
        return list((self._seen or {}).items())

    def expire(self, now: float, done: Callable[[S], bool] | None = None) -> None:
        """Forget the keys unseen for longer than the window, and with `done` those whose
        state it says has nothing more to tell (Stamped states only)."""
        window = self.window
        if self._stamped:
            old = [
                k
                for k, st in self._state.items()
                if now - st.seen > window or (done is not None and done(st))
            ]
        else:
            old = [k for k, t in self._seen.items() if now - t > window]
        for k in old:
            self._drop(k)

    def _drop(self, key: object) -> None:
        st = self._state.pop(key)
        if not self._stamped:
            del self._seen[key]
        if self.on_forget is not None:
            self.on_forget(key, st)

    def _forget_oldest(self) -> None:
        n = max(1, self.max_keys // 100)
        # dicts keep insertion order: the first keys are the oldest
        for k in list(islice(self._state, n)):
            self._drop(k)
        self.forgotten += n

    def __len__(self) -> int:
        return len(self._state)


_NONE = object()  # what a Distinct holds before its first item
_FEW = 8  # items a Distinct keeps in a tuple (searched in order) before it makes a set


class _Few(tuple):
    """A Distinct's first few items: a tuple of 2 costs 56 B and one of 8 104 B, a set
    216 B (728 B from its fifth item on). A subclass, so that it is never mistaken for an
    item that is a tuple itself."""

    __slots__ = ()


class Distinct:
    """Distinct items, bounded: past `cap` items it keeps counting but stops remembering.

    Most keys only ever see one item or a few (a source's targets, a flood target's
    sources): one item is held as is, a few in a tuple, and a set is made past `_FEW`."""

    __slots__ = ("_held", "cap", "overflow")

    def __init__(self, cap: int = 4096) -> None:
        self._held: object = _NONE  # _NONE, the one item, a _Few of them or a set
        self.cap = cap
        self.overflow = 0

    def add(self, item: object) -> bool:
        """True when the item is new."""
        held = self._held
        kind = type(held)
        if kind is set or kind is _Few:
            if item in held:  # a tuple compares like a set: identity, then equality
                return False
            n = len(held)
            if n >= self.cap:
                self.overflow += 1
            elif kind is set:
                held.add(item)
            else:
                self._held = _Few((*held, item)) if n < _FEW else {*held, item}
            return True
        if held is _NONE:
            if self.cap < 1:
                self.overflow += 1
            else:
                self._held = item
            return True
        if held is item or held == item:
            return False
        if self.cap < 2:
            self.overflow += 1
        else:
            self._held = _Few((held, item))
        return True

    @property
    def items(self) -> set:
        """The items remembered (a copy unless there are more than a few)."""
        held = self._held
        kind = type(held)
        if kind is set:
            return held
        if kind is _Few:
            return set(held)
        return set() if held is _NONE else {held}

    def __len__(self) -> int:
        held = self._held
        kind = type(held)
        n = len(held) if kind is set or kind is _Few else 0 if held is _NONE else 1
        return n + self.overflow


class LeakyBucket(Stamped):
    """CrowdSec-like bucket: each event pours one drop, the bucket leaks `leak` per
    second; it overflows when the level passes `capacity`. Constant memory."""

    __slots__ = ("capacity", "last", "leak", "level", "poured")

    def __init__(self, capacity: float, leak: float, now: float) -> None:
        self.capacity = capacity
        self.leak = leak
        self.level = 0.0
        self.last = now
        self.poured = 0  # events (drops) poured since the bucket was made

    def pour(self, now: float, n: int = 1) -> bool:
        """Add `n` events at `now` at once (counters delivered in batches); True when the
        bucket overflows."""
        if now > self.last:
            self.level = max(0.0, self.level - (now - self.last) * self.leak)
            self.last = now
        self.level += n
        self.poured += n
        return self.level > self.capacity

    def empty_at(self, now: float) -> bool:
        """Whether the bucket has leaked empty by `now`: poured into at `now` or later, it
        behaves as a new one would."""
        return self.level <= (now - self.last) * self.leak


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


class Series(Stamped):
    """The last `cap` (time, size) samples of a recurring event, e.g. the connections one
    host makes to one service; older samples are dropped and counted.

    Most series (one per service a host ever talked to) hold one or two samples: times are
    a tuple (exact size; a deque takes 760 B however few items it holds) and the sizes
    list is only made for the first size."""

    __slots__ = ("_sizes", "cap", "dropped", "times")

    def __init__(self, cap: int = 128) -> None:
        self.cap = cap
        self.times: tuple[float, ...] = ()
        self._sizes: list[float] | None = None
        self.dropped = 0

    def add(self, ts: float, size: float | None = None) -> None:
        times = (*self.times, ts)
        if len(times) > self.cap:
            times = times[1:]
            self.dropped += 1
        self.times = times
        if size is not None:
            self.add_size(size)

    @property
    def sizes(self) -> list[float]:
        if self._sizes is None:
            self._sizes = []
        return self._sizes

    def add_size(self, size: float) -> None:
        """A size on its own (known later than the time it goes with)."""
        sizes = self.sizes
        sizes.append(size)
        if len(sizes) > self.cap:
            del sizes[0]

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
