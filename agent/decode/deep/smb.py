"""SMB2 over TCP 445/139 (NetBIOS session framing): what lateral movement leaves behind.

Per SMB2 PDU: command, status, the tree-connect path, create file names, session-setup
results and, inside NTLMSSP AUTHENTICATE, the user and domain names. These two are
personal data: they are fields here so that detectors can count per user, and leave the
agent only through the anonymiser as user entities.

Names given in requests are only tied to ids in the answers (TreeId in the TREE_CONNECT
response, FileId in the CREATE response), so a small per-flow `SmbState` remembers them,
and the DCE-RPC context maps of each named pipe. Every map is bounded. SMB1 is reported
with its command and status only; encrypted and compressed transforms by their kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import Any

from agent.decode.deep.common import Bad, Malformed, utf16
from agent.decode.deep.dcerpc import DceRpcMessage, parse_dcerpc

__all__ = ["LOGON_FAILURES", "SmbMessage", "SmbState", "parse_smb"]

_HDR = Struct("<4sHHIHHIIQIIQ").unpack_from  # up to SessionId
_U16 = Struct("<H").unpack_from
_U32 = Struct("<I").unpack_from
_FIELD = Struct("<HHI").unpack_from  # NTLMSSP length, max length, offset

COMMANDS = (
    "negotiate", "session_setup", "logoff", "tree_connect", "tree_disconnect", "create",
    "close", "flush", "read", "write", "lock", "ioctl", "cancel", "echo", "query_directory",
    "change_notify", "query_info", "set_info", "oplock_break",
)  # fmt: skip

STATUS_LOGON_FAILURE = 0xC000006D
LOGON_FAILURES = frozenset(
    (
        STATUS_LOGON_FAILURE,
        0xC0000064,  # NO_SUCH_USER
        0xC000006A,  # WRONG_PASSWORD
        0xC000006E,  # ACCOUNT_RESTRICTION
        0xC0000071,  # PASSWORD_EXPIRED
        0xC0000072,  # ACCOUNT_DISABLED
        0xC000015B,  # LOGON_TYPE_NOT_GRANTED
        0xC0000234,  # ACCOUNT_LOCKED_OUT
    )
)
STATUS_MORE_PROCESSING = 0xC0000016
FSCTL_PIPE_TRANSCEIVE = 0x0011C017
MAX_COMPOUND = 16
MAX_NAME = 1024  # bytes of UTF-16 kept for a path or file name
MAX_IDS = 256  # per map and flow; past it the map is cleared (a new session re-learns)


@dataclass(slots=True)
class SmbMessage:
    version: int  # 1 or 2 (SMB 3.x dialects are SMB2 on the wire)
    command: int  # -1 for encrypted/compressed transforms
    command_name: str
    response: bool
    status: int
    message_id: int = 0
    tree_id: int = 0
    session_id: int = 0
    share: str = ""  # \\host\share of the tree this PDU is on, when known
    filename: str = ""  # CREATE name, or the name behind a FileId (READ/WRITE/IOCTL)
    ntlm_type: int = 0  # 1 negotiate, 2 challenge, 3 authenticate
    ntlm_user: str = ""  # personal data: report through the anonymiser only
    ntlm_domain: str = ""
    write_length: int = 0
    action: str = ""  # logon_ok, logon_failure, admin_share_write, admin_share_connect
    kind: str = "smb"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


class SmbState:
    """What one SMB flow has taught us so far (bounded maps)."""

    __slots__ = ("auth", "creates", "files", "rpc", "skip", "tree_reqs", "trees")

    def __init__(self) -> None:
        self.trees: dict[int, str] = {}
        self.tree_reqs: dict[int, str] = {}  # message id -> requested path
        self.creates: dict[int, str] = {}  # message id -> requested name
        self.files: dict[bytes, str] = {}  # FileId -> name
        self.rpc: dict[bytes, dict[int, str]] = {}  # FileId -> DCE-RPC context map
        self.auth: dict[int, tuple[str, str]] = {}  # message id -> (user, domain) tried
        self.skip = [0, 0]  # bytes of a PDU still to come, per direction


def _put(d: dict, k: Any, v: Any) -> None:
    if len(d) >= MAX_IDS and k not in d:
        d.clear()
    d[k] = v


def admin_share(path: str) -> bool:
    """ADMIN$ or a drive share (C$, D$...): writing there is remote administration."""
    share = path.rsplit("\\", 1)[-1].upper()
    return share == "ADMIN$" or (len(share) == 2 and share[1] == "$" and share[0].isalpha())


def _ntlm(blob: bytes, msg: SmbMessage) -> None:
    i = blob.find(b"NTLMSSP\x00")
    if i < 0 or i + 12 > len(blob):
        return
    msg.ntlm_type = _U32(blob, i + 8)[0]
    if msg.ntlm_type != 3 or i + 64 > len(blob):
        return
    unicode = _U32(blob, i + 60)[0] & 1

    def get(at: int) -> str:
        ln, _max, off = _FIELD(blob, i + at)
        raw = blob[i + off : i + off + min(ln, MAX_NAME)]
        return utf16(raw) if unicode else raw.decode("latin-1")

    msg.ntlm_domain = get(28)
    msg.ntlm_user = get(36)


def _rpc(data: bytes, fid: bytes, st: SmbState, out: list, share: str) -> None:
    if len(data) < 16 or data[0] != 5 or data[1] != 0:
        return
    ctx = st.rpc.get(fid)
    if ctx is None:
        ctx = {}
        _put(st.rpc, fid, ctx)
    pipe = st.files.get(fid, "")
    out.extend(parse_dcerpc(data, ctx, "smb", pipe))


def _smb2(buf: bytes, h: int, end: int, st: SmbState, out: list) -> int:
    """Decode the PDU at `h`; return the offset of the next compounded PDU or 0."""
    if h + 64 > end:
        raise Bad("smb_truncated")
    (_m, size, _cc, status, cmd, _cr, flags, nxt, mid, _pid, tree, sess) = _HDR(buf, h)
    if size != 64:
        raise Bad("smb_bad_header")
    resp = bool(flags & 1)
    if flags & 2:
        tree = 0  # async header: the AsyncId replaces ProcessId and TreeId
    b = h + 64
    msg = SmbMessage(
        2, cmd, COMMANDS[cmd] if cmd < len(COMMANDS) else f"cmd_{cmd}", resp, status, mid,
        tree, sess, st.trees.get(tree, ""),
    )  # fmt: skip
    if cmd == 1:  # SESSION_SETUP
        at = b + (4 if resp else 12)
        if at + 4 <= end:
            off, ln = _U16(buf, at)[0], _U16(buf, at + 2)[0]
            _ntlm(bytes(buf[h + off : min(h + off + ln, end)]), msg)
        if not resp and msg.ntlm_type == 3:
            _put(st.auth, mid, (msg.ntlm_user, msg.ntlm_domain))
        elif resp and mid in st.auth:
            # The answer names no user: carry the one tried, so a failure is attributable.
            msg.ntlm_user, msg.ntlm_domain = st.auth.pop(mid)
        if resp and status != STATUS_MORE_PROCESSING:
            msg.action = (
                "logon_ok" if status == 0 else ("logon_failure" if status in LOGON_FAILURES else "")
            )
    elif cmd == 3:  # TREE_CONNECT
        if not resp and b + 8 <= end:
            off, ln = _U16(buf, b + 4)[0], _U16(buf, b + 6)[0]
            path = utf16(buf[h + off : h + off + min(ln, MAX_NAME)])
            msg.share = path
            _put(st.tree_reqs, mid, path)
            if admin_share(path):
                msg.action = "admin_share_connect"
        elif resp:
            path = st.tree_reqs.pop(mid, "")
            if path and status == 0:
                _put(st.trees, tree, path)
            msg.share = path or msg.share
    elif cmd == 5:  # CREATE
        if not resp and b + 48 <= end:
            off, ln = _U16(buf, b + 44)[0], _U16(buf, b + 46)[0]
            name = utf16(buf[h + off : h + off + min(ln, MAX_NAME)])
            msg.filename = name
            _put(st.creates, mid, name)
        elif resp:
            name = st.creates.pop(mid, "")
            msg.filename = name
            if status == 0 and b + 80 <= end:
                _put(st.files, bytes(buf[b + 64 : b + 80]), name)
    elif cmd == 9 and not resp and b + 32 <= end:  # WRITE
        doff, length = _U16(buf, b + 2)[0], _U32(buf, b + 4)[0]
        fid = bytes(buf[b + 16 : b + 32])
        msg.filename = st.files.get(fid, "")
        msg.write_length = length
        if admin_share(msg.share):
            msg.action = "admin_share_write"
        out.append(msg)
        _rpc(bytes(buf[h + doff : min(h + doff + length, end)]), fid, st, out, msg.share)
        return h + nxt if nxt else 0
    elif cmd == 11 and not resp and b + 32 <= end:  # IOCTL
        ctl = _U32(buf, b + 4)[0]
        fid = bytes(buf[b + 8 : b + 24])
        msg.filename = st.files.get(fid, "")
        if ctl == FSCTL_PIPE_TRANSCEIVE:
            ioff, icount = _U32(buf, b + 24)[0], _U32(buf, b + 28)[0]
            out.append(msg)
            _rpc(bytes(buf[h + ioff : min(h + ioff + icount, end)]), fid, st, out, msg.share)
            return h + nxt if nxt else 0
    elif cmd in (6, 8) and not resp and b + 32 <= end:  # CLOSE, READ name their FileId
        fid = bytes(buf[b + 8 : b + 24] if cmd == 6 else buf[b + 16 : b + 32])
        msg.filename = st.files.get(fid, "")
    out.append(msg)
    return h + nxt if nxt else 0


def parse_smb(
    payload: bytes, st: SmbState, to_server: bool
) -> list[SmbMessage | DceRpcMessage | Malformed]:
    """Decode the NetBIOS-framed SMB PDUs of one TCP segment (continuations are skipped)."""
    out: list = []
    n = len(payload)
    d = 0 if to_server else 1
    off = 0
    if n >= 8 and payload[0] == 0 and payload[5:8] == b"SMB" and payload[4] in b"\xfe\xff\xfd\xfc":
        st.skip[d] = 0  # a fresh PDU start wins over what we expected (retransmission, loss)
    elif st.skip[d]:
        if st.skip[d] >= n:
            st.skip[d] -= n
            return out
        off = st.skip[d]
        st.skip[d] = 0
    try:
        for _ in range(MAX_COMPOUND):
            if off + 4 > n:
                break
            ftype = payload[off]
            flen = payload[off + 1] << 16 | payload[off + 2] << 8 | payload[off + 3]
            start = off + 4
            end = start + flen
            if end > n:
                st.skip[d] = end - n
                end = n
            off = start + flen
            if ftype != 0:
                if ftype not in (0x81, 0x82, 0x83, 0x84, 0x85):
                    raise Bad("smb_bad_netbios")
                continue  # session request/response, keepalive
            if end - start < 8:
                if flen:
                    raise Bad("smb_truncated")
                continue
            magic = payload[start : start + 4]
            if magic == b"\xfeSMB":
                h = start
                for _ in range(MAX_COMPOUND):
                    nh = _smb2(payload, h, end, st, out)
                    if not nh or nh <= h or nh >= end:
                        break
                    h = nh
            elif magic == b"\xffSMB":
                if end - start < 32:
                    raise Bad("smb_truncated")
                out.append(
                    SmbMessage(
                        1,
                        payload[start + 4],
                        f"smb1_{payload[start + 4]:#04x}",
                        bool(payload[start + 9] & 0x80),
                        _U32(payload, start + 5)[0],
                    )
                )
            elif magic == b"\xfdSMB":
                out.append(SmbMessage(2, -1, "encrypted", False, 0))
            elif magic == b"\xfcSMB":
                out.append(SmbMessage(2, -1, "compressed", False, 0))
            else:
                raise Bad("smb_bad_magic")
    except Bad as e:
        st.skip[d] = 0
        out.append(Malformed(e.reason))
    except (IndexError, ValueError, StructError):
        st.skip[d] = 0
        out.append(Malformed("smb_truncated"))
    return out
