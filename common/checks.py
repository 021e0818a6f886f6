"""One check's result, as both programs' `doctor` print it: status, name, what was found
and, when not OK, the fix."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Result:
    status: str
    check: str
    message: str
    remedy: str = ""

    def line(self) -> str:
        out = f"{self.status:<4}  {self.check:<14} {self.message}"
        if self.remedy and self.status != OK:
            out += f"\n{'':20}fix: {self.remedy}"
        return out
