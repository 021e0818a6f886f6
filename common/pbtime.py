"""protobuf Timestamps <-> float seconds, one way everywhere."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def seconds(t: Timestamp) -> float:
    return t.seconds + t.nanos / 1e9


def set_seconds(field: Timestamp, value: float) -> None:
    whole = int(value)
    field.seconds = whole
    field.nanos = round((value - whole) * 1e9) % 1_000_000_000
