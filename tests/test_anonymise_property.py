"""Property: no raw internal address, host, user or domain name survives the anonymiser.

Findings are generated with random internal values (also embedded in the summary), go
through `Anonymiser.alert()`, and the serialized protobuf, the exact bytes that leave,
is searched for every raw value in every encoding we can think of.
"""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.anonymise.policy import Anonymiser, Entity, Finding
from vigie.v1 import alert_pb2

SECRET = bytes(range(32))  # fixed: a failure must replay identically
SUFFIX = "chu-exemple.fr"

V4_INTERNAL = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
V6_INTERNAL = ["fc00::/7", "fe80::/10"]


def _in(net: str) -> st.SearchStrategy[str]:
    n = ipaddress.ip_network(net)
    return st.integers(int(n.network_address), int(n.broadcast_address)).map(
        lambda i: str(ipaddress.ip_address(i))
    )


ipv4 = st.one_of(*[_in(n) for n in V4_INTERNAL])
ipv6 = st.one_of(*[_in(n) for n in V6_INTERNAL])
# Long enough that a chance occurrence in fixed text or a hex pseudonym is negligible.
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=8, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
hostname = st.one_of(label, label.map(lambda s: s + ".local"), label.map(lambda s: s.upper()))
user = st.one_of(label, label.map(str.capitalize), label.map(lambda s: "adm_" + s))
domain = st.one_of(label.map(lambda s: f"{s}.{SUFFIX}"), label.map(lambda s: f"{s}.corp"))

R, K = alert_pb2, alert_pb2


@st.composite
def findings(draw: st.DrawFn) -> tuple[Finding, list[str]]:
    ents: list[Entity] = []
    for _ in range(draw(st.integers(1, 3))):
        ents.append(Entity(R.ROLE_SOURCE, K.KIND_IP, draw(st.one_of(ipv4, ipv6))))
    ents.append(Entity(R.ROLE_TARGET, K.KIND_HOSTNAME, draw(hostname)))
    ents.append(Entity(R.ROLE_SOURCE, K.KIND_USER, draw(user)))
    ents.append(Entity(R.ROLE_INDICATOR, K.KIND_DOMAIN, draw(domain)))
    ents.append(Entity(R.ROLE_INDICATOR, K.KIND_TLS_SNI, draw(domain)))
    ents.append(Entity(R.ROLE_CONTEXT, K.KIND_PORT, "445"))
    ents = draw(st.permutations(ents))
    embedded = draw(st.lists(st.sampled_from(ents), max_size=4))
    summary = "saw " + " then ".join(
        draw(st.sampled_from([e.value, e.value.upper(), e.value.lower()])) for e in embedded
    )
    f = Finding(
        id="0123456789abcdef0123456789abcdef",
        revision=1,
        detector="net.test",
        severity=alert_pb2.SEVERITY_MEDIUM,
        technique="T1046",
        summary=summary,
        first_seen=1_700_000_000.0,
        last_seen=1_700_000_060.0,
        occurrences=3,
        entities=ents,
        metrics={"probes": 3.0},
    )
    return f, [e.value for e in ents if e.kind != K.KIND_PORT]


def encodings(raw: str) -> list[bytes]:
    """Every way a raw value could show up in bytes."""
    forms = {raw, raw.lower(), raw.upper()}
    out: list[bytes] = []
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        ip = None
    if ip is not None:
        forms |= {str(ip), ip.exploded, ip.exploded.upper(), str(ip).upper()}
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        packed = socket.inet_pton(fam, str(ip))
        out += [packed, packed.hex().encode(), packed.hex().upper().encode()]
        if ip.version == 4:
            out.append(str(int(ip)).encode())
    for s in forms:
        out += [s.encode("utf-8"), s.encode("utf-16-le")]
    return out


def check(anon: Anonymiser, finding: Finding, raws: list[str]) -> None:
    alert = anon.alert(finding, 1_700_000_100.0)
    wire = alert.SerializeToString()
    for raw in raws:
        for enc in encodings(raw):
            assert enc not in wire, f"{raw!r} leaked as {enc!r}"
    assert all(e.pseudonymised for e in alert.entities if e.kind != K.KIND_PORT)
    assert alert.key_epoch == 1


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(findings())
def test_nothing_internal_survives_hmac_pseudonyms(case: tuple[Finding, list[str]]) -> None:
    check(Anonymiser(SECRET, internal_suffixes=[SUFFIX]), *case)


@PROPERTY
@given(findings())
def test_nothing_internal_survives_prefix_preserving(case: tuple[Finding, list[str]]) -> None:
    check(Anonymiser(SECRET, internal_suffixes=[SUFFIX], prefix_preserving=True), *case)


@PROPERTY
@given(st.lists(st.one_of(ipv4, ipv6), min_size=1, max_size=4), st.sampled_from(["", "port "]))
def test_summary_literals_scrubbed_without_entities(addrs: list[str], prefix: str) -> None:
    """An internal address written in a summary is caught even when no entity names it."""
    anon = Anonymiser(SECRET)
    text = "; ".join(f"{prefix}{a}" for a in addrs)
    f = Finding("0" * 32, 1, "net.test", 3, "T1046", text, 1.0, 2.0, 1)
    wire = anon.alert(f, 3.0).SerializeToString()
    for a in addrs:
        for enc in encodings(a):
            assert enc not in wire, f"{a!r} leaked as {enc!r}"
