"""structlog set-up shared by the three programs: JSON lines, one event name per line.

Log events carry counters, states and pseudonyms only: callers never pass addresses,
host names or user names (the anonymiser is the only component that sees them and it
does not log values).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def setup(stream: TextIO = sys.stdout, level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(component=name)
