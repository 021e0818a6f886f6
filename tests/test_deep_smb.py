"""SMB2 / DCE-RPC: remote execution, admin shares, NTLM logon failures, on real captures."""

from __future__ import annotations

import struct
import uuid

from agent.decode.deep.common import Malformed
from agent.decode.deep.dcerpc import TASKSCHED, DceRpcMessage, parse_dcerpc
from agent.decode.deep.smb import STATUS_LOGON_FAILURE, SmbState, admin_share, parse_smb
from tests.conftest import CORPUS
from tests.deep_support import messages, needs_corpus


def actions(msgs: list) -> set[str]:
    return {m.action for m in msgs if m.kind in ("smb", "dcerpc") and m.action}


def bind(iface: str, ctx: int = 0) -> bytes:
    item = struct.pack("<HBB", ctx, 1, 0) + uuid.UUID(iface).bytes_le + struct.pack("<HH", 1, 0)
    item += uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + struct.pack("<I", 2)
    body = struct.pack("<HHIB3x", 4280, 4280, 0, 1) + item
    return struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + len(body), 0, 2) + body


def request(ctx: int, opnum: int, stub: bytes = b"\0" * 8) -> bytes:
    body = struct.pack("<IHH", len(stub), ctx, opnum) + stub
    return struct.pack("<BBBB4sHHI", 5, 0, 0, 3, b"\x10\0\0\0", 16 + len(body), 0, 3) + body


def test_task_scheduler_bind_then_register_same_segment() -> None:
    ctx: dict[int, str] = {}
    msgs = parse_dcerpc(bind(TASKSCHED, 1) + request(1, 1), ctx, "smb", "atsvc")
    assert [m.ptype for m in msgs] == ["bind", "request"]
    assert msgs[0].interfaces == ((1, TASKSCHED, "ITaskSchedulerService"),)
    req = msgs[1]
    assert isinstance(req, DceRpcMessage)
    assert (req.interface_name, req.operation, req.action) == (
        "ITaskSchedulerService",
        "SchRpcRegisterTask",
        "task_register",
    )


def test_request_on_unknown_context_keeps_opnum() -> None:
    (m,) = parse_dcerpc(request(7, 12), {})
    assert m.opnum == 12 and m.interface == "" and m.action == ""


def test_dcerpc_garbage() -> None:
    assert parse_dcerpc(b"\x05\x00\x00\x03\x10\0\0\0\x05\x00", {}) == [
        Malformed("dcerpc_truncated")
    ]
    bad = bytearray(request(0, 0))
    bad[8:10] = b"\x04\x00"  # fragment length below the header size
    assert parse_dcerpc(bytes(bad), {}) == [Malformed("dcerpc_bad_length")]


def test_admin_share_names() -> None:
    assert admin_share("\\\\host\\ADMIN$") and admin_share("\\\\host\\c$")
    assert not admin_share("\\\\host\\IPC$") and not admin_share("\\\\host\\data")


def test_smb_bad_magic_counted_and_continuation_skipped() -> None:
    st = SmbState()
    assert parse_smb(b"\x00\x00\x00\x08XXXXXXXX", st, True) == [Malformed("smb_bad_magic")]
    # A header announcing 1000 bytes, then the rest arrives as bare continuation data.
    hdr = b"\x00\x00\x03\xe8\xfeSMB" + struct.pack("<H", 64) + b"\0" * 58
    parse_smb(hdr, st, True)
    assert parse_smb(b"\x00" * 500, st, True) == []
    assert st.skip[0] == 1000 - 64 - 500


@needs_corpus
def test_psexec_writes_to_admin_share_and_starts_service() -> None:
    msgs, stats = messages(CORPUS / "smb/smb2_psexec_service_add_user.pcap")
    assert {"admin_share_write", "service_create", "service_start"} <= actions(msgs)
    writes = [m for m in msgs if m.kind == "smb" and m.action == "admin_share_write"]
    assert all(m.share.upper().endswith("ADMIN$") for m in writes)
    assert {m.filename for m in writes} == {"PSEXESVC.exe"}
    svc = [m for m in msgs if m.kind == "dcerpc" and m.interface_name == "svcctl"]
    assert {m.pipe for m in svc} == {"svcctl"} and {m.transport for m in svc} == {"smb"}
    # the endpoint mapper lookup before it goes over TCP 135
    epm = [m for m in msgs if m.kind == "dcerpc" and m.interface_name == "epmapper"]
    assert epm and {m.transport for m in epm} == {"tcp"}
    assert not stats.malformed


@needs_corpus
def test_svcctl_over_plain_tcp() -> None:
    msgs, stats = messages(CORPUS / "smb/dcerpc_svcctl_remote_service_start.pcap")
    ops = [m.operation for m in msgs if m.kind == "dcerpc" and m.ptype == "request"]
    assert "OpenSCManagerW" in ops and "StartServiceW" in ops
    assert {"service_create", "service_start"} <= actions(msgs)
    assert not stats.malformed


@needs_corpus
def test_atsvc_job_add() -> None:
    msgs, _ = messages(CORPUS / "smb/smb2_atsvc_remote_scheduled_task.pcap")
    (job,) = [m for m in msgs if m.kind == "dcerpc" and m.operation == "JobAdd"]
    assert job.interface_name == "atsvc" and job.action == "task_register"
    assert job.pipe == "atsvc"


@needs_corpus
def test_samr_enumeration_and_drsuapi() -> None:
    msgs, _ = messages(CORPUS / "smb/smb2_samr_net_user_enum.pcap")
    names = {m.interface_name for m in msgs if m.kind == "dcerpc" and m.ptype == "request"}
    assert {"samr", "lsarpc"} <= names
    msgs, _ = messages(CORPUS / "smb/dcerpc_drsuapi_dsbind_dscracknames.pcap")
    ops = [m.operation for m in msgs if m.kind == "dcerpc" and m.ptype == "request"]
    assert ops[:2] == ["DsBind", "DsCrackNames"]


@needs_corpus
def test_admin_share_connect_and_file_name() -> None:
    msgs, _ = messages(CORPUS / "smb/smb2_copy_mimikatz_to_admin_share.pcap")
    trees = [m for m in msgs if m.kind == "smb" and m.command_name == "tree_connect"]
    assert trees[0].share.lower() == "\\\\admin-pc\\c$"
    assert trees[0].action == "admin_share_connect"
    files = {m.filename for m in msgs if m.kind == "smb" and m.command_name == "create"}
    assert "temp\\mimikatz.exe" in files


@needs_corpus
def test_ntlm_logon_failures() -> None:
    msgs, _ = messages(CORPUS / "bruteforce/smb_ntlm_logon_failures.pcap")
    fails = [m for m in msgs if m.kind == "smb" and m.action == "logon_failure"]
    assert len(fails) == 5
    assert all(m.status == STATUS_LOGON_FAILURE for m in fails)
    assert all(m.ntlm_domain == "DESKTOP-2AEFM7G" for m in fails)
    ok = [m for m in msgs if m.kind == "smb" and m.action == "logon_ok" and m.ntlm_user]
    assert [m.ntlm_user for m in ok] == ["Willi Wireshark"]


@needs_corpus
def test_encrypted_free_smb_corpus_has_no_malformed() -> None:
    for path in sorted((CORPUS / "smb").glob("*.pcap")):
        _, stats = messages(path)
        assert not stats.malformed, path.name
