import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vigie.v1 import alert_pb2 as _alert_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertBatch(_message.Message):
    __slots__ = ("seq", "alerts")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    alerts: _containers.RepeatedCompositeFieldContainer[_alert_pb2.Alert]
    def __init__(self, seq: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[_alert_pb2.Alert, _Mapping]]] = ...) -> None: ...

class HostHealth(_message.Message):
    __slots__ = ("cpu_percent", "memory_percent", "disk_percent", "uptime_seconds", "agent_cpu_percent", "agent_rss_bytes")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISK_PERCENT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    uptime_seconds: float
    agent_cpu_percent: float
    agent_rss_bytes: int
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., disk_percent: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., agent_cpu_percent: _Optional[float] = ..., agent_rss_bytes: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "agent_version", "agent_uptime_seconds", "packets_captured", "packets_dropped", "outbox_depth", "outbox_shed", "host", "intel_version", "host_label", "retro")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_CAPTURED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_SHED_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    INTEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_LABEL_FIELD_NUMBER: _ClassVar[int]
    RETRO_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    agent_version: str
    agent_uptime_seconds: float
    packets_captured: int
    packets_dropped: int
    outbox_depth: int
    outbox_shed: int
    host: HostHealth
    intel_version: int
    host_label: str
    retro: _containers.RepeatedCompositeFieldContainer[RetroProgress]
    def __init__(self, sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., agent_uptime_seconds: _Optional[float] = ..., packets_captured: _Optional[int] = ..., packets_dropped: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., outbox_shed: _Optional[int] = ..., host: _Optional[_Union[HostHealth, _Mapping]] = ..., intel_version: _Optional[int] = ..., host_label: _Optional[str] = ..., retro: _Optional[_Iterable[_Union[RetroProgress, _Mapping]]] = ...) -> None: ...

class RetroProgress(_message.Message):
    __slots__ = ("version", "state", "matches")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    matches: int
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., matches: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("batch", "heartbeat")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    batch: AlertBatch
    heartbeat: Heartbeat
    def __init__(self, batch: _Optional[_Union[AlertBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "stored", "duplicates", "dead_lettered")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stored: int
    duplicates: int
    dead_lettered: int
    def __init__(self, seq: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., dead_lettered: _Optional[int] = ...) -> None: ...

class FlowControl(_message.Message):
    __slots__ = ("max_batches_in_flight", "max_alerts_per_second")
    MAX_BATCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_ALERTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    max_batches_in_flight: int
    max_alerts_per_second: int
    def __init__(self, max_batches_in_flight: _Optional[int] = ..., max_alerts_per_second: _Optional[int] = ...) -> None: ...

class IntelBundle(_message.Message):
    __slots__ = ("version", "ips", "domains", "ja3", "ja4", "hashes", "thresholds", "retro")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    JA3_FIELD_NUMBER: _ClassVar[int]
    JA4_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    RETRO_FIELD_NUMBER: _ClassVar[int]
    version: int
    ips: _containers.RepeatedScalarFieldContainer[str]
    domains: _containers.RepeatedScalarFieldContainer[str]
    ja3: _containers.RepeatedScalarFieldContainer[str]
    ja4: _containers.RepeatedScalarFieldContainer[str]
    hashes: _containers.RepeatedScalarFieldContainer[str]
    thresholds: _containers.ScalarMap[str, float]
    retro: _containers.RepeatedCompositeFieldContainer[RetroRequest]
    def __init__(self, version: _Optional[int] = ..., ips: _Optional[_Iterable[str]] = ..., domains: _Optional[_Iterable[str]] = ..., ja3: _Optional[_Iterable[str]] = ..., ja4: _Optional[_Iterable[str]] = ..., hashes: _Optional[_Iterable[str]] = ..., thresholds: _Optional[_Mapping[str, float]] = ..., retro: _Optional[_Iterable[_Union[RetroRequest, _Mapping]]] = ...) -> None: ...

class RetroRequest(_message.Message):
    __slots__ = ("version", "since", "published_at", "ips", "domains", "ja3", "ja4")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    JA3_FIELD_NUMBER: _ClassVar[int]
    JA4_FIELD_NUMBER: _ClassVar[int]
    version: int
    since: float
    published_at: float
    ips: _containers.RepeatedScalarFieldContainer[str]
    domains: _containers.RepeatedScalarFieldContainer[str]
    ja3: _containers.RepeatedScalarFieldContainer[str]
    ja4: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., since: _Optional[float] = ..., published_at: _Optional[float] = ..., ips: _Optional[_Iterable[str]] = ..., domains: _Optional[_Iterable[str]] = ..., ja3: _Optional[_Iterable[str]] = ..., ja4: _Optional[_Iterable[str]] = ...) -> None: ...

class IntelUpdate(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: IntelBundle
    def __init__(self, bundle: _Optional[_Union[IntelBundle, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "flow_control", "intel")
    ACK_FIELD_NUMBER: _ClassVar[int]
    FLOW_CONTROL_FIELD_NUMBER: _ClassVar[int]
    INTEL_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    flow_control: FlowControl
    intel: IntelUpdate
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., flow_control: _Optional[_Union[FlowControl, _Mapping]] = ..., intel: _Optional[_Union[IntelUpdate, _Mapping]] = ...) -> None: ...
