import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class EntityRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[EntityRole]
    ROLE_SOURCE: _ClassVar[EntityRole]
    ROLE_TARGET: _ClassVar[EntityRole]
    ROLE_INDICATOR: _ClassVar[EntityRole]
    ROLE_CONTEXT: _ClassVar[EntityRole]

class EntityKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[EntityKind]
    KIND_IP: _ClassVar[EntityKind]
    KIND_DOMAIN: _ClassVar[EntityKind]
    KIND_HOSTNAME: _ClassVar[EntityKind]
    KIND_USER: _ClassVar[EntityKind]
    KIND_TLS_SNI: _ClassVar[EntityKind]
    KIND_JA3: _ClassVar[EntityKind]
    KIND_JA4: _ClassVar[EntityKind]
    KIND_HASH: _ClassVar[EntityKind]
    KIND_MAC: _ClassVar[EntityKind]
    KIND_AE_TITLE: _ClassVar[EntityKind]
    KIND_PROCESS: _ClassVar[EntityKind]
    KIND_PORT: _ClassVar[EntityKind]
    KIND_PROTOCOL: _ClassVar[EntityKind]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
ROLE_UNSPECIFIED: EntityRole
ROLE_SOURCE: EntityRole
ROLE_TARGET: EntityRole
ROLE_INDICATOR: EntityRole
ROLE_CONTEXT: EntityRole
KIND_UNSPECIFIED: EntityKind
KIND_IP: EntityKind
KIND_DOMAIN: EntityKind
KIND_HOSTNAME: EntityKind
KIND_USER: EntityKind
KIND_TLS_SNI: EntityKind
KIND_JA3: EntityKind
KIND_JA4: EntityKind
KIND_HASH: EntityKind
KIND_MAC: EntityKind
KIND_AE_TITLE: EntityKind
KIND_PROCESS: EntityKind
KIND_PORT: EntityKind
KIND_PROTOCOL: EntityKind

class Entity(_message.Message):
    __slots__ = ("role", "kind", "value", "pseudonymised")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYMISED_FIELD_NUMBER: _ClassVar[int]
    role: EntityRole
    kind: EntityKind
    value: str
    pseudonymised: bool
    def __init__(self, role: _Optional[_Union[EntityRole, str]] = ..., kind: _Optional[_Union[EntityKind, str]] = ..., value: _Optional[str] = ..., pseudonymised: _Optional[bool] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "revision", "observed_at", "first_seen", "last_seen", "detector", "severity", "technique", "summary", "entities", "metrics", "occurrences", "key_epoch")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    observed_at: _timestamp_pb2.Timestamp
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    detector: str
    severity: Severity
    technique: str
    summary: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    metrics: _containers.ScalarMap[str, float]
    occurrences: int
    key_epoch: int
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detector: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., technique: _Optional[str] = ..., summary: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., occurrences: _Optional[int] = ..., key_epoch: _Optional[int] = ...) -> None: ...
