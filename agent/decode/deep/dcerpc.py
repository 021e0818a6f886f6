"""DCE-RPC connection-oriented PDUs (over SMB2 named pipes or plain TCP): binds and requests.

A bind names interfaces by UUID per presentation context; a request carries only the
context id and the operation number. The caller keeps, per association (one TCP flow, or
one SMB2 FileId), the small map context id -> interface UUID that `parse_dcerpc` fills on
binds and reads on requests. Actions are the remote-execution facts detectors want:
a service created or started, a task registered, directory replication (DCSync).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import Any

from agent.decode.deep.common import Bad, Malformed

__all__ = ["INTERFACES", "OPERATIONS", "DceRpcMessage", "parse_dcerpc"]

SVCCTL = "367abb81-9844-35f1-ad32-98f038001003"
ATSVC = "1ff70682-0a51-30e8-076d-740be8cee98b"
TASKSCHED = "86d35949-83c9-4044-b424-db363231fd0c"
SAMR = "12345778-1234-abcd-ef00-0123456789ac"
DRSUAPI = "e3514235-4b06-11d1-ab04-00c04fc2dcd2"
LSARPC = "12345778-1234-abcd-ef00-0123456789ab"
WINREG = "338cd001-2244-31f1-aaaa-900038001003"
SRVSVC = "4b324fc8-1670-01d3-1278-5a47bf6ee188"

INTERFACES: dict[str, str] = {
    SVCCTL: "svcctl",
    ATSVC: "atsvc",
    TASKSCHED: "ITaskSchedulerService",
    SAMR: "samr",
    DRSUAPI: "drsuapi",
    LSARPC: "lsarpc",
    WINREG: "winreg",
    SRVSVC: "srvsvc",
    "6bffd098-a112-3610-9833-46c3f87e345a": "wkssvc",
    "12345678-1234-abcd-ef00-01234567cffb": "netlogon",
    "e1af8308-5d1f-11c9-91a4-08002b14a0fa": "epmapper",
    "000001a0-0000-0000-c000-000000000046": "IRemoteSCMActivator",
    "4d9f4ab8-7d1c-11cf-861e-0020af6e7c57": "IActivation",
    "f309ad18-d86a-11d0-a075-00c04fb68820": "IWbemLevel1Login",
}

# (interface, opnum) -> (operation name, action); action "" is informative only.
OPERATIONS: dict[tuple[str, int], tuple[str, str]] = {
    (SVCCTL, 0): ("CloseServiceHandle", ""),
    (SVCCTL, 1): ("ControlService", ""),
    (SVCCTL, 2): ("DeleteService", "service_delete"),
    (SVCCTL, 6): ("QueryServiceStatus", ""),
    (SVCCTL, 11): ("ChangeServiceConfigW", "service_change"),
    (SVCCTL, 12): ("CreateServiceW", "service_create"),
    (SVCCTL, 15): ("OpenSCManagerW", ""),
    (SVCCTL, 16): ("OpenServiceW", ""),
    (SVCCTL, 19): ("StartServiceW", "service_start"),
    (SVCCTL, 24): ("CreateServiceA", "service_create"),
    (SVCCTL, 31): ("StartServiceA", "service_start"),
    # PsExec creates its service through the WOW64 variant.
    (SVCCTL, 44): ("CreateServiceWOW64A", "service_create"),
    (SVCCTL, 45): ("CreateServiceWOW64W", "service_create"),
    (ATSVC, 0): ("JobAdd", "task_register"),
    (TASKSCHED, 1): ("SchRpcRegisterTask", "task_register"),
    (TASKSCHED, 12): ("SchRpcRun", "task_run"),
    (SAMR, 1): ("CloseHandle", ""),
    (SAMR, 5): ("LookupDomainInSamServer", ""),
    (SAMR, 6): ("EnumerateDomainsInSamServer", "account_enum"),
    (SAMR, 7): ("OpenDomain", ""),
    (SAMR, 16): ("GetAliasMembership", ""),
    (SAMR, 17): ("LookupNamesInDomain", ""),
    (SAMR, 34): ("OpenUser", ""),
    (SAMR, 13): ("EnumerateUsersInDomain", "account_enum"),
    (SAMR, 64): ("Connect5", ""),
    (DRSUAPI, 0): ("DsBind", ""),
    (DRSUAPI, 1): ("DsUnbind", ""),
    (DRSUAPI, 3): ("DsGetNCChanges", "replication"),
    (DRSUAPI, 12): ("DsCrackNames", ""),
    (LSARPC, 0): ("Close", ""),
    (LSARPC, 44): ("OpenPolicy2", ""),
    (WINREG, 22): ("SetValue", "registry_write"),
    (SRVSVC, 15): ("NetShareEnumAll", "share_enum"),
}

_PTYPES = {0: "request", 2: "response", 3: "fault", 11: "bind", 12: "bind_ack", 14: "alter_context"}
_HDR_LE = Struct("<HHI").unpack_from  # frag_length, auth_length, call_id
_HDR_BE = Struct(">HHI").unpack_from
_REQ_LE = Struct("<IHH").unpack_from  # alloc_hint, context id, opnum
_REQ_BE = Struct(">IHH").unpack_from
MAX_PDUS = 16
MAX_CONTEXTS = 64  # per association; a bind offering more is odd but harmless


@dataclass(slots=True)
class DceRpcMessage:
    ptype: str  # "bind", "alter_context", "request", "fault"
    call_id: int
    interfaces: tuple[tuple[int, str, str], ...] = ()  # bind: (context id, uuid, name)
    context_id: int = -1
    opnum: int = -1
    interface: str = ""  # request: interface uuid known from the bind, "" if unseen
    interface_name: str = ""
    operation: str = ""
    action: str = ""  # service_create, service_start, task_register, replication, ...
    status: int = 0  # fault status
    transport: str = "tcp"  # "tcp" or "smb"
    pipe: str = ""  # SMB named pipe the PDU went through
    kind: str = "dcerpc"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def looks_like_dcerpc(payload: bytes) -> bool:
    """Cheap signature for DCE-RPC on a port we do not know (ephemeral endpoints)."""
    return (
        len(payload) >= 16
        and payload[0] == 5
        and payload[1] == 0
        and payload[2] in _PTYPES
        and payload[4] in (0x10, 0x00)
    )


def _one(
    buf: bytes, off: int, end: int, contexts: dict[int, str], transport: str, pipe: str
) -> DceRpcMessage | None:
    if buf[off] != 5 or buf[off + 1] != 0:
        raise Bad("dcerpc_bad_version")
    ptype = buf[off + 2]
    flags = buf[off + 3]
    le = bool(buf[off + 4] & 0x10)
    call_id = (_HDR_LE if le else _HDR_BE)(buf, off + 8)[2]
    name = _PTYPES.get(ptype)
    if name is None:
        return None
    if ptype in (11, 14):
        if off + 28 > end:
            raise Bad("dcerpc_truncated")
        n = buf[off + 24]
        p = off + 28
        ifaces = []
        for _ in range(n):
            if p + 24 > end:
                break  # rest of the bind is in the next segment: keep what we have
            ctx = buf[p] | buf[p + 1] << 8 if le else buf[p] << 8 | buf[p + 1]
            ntrans = buf[p + 2]
            raw = bytes(buf[p + 4 : p + 20])
            u = str(uuid.UUID(bytes_le=raw) if le else uuid.UUID(bytes=raw))
            ifaces.append((ctx, u, INTERFACES.get(u, "")))
            if len(contexts) < MAX_CONTEXTS or ctx in contexts:
                contexts[ctx] = u
            p += 24 + 20 * ntrans
        return DceRpcMessage(name, call_id, tuple(ifaces), transport=transport, pipe=pipe)
    if ptype == 0:
        if off + 24 > end:
            raise Bad("dcerpc_truncated")
        _hint, ctx, opnum = (_REQ_LE if le else _REQ_BE)(buf, off + 16)
        del flags  # PFC_OBJECT_UUID only moves the stub, which we never read
        iface = contexts.get(ctx, "")
        op, action = OPERATIONS.get((iface, opnum), ("", ""))
        return DceRpcMessage(
            name,
            call_id,
            context_id=ctx,
            opnum=opnum,
            interface=iface,
            interface_name=INTERFACES.get(iface, ""),
            operation=op,
            action=action,
            transport=transport,
            pipe=pipe,
        )
    if ptype == 3:
        if off + 28 > end:
            raise Bad("dcerpc_truncated")
        st = buf[off + 24 : off + 28]
        status = int.from_bytes(st, "little" if le else "big")
        return DceRpcMessage(name, call_id, status=status, transport=transport, pipe=pipe)
    return None  # responses and bind acks carry nothing detectors use


def parse_dcerpc(
    data: bytes, contexts: dict[int, str], transport: str = "tcp", pipe: str = ""
) -> list[DceRpcMessage | Malformed]:
    """Decode the PDUs in `data` (which starts at a PDU boundary); `contexts` is updated."""
    out: list[DceRpcMessage | Malformed] = []
    off = 0
    n = len(data)
    try:
        for _ in range(MAX_PDUS):
            if off + 16 > n:
                if off == 0:
                    out.append(Malformed("dcerpc_truncated"))
                break
            le = bool(data[off + 4] & 0x10)
            frag = (_HDR_LE if le else _HDR_BE)(data, off + 8)[0]
            if frag < 16:
                raise Bad("dcerpc_bad_length")
            end = min(off + frag, n)
            msg = _one(data, off, end, contexts, transport, pipe)
            if msg is not None:
                out.append(msg)
            off += frag
            if off >= n:
                break
    except Bad as e:
        out.append(Malformed(e.reason))
    except (IndexError, ValueError, StructError):
        out.append(Malformed("dcerpc_truncated"))
    return out
