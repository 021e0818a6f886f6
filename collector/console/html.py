"""Server-rendered HTML, escaped by default: every value put in a template is escaped
unless it is already `Markup` (HTML this code built). Templates are plain
`string.Template` files in templates/ (`$name` placeholders); no template language, so no
logic hides in them."""

from __future__ import annotations

import html
import string
from collections.abc import Iterable
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


class Markup(str):
    """Text that is already HTML. Adding anything to it escapes that first, so building a
    page by concatenation stays safe."""

    def __add__(self, other: object) -> Markup:
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other: object) -> Markup:
        return Markup(str.__add__(esc(other), self))


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


def tag(name: str, body: object = "", /, **attrs: object) -> Markup:
    """<name attr="..">body</name>; attribute names take `_` for `-`, a trailing `_` is
    dropped (class_), None or False leave the attribute out, True writes it bare."""
    out = []
    for k, v in attrs.items():
        k = k.rstrip("_").replace("_", "-")
        if v is None or v is False:
            continue
        out.append(f" {k}" if v is True else f' {k}="{esc(v)}"')
    if name in ("input", "img", "br", "meta", "link"):
        return Markup(f"<{name}{''.join(out)}>")
    return Markup(f"<{name}{''.join(out)}>{esc(body)}</{name}>")


@cache
def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text("utf-8"))


def render(template: str, /, **values: object) -> Markup:
    return Markup(_template(template).substitute({k: esc(v) for k, v in values.items()}))
