"""The pipeline hands application messages to `on_app` handlers, and only then decodes."""

from __future__ import annotations

from pathlib import Path

from agent import settings
from agent.anonymise.policy import Anonymiser
from agent.capture.pcapfile import read_capture
from agent.decode.deep import DeepDecoder
from agent.detect.hooks import Wants
from agent.pipeline import Pipeline
from common import config
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus


def pipeline(tmp_path: Path) -> Pipeline:
    cfg = config.load(None, settings.SCHEMA)
    cfg["state_dir"] = str(tmp_path)
    return Pipeline(cfg, Anonymiser.from_settings(cfg["anonymisation"], str(tmp_path)),
                    lambda a: None, lambda: 0.0)  # fmt: skip


def test_no_on_app_handler_means_no_deep_decoder(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path)
    if not pipe.plan.on["on_app"] and not pipe.plan.counters:
        assert pipe.deep is None


@needs_corpus
def test_messages_reach_on_app_handlers(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path)
    seen: list = []

    class Spy:  # a detector that wants every message kind
        wants = Wants(app_kinds=None)

        def on_app(self, msg, flow, packet) -> None:
            seen.append((msg, flow, packet))

    pipe.use([Spy()])
    assert isinstance(pipe.deep, DeepDecoder)
    for rec in read_capture(CORPUS / "smb/smb2_psexec_service_add_user.pcap"):
        pipe.feed(*rec)
    pipe.finish()
    assert any(m.kind == "dcerpc" and m.action == "service_start" for m, _, _ in seen)
    assert all(m.flow is f and m.ts == p.ts for m, f, p in seen)
    assert pipe.deep_stats.decoded["smb"] > 0 and pipe.deep_stats.decoded["dcerpc"] > 0
    assert not pipe.deep._states  # every flow's state dropped at its end


def test_deep_decoder_decodes_only_wanted_protocols(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path)

    class DnsOnly:
        wants = Wants(app_kinds=frozenset({"dns"}))

        def on_app(self, msg, flow, packet) -> None:
            pass

    pipe.use([DnsOnly()])
    assert pipe.deep.protocols == {"dns"}
    assert pipe.plan.app["dns"] and not pipe.plan.app["smb"]
