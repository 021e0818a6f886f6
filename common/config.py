"""Declared, strictly validated TOML configuration.

Every setting is declared once as an `Option` (type, default, help, check). Loading
refuses unknown keys, wrong types and bad values with a message that names the key and
the file, the way CrowdSec refuses a bad scenario at load time.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem, phrased for the operator: one line, key and file named."""


@dataclass(frozen=True)
class Option:
    type: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


Section = Mapping[str, "Option | Section"]

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _is_type(value: Any, t: type | tuple[type, ...]) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:
        return False  # TOML true is not an integer here
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def defaults(schema: Section) -> dict[str, Any]:
    """The configuration a program runs with when given no file."""
    out: dict[str, Any] = {}
    for name, item in schema.items():
        out[name] = item.default if isinstance(item, Option) else defaults(item)
    return out


def validate(data: Mapping[str, Any], schema: Section, source: str, prefix: str = "") -> dict:
    """Merge `data` over the defaults of `schema`, refusing anything undeclared or ill-typed."""
    out = defaults(schema)
    for key, value in data.items():
        path = f"{prefix}{key}"
        item = schema.get(key)
        if item is None:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(f"{source}: unknown key '{path}' (known here: {known})")
        if isinstance(item, Option):
            if not _is_type(value, item.type):
                raise ConfigError(
                    f"{source}: key '{path}' must be {_type_name(item.type)}, "
                    f"got {type(value).__name__} {value!r}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{source}: key '{path}' must be a finite number, got {value}")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                raise ConfigError(f"{source}: key '{path}' is out of range, got {value}")
            if isinstance(value, int) and item.type is float:
                value = float(value)
            if item.check is not None and (problem := item.check(value)):
                raise ConfigError(f"{source}: key '{path}' {problem}")
            out[key] = value
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{path}' must be a table [{path}]")
            out[key] = validate(value, item, source, prefix=f"{path}.")
    return out


def load(path: str | Path | None, schema: Section) -> dict[str, Any]:
    """Read and validate a TOML file; None means defaults only."""
    if path is None:
        return defaults(schema)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return validate(data, schema, str(p))


# Reusable checks -------------------------------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def at_least(n: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if value >= n else f"must be at least {n}, got {value}"

    return check


def between(lo: float, hi: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}, got {value}"

    return check


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"

    return check


def cidrs(value: list, what: str = "an address or CIDR range") -> str | None:
    """A list of addresses and CIDR ranges. A range with host bits set (10.1.2.3/16) is
    refused with the range it probably means: accepted silently it was read as 10.1.0.0/16,
    which may not be what the operator wrote it for."""
    import ipaddress

    for item in value:
        text = str(item).strip()
        try:
            ipaddress.ip_network(text)
        except ValueError:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                return f"holds {item!r}, which is not {what}"
            return (
                f"holds {item!r}, which has host bits set: write {str(net)!r} "
                "(or the address alone)"
            )
    return None


def host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT, got {value!r}"
    return None


@dataclass
class Documented:
    """Renders a schema as commented TOML, so configs/*.toml cannot drift from the code."""

    schema: Section
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        self._section(self.schema, "")
        return "\n".join(self.lines).strip() + "\n"

    def _section(self, schema: Section, prefix: str) -> None:
        for name, item in schema.items():
            if isinstance(item, Option):
                for line in item.help.splitlines():
                    self.lines.append(f"# {line}")
                self.lines.append(f"{name} = {_toml(item.default)}")
                self.lines.append("")
        for name, item in schema.items():
            if not isinstance(item, Option):
                self.lines.append(f"[{prefix}{name}]")
                self._section(item, f"{prefix}{name}.")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def check_listen(value: str) -> str | None:
    """Config check for `metrics.listen`: '' or HOST:PORT."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return f"must be HOST:PORT or '' (disabled), got {value!r}"
    return None
