/* Frame decoding, and Packet (see decode.h).
 *
 * Semantics follow the pure-Python decoder this replaced and the tests that pinned it
 * (tests/test_decode.py, tests/test_hostile_decode.py): a frame is decoded as far as its
 * captured bytes allow, and a frame cut by the snaplen keeps what it has.
 */
#include "decode.h"

#include <string.h>
#include <structmember.h>

const char *const REASONS[N_REASONS] = {
    "ether_truncated", "sll_truncated", "sll2_truncated", "loopback_truncated",
    "raw_truncated", "raw_bad_version", "vlan_truncated", "ipv4_truncated",
    "ipv4_bad_version", "ipv4_bad_header_length", "ipv4_bad_total_length",
    "ipv6_truncated", "ipv6_bad_version", "ipv6_ext_truncated", "tcp_truncated",
    "tcp_bad_offset", "udp_truncated", "icmp_truncated", "arp_truncated",
    "arp_bad_lengths",
    /* skipped from here */
    "arp_other", "loopback_family_other", "linktype_unsupported", "ethertype_other",
};
_Static_assert(sizeof(REASONS) / sizeof(REASONS[0]) == N_REASONS, "N_REASONS: one per name");

enum {
    R_ETHER_TRUNC = 1, R_SLL_TRUNC, R_SLL2_TRUNC, R_LOOP_TRUNC, R_RAW_TRUNC, R_RAW_VER,
    R_VLAN_TRUNC, R_IP4_TRUNC, R_IP4_VER, R_IP4_HL, R_IP4_TLEN, R_IP6_TRUNC, R_IP6_VER,
    R_IP6_EXT, R_TCP_TRUNC, R_TCP_OFF, R_UDP_TRUNC, R_ICMP_TRUNC, R_ARP_TRUNC, R_ARP_LEN,
    R_ARP_OTHER, R_LOOP_FAM, R_LINKTYPE, R_ETHERTYPE,
};

static int l4(pkt_t *k, const uint8_t *f, Py_ssize_t flen, Py_ssize_t p, Py_ssize_t ipend)
{
    /* ipend: where the IP header says the datagram ends; end: where the captured bytes
     * do. They differ when the capture was cut by its snaplen. */
    Py_ssize_t end = ipend < flen ? ipend : flen;
    k->sport = k->dport = k->flags = 0;
    if (k->frag == 2) {
        k->payload = f + p;
        k->plen = end > p ? end - p : 0;
    } else if (k->proto == 6) {
        if (end - p < 14) return R_TCP_TRUNC;
        k->sport = u16(f + p);
        k->dport = u16(f + p + 2);
        int offb = f[p + 12];
        k->flags = f[p + 13];
        Py_ssize_t q = p + ((offb >> 4) << 2);
        if (offb < 0x50 || q > ipend) return R_TCP_OFF;
        /* Header cut by the snaplen: ports and flags are still worth having. */
        k->payload = f + q;
        k->plen = q <= end ? end - q : 0;
        k->dlen = ipend > q ? ipend - q : 0;
    } else if (k->proto == 17) {
        if (end - p < 8) return R_UDP_TRUNC;
        k->sport = u16(f + p);
        k->dport = u16(f + p + 2);
        int ulen = u16(f + p + 4);
        if (ulen >= 8 && p + ulen < end) end = p + ulen;
        k->payload = f + p + 8;
        k->plen = end > p + 8 ? end - p - 8 : 0;
    } else if (k->proto == 1 || k->proto == 58) {
        if (end - p < 4) return R_ICMP_TRUNC;
        k->sport = f[p];
        k->dport = f[p + 1];
        int echo = k->proto == 1 ? (k->sport == 8 || k->sport == 0)
                                 : (k->sport == 128 || k->sport == 129);
        /* Echo data past the identifier/sequence is what ICMP tunnels carry. */
        Py_ssize_t s = p + (echo ? 8 : 4);
        k->payload = f + s;
        k->plen = end > s ? end - s : 0;
    } else {
        k->payload = f + p;
        k->plen = end > p ? end - p : 0;
    }
    if (k->proto != 6 || k->frag == 2) k->dlen = k->plen;
    return 0;
}

