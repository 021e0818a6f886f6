"""What every deep decoder shares: the malformed marker and the reassembly request.

Deep decoders are pure functions over payload bytes. They never raise: a payload that is
not what the decoder expects (wrong signature) gives None, a payload that is the right
protocol but broken gives `Malformed(reason)`, so that the dispatcher can count it.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from typing import Any

U16BE = Struct(">H").unpack_from
U32BE = Struct(">I").unpack_from
U16LE = Struct("<H").unpack_from
U32LE = Struct("<I").unpack_from


@dataclass(slots=True, frozen=True)
class Malformed:
    """The payload belongs to the protocol but cannot be decoded; `reason` is counted."""

    reason: str
    kind: str = "malformed"


@dataclass(slots=True, frozen=True)
class NeedMore:
    """A valid start whose unit (TLS record, DICOM PDU) goes on in later segments."""

    total: int  # bytes needed from the first byte of the unit


class Bad(Exception):
    """Internal: raised inside a decoder, turned into `Malformed` at its public entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def text(b: bytes | bytearray | memoryview) -> str:
    # latin-1 never fails and maps bytes 1:1: odd bytes stay visible to detectors.
    return bytes(b).decode("latin-1")


def utf16(b: bytes | bytearray | memoryview) -> str:
    return bytes(b).decode("utf-16-le", "replace")


AnyMessage = Any  # a message dataclass (each has `kind`, `ts`, `flow`)
