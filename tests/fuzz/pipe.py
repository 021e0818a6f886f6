"""The whole agent pipeline as `vigie-agent replay` builds it, with a list as output,
and the check that its counters account for every frame fed."""

from __future__ import annotations

from functools import cache
from typing import Any

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.pipeline import Pipeline
from common import config

SECRET = b"hostile-input-tests-secret-012345"


@cache
def _cfg() -> dict[str, Any]:
    return config.defaults(settings.SCHEMA)


def new_pipeline(cfg: dict[str, Any] | None = None) -> tuple[Pipeline, list]:
    out: list = []
    pipe = Pipeline(cfg or _cfg(), Anonymiser(SECRET), out.append, lambda: 1_700_000_000.0)
    return pipe, out


def check_accounting(pipe: Pipeline, fed: int) -> None:
    """Every frame fed is in exactly one decode bucket; nothing hit a last-resort catch."""
    d = pipe.decode_stats
    counted = d.decoded + sum(d.malformed.values()) + sum(d.skipped.values())
    assert pipe.packets == fed == d.packets == counted, (fed, pipe.packets, d)
    assert "decoder_error" not in d.malformed, d
    deep = pipe.deep_stats
    assert "decoder_error" not in deep.malformed, deep
    # The deep decoder only ever sees decoded packets, each at most once.
    assert deep.inspected <= d.decoded, (deep.inspected, d.decoded)
