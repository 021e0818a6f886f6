"""Write configs/agent.toml and configs/collector.toml from the declared settings.

Run `python configs/render.py` after changing a setting; tests/test_config.py fails when
the files and the code disagree.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

HEADERS = {
    "agent": "# vigie-agent configuration. Every key is optional: shown here with its default.\n"
    "# Unknown keys, wrong types and bad values stop the agent with the key named.\n\n",
    "collector": "# vigie-collector configuration. Every key is optional: shown here with its "
    "default.\n# Unknown keys, wrong types and bad values stop the collector with "
    "the key named.\n\n",
}


def rendered() -> dict[str, str]:
    from agent.settings import SCHEMA as AGENT
    from collector.settings import SCHEMA as COLLECTOR
    from common.config import Documented

    return {
        name: HEADERS[name] + Documented(schema).render()
        for name, schema in (("agent", AGENT), ("collector", COLLECTOR))
    }


if __name__ == "__main__":
    for name, text in rendered().items():
        (HERE / f"{name}.toml").write_text(text, encoding="utf-8")
        print(HERE / f"{name}.toml")
