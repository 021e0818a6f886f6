import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vigie.v1 import alert_pb2 as _alert_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IncidentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[IncidentStatus]
    STATUS_OPEN: _ClassVar[IncidentStatus]
    STATUS_ACKNOWLEDGED: _ClassVar[IncidentStatus]
    STATUS_CLOSED: _ClassVar[IncidentStatus]
STATUS_UNSPECIFIED: IncidentStatus
STATUS_OPEN: IncidentStatus
STATUS_ACKNOWLEDGED: IncidentStatus
STATUS_CLOSED: IncidentStatus

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
    __slots__ = ("origin", "last_seen", "agent_version", "packets_dropped", "outbox_depth", "outbox_shed", "silent", "dead_letters", "host_label", "name")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_SHED_FIELD_NUMBER: _ClassVar[int]
    SILENT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    HOST_LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    origin: Origin
    last_seen: _timestamp_pb2.Timestamp
    agent_version: str
    packets_dropped: int
    outbox_depth: int
    outbox_shed: int
    silent: bool
    dead_letters: int
    host_label: str
    name: str
    def __init__(self, origin: _Optional[_Union[Origin, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., packets_dropped: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., outbox_shed: _Optional[int] = ..., silent: _Optional[bool] = ..., dead_letters: _Optional[int] = ..., host_label: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class Site(_message.Message):
    __slots__ = ("finess", "ght", "region")
    FINESS_FIELD_NUMBER: _ClassVar[int]
    GHT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    finess: str
    ght: str
    region: str
    def __init__(self, finess: _Optional[str] = ..., ght: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("key", "rule", "subject", "severity", "status", "status_by", "status_at", "status_comment", "first_seen", "last_seen", "summary", "sites", "alert_count", "seq", "change")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_BY_FIELD_NUMBER: _ClassVar[int]
    STATUS_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_COMMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    ALERT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    rule: str
    subject: str
    severity: _alert_pb2.Severity
    status: IncidentStatus
    status_by: str
    status_at: _timestamp_pb2.Timestamp
    status_comment: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    summary: str
    sites: _containers.RepeatedCompositeFieldContainer[Site]
    alert_count: int
    seq: int
    change: str
    def __init__(self, key: _Optional[str] = ..., rule: _Optional[str] = ..., subject: _Optional[str] = ..., severity: _Optional[_Union[_alert_pb2.Severity, str]] = ..., status: _Optional[_Union[IncidentStatus, str]] = ..., status_by: _Optional[str] = ..., status_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_comment: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[str] = ..., sites: _Optional[_Iterable[_Union[Site, _Mapping]]] = ..., alert_count: _Optional[int] = ..., seq: _Optional[int] = ..., change: _Optional[str] = ...) -> None: ...

class IncidentDetail(_message.Message):
    __slots__ = ("incident", "alerts")
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    alerts: _containers.RepeatedCompositeFieldContainer[StoredAlert]
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ..., alerts: _Optional[_Iterable[_Union[StoredAlert, _Mapping]]] = ...) -> None: ...

class CountAlertsRequest(_message.Message):
    __slots__ = ("by", "since", "until", "region")
    BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    by: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    region: str
    def __init__(self, by: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., region: _Optional[str] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    count: int
    def __init__(self, key: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class CountAlertsResponse(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[Count]
    def __init__(self, counts: _Optional[_Iterable[_Union[Count, _Mapping]]] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("status", "min_severity", "rule", "region", "since", "page_size", "cursor")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    status: IncidentStatus
    min_severity: _alert_pb2.Severity
    rule: str
    region: str
    since: _timestamp_pb2.Timestamp
    page_size: int
    cursor: str
    def __init__(self, status: _Optional[_Union[IncidentStatus, str]] = ..., min_severity: _Optional[_Union[_alert_pb2.Severity, str]] = ..., rule: _Optional[str] = ..., region: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents", "next_cursor")
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[Incident]
    next_cursor: str
    def __init__(self, incidents: _Optional[_Iterable[_Union[Incident, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetIncidentRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class UpdateIncidentRequest(_message.Message):
    __slots__ = ("key", "status", "comment")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    key: str
    status: IncidentStatus
    comment: str
    def __init__(self, key: _Optional[str] = ..., status: _Optional[_Union[IncidentStatus, str]] = ..., comment: _Optional[str] = ...) -> None: ...

class WatchIncidentsRequest(_message.Message):
    __slots__ = ("cursor", "from_start", "min_severity", "region")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    from_start: bool
    min_severity: _alert_pb2.Severity
    region: str
    def __init__(self, cursor: _Optional[int] = ..., from_start: _Optional[bool] = ..., min_severity: _Optional[_Union[_alert_pb2.Severity, str]] = ..., region: _Optional[str] = ...) -> None: ...

class IncidentEvent(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class ExportStixRequest(_message.Message):
    __slots__ = ("since", "region")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    region: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., region: _Optional[str] = ...) -> None: ...

class ExportStixResponse(_message.Message):
    __slots__ = ("bundle_json",)
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    bundle_json: str
    def __init__(self, bundle_json: _Optional[str] = ...) -> None: ...

class PublishIntelRequest(_message.Message):
    __slots__ = ("bundle_json", "replace", "retro_seconds")
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    RETRO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    bundle_json: str
    replace: bool
    retro_seconds: float
    def __init__(self, bundle_json: _Optional[str] = ..., replace: _Optional[bool] = ..., retro_seconds: _Optional[float] = ...) -> None: ...

class PublishIntelResponse(_message.Message):
    __slots__ = ("version", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    counts: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[int] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class IntelStatusRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class IntelAgentStatus(_message.Message):
    __slots__ = ("agent_id", "finess", "ght", "region", "state", "matches", "last_seen")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FINESS_FIELD_NUMBER: _ClassVar[int]
    GHT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    finess: str
    ght: str
    region: str
    state: str
    matches: int
    last_seen: float
    def __init__(self, agent_id: _Optional[str] = ..., finess: _Optional[str] = ..., ght: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[str] = ..., matches: _Optional[int] = ..., last_seen: _Optional[float] = ...) -> None: ...

class IntelStatusResponse(_message.Message):
    __slots__ = ("version", "published_at", "since", "counts", "agents")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    published_at: float
    since: float
    counts: _containers.ScalarMap[str, int]
    agents: _containers.RepeatedCompositeFieldContainer[IntelAgentStatus]
    def __init__(self, version: _Optional[int] = ..., published_at: _Optional[float] = ..., since: _Optional[float] = ..., counts: _Optional[_Mapping[str, int]] = ..., agents: _Optional[_Iterable[_Union[IntelAgentStatus, _Mapping]]] = ...) -> None: ...
