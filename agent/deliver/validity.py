"""A certificate's validity dates, read from its DER without a crypto library.

The running agent checks its certificate's lifetime every minute to renew in time; the
cryptography package it would take to ask is 8 MB resident (a tenth of the agent's
budget), and the two dates sit at a fixed place in every X.509 certificate (RFC 5280
4.1: Certificate, tbsCertificate, [0] version, serial, signature, issuer, validity).
Nothing here trusts the certificate: TLS checks it; this only says when to renew it.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at offset i."""
    if i + 2 > len(der):
        raise ValueError("certificate: truncated DER")
    tag, n = der[i], der[i + 1]
    start = i + 2
    if n & 0x80:
        width = n & 0x7F
        if not 0 < width <= 4 or start + width > len(der):
            raise ValueError("certificate: bad DER length")
        n = int.from_bytes(der[start : start + width], "big")
        start += width
    if start + n > len(der):
        raise ValueError("certificate: truncated DER")
    return tag, start, start + n


def _time(der: bytes, i: int) -> tuple[dt.datetime, int]:
    tag, start, end = _tlv(der, i)
    text = der[start:end].decode("ascii", "replace")
    if tag == 0x17 and len(text) == 13:  # UTCTime YYMMDDHHMMSSZ; YY >= 50 is 19YY
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18 or len(text) != 15:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("certificate: unexpected validity time")
    try:
        when = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError("certificate: unreadable validity time") from None
    return when, end


def validity(cert_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after) of the first certificate in `cert_pem`, in UTC."""
    m = _PEM.search(cert_pem)
    if not m:
        raise ValueError("certificate: no PEM certificate")
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except ValueError:
        raise ValueError("certificate: bad base64") from None
    _, i, _ = _tlv(der, 0)  # Certificate
    tag, i, _ = _tlv(der, i)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("certificate: not an X.509 certificate")
    if der[i] == 0xA0:  # [0] version
        i = _tlv(der, i)[2]
    for _ in range(3):  # serial, signature algorithm, issuer
        i = _tlv(der, i)[2]
    tag, i, _ = _tlv(der, i)
    if tag != 0x30:
        raise ValueError("certificate: no validity")
    not_before, i = _time(der, i)
    not_after, _ = _time(der, i)
    return not_before, not_after


def lifetime_left(cert_pem: bytes, now: dt.datetime | None = None) -> tuple[float, float]:
    """(seconds left, whole lifetime in seconds)."""
    not_before, not_after = validity(cert_pem)
    now = now or dt.datetime.now(dt.UTC)
    return (not_after - now).total_seconds(), (not_after - not_before).total_seconds()


def needs_renewal(cert_pem: bytes, fraction: float = 1 / 3) -> bool:
    left, total = lifetime_left(cert_pem)
    return left < total * fraction
