import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vigie.v1 import alert_pb2 as _alert_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Origin(_message.Message):
    __slots__ = ("agent_id", "finess", "ght", "region")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FINESS_FIELD_NUMBER: _ClassVar[int]
    GHT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    finess: str
    ght: str
    region: str
    def __init__(self, agent_id: _Optional[str] = ..., finess: _Optional[str] = ..., ght: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class StoredAlert(_message.Message):
    __slots__ = ("alert", "origin", "received_at")
    ALERT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    alert: _alert_pb2.Alert
    origin: Origin
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, alert: _Optional[_Union[_alert_pb2.Alert, _Mapping]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("since", "until", "detector", "min_severity", "finess", "ght", "region", "page_size", "cursor")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    FINESS_FIELD_NUMBER: _ClassVar[int]
    GHT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    detector: str
    min_severity: _alert_pb2.Severity
    finess: str
    ght: str
    region: str
    page_size: int
    cursor: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detector: _Optional[str] = ..., min_severity: _Optional[_Union[_alert_pb2.Severity, str]] = ..., finess: _Optional[str] = ..., ght: _Optional[str] = ..., region: _Optional[str] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_cursor")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[StoredAlert]
    next_cursor: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[StoredAlert, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("origin", "last_seen", "agent_version", "packets_dropped", "outbox_depth", "outbox_shed", "silent")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_SHED_FIELD_NUMBER: _ClassVar[int]
    SILENT_FIELD_NUMBER: _ClassVar[int]
    origin: Origin
    last_seen: _timestamp_pb2.Timestamp
    agent_version: str
    packets_dropped: int
    outbox_depth: int
    outbox_shed: int
    silent: bool
    def __init__(self, origin: _Optional[_Union[Origin, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., packets_dropped: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., outbox_shed: _Optional[int] = ..., silent: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...
