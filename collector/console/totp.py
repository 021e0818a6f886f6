"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), as every authenticator
app (FreeOTP, Google Authenticator, KeePassXC) computes them: HMAC-SHA1, 30 s steps, six
digits. Small enough to keep here and check against the RFC's own test vectors."""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
import time
import urllib.parse

STEP = 30
DIGITS = 6
# One step either side: the phone's clock may be a little off, and a code typed in its
# last seconds arrives in the next step.
DRIFT_STEPS = 1


def new_secret() -> str:
    """160 random bits in base32, as RFC 4226 recommends and authenticator apps expect."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP)


def code(secret: str, now: float | None = None) -> str:
    """The current code for a base32 secret (what the analyst's app shows)."""
    return hotp(_key(secret), step(now))


def matching_step(secret: str, typed: str, now: float | None = None) -> int | None:
    """The time step whose code the analyst typed, or None. The caller refuses a step
    already used (RFC 6238 section 5.2: a code is good once)."""
    typed = typed.strip().replace(" ", "")
    if len(typed) != DIGITS or not typed.isascii() or not typed.isdigit():
        return None
    key, here = _key(secret), step(now)
    found = None
    for s in range(here - DRIFT_STEPS, here + DRIFT_STEPS + 1):
        # Every candidate is compared (no early exit) in constant time.
        if hmac.compare_digest(hotp(key, s), typed):
            found = s
    return found


def provisioning_uri(secret: str, name: str, issuer: str = "Vigie") -> str:
    """otpauth:// URI (the Key Uri Format authenticator apps read, as a QR code or typed)."""
    label = urllib.parse.quote(f"{issuer}:{name}")
    query = urllib.parse.urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP}
    )
    return f"otpauth://totp/{label}?{query}"