static int ipv4(pkt_t *k, const uint8_t *f, Py_ssize_t flen, Py_ssize_t off)
{
    if (flen - off < 20) return R_IP4_TRUNC;
    int vhl = f[off];
    if (vhl >> 4 != 4) return R_IP4_VER;
    int hl = (vhl & 15) << 2;
    if (hl < 20) return R_IP4_HL;
    if (off + hl > flen) return R_IP4_TRUNC;
    int tlen = u16(f + off + 2);
    Py_ssize_t ipend;
    if (tlen == 0) ipend = flen; /* segmentation offload ("assuming TSO") */
    else if (tlen < hl) return R_IP4_TLEN;
    else ipend = off + tlen;
    int fragw = u16(f + off + 6);
    k->frag = (fragw & 0x3FFF) ? ((fragw & 0x1FFF) ? 2 : 1) : 0;
    k->ttl = f[off + 8];
    k->proto = f[off + 9];
    k->ver = 4;
    k->alen = 4;
    memcpy(k->src, f + off + 12, 4);
    memcpy(k->dst, f + off + 16, 4);
    return l4(k, f, flen, off + hl, ipend);
}

static int ipv6(pkt_t *k, const uint8_t *f, Py_ssize_t flen, Py_ssize_t off)
{
    if (flen - off < 40) return R_IP6_TRUNC;
    if (f[off] >> 4 != 6) return R_IP6_VER;
    int plen = u16(f + off + 4);
    int nxt = f[off + 6];
    k->ttl = f[off + 7];
    memcpy(k->src, f + off + 8, 16);
    memcpy(k->dst, f + off + 24, 16);
    Py_ssize_t p = off + 40;
    Py_ssize_t ipend = plen ? p + plen : flen; /* 0: jumbogram or segmentation offload */
    Py_ssize_t end = ipend < flen ? ipend : flen;
    k->frag = 0;
    while (nxt == 0 || nxt == 43 || nxt == 44 || nxt == 51 || nxt == 60) {
        if (p + 8 > end) return R_IP6_EXT;
        if (nxt == 44) {
            int fo = u16(f + p + 2);
            nxt = f[p];
            p += 8;
            if (fo & 0xFFF8) { k->frag = 2; break; }
            if (fo & 1) k->frag = 1;
        } else if (nxt == 51) { /* AH counts its length in 4-byte units */
            int n = f[p + 1];
            nxt = f[p];
            p += (n + 2) << 2;
        } else {
            int n = f[p + 1];
            nxt = f[p];
            p += (n + 1) << 3;
        }
    }
    if (p > end) return R_IP6_EXT;
    k->ver = 6;
    k->alen = 16;
    k->proto = nxt;
    return l4(k, f, flen, p, ipend);
}

static int arp(pkt_t *k, const uint8_t *f, Py_ssize_t flen, Py_ssize_t off)
{
    if (flen - off < 8) return R_ARP_TRUNC;
    int htype = u16(f + off), ptype = u16(f + off + 2), hlen = f[off + 4], plen = f[off + 5];
    if (hlen != 6 || plen != 4) return R_ARP_LEN;
    if (htype != 1 || ptype != 0x0800) return R_ARP_OTHER;
    if (flen - off < 28) return R_ARP_TRUNC;
    k->op = u16(f + off + 6);
    k->smac = f + off + 8;
    memcpy(k->src, f + off + 14, 4);
    k->dmac = f + off + 18;
    memcpy(k->dst, f + off + 24, 4);
    k->ver = 0;
    k->alen = 4;
    k->proto = P_ARP;
    k->sport = k->dport = k->flags = k->frag = k->ttl = 0;
    k->payload = f;
    k->plen = 0;
    return 0;
}

