"""The console's strings: English in the code, French (the default) in a gettext catalogue,
locale/fr/LC_MESSAGES/console.po.

The .po file is what translators edit and what the repository keeps; it is compiled to the
binary .mo format in memory when the console starts (a few hundred strings: milliseconds),
so there is no build step to forget and no generated file to drift from its source. The
tests check the catalogue with GNU gettext's own `msgfmt --check` and that its .mo reads
the same as ours.
"""

from __future__ import annotations

import ast
import gettext
import io
import struct
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "console"
LANGUAGES = ("fr", "en")
DEFAULT = "fr"


def parse_po(text: str) -> dict[str, str]:
    """msgid -> msgstr of a .po file (the subset we write: no plurals, no contexts);
    fuzzy and untranslated entries are left out, as msgfmt does."""
    out: dict[str, str] = {}
    msgid = msgstr = None
    fuzzy = False
    section = None

    def flush() -> None:
        if msgid is not None and msgstr and not fuzzy:
            out[msgid] = msgstr

    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if not line:
            flush()
            msgid = msgstr = None
            fuzzy, section = False, None
        elif line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith("#"):
            continue
        elif line.startswith("msgid "):
            msgid, section = ast.literal_eval(line[6:]), "id"
        elif line.startswith("msgstr "):
            msgstr, section = ast.literal_eval(line[7:]), "str"
        elif line.startswith('"'):
            if section == "id":
                msgid += ast.literal_eval(line)
            elif section == "str":
                msgstr += ast.literal_eval(line)
    return out


def compile_mo(messages: dict[str, str]) -> bytes:
    """The GNU .mo format (what gettext.GNUTranslations reads): a header, two tables of
    (length, offset) and the strings, keys sorted."""
    keys = sorted(messages)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(messages[k].encode() + b"\0" for k in keys)
    n = len(keys)
    start = 7 * 4 + 16 * n
    id_table, str_table = [], []
    pos = 0
    for k in keys:
        length = len(k.encode())
        id_table += [length, start + pos]
        pos += length + 1
    pos = 0
    for k in keys:
        length = len(messages[k].encode())
        str_table += [length, start + len(ids) + pos]
        pos += length + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    tables = struct.pack(f"<{len(id_table)}I", *id_table) + struct.pack(
        f"<{len(str_table)}I", *str_table
    )
    return header + tables + ids + strs


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """English is the source language; any other is read from its catalogue."""
    po = LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    if lang == "en" or not po.exists():
        return gettext.NullTranslations()
    return gettext.GNUTranslations(io.BytesIO(compile_mo(parse_po(po.read_text("utf-8")))))


def pick(asked: str | None) -> str:
    """The language to show: the analyst's choice (the selector of every page, or ?lang=
    on the sign-in page), else French, whatever the browser says: the console is French
    first, and an analyst's English browser is no request for English pages."""
    return asked if asked in LANGUAGES else DEFAULT
