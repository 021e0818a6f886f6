"""The shared windowed state detectors count with, instead of each counting its own way.

`KeyedWindow` holds one small state object per key (a source address, a pair...) and
forgets keys idle for longer than the window; it is bounded in keys, oldest forgotten
first, and counts what it forgot, so an attacker spoofing sources cannot grow it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class KeyedWindow(Generic[S]):
    def __init__(self, window: float, factory: Callable[[float], S], max_keys: int = 100_000):
        self.window = window
        self.factory = factory
        self.max_keys = max_keys
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

    def expire(self, now: float) -> None:
        old = [k for k, t in self._seen.items() if now - t > self.window]
        for k in old:
            del self._state[k], self._seen[k]

    def _forget_oldest(self) -> None:
        n = max(1, self.max_keys // 100)
        for k in list(self._state)[:n]:
            del self._state[k], self._seen[k]
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