int decode(pkt_t *k, double ts, int linktype, uint32_t wirelen, const uint8_t *f,
           Py_ssize_t flen)
{
    k->ts = ts;
    k->wirelen = wirelen;
    k->smac = k->dmac = NULL;
    k->vlan = 0;
    k->op = 0;
    Py_ssize_t off;
    int etype;
    if (linktype == 1) {
        if (flen < 14) return R_ETHER_TRUNC;
        k->dmac = f;
        k->smac = f + 6;
        etype = u16(f + 12);
        off = 14;
    } else if (linktype == 113) { /* Linux cooked v1 */
        if (flen < 16) return R_SLL_TRUNC;
        if (f[4] == 0 && f[5] == 6) k->smac = f + 6;
        etype = u16(f + 14);
        off = 16;
    } else if (linktype == 276) { /* Linux cooked v2 */
        if (flen < 20) return R_SLL2_TRUNC;
        if (f[11] == 6) k->smac = f + 12;
        etype = u16(f);
        off = 20;
    } else if (linktype == 0 || linktype == 108) {
        if (flen < 4) return R_LOOP_TRUNC;
        /* The family is in the writer's byte order (DLT_NULL) or network order
         * (DLT_LOOP); families are small, so the smaller reading is the right one. */
        uint32_t le = f[0] | f[1] << 8 | f[2] << 16 | (uint32_t)f[3] << 24;
        uint32_t be = (uint32_t)f[0] << 24 | f[1] << 16 | f[2] << 8 | f[3];
        uint32_t fam = le < be ? le : be;
        if (fam == 2) return ipv4(k, f, flen, 4);
        if (fam == 24 || fam == 28 || fam == 30) return ipv6(k, f, flen, 4);
        return R_LOOP_FAM;
    } else if (linktype == 101 || linktype == 12 || linktype == 14) {
        if (!flen) return R_RAW_TRUNC;
        int v = f[0] >> 4;
        if (v == 4) return ipv4(k, f, flen, 0);
        if (v == 6) return ipv6(k, f, flen, 0);
        return R_RAW_VER;
    } else if (linktype == 228) {
        return ipv4(k, f, flen, 0);
    } else if (linktype == 229) {
        return ipv6(k, f, flen, 0);
    } else {
        return R_LINKTYPE;
    }
    while (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) {
        if (off + 4 > flen) return R_VLAN_TRUNC;
        /* Outermost non-zero id: a priority tag (VID 0) names no VLAN. */
        if (!k->vlan) k->vlan = u16(f + off) & 0xFFF;
        etype = u16(f + off + 2);
        off += 4;
    }
    if (etype == 0x0800) return ipv4(k, f, flen, off);
    if (etype == 0x86DD) return ipv6(k, f, flen, off);
    if (etype == 0x0806) return arp(k, f, flen, off);
    return R_ETHERTYPE;
}

/* Packet: the record handed to Python (only for the packets a detector asked for) */

static PyObject *EMPTY_BYTES;

PyObject *packet_new_from(pkt_t *k)
{
    PacketObject *o = PyObject_New(PacketObject, &PacketType);
    if (!o) return NULL;
    o->ts = k->ts;
    o->length = k->wirelen;
    o->ip_version = k->ver;
    o->proto = k->proto;
    o->sport = k->sport;
    o->dport = k->dport;
    o->flags = k->flags;
    o->vlan = k->vlan;
    o->frag = k->frag;
    o->ttl = k->ttl;
    o->op = k->op;
    o->src = PyBytes_FromStringAndSize((const char *)k->src, k->alen);
    o->dst = PyBytes_FromStringAndSize((const char *)k->dst, k->alen);
    o->payload = k->plen ? PyBytes_FromStringAndSize((const char *)k->payload, k->plen)
                         : Py_NewRef(EMPTY_BYTES);
    o->smac = k->smac ? PyBytes_FromStringAndSize((const char *)k->smac, 6) : Py_NewRef(EMPTY_BYTES);
    o->dmac = k->dmac ? PyBytes_FromStringAndSize((const char *)k->dmac, 6) : Py_NewRef(EMPTY_BYTES);
    if (!o->src || !o->dst || !o->payload || !o->smac || !o->dmac) {
        Py_DECREF(o);
        return NULL;
    }
    return (PyObject *)o;
}

