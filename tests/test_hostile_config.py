"""Hostile configuration and intel: refused with a message naming the key or entry,
never a crash, never an indicator that matches everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import settings
from agent.deliver.stream import _stored_intel_version
from agent.host.intel import Intel, IntelFile
from collector import cli as collector_cli
from common import config

DEEP = "[" * 100_000 + "]" * 100_000

# -------------------------------------------------------------------- collector intel load

BAD_BUNDLES = {
    "not json": ("{ips: [", "not JSON"),
    "nested too deeply": (DEEP, "nested too deeply"),
    "not an object": ("[1, 2]", "JSON object"),
    "null": ("null", "JSON object"),
    "unknown key": ('{"ipz": []}', "unknown key 'ipz'"),
    "ips not a list": ('{"ips": "1.2.3.4"}', "ips must be a list"),
    "ips not strings": ('{"ips": [123]}', "ips must be a list of strings"),
    "ipv4 any": ('{"ips": ["0.0.0.0/0"]}', "ips[0] '0.0.0.0/0' would match far too much"),
    "ipv6 any": ('{"ips": ["8.8.8.8", "::/0"]}', "ips[1] '::/0' would match far too much"),
    "ipv4 /7": ('{"ips": ["10.0.0.0/7"]}', "ips[0]"),
    "ipv6 /3": ('{"ips": ["2000::/3"]}', "ips[0]"),
    "ip garbage": ('{"ips": ["1.2.3.4/33"]}', "ips[0] '1.2.3.4/33' is not an address"),
    "domain empty": ('{"domains": [""]}', "domains[0] is empty"),
    "domain dot": ('{"domains": ["."]}', "domains[0] is empty"),
    "domain star": ('{"domains": ["*"]}', "domains[0] '*'"),
    "domain wildcard": ('{"domains": ["*.example.com"]}', "no wildcards"),
    "domain tld": ('{"domains": ["com"]}', "bare top-level domain"),
    "domain tld dot": ('{"domains": ["fr."]}', "bare top-level domain"),
    "domain public suffix": (
        '{"domains": ["evil.co.uk", "gouv.fr"]}',
        "domains[1] 'gouv.fr' is a public suffix",
    ),
    "domain newline": ('{"domains": ["evil.com\\n.org"]}', "domains[0]"),
    "domain sql": ('{"domains": ["a.com\' OR 1=1"]}', "domains[0]"),
    "domain percent": ('{"domains": ["%.com"]}', "domains[0]"),
    "ja3 bad": ('{"ja3": ["xyz"]}', "ja3[0]"),
    "hash bad": ('{"hashes": ["00"]}', "hashes[0]"),
    "threshold nan": ('{"thresholds": {"net.portscan.fanout_ports": NaN}}', "finite number"),
    "threshold inf": ('{"thresholds": {"net.portscan.fanout_ports": Infinity}}', "finite"),
    "threshold bool": ('{"thresholds": {"net.portscan.fanout_ports": true}}', "finite number"),
    "threshold key": ('{"thresholds": {"DROP TABLE": 1}}', "must read detector.option"),
    "thresholds list": ('{"thresholds": [1]}', "thresholds must be an object"),
}


@pytest.fixture(autouse=True)
def _keep_logging():
    """collector.cli.main points structlog at sys.stdout, here pytest's capture stream,
    closed after the test: put back whatever the rest of the suite logs with."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _load(state: Path, path: Path, capsys) -> tuple[int, str]:
    rc = collector_cli.main(["intel", "load", str(path), "--state-dir", str(state)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_collector_refuses_bad_intel(tmp_path: Path, capsys) -> None:
    state = tmp_path / "collector"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"ips": ["203.0.113.7", "198.51.100.0/24"],
                                "domains": ["evil.example"]}))  # fmt: skip
    rc, text = _load(state, good, capsys)
    assert rc == 0 and "intel version 1 loaded" in text
    for name, (body, message) in BAD_BUNDLES.items():
        bad = tmp_path / "bad.json"
        bad.write_text(body)
        rc, text = _load(state, bad, capsys)
        assert rc == 2, (name, text)
        assert message in text, (name, text)
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, (name, text)
    bad.write_bytes(b'{"domains": ["\xff\xfe.com"]}')
    assert _load(state, bad, capsys)[0] == 2
    assert _load(state, tmp_path / "missing.json", capsys)[0] == 2
    assert _load(state, tmp_path, capsys)[0] == 2  # a directory
    rc, text = _load(state, good, capsys)  # nothing refused was published in between
    assert rc == 0 and "intel version 2 loaded" in text


# ---------------------------------------------------------------- agent side intel.json


