"""The C part of the agent (agent/engine/*.c, one compilation unit each, engine.h lists
them), built at install with the machine's compiler; everything else about the package is
in pyproject.toml."""

from pathlib import Path

from setuptools import Extension, setup

ENGINE = Path("agent/engine")

setup(
    ext_modules=[
        Extension(
            "agent.engine._engine",
            sorted(str(p) for p in ENGINE.glob("*.c")),
            depends=sorted(str(p) for p in ENGINE.glob("*.h")),
            # hidden: the units' shared functions stay inside the module (only
            # PyInit__engine is exported), so they neither clash with other libraries'
            # symbols nor go through the PLT
            extra_compile_args=["-O2", "-fvisibility=hidden"],
            libraries=["m"],
        )
    ]
)