static void packet_dealloc(PacketObject *o)
{
    Py_XDECREF(o->src);
    Py_XDECREF(o->dst);
    Py_XDECREF(o->payload);
    Py_XDECREF(o->smac);
    Py_XDECREF(o->dmac);
    PyObject_Free(o);
}

static PyObject *packet_tp_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"ts", "length", "ip_version", "src", "dst", "proto", "sport",
                          "dport", "flags", "payload", "vlan", "frag", "ttl", "smac",
                          "dmac", "op", NULL};
    double ts;
    long length;
    int ver, proto, sport = 0, dport = 0, flags = 0, vlan = 0, frag = 0, ttl = 0, op = 0;
    PyObject *src, *dst, *payload = EMPTY_BYTES, *smac = EMPTY_BYTES, *dmac = EMPTY_BYTES;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dliSSi|iiiSiiiSSi", kwl, &ts, &length, &ver,
                                     &src, &dst, &proto, &sport, &dport, &flags, &payload,
                                     &vlan, &frag, &ttl, &smac, &dmac, &op))
        return NULL;
    PacketObject *o = (PacketObject *)t->tp_alloc(t, 0);
    if (!o) return NULL;
    o->ts = ts; o->length = length; o->ip_version = ver; o->proto = proto;
    o->sport = sport; o->dport = dport; o->flags = flags; o->vlan = vlan; o->frag = frag;
    o->ttl = ttl; o->op = op;
    o->src = Py_NewRef(src); o->dst = Py_NewRef(dst); o->payload = Py_NewRef(payload);
    o->smac = Py_NewRef(smac); o->dmac = Py_NewRef(dmac);
    return (PyObject *)o;
}

static PyObject *packet_repr(PacketObject *o)
{
    PyObject *s = PyObject_CallMethod(o->src, "hex", NULL);
    PyObject *d = PyObject_CallMethod(o->dst, "hex", NULL);
    PyObject *t = PyFloat_FromDouble(o->ts);
    PyObject *r = NULL;
    if (s && d && t)
        r = PyUnicode_FromFormat("Packet(ts=%R, v%d, proto=%d, %U:%d > %U:%d, flags=%#x)", t,
                                 o->ip_version, o->proto, s, o->sport, d, o->dport, o->flags);
    Py_XDECREF(t);
    Py_XDECREF(s);
    Py_XDECREF(d);
    return r;
}

#define PM(name, type, field) {name, type, offsetof(PacketObject, field), 0, NULL}
static PyMemberDef packet_members[] = {
    PM("ts", T_DOUBLE, ts), PM("length", T_LONG, length), PM("ip_version", T_INT, ip_version),
    PM("proto", T_INT, proto), PM("sport", T_INT, sport), PM("dport", T_INT, dport),
    PM("flags", T_INT, flags), PM("vlan", T_INT, vlan), PM("frag", T_INT, frag),
    PM("ttl", T_INT, ttl), PM("op", T_INT, op), PM("src", T_OBJECT_EX, src),
    PM("dst", T_OBJECT_EX, dst), PM("payload", T_OBJECT_EX, payload),
    PM("smac", T_OBJECT_EX, smac), PM("dmac", T_OBJECT_EX, dmac), {NULL},
};

PyTypeObject PacketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Packet",
    .tp_basicsize = sizeof(PacketObject),
    .tp_dealloc = (destructor)packet_dealloc,
    .tp_repr = (reprfunc)packet_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One decoded frame. Addresses stay packed (4 or 16 bytes). For ICMP/ICMPv6 "
              "sport holds the type and dport the code; for ARP src/dst are the sender/target "
              "protocol addresses and smac/dmac the hardware addresses, op the opcode. "
              "length is the length on the wire, payload the captured L4 payload, vlan the "
              "outermost 802.1Q id (0 if untagged), frag 0 (not a fragment), 1 (first "
              "fragment) or 2 (later fragment, no L4 header).",
    .tp_members = packet_members,
    .tp_new = packet_tp_new,
};

int decode_ready(void)
{
    if (PyType_Ready(&PacketType) < 0) return -1;
    EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0);
    return EMPTY_BYTES ? 0 : -1;
}
