"""Where incidents go: JSON lines file, syslog, HTTPS webhook, STIX 2.1 bundle files.

Build the enabled sinks from the `[sinks]` config section with `build_sinks`, then call
`send(incident, alerts)` on each for every incident change; see `base.py`.
"""

from collector.sinks.base import (
    OPTIONS,
    Sink,
    SinkError,
    build_sinks,
    incident_dict,
)

__all__ = ["OPTIONS", "Sink", "SinkError", "build_sinks", "incident_dict"]
