"""The C part of the agent (agent/engine/_engine.c and the files it #includes), built at
install with the machine's compiler; everything else about the package is in
pyproject.toml."""

from pathlib import Path

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent.engine._engine",
            ["agent/engine/_engine.c"],
            depends=sorted(str(p) for p in Path("agent/engine").glob("*.c")),
            extra_compile_args=["-O2"],
            libraries=["m"],
        )
    ]
)
