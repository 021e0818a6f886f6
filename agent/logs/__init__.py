"""The host's logs as an event source: the systemd journal and classic text logs, followed
as `tail -F` follows them, parsed into `LogEvent`s that the log detectors
(agent/logs/detectors) read through the pipeline's `on_log` hook. docs/HOST_LOGS.md."""
