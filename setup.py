"""The C part of the agent (agent/engine/_engine.c), built at install with the machine's
compiler; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent.engine._engine",
            ["agent/engine/_engine.c"],
            # #included by _engine.c
            depends=[f"agent/engine/{n}.c" for n in ("dnsstat", "httpfilter", "scan", "table")],
            extra_compile_args=["-O2"],
            libraries=["m"],
        )
    ]
)
