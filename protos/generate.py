"""Regenerate the Python code of the wire contract: `python protos/generate.py`.

The output is committed; tests/test_protos.py fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto under protos/ into out_dir; return the files written."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "vigie").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sources,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with status {rc}")
    return sorted(p for p in out_dir.rglob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
