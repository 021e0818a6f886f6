"""Profile the replay pipeline: `python bench/hotspots.py CAPTURE [N] [--detectors none]`.

Prints the top functions by own time (cProfile), reading at most N packets (a whole
classic pcap file goes through the engine's own walker, as `replay` does).
"""

from __future__ import annotations

import cProfile
import itertools
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import settings
from agent.capture.pcapfile import PcapLayout, open_capture, read_capture
from agent.cli import _anonymiser
from agent.pipeline import Pipeline
from common import config


def main() -> None:
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else None
    cfg = config.load(None, settings.SCHEMA)
    cfg["state_dir"] = tempfile.mkdtemp()
    if "--detectors" in sys.argv and sys.argv[sys.argv.index("--detectors") + 1] == "none":
        for d in cfg["detectors"].values():
            d["enabled"] = False
    pipe = Pipeline(cfg, _anonymiser(cfg), lambda a: None, time.time)
    whole = open_capture(path) if n is None else None

    def run() -> None:
        if isinstance(whole, PcapLayout):  # as `replay` runs it: the engine walks the file
            pipe.feed_pcap(whole)
        else:
            feed = pipe.feed
            for r in itertools.islice(whole or read_capture(path), n):
                feed(*r)
        pipe.finish()

    prof = cProfile.Profile()
    prof.runcall(run)
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
