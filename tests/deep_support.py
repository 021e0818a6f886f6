"""What the deep-decoder tests share: the corpus and a capture's decoded messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.capture.pcapfile import read_capture
from agent.decode import DecodeStats, make_decoder
from agent.decode.deep import DeepDecoder, DeepStats
from agent.engine import Engine
from tests.conftest import CORPUS

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


def messages(path: Path) -> tuple[list, DeepStats]:
    """Every application message of a capture, through the real decoders and flow table."""
    stats = DeepStats()
    deep = DeepDecoder(stats)
    dec = make_decoder(DecodeStats())
    flows = Engine()
    out = []
    for rec in read_capture(path):
        p = dec(*rec)
        if p is not None:
            out.extend(deep(p, flows.packet(p)))
    return out, stats