def test_agent_intel_skips_and_counts_match_everything_entries() -> None:
    intel = Intel(
        ips=["0.0.0.0/0", "::/0", "0.0.0.0/1", "2000::/3", "203.0.113.7", "bogus", "1.2.3.4/40"],
        cidrs=["198.51.100.0/24", "128.0.0.0/1"],
        domains=["", "*", "com", "*.evil.example", "fr.", "evil.example", "a..b", "Co.UK"],
    )
    assert intel.skipped == 7 + 7
    for addr in ("8.8.8.8", "1.1.1.1", "2001:db8::1", "10.0.0.1", "::ffff:8.8.8.8"):
        assert not intel.match(addr), addr
    assert intel.match("203.0.113.7") and intel.match("198.51.100.9")
    assert intel.domains == frozenset({"evil.example"})


@pytest.mark.parametrize(
    "body",
    [
        "", "{", "null", "[]", "42", '"str"', DEEP, '{"ips": 5}', '{"ips": [null, {}, []]}',
        '{"version": "x", "ips": ["0.0.0.0/0"]}', '{"version": [1]}', '{"version": 1e400}',
        '{"cidrs": ["::/0", "0.0.0.0/0"], "domains": ["*", "com", 5]}',
    ],
)  # fmt: skip
def test_agent_reads_damaged_intel_file(tmp_path: Path, body: str) -> None:
    path = tmp_path / "intel.json"
    path.write_text(body)
    intel = IntelFile(path)()
    assert not intel.match("8.8.8.8") and not intel.match("2001:db8::1")
    assert isinstance(_stored_intel_version(path), int)


def test_agent_reads_intel_file_with_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "intel.json"
    path.write_bytes(b'{"ips": ["\xff\xfe"]}')
    f = IntelFile(path)
    assert not f() and f.errors == 1
    assert _stored_intel_version(path) == 0


# ------------------------------------------------------------------- agent configurations

BAD_CONFIGS = {
    # wrong types deep in detector sections
    '[detectors.portscan]\nfanout_ports = "many"\n': "detectors.portscan.fanout_ports",
    "[detectors.portscan]\nfanout_ports = 1.5\n": "detectors.portscan.fanout_ports",
    "[detectors.portscan]\nenabled = 1\n": "detectors.portscan.enabled",
    "[detectors.dos]\nsyn_capacity = [1, 2]\n": "detectors.dos.syn_capacity",
    "[detectors.bruteforce]\nwindow_seconds = {a = 1}\n": "detectors.bruteforce.window_seconds",
    "[detectors.beacon]\nmin_connections = true\n": "detectors.beacon.min_connections",
    "detectors = 5\n": "detectors",
    "[detectors.portscan.window_seconds]\nx = 1\n": "detectors.portscan.window_seconds",
    "[detectors.nope]\nenabled = true\n": "detectors.nope",
    "[detectors.portscan]\nfanout_portz = 3\n": "detectors.portscan.fanout_portz",
    # negative or zero durations
    "[detectors.portscan]\nwindow_seconds = -60\n": "detectors.portscan.window_seconds",
    "[flows]\ntcp_idle_seconds = -1.0\n": "flows.tcp_idle_seconds",
    "[aggregation]\nwindow_seconds = 0\n": "aggregation.window_seconds",
    "[detectors.exfil]\ninterval_seconds = -0.5\n": "detectors.exfil.interval_seconds",
    # non-finite and huge numbers
    "[detectors.dos]\nsyn_leak_per_second = nan\n": "detectors.dos.syn_leak_per_second",
    "[detectors.dos]\nsyn_capacity = inf\n": "detectors.dos.syn_capacity",
    "[flows]\nattempt_timeout_seconds = inf\n": "flows.attempt_timeout_seconds",
    "[aggregation]\nwindow_seconds = -inf\n": "aggregation.window_seconds",
    "[flows]\nmax_flows = 99999999999999999999999\n": "flows.max_flows",
    "[flows]\nmax_flows = 1000000000000\n": "flows.max_flows",
    "[outbox]\nmax_alerts = 9223372036854775807\n": "outbox.max_alerts",
    "[capture]\nsnaplen = 4294967296\n": "capture.snaplen",
    "[capture]\nring_megabytes = 1000000\n": "capture.ring_megabytes",
    "[collector]\nbatch_size = 5000\n": "collector.batch_size",
    "[detectors.portscan]\nfanout_ports = -5\n": "detectors.portscan.fanout_ports",
    # not TOML, not text
    "[flows\nmax_flows = 1\n": "not valid TOML",
}


@pytest.mark.parametrize("text", list(BAD_CONFIGS))
def test_bad_agent_config_is_refused_naming_the_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, settings.SCHEMA)
    message = str(err.value)
    assert BAD_CONFIGS[text] in message and str(path) in message
    assert "\n" not in message


def test_config_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'state_dir = "\xff\xfe"\n')
    with pytest.raises(config.ConfigError, match="cannot read configuration"):
        config.load(path, settings.SCHEMA)
