/* The per-packet path of the agent, in C: capture-file walking, frame decoding, the
 * flow table and the per-packet counters detectors consume.
 *
 * Why C: at 100k+ packets/s, every Python call made per packet costs more than the
 * whole budget of a packet. Here a packet costs no Python object at all unless a
 * detector declared it wants that packet (ARP, ICMP, payloads of the application
 * protocols it decodes, payloads with a declared signature). Everything else reaches
 * Python as events (attempt outcomes, flow ends, sessions closing) and counters
 * (packets per source/destination pair, bursts of watched flows), once per tick, as
 * Records (records.c) whose tuples are made as they are read.
 *
 * Semantics follow the pure-Python reference this replaced (git history:
 * agent/decode/fast.py and agent/flows/table.py), and the tests that pinned it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define PSH 0x08
#define ACK 0x10
#define URG 0x20
#define P_ARP 0x0806
#define NIL UINT32_MAX

enum { S_ATTEMPT, S_PROBE, S_ESTABLISHED, S_REJECTED, S_MIDSTREAM, S_CLOSED };
enum { O_NONE, O_SUCCESS, O_REJECTED, O_UNANSWERED };
enum { ST_NONE, ST_NULL, ST_FIN, ST_XMAS, ST_OTHER };
/* 5: portscan reports (scan.c); 6 and 7: records counted in dnsstat.c */
enum { EV_OUTCOME, EV_END, EV_PACKET, EV_CLOSE, EV_DNS, EV_SCAN, EV_DNS_TUNNEL, EV_DGA };
enum { PAIR_SYN, PAIR_TCP, PAIR_UDP, PAIR_ICMP, PAIR_ICMP_ERROR, PAIR_OTHER };
/* Which flow ends Python hears of (configure(ends=...)): most flows of a scan or of DNS
 * interest nobody once they end, and an event per flow is a Python call per flow. */
enum { END_ALL = 1, END_UNRESOLVED = 2, END_SESSIONS = 4, END_DEEP = 8 };
/* Which pairs are counted (configure(pairs_want=...)): floods (SYN, UDP, ICMP towards a
 * unicast address: net.dos) and outbound (internal towards external unicast: net.exfil). */
enum { PAIRS_FLOODS = 1, PAIRS_OUTBOUND = 2 };

/* Why a frame was not decoded: malformed (counted as damage) or skipped (not ours). */
static const char *REASONS[] = {
    "ether_truncated", "sll_truncated", "sll2_truncated", "loopback_truncated",
    "raw_truncated", "raw_bad_version", "vlan_truncated", "ipv4_truncated",
    "ipv4_bad_version", "ipv4_bad_header_length", "ipv4_bad_total_length",
    "ipv6_truncated", "ipv6_bad_version", "ipv6_ext_truncated", "tcp_truncated",
    "tcp_bad_offset", "udp_truncated", "icmp_truncated", "arp_truncated",
    "arp_bad_lengths",
    /* skipped from here */
    "arp_other", "loopback_family_other", "linktype_unsupported", "ethertype_other",
};
#define N_REASONS (sizeof(REASONS) / sizeof(REASONS[0]))
#define FIRST_SKIP 20
enum {
    R_ETHER_TRUNC = 1, R_SLL_TRUNC, R_SLL2_TRUNC, R_LOOP_TRUNC, R_RAW_TRUNC, R_RAW_VER,
    R_VLAN_TRUNC, R_IP4_TRUNC, R_IP4_VER, R_IP4_HL, R_IP4_TLEN, R_IP6_TRUNC, R_IP6_VER,
    R_IP6_EXT, R_TCP_TRUNC, R_TCP_OFF, R_UDP_TRUNC, R_ICMP_TRUNC, R_ARP_TRUNC, R_ARP_LEN,
    R_ARP_OTHER, R_LOOP_FAM, R_LINKTYPE, R_ETHERTYPE,
};

typedef struct {
    double ts;
    uint32_t wirelen;
    int ver;      /* 4, 6, 0 for ARP */
    int alen;     /* 4 or 16 */
    uint8_t src[16], dst[16];
    int proto;
    int sport, dport, flags, vlan, frag, ttl, op;
    const uint8_t *payload;
    Py_ssize_t plen;
    const uint8_t *smac, *dmac; /* 6 bytes each, or NULL */
} pkt_t;

/* ------------------------------------------------------------------------------------ */
/* Decoding                                                                             */

static inline int u16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

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

/* Returns 0 and fills *k, or a reason (>= FIRST_SKIP + 1: skipped, not malformed). */
static int decode(pkt_t *k, double ts, int linktype, uint32_t wirelen, const uint8_t *f,
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

/* ------------------------------------------------------------------------------------ */
/* Packet: the record handed to Python (only for the packets a detector asked for)    */

typedef struct {
    PyObject_HEAD
    double ts;
    long length;
    int ip_version, proto, sport, dport, flags, vlan, frag, ttl, op;
    PyObject *src, *dst, *payload, *smac, *dmac;
} PacketObject;

static PyTypeObject PacketType;
static PyObject *EMPTY_BYTES;

static PyObject *packet_new_from(pkt_t *k)
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

static PyTypeObject PacketType = {
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

/* ------------------------------------------------------------------------------------ */
/* Flow table                                                                           */

typedef struct {
    uint8_t a[16], b[16]; /* a: the lower endpoint */
    uint16_t ap, bp, vlan;
    uint8_t proto, alen;
} fkey_t;

typedef struct {
    fkey_t k;
    double first, last;
    uint64_t pkts_o, pkts_r, bytes_o, bytes_r;
    uint32_t older, newer, gen, hash;
    uint8_t used, rev, state, outcome, stealth, itype, icode, closed, watch;
    uint8_t credit[2]; /* payload packets still handed up per direction (reassembly) */
    uint8_t deep_seen; /* a TCP payload went up to the deep decoder (it may keep state) */
    uint64_t burst_bytes; /* watched flows: bytes since the current burst started */
    PyObject *py; /* borrowed: the Flow object while Python holds one, else NULL */
} flow_t;

typedef struct { double due; uint32_t slot, gen; } pending_t;

static inline int bit(const uint8_t *map, int port) { return map[port >> 3] & (1 << (port & 7)); }

typedef struct {
    uint8_t src[16], dst[16];
    uint8_t alen, cls, other;
    int dport;
    uint64_t packets, bytes;
    double last;
} pair_t;

typedef struct { uint8_t net[16]; int alen, prefix; } cidr_t;

/* A watched flow's burst, started (bytes unknown yet) or ended. */
typedef struct {
    double ts;
    uint64_t bytes;
    uint8_t src[16], dst[16];
    uint8_t alen, start;
    uint16_t dport;
} burst_t;

#include "records.c"

/* Whether `a` is in one of the networks, of its own family only (as ipaddress: an
 * IPv4-mapped IPv6 address is IPv6). */
static int cidr_any(const cidr_t *nets, int n, const uint8_t *a, int alen)
{
    for (int i = 0; i < n; i++) {
        const cidr_t *c = &nets[i];
        if (c->alen != alen) continue;
        int bits = c->prefix, j = 0;
        for (; bits >= 8; bits -= 8, j++)
            if (a[j] != c->net[j]) goto next;
        if (bits && ((a[j] ^ c->net[j]) & (0xFF00 >> bits) & 0xFF)) goto next;
        return 1;
    next:;
    }
    return 0;
}

/* A list of (packed network, prefix length) read in full, or not at all (the error set,
 * `*out` untouched); `what` names the setting in the error. */
static int cidrs_parse(PyObject *list, const char *what, cidr_t **out, int *nout)
{
    PyObject *seq = PySequence_Fast(list, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    cidr_t *c = PyMem_Calloc(n ? n : 1, sizeof(cidr_t));
    if (!c) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer net;
        int prefix;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y*i", &net, &prefix)) goto bad;
        int okay = (net.len == 4 || net.len == 16) && prefix >= 0 && prefix <= net.len * 8;
        if (okay) {
            memcpy(c[i].net, net.buf, net.len);
            c[i].alen = (int)net.len;
            c[i].prefix = prefix;
        }
        PyBuffer_Release(&net);
        if (!okay) {
            PyErr_Format(PyExc_ValueError, "%s: (packed network, prefix length)", what);
            goto bad;
        }
    }
    Py_DECREF(seq);
    PyMem_Free(*out);
    *out = c;
    *nout = (int)n;
    return 0;
bad:
    Py_DECREF(seq);
    PyMem_Free(c);
    return -1;
}


#define MAX_SIGS 8
typedef struct { uint8_t protos; uint8_t ports[8192]; uint8_t prefix[16]; int plen; } sig_t;

typedef struct EngineObject {
    PyObject_HEAD
    /* flow table */
    flow_t *slots;
    uint32_t nslots, nflows, free_head, oldest, newest;
    uint32_t fresh; /* slots from here on were never used: untouched, so not resident */
    uint32_t *index, mask;
    pending_t *pend;
    size_t pend_head, pend_len, pend_cap;
    double attempt_timeout, tcp_idle, udp_idle, other_idle, active_timeout, sweep_interval;
    double next_sweep;
    uint32_t max_flows, sample_n;
    /* events for Python */
    PyObject *events;
    struct ScanObject *scan; /* net.portscan's state (scan.c), or NULL */
    uint8_t outcome_ports[8192]; /* TCP responder ports whose outcomes are events anyway */
    /* taps */
    int pairs_on, activity_on, arp_up, icmp_up, deep_on, ends, outcomes_on;
    int pairs_want; /* PAIRS_* bits: the pairs some on_pairs reads; 0: all */
    int deep_udp_dns, tls_on, hl7_on, rpc_on, dicom_on, http_on;
    uint8_t deep_tcp_ports[8192], close_ports[8192], act_ignore[8192], http_first[32];
    int act_internal_dests;
    cidr_t *nets;
    int nnets;
    sig_t sigs[MAX_SIGS];
    int nsigs;
    pair_t *pairs;
    uint32_t *pidx, pmask, npairs, pairs_cap;
    uint64_t pairs_overflow;
    double burst_gap;           /* silence that ends a watched flow's burst */
    recbuf_t bursts;            /* burst_t: bursts started and ended since activity() */
    /* counters */
    uint64_t packets, bytes, decoded, reasons[N_REASONS + 1];
    uint64_t created, evicted, expired, restarted, shed_packets, handed_up;
    double last_ts;
    struct dnsstat_s *dns; /* DNS counting for net.dns_tunnel and net.dga (dnsstat.c) */
    struct httpf_s *http;  /* HTTP requests no reader needs (httpfilter.c) */
} EngineObject;

/* Flow objects read the engine's slot while the flow lives and their own copy after. */
typedef struct {
    PyObject_HEAD
    EngineObject *eng; /* NULL once detached */
    uint32_t slot, gen;
    PyObject *key;
    int proto, vlan, rev, isport, idport;
    /* the copy, valid once detached */
    double first, last;
    unsigned long long pkts_o, pkts_r, bytes_o, bytes_r;
    int state, outcome, stealth, closed;
} FlowObject;

static PyTypeObject FlowType;
static PyObject *OUTCOME_STR[4], *STEALTH_STR[5];

static inline flow_t *flow_live(FlowObject *o)
{
    if (!o->eng) return NULL;
    flow_t *f = &o->eng->slots[o->slot];
    return f->used && f->gen == o->gen ? f : NULL;
}

static void flow_detach(FlowObject *o)
{
    flow_t *f = flow_live(o);
    if (f) {
        o->first = f->first; o->last = f->last;
        o->pkts_o = f->pkts_o; o->pkts_r = f->pkts_r;
        o->bytes_o = f->bytes_o; o->bytes_r = f->bytes_r;
        o->state = f->state; o->outcome = f->outcome; o->stealth = f->stealth;
        o->closed = f->closed;
    }
    o->eng = NULL;
}

/* A new reference to the flow's Python object, made on first need. The slot only
 * borrows it: once Python lets go of it (most flows: after their events), it is freed
 * and its dealloc clears the slot; the next event makes another. */
static PyObject *flow_py(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    if (f->py) return Py_NewRef(f->py);
    FlowObject *o = PyObject_New(FlowObject, &FlowType);
    if (!o) return NULL;
    o->eng = e;
    o->slot = slot;
    o->gen = f->gen;
    o->proto = f->k.proto;
    o->vlan = f->k.vlan;
    o->rev = f->rev;
    o->isport = f->itype;
    o->idport = f->icode;
    o->key = Py_BuildValue("(iiy#iy#i)", f->k.proto, f->k.vlan, f->k.a, (Py_ssize_t)f->k.alen,
                           f->k.ap, f->k.b, (Py_ssize_t)f->k.alen, f->k.bp);
    if (!o->key) { o->eng = NULL; Py_DECREF(o); return NULL; }
    f->py = (PyObject *)o;
    return f->py;
}

static void flow_dealloc(FlowObject *o)
{
    if (o->eng) {
        flow_t *f = &o->eng->slots[o->slot];
        if (f->py == (PyObject *)o) f->py = NULL;
    }
    Py_XDECREF(o->key);
    PyObject_Free(o);
}

#define FLOW_NUM(name, fld, conv)                                              \
    static PyObject *flow_get_##name(FlowObject *o, void *c)                   \
    {                                                                          \
        flow_t *f = flow_live(o);                                              \
        return conv(f ? f->fld : o->fld);                                      \
    }
FLOW_NUM(first, first, PyFloat_FromDouble)
FLOW_NUM(last, last, PyFloat_FromDouble)
FLOW_NUM(pkts_o, pkts_o, PyLong_FromUnsignedLongLong)
FLOW_NUM(pkts_r, pkts_r, PyLong_FromUnsignedLongLong)
FLOW_NUM(bytes_o, bytes_o, PyLong_FromUnsignedLongLong)
FLOW_NUM(bytes_r, bytes_r, PyLong_FromUnsignedLongLong)
FLOW_NUM(state, state, PyLong_FromLong)
FLOW_NUM(closed, closed, PyBool_FromLong)

static PyObject *flow_get_outcome(FlowObject *o, void *c)
{
    flow_t *f = flow_live(o);
    return Py_NewRef(OUTCOME_STR[f ? f->outcome : o->outcome]);
}
static PyObject *flow_get_stealth(FlowObject *o, void *c)
{
    flow_t *f = flow_live(o);
    return Py_NewRef(STEALTH_STR[f ? f->stealth : o->stealth]);
}
static PyObject *flow_get_key(FlowObject *o, void *c) { return Py_NewRef(o->key); }
static PyObject *flow_get_proto(FlowObject *o, void *c) { return PyLong_FromLong(o->proto); }
static PyObject *flow_get_vlan(FlowObject *o, void *c) { return PyLong_FromLong(o->vlan); }
static PyObject *flow_get_rev(FlowObject *o, void *c) { return PyBool_FromLong(o->rev); }
static PyObject *flow_get_src(FlowObject *o, void *c)
{
    return Py_NewRef(PyTuple_GET_ITEM(o->key, o->rev ? 4 : 2));
}
static PyObject *flow_get_dst(FlowObject *o, void *c)
{
    return Py_NewRef(PyTuple_GET_ITEM(o->key, o->rev ? 2 : 4));
}
static PyObject *flow_get_sport(FlowObject *o, void *c)
{
    if (o->proto == 1 || o->proto == 58) return PyLong_FromLong(o->isport);
    return Py_NewRef(PyTuple_GET_ITEM(o->key, o->rev ? 5 : 3));
}
static PyObject *flow_get_dport(FlowObject *o, void *c)
{
    if (o->proto == 1 || o->proto == 58) return PyLong_FromLong(o->idport);
    return Py_NewRef(PyTuple_GET_ITEM(o->key, o->rev ? 3 : 5));
}

static PyGetSetDef flow_getset[] = {
    {"key", (getter)flow_get_key, NULL, "(proto, vlan, lower address, port, upper address, port)"},
    {"proto", (getter)flow_get_proto, NULL, NULL},
    {"vlan", (getter)flow_get_vlan, NULL, NULL},
    {"rev", (getter)flow_get_rev, NULL, "the originator is the key's second endpoint"},
    {"src", (getter)flow_get_src, NULL, "originator address"},
    {"sport", (getter)flow_get_sport, NULL, "originator port (ICMP: type of the first packet)"},
    {"dst", (getter)flow_get_dst, NULL, "responder address"},
    {"dport", (getter)flow_get_dport, NULL, "responder port (ICMP: code of the first packet)"},
    {"first", (getter)flow_get_first, NULL, NULL},
    {"last", (getter)flow_get_last, NULL, NULL},
    {"pkts_o", (getter)flow_get_pkts_o, NULL, "packets from the originator"},
    {"pkts_r", (getter)flow_get_pkts_r, NULL, "packets from the responder"},
    {"bytes_o", (getter)flow_get_bytes_o, NULL, "wire bytes from the originator"},
    {"bytes_r", (getter)flow_get_bytes_r, NULL, "wire bytes from the responder"},
    {"state", (getter)flow_get_state, NULL, "S_* state of agent.flows"},
    {"closed", (getter)flow_get_closed, NULL,
     "a FIN or RST of the established session went to on_close (close_ports)"},
    {"outcome", (getter)flow_get_outcome, NULL, "success, rejected, unanswered or ''"},
    {"stealth", (getter)flow_get_stealth, NULL, "null, fin, xmas, other or ''"},
    {NULL},
};

static PyObject *flow_repr(FlowObject *o)
{
    return PyUnicode_FromFormat("Flow(%R)", o->key);
}

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Flow",
    .tp_basicsize = sizeof(FlowObject),
    .tp_dealloc = (destructor)flow_dealloc,
    .tp_repr = (reprfunc)flow_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One bidirectional flow; live while in the table, a final copy after.",
    .tp_getset = flow_getset,
};

/* FNV-1a, folded to 32 bits: good enough spread for linear probing (flows and pairs). */
static inline uint32_t fnv1a(const void *data, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return (uint32_t)(h ^ (h >> 32));
}

static inline uint32_t key_hash(const fkey_t *k) { return fnv1a(k, sizeof(fkey_t)); }

/* The unordered key of a conversation: lower endpoint first (ports only if `ported`).
 * Returns whether the sender is that lower endpoint. */
static int flow_key(fkey_t *key, int proto, int vlan, int alen, const uint8_t *src, int sport,
                    const uint8_t *dst, int dport, int ported)
{
    memset(key, 0, sizeof(*key));
    int c = memcmp(src, dst, alen), lo;
    key->proto = proto;
    key->vlan = vlan;
    key->alen = alen;
    if (ported) {
        lo = c < 0 || (c == 0 && sport <= dport);
        key->ap = lo ? sport : dport;
        key->bp = lo ? dport : sport;
    } else {
        lo = c <= 0;
    }
    memcpy(key->a, lo ? src : dst, alen);
    memcpy(key->b, lo ? dst : src, alen);
    return lo;
}

static uint32_t lookup(EngineObject *e, const fkey_t *k, uint32_t h, uint32_t *pos)
{
    uint32_t i = h & e->mask;
    for (;;) {
        uint32_t s = e->index[i];
        if (!s) { *pos = i; return NIL; }
        flow_t *f = &e->slots[s - 1];
        if (f->hash == h && memcmp(&f->k, k, sizeof(fkey_t)) == 0) { *pos = i; return s - 1; }
        i = (i + 1) & e->mask;
    }
}

static void index_remove(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    uint32_t i = f->hash & e->mask;
    while (e->index[i] != slot + 1) i = (i + 1) & e->mask;
    /* backward-shift deletion keeps probe chains unbroken without tombstones */
    uint32_t j = i;
    e->index[i] = 0;
    for (;;) {
        j = (j + 1) & e->mask;
        uint32_t s = e->index[j];
        if (!s) break;
        uint32_t home = e->slots[s - 1].hash & e->mask;
        int move = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (move) { e->index[i] = s; e->index[j] = 0; i = j; }
    }
}

/* Slots grow as flows come (by a quarter), up to max_flows: an agent on a quiet server does
 * not hold the memory of a busy one. */
static int grow_table(EngineObject *e, uint32_t want)
{
    if (want > e->nslots) {
        flow_t *ns = PyMem_Realloc(e->slots, (size_t)want * sizeof(flow_t));
        if (!ns) { PyErr_NoMemory(); return -1; }
        e->slots = ns;
        e->nslots = want; /* taken from `fresh` on, when the free list is empty */
    }
    uint32_t cap = 1024;
    while (cap < 2 * want) cap <<= 1;
    if (cap - 1 > e->mask || !e->index) {
        uint32_t *ni = PyMem_Calloc(cap, sizeof(uint32_t));
        if (!ni) { PyErr_NoMemory(); return -1; }
        PyMem_Free(e->index);
        e->index = ni;
        e->mask = cap - 1;
        for (uint32_t s = e->oldest; s != NIL; s = e->slots[s].newer) {
            uint32_t i = e->slots[s].hash & e->mask;
            while (e->index[i]) i = (i + 1) & e->mask;
            e->index[i] = s + 1;
        }
    }
    return 0;
}

static int emit(EngineObject *e, PyObject *t)
{
    if (!t) return -1;
    int r = PyList_Append(e->events, t);
    Py_DECREF(t);
    return r;
}

static int emit_flow(EngineObject *e, int code, uint32_t slot)
{
    PyObject *py = flow_py(e, slot);
    if (!py) return -1;
    return emit(e, Py_BuildValue("(iN)", code, py));
}

#include "distinct.c"
#include "table.c"
#include "scan.c"

static int emit_outcome(EngineObject *e, uint32_t slot, int outcome, double ts)
{
    flow_t *f = &e->slots[slot];
    f->outcome = outcome;
    int icmp = f->k.proto == 1 || f->k.proto == 58;
    int rport = icmp ? f->icode : f->rev ? f->k.ap : f->k.bp;
    if (e->scan && scan_outcome(e->scan, e->events, f->rev ? f->k.b : f->k.a, f->rev ? f->k.a : f->k.b,
                                f->k.alen, f->k.proto, rport, f->stealth, outcome == O_SUCCESS, ts) < 0)
        return -1;
    /* Python hears only of the outcomes some detector wants: no event, no Flow object */
    if (!e->outcomes_on && !(f->k.proto == 6 && bit(e->outcome_ports, rport))) return 0;
    PyObject *py = flow_py(e, slot);
    if (!py) return -1;
    return emit(e, Py_BuildValue("(iNOd)", EV_OUTCOME, py, OUTCOME_STR[outcome], ts));
}

/* A watched flow's burst starts, (ts, src, dst, dport, None), or ends, (ts, src, dst,
 * dport, bytes), with the originator as src: one list, in the order they happened. */
static int burst_record(EngineObject *e, flow_t *f, double ts, int start)
{
    burst_t *b = recbuf_push(&e->bursts);
    if (!b) return -1;
    memset(b, 0, sizeof(*b));
    memcpy(b->src, f->rev ? f->k.b : f->k.a, f->k.alen);
    memcpy(b->dst, f->rev ? f->k.a : f->k.b, f->k.alen);
    b->alen = f->k.alen;
    b->dport = f->rev ? f->k.ap : f->k.bp;
    b->ts = ts;
    b->start = start;
    b->bytes = f->burst_bytes;
    return 0;
}

static PyObject *burst_tuple(const void *rec)
{
    const burst_t *b = rec;
    if (b->start)
        return Py_BuildValue("(dy#y#iO)", b->ts, b->src, (Py_ssize_t)b->alen, b->dst,
                             (Py_ssize_t)b->alen, (int)b->dport, Py_None);
    return Py_BuildValue("(dy#y#iK)", b->ts, b->src, (Py_ssize_t)b->alen, b->dst,
                         (Py_ssize_t)b->alen, (int)b->dport, (unsigned long long)b->bytes);
}

/* The flow's record ends (expired, evicted, end of input, or reported at the active
 * timeout): Python gets the END event with a final copy. */
static int end_wanted(EngineObject *e, flow_t *f)
{
    int m = e->ends;
    if (m & END_ALL) return 1;
    if ((m & END_UNRESOLVED) && !f->outcome) return 1;
    if ((m & END_SESSIONS) && f->state == S_ESTABLISHED && !f->closed &&
        bit(e->close_ports, f->rev ? f->k.ap : f->k.bp))
        return 1;
    return (m & END_DEEP) && f->deep_seen;
}

static int end_record(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    if (end_wanted(e, f) && emit_flow(e, EV_END, slot) < 0) return -1;
    if (f->py) { /* the event, or whoever kept it, holds it: it keeps the final values */
        flow_detach((FlowObject *)f->py);
        f->py = NULL;
    }
    return 0;
}

static int free_flow(EngineObject *e, uint32_t slot)
{
    /* a burst ends with its flow (not at the active timeout: the session goes on) */
    if (e->slots[slot].watch && e->slots[slot].burst_bytes &&
        burst_record(e, &e->slots[slot], e->slots[slot].last, 0) < 0)
        return -1;
    if (end_record(e, slot) < 0) return -1;
    flow_t *f = &e->slots[slot];
    index_remove(e, slot);
    if (f->older != NIL) e->slots[f->older].newer = f->newer; else e->oldest = f->newer;
    if (f->newer != NIL) e->slots[f->newer].older = f->older; else e->newest = f->older;
    f->used = 0;
    f->gen++;
    f->newer = e->free_head;
    e->free_head = slot;
    e->nflows--;
    return 0;
}

static int evict(EngineObject *e)
{
    /* the oldest flows go first, a hundredth of the table at a time */
    uint32_t n = e->max_flows / 100;
    if (n < 1) n = 1;
    for (uint32_t i = 0; i < n && e->oldest != NIL; i++) {
        if (free_flow(e, e->oldest) < 0) return -1;
        e->evicted++;
    }
    return 0;
}

static int pend_push(EngineObject *e, double due, uint32_t slot)
{
    if (e->pend_len == e->pend_cap) {
        size_t nc = e->pend_cap ? e->pend_cap * 2 : 1024;
        pending_t *np = PyMem_Malloc(nc * sizeof(pending_t));
        if (!np) { PyErr_NoMemory(); return -1; }
        for (size_t i = 0; i < e->pend_len; i++)
            np[i] = e->pend[(e->pend_head + i) % e->pend_cap];
        PyMem_Free(e->pend);
        e->pend = np;
        e->pend_cap = nc;
        e->pend_head = 0;
    }
    pending_t *p = &e->pend[(e->pend_head + e->pend_len) % e->pend_cap];
    p->due = due;
    p->slot = slot;
    p->gen = e->slots[slot].gen;
    e->pend_len++;
    return 0;
}

static int stealth_kind(int flags)
{
    int f = flags & (FIN | SYN | RST | PSH | ACK | URG);
    if (f == 0) return ST_NULL;
    if (f == FIN) return ST_FIN;
    if ((f & (FIN | PSH | URG)) == (FIN | PSH | URG) && !(f & (SYN | ACK | RST))) return ST_XMAS;
    if (!(f & (SYN | ACK | RST))) return ST_OTHER;
    return ST_NONE;
}

/* Internal addresses, IPv4-mapped IPv6 read as IPv4 (as nets.is_internal does). */
static int in_nets(EngineObject *e, const uint8_t *a, int alen)
{
    uint8_t v4[4];
    if (alen == 16) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) { memcpy(v4, a + 12, 4); a = v4; alen = 4; }
    }
    return cidr_any(e->nets, e->nnets, a, alen);
}

static inline int is_unicast(const uint8_t *a, int alen)
{
    if (alen == 4)
        return a[0] > 0 && a[0] < 224 && !(a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255);
    return a[0] != 0xFF;
}


/* ------------------------------------------------------------------------------------ */
/* Pair counters                                                                        */

#define PAIRS_MAX 65536
#define PAIR_KEYLEN offsetof(pair_t, dport)

static inline uint32_t pair_hash(const pair_t *q) { return fnv1a(q, PAIR_KEYLEN); }

static int pairs_grow(EngineObject *e)
{
    uint32_t nc = e->pairs_cap * 2;
    pair_t *np = PyMem_Realloc(e->pairs, (size_t)nc * sizeof(pair_t));
    if (!np) { PyErr_NoMemory(); return -1; }
    e->pairs = np;
    uint32_t *ni = PyMem_Calloc((size_t)nc * 2, sizeof(uint32_t));
    if (!ni) { PyErr_NoMemory(); return -1; }
    PyMem_Free(e->pidx);
    e->pidx = ni;
    e->pmask = nc * 2 - 1;
    e->pairs_cap = nc;
    for (uint32_t s = 0; s < e->npairs; s++) {
        uint32_t j = pair_hash(&e->pairs[s]) & e->pmask;
        while (e->pidx[j]) j = (j + 1) & e->pmask;
        e->pidx[j] = s + 1;
    }
    return 0;
}

/* Count into the pair `key`; a new pair is only made while `may_add`. Returns 1 if
 * counted, 0 if not (table full), -1 on error. */
static int pair_count(EngineObject *e, pair_t *key, pkt_t *k, int may_add)
{
    uint32_t h = pair_hash(key);
    for (;;) {
        uint32_t i = h & e->pmask;
        for (;;) {
            uint32_t s = e->pidx[i];
            if (!s) break;
            pair_t *q = &e->pairs[s - 1];
            if (memcmp(q, key, PAIR_KEYLEN) == 0) {
                q->packets++;
                q->bytes += k->wirelen;
                q->last = k->ts;
                q->dport = k->dport;
                return 1;
            }
            i = (i + 1) & e->pmask;
        }
        if (!may_add) return 0;
        if (e->npairs == e->pairs_cap) {
            if (pairs_grow(e) < 0) return -1;
            continue; /* probe again in the bigger index */
        }
        pair_t *q = &e->pairs[e->npairs++];
        *q = *key;
        q->packets = 1;
        q->bytes = k->wirelen;
        q->last = k->ts;
        q->dport = k->dport;
        e->pidx[i] = e->npairs;
        return 1;
    }
}

static int pair_add(EngineObject *e, pkt_t *k)
{
    int cls;
    if (k->proto == 6) cls = (k->flags & (SYN | ACK)) == SYN ? PAIR_SYN : PAIR_TCP;
    else if (k->proto == 17) cls = PAIR_UDP;
    else if (k->proto == 1) {
        int t = k->sport;
        cls = (t == 3 || t == 4 || t == 5 || t == 11 || t == 12) ? PAIR_ICMP_ERROR : PAIR_ICMP;
    } else if (k->proto == 58) {
        int t = k->sport;
        cls = (t >= 1 && t <= 4) || t >= 133 ? PAIR_ICMP_ERROR : PAIR_ICMP;
    } else cls = PAIR_OTHER;
    if (e->pairs_want) {
        int uni = is_unicast(k->dst, k->alen);
        int keep = (e->pairs_want & PAIRS_FLOODS) && uni &&
                   (cls == PAIR_SYN || cls == PAIR_UDP || cls == PAIR_ICMP);
        if (!keep && (e->pairs_want & PAIRS_OUTBOUND) && uni)
            keep = in_nets(e, k->src, k->alen) && !in_nets(e, k->dst, k->alen);
        if (!keep) return 0; /* nobody reads it: not counted, no record */
    }
    pair_t key;
    memset(&key, 0, sizeof(key));
    memcpy(key.src, k->src, k->alen);
    memcpy(key.dst, k->dst, k->alen);
    key.alen = k->alen;
    key.cls = cls;
    int r = pair_count(e, &key, k, e->npairs < PAIRS_MAX);
    if (r) return r < 0 ? -1 : 0;
    /* Full for this tick (a spoofed flood fills it with one-packet pairs): the packet
     * still counts for its destination, under "other sources". Those pairs, one per
     * destination and class, may take the table past its cap. */
    memset(key.src, 0, sizeof(key.src));
    key.other = 1;
    e->pairs_overflow++;
    return pair_count(e, &key, k, 1) < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------------------------ */
/* DNS messages: the deep decoder's hottest protocol, read here (agent/decode/deep/dns.py
 * documents the fields). Names are followed through compression pointers with a jump
 * limit, so a pointer loop costs a bounded number of steps.                          */

#define DNS_MAX_JUMPS 16
#define DNS_MAX_NAME 255
#define DNS_MAX_ANSWERS 64

static const char *dns_name(const uint8_t *buf, Py_ssize_t n, Py_ssize_t *offp, char *out,
                            int *outlen)
{
    Py_ssize_t off = *offp, end = -1;
    int jumps = 0, total = 0, len = 0;
    for (;;) {
        if (off >= n) return "dns_truncated";
        int ln = buf[off];
        if (ln == 0) { off++; break; }
        if (ln >= 0xC0) {
            if (off + 1 >= n) return "dns_truncated";
            if (++jumps > DNS_MAX_JUMPS) return "dns_pointer_loop";
            if (end < 0) end = off + 2;
            off = ((ln & 0x3F) << 8) | buf[off + 1];
            continue;
        }
        if (ln > 63) return "dns_bad_label";
        total += ln + 1;
        if (total > DNS_MAX_NAME) return "dns_name_too_long";
        if (off + 1 + ln > n) return "dns_truncated";
        if (len) out[len++] = '.';
        memcpy(out + len, buf + off + 1, ln);
        len += ln;
        off += 1 + ln;
    }
    *outlen = len;
    *offp = end >= 0 ? end : off;
    return NULL;
}

static const char *dns_skip(const uint8_t *buf, Py_ssize_t n, Py_ssize_t *offp)
{
    Py_ssize_t off = *offp;
    for (int i = 0; i < 128; i++) {
        if (off >= n) return "dns_truncated";
        int ln = buf[off];
        if (ln == 0) { *offp = off + 1; return NULL; }
        if (ln >= 0xC0) { *offp = off + 2; return NULL; }
        if (ln > 63) return "dns_bad_label";
        off += 1 + ln;
    }
    return "dns_bad_label";
}

typedef struct {
    int ident, qr, opcode, rcode, qtype, qd, an, ntypes, truncated, nlen;
    int types[DNS_MAX_ANSWERS];
    char name[DNS_MAX_NAME + 64];
} dnsmsg_t;

/* Reads a message into m: NULL, or the reason it is malformed ("" : too short over TCP
 * to say). The name is lower-cased as Python's str.lower() lowers its Latin-1 text. */
static const char *dns_read(const uint8_t *buf, Py_ssize_t n, int tcp, dnsmsg_t *m)
{
    if (tcp) {
        if (n < 14) return "";
        int ln = u16(buf);
        if (ln < 12) return "dns_bad_length";
        buf += 2;
        n -= 2;
        if (ln < n) n = ln;
    }
    if (n < 12) return "dns_truncated";
    int flags = u16(buf + 2);
    m->ident = u16(buf);
    m->qr = (flags & 0x8000) != 0;
    m->opcode = (flags >> 11) & 0xF;
    m->rcode = flags & 0xF;
    m->qd = u16(buf + 4);
    m->an = u16(buf + 6);
    m->nlen = m->qtype = m->ntypes = m->truncated = 0;
    Py_ssize_t off = 12;
    const char *bad;
    if (m->qd) {
        if ((bad = dns_name(buf, n, &off, m->name, &m->nlen))) return bad;
        if (off + 4 > n) return "dns_truncated";
        m->qtype = u16(buf + off);
        off += 4;
        for (int i = 0; i < (m->qd < 16 ? m->qd : 16) - 1; i++) {
            if ((bad = dns_skip(buf, n, &off))) return bad;
            off += 4;
        }
    }
    if (m->an) {
        for (int i = 0; i < (m->an < DNS_MAX_ANSWERS ? m->an : DNS_MAX_ANSWERS); i++) {
            if (dns_skip(buf, n, &off) || off + 10 > n) { m->truncated = 1; break; }
            m->types[m->ntypes++] = u16(buf + off);
            off += 10 + u16(buf + off + 8);
        }
        if (off > n) m->truncated = 1;
    }
    for (int i = 0; i < m->nlen; i++) {
        unsigned char c = m->name[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7)) m->name[i] = c + 32;
    }
    return NULL;
}

/* (id, qr, opcode, rcode, qname, qtype, qdcount, ancount, answer_types, truncated) */
static PyObject *dns_tuple(const dnsmsg_t *m)
{
    PyObject *qname = PyUnicode_DecodeLatin1(m->name, m->nlen, NULL);
    PyObject *tt = PyTuple_New(m->ntypes);
    if (!qname || !tt) { Py_XDECREF(qname); Py_XDECREF(tt); return NULL; }
    for (int i = 0; i < m->ntypes; i++) PyTuple_SET_ITEM(tt, i, PyLong_FromLong(m->types[i]));
    return Py_BuildValue("(iOiiNiiiNO)", m->ident, m->qr ? Py_True : Py_False, m->opcode,
                         m->rcode, qname, m->qtype, m->qd, m->an, tt,
                         m->truncated ? Py_True : Py_False);
}

/* parse_dns(payload, tcp) -> the tuple above | reason | None */
static PyObject *dns_parse(const uint8_t *buf, Py_ssize_t n, int tcp)
{
    dnsmsg_t m;
    const char *bad = dns_read(buf, n, tcp, &m);
    if (bad && !*bad) Py_RETURN_NONE;
    return bad ? PyUnicode_FromString(bad) : dns_tuple(&m);
}

static int portmap(PyObject *ports, uint8_t *map);
#include "dnsstat.c"
#include "httpfilter.c"

/* ------------------------------------------------------------------------------------ */
/* One decoded packet through the flow table and the taps                              */

/* `asked`: a detector's on_packet asked for it (ARP, ICMP, a signature); otherwise it
 * goes up for the deep decoder only. */
static int handup(EngineObject *e, pkt_t *k, PyObject *flow, int asked)
{
    PyObject *p = packet_new_from(k);
    if (!p) return -1;
    e->handed_up++;
    return emit(e, Py_BuildValue("(iNOO)", EV_PACKET, p, flow ? flow : Py_None,
                                 asked ? Py_True : Py_False));
}

static int sig_match(EngineObject *e, pkt_t *k)
{
    for (int i = 0; i < e->nsigs; i++) {
        sig_t *s = &e->sigs[i];
        if (!(s->protos & (k->proto == 6 ? 1 : 2))) continue;
        if (!bit(s->ports, k->dport)) continue;
        if (k->plen < s->plen || memcmp(k->payload, s->prefix, s->plen)) continue;
        return 1;
    }
    return 0;
}

static int icmp_unreachable(EngineObject *e, pkt_t *k)
{
    /* An ICMP unreachable quoting one of our UDP/TCP attempts rejects it. The quote
     * starts after type, code, checksum and 4 unused bytes. */
    const uint8_t *q = k->payload + 4;
    Py_ssize_t n = k->plen - 4;
    fkey_t key;
    const uint8_t *src, *dst, *l4p;
    int proto, alen;
    Py_ssize_t l4n;
    if (k->proto == 1 && k->sport == 3 && n >= 28 && q[0] >> 4 == 4) {
        int ihl = (q[0] & 15) * 4;
        proto = q[9]; src = q + 12; dst = q + 16; alen = 4;
        l4p = q + ihl; l4n = n - ihl;
    } else if (k->proto == 58 && k->sport == 1 && n >= 48 && q[0] >> 4 == 6) {
        proto = q[6]; src = q + 8; dst = q + 24; alen = 16;
        l4p = q + 40; l4n = n - 40;
    } else return 0;
    if ((proto != 6 && proto != 17) || l4n < 4) return 0;
    flow_key(&key, proto, k->vlan, alen, src, u16(l4p), dst, u16(l4p + 2), 1);
    uint32_t pos, h = key_hash(&key);
    uint32_t s = lookup(e, &key, h, &pos);
    if (s == NIL) return 0;
    flow_t *f = &e->slots[s];
    if (f->outcome) return 0;
    f->state = S_REJECTED;
    return emit_outcome(e, s, O_REJECTED, k->ts);
}

static int process(EngineObject *e, pkt_t *k, PyObject **flow_out)
{
    int proto = k->proto;
    if (k->ts > e->last_ts) e->last_ts = k->ts;
    if (e->pairs_on && k->ver && pair_add(e, k) < 0) return -1;
    if (proto == P_ARP) return e->arp_up ? handup(e, k, NULL, 1) : 0;
    int tcpudp = proto == 6 || proto == 17, icmp = proto == 1 || proto == 58;
    int want_pkt = (icmp && e->icmp_up) || (tcpudp && k->plen && e->nsigs && sig_match(e, k));
    if (!tcpudp && !icmp) return want_pkt ? handup(e, k, NULL, 1) : 0;

    fkey_t key;
    int lo = flow_key(&key, proto, k->vlan, k->alen, k->src, k->sport, k->dst, k->dport, tcpudp);
    uint32_t pos, h = key_hash(&key);
    uint32_t slot = lookup(e, &key, h, &pos);
    if (slot == NIL) {
        if (e->sample_n > 1 && h % e->sample_n) {
            /* shedding: this flow is not tracked, time still runs */
            e->shed_packets++;
            return want_pkt ? handup(e, k, NULL, 1) : 0;
        }
        if (e->nflows >= e->max_flows) {
            if (evict(e) < 0) return -1;
            lookup(e, &key, h, &pos); /* eviction moved entries */
        }
        if (e->free_head == NIL && e->fresh == e->nslots) {
            /* by a quarter: at 100k flows doubling left up to 5 MB of slots unused */
            uint32_t want = e->nslots + (e->nslots / 4 > 4096 ? e->nslots / 4 : 4096);
            if (want > e->max_flows + 1) want = e->max_flows + 1;
            if (grow_table(e, want) < 0) return -1;
            lookup(e, &key, h, &pos); /* a bigger index moved entries */
        }
        uint32_t gen = 0;
        if (e->free_head != NIL) {
            slot = e->free_head;
            e->free_head = e->slots[slot].newer; /* free list through `newer` */
            gen = e->slots[slot].gen;
        } else {
            slot = e->fresh++;
        }
        flow_t *f = &e->slots[slot];
        memset(f, 0, sizeof(flow_t));
        f->gen = gen;
        f->used = 1;
        f->k = key;
        f->hash = h;
        f->rev = !lo;
        f->first = f->last = k->ts;
        f->state = S_MIDSTREAM;
        f->older = e->newest;
        f->newer = NIL;
        if (e->newest != NIL) e->slots[e->newest].newer = slot; else e->oldest = slot;
        e->newest = slot;
        e->index[pos] = slot + 1;
        e->nflows++;
        e->created++;
        if (icmp) { f->itype = k->sport; f->icode = k->dport; }
        if (e->activity_on && tcpudp) {
            /* k->src is the originator */
            f->watch = in_nets(e, k->src, k->alen) && is_unicast(k->dst, k->alen) &&
                       !bit(e->act_ignore, k->dport) &&
                       (e->act_internal_dests || !in_nets(e, k->dst, k->alen));
        }
        if (proto == 6) {
            int fl = k->flags, st;
            if ((fl & SYN) && !(fl & ACK)) {
                f->state = S_ATTEMPT;
                if (pend_push(e, k->ts + e->attempt_timeout, slot) < 0) return -1;
            } else if ((st = stealth_kind(fl))) {
                f->state = S_PROBE;
                f->stealth = st;
                if (pend_push(e, k->ts + e->attempt_timeout, slot) < 0) return -1;
            }
        }
        if (f->watch && burst_record(e, f, k->ts, 1) < 0) return -1;
    } else if (e->slots[slot].watch && k->ts - e->slots[slot].last > e->burst_gap) {
        /* a silence: the burst ends and this packet starts the next (a check-in on a
         * long-lived session) */
        flow_t *w = &e->slots[slot];
        if (w->burst_bytes && burst_record(e, w, w->last, 0) < 0) return -1;
        w->burst_bytes = 0;
        if (burst_record(e, w, k->ts, 1) < 0) return -1;
    }
    flow_t *f = &e->slots[slot];
    if (f->watch) f->burst_bytes += k->wirelen;
    f->last = k->ts;
    /* From the originator: sent from the originator's end of the key (and, for ICMP,
     * with the type the flow began with). */
    int dir;
    if (lo != f->rev && (tcpudp || k->sport == f->itype)) {
        dir = 0;
        f->pkts_o++;
        f->bytes_o += k->wirelen;
    } else {
        dir = 1;
        f->pkts_r++;
        f->bytes_r += k->wirelen;
        if (!f->outcome) {
            if (proto == 6) {
                int fl = k->flags;
                if (f->state == S_ATTEMPT && (fl & SYN) && (fl & ACK)) {
                    f->state = S_ESTABLISHED;
                    if (emit_outcome(e, slot, O_SUCCESS, k->ts) < 0) return -1;
                } else if ((f->state == S_ATTEMPT || f->state == S_PROBE) && (fl & RST)) {
                    f->state = S_REJECTED;
                    if (emit_outcome(e, slot, O_REJECTED, k->ts) < 0) return -1;
                }
            } else if (proto == 17) {
                if (emit_outcome(e, slot, O_SUCCESS, k->ts) < 0) return -1;
            }
        }
    }
    f = &e->slots[slot];
    if (proto == 6 && (k->flags & (FIN | RST)) && f->state == S_ESTABLISHED && !f->closed) {
        int rport = f->rev ? f->k.ap : f->k.bp;
        if (bit(e->close_ports, rport)) {
            f->closed = 1;
            PyObject *py = flow_py(e, slot);
            if (!py || emit(e, Py_BuildValue("(iNd)", EV_CLOSE, py, k->ts)) < 0) return -1;
        }
    }
    int deep = 0;
    if (e->deep_on && k->plen && tcpudp) {
        if (proto == 17) {
            if (e->deep_udp_dns && (k->sport == 53 || k->dport == 53 || k->sport == 5353 ||
                                    k->dport == 5353 || k->sport == 5355 || k->dport == 5355)) {
                /* DNS over UDP, the commonest message: read and counted here */
                int up = dns_udp(e, k, slot, want_pkt);
                if (up < 0) return -1;
                /* a packet an on_packet asked for goes up with its message, or else
                 * without its flow, so that the deep decoder does not read it again */
                if (!up && want_pkt && handup(e, k, NULL, 1) < 0) return -1;
                want_pkt = 0;
            }
        } else {
            const uint8_t *pl = k->payload;
            int b0 = pl[0];
            if (bit(e->deep_tcp_ports, k->dport) || bit(e->deep_tcp_ports, k->sport)) deep = 1;
            else if (f->credit[dir]) { f->credit[dir]--; deep = 1; }
            else if (b0 == 0x16 && e->tls_on && k->plen > 5 && pl[1] == 3 && pl[5] == 1) {
                deep = 1;
                f->credit[dir] = 16; /* a ClientHello may span segments */
            } else if (b0 == 0x0B && e->hl7_on) deep = 1;
            else if (b0 == 5 && e->rpc_on) deep = 1;
            else if (b0 == 1 && e->dicom_on) { deep = 1; f->credit[dir] = 16; }
            else if (e->http_on && (e->http_first[b0 >> 3] & (1 << (b0 & 7))))
                deep = http_wanted(e, pl, k->plen);
        }
    }
    if (deep && proto == 6) f->deep_seen = 1;
    if (deep || want_pkt) {
        PyObject *py = flow_py(e, slot);
        int r = py ? handup(e, k, py, want_pkt) : -1;
        Py_XDECREF(py);
        if (r < 0) return -1;
    }
    if (icmp && (k->sport == 1 || k->sport == 3) && icmp_unreachable(e, k) < 0) return -1;
    if (flow_out) *flow_out = f->used ? flow_py(e, slot) : NULL; /* a new reference */
    return 0;
}

static int feed_frame(EngineObject *e, double ts, int linktype, uint32_t wirelen,
                      const uint8_t *frame, Py_ssize_t caplen)
{
    pkt_t k;
    e->packets++;
    e->bytes += wirelen;
    int r = decode(&k, ts, linktype, wirelen, frame, caplen);
    if (r) {
        e->reasons[r]++;
        if (ts > e->last_ts) e->last_ts = ts;
        return 0;
    }
    e->decoded++;
    return process(e, &k, NULL);
}

/* ------------------------------------------------------------------------------------ */
/* Time                                                                                 */

static int do_tick(EngineObject *e, double now)
{
    while (e->pend_len) {
        pending_t *p = &e->pend[e->pend_head];
        if (p->due > now) break;
        uint32_t slot = p->slot, gen = p->gen;
        e->pend_head = (e->pend_head + 1) % e->pend_cap;
        e->pend_len--;
        flow_t *f = &e->slots[slot];
        if (f->used && f->gen == gen && !f->outcome && emit_outcome(e, slot, O_UNANSWERED, now) < 0)
            return -1;
    }
    if (now < e->next_sweep) return 0;
    e->next_sweep = now + e->sweep_interval;
    /* dead flows first, then long ones, each in creation order */
    uint32_t s = e->oldest;
    while (s != NIL) {
        flow_t *f = &e->slots[s];
        uint32_t nx = f->newer;
        double limit = f->k.proto == 6 ? e->tcp_idle : f->k.proto == 17 ? e->udp_idle : e->other_idle;
        if (now - f->last > limit) {
            if (free_flow(e, s) < 0) return -1;
            e->expired++;
        }
        s = nx;
    }
    for (s = e->oldest; s != NIL; s = e->slots[s].newer) {
        flow_t *f = &e->slots[s];
        if (now - f->first >= e->active_timeout) {
            if (end_record(e, s) < 0) return -1;
            f = &e->slots[s];
            /* same connection, continued as a fresh record: its attempt already ended,
             * so no second outcome is reported */
            f->gen++;
            f->first = f->last = now;
            f->pkts_o = f->pkts_r = f->bytes_o = f->bytes_r = 0;
            e->restarted++;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Engine methods                                                                       */

static PyObject *take_events(EngineObject *e)
{
    PyObject *ev = e->events;
    PyObject *fresh = PyList_New(0);
    if (!fresh) return NULL;
    e->events = fresh;
    return ev;
}

static int engine_init(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"max_flows", "attempt_timeout", "tcp_idle", "udp_idle", "other_idle",
                          "active_timeout", "sweep_interval", NULL};
    unsigned int max_flows = 200000;
    e->attempt_timeout = 3.0; e->tcp_idle = 300.0; e->udp_idle = 60.0; e->other_idle = 30.0;
    e->active_timeout = 3600.0; e->sweep_interval = 5.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Idddddd", kwl, &max_flows, &e->attempt_timeout,
                                     &e->tcp_idle, &e->udp_idle, &e->other_idle,
                                     &e->active_timeout, &e->sweep_interval))
        return -1;
    if (max_flows < 1) { PyErr_SetString(PyExc_ValueError, "max_flows must be at least 1"); return -1; }
    e->oldest = e->newest = e->free_head = NIL;
    e->max_flows = max_flows;
    e->sample_n = 1;
    e->ends = END_ALL;
    e->outcomes_on = 1;
    e->events = PyList_New(0);
    e->bursts.size = sizeof(burst_t);
    e->burst_gap = 5.0;
    e->pairs_cap = 1024;
    e->pairs = PyMem_Malloc(e->pairs_cap * sizeof(pair_t));
    e->pidx = PyMem_Calloc(e->pairs_cap * 2, sizeof(uint32_t));
    e->pmask = e->pairs_cap * 2 - 1;
    e->dns = dnsstat_new();
    e->http = PyMem_Calloc(1, sizeof(httpf_t));
    if (!e->events || !e->pairs || !e->pidx || !e->dns || !e->http) {
        PyErr_NoMemory();
        return -1;
    }
    return grow_table(e, max_flows < 4096 ? max_flows + 1 : 4096);
}

static PyObject *engine_new(PyTypeObject *t, PyObject *a, PyObject *k)
{
    EngineObject *e = (EngineObject *)t->tp_alloc(t, 0);
    if (e) { e->oldest = e->newest = e->free_head = NIL; }
    return (PyObject *)e;
}

static void engine_dealloc(EngineObject *e)
{
    for (uint32_t s = 0; s < e->fresh; s++) {
        flow_t *f = &e->slots[s];
        if (f->py) /* alive, held by Python: it keeps its values, not a pointer here */
            flow_detach((FlowObject *)f->py);
    }
    /* Flow objects still held elsewhere must not read freed slots */
    PyMem_Free(e->slots);
    PyMem_Free(e->index);
    PyMem_Free(e->pend);
    PyMem_Free(e->pairs);
    PyMem_Free(e->pidx);
    PyMem_Free(e->nets);
    Py_XDECREF(e->events);
    PyMem_Free(e->bursts.items);
    Py_XDECREF(e->scan);
    dnsstat_free(e->dns);
    if (e->http) {
        strs_free(&e->http->methods);
        strs_free(&e->http->headers);
        PyMem_Free(e->http);
    }
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int portmap(PyObject *ports, uint8_t *map)
{
    memset(map, 0, 8192);
    if (ports == Py_None) return 0;
    PyObject *it = PyObject_GetIter(ports);
    if (!it) return -1;
    PyObject *x;
    while ((x = PyIter_Next(it))) {
        long p = PyLong_AsLong(x);
        Py_DECREF(x);
        if (p == -1 && PyErr_Occurred()) { Py_DECREF(it); return -1; }
        if (p < 0 || p > 65535) {
            Py_DECREF(it);
            PyErr_Format(PyExc_ValueError, "port %ld out of range", p);
            return -1;
        }
        map[p >> 3] |= 1 << (p & 7);
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(configure_doc,
"configure(*, pairs, arp, icmp, signatures, deep, deep_tcp_ports, http_first, close_ports,\n"
"          activity, activity_ignore, activity_internal, internal_nets, ends, outcomes,\n"
"          activity_gap)\n\n"
"What reaches Python. pairs: count packets per (source, destination, class) for pairs();\n"
"arp/icmp: hand up every ARP / ICMP packet; signatures: [(protos, dports, prefix)] TCP/UDP\n"
"payloads handed up (protos a set of 6/17); deep: set of protocol names decoded by the\n"
"deep decoder (dns, tls, hl7, dcerpc, dicom, http, ...) or None for none; deep_tcp_ports:\n"
"TCP ports whose payloads always go up; http_first: bytes that may start an HTTP request;\n"
"close_ports: responder ports of established TCP flows whose first FIN/RST is an event;\n"
"activity: report activity() of flows from internal_nets, towards unicast external\n"
"(or internal, activity_internal) responders whose port is not in activity_ignore: their\n"
"bursts, each starting with the flow or after a silence over activity_gap seconds.\n"
"ends: which flow ends are events, bits: 1 all (the default), 2 those without an outcome,\n"
"4 established sessions on close_ports, 8 TCP flows whose payloads went to the deep decoder;\n"
"outcomes: whether attempt outcomes are events (the default) or only set on the flow;\n"
"outcome_ports: TCP responder ports whose outcomes are events even without `outcomes`;\n"
"scan: a Scan (net.portscan's state) every outcome is scored into, or None.");

static PyObject *engine_configure(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"pairs", "arp", "icmp", "signatures", "deep", "deep_tcp_ports",
                          "http_first", "close_ports", "activity", "activity_ignore",
                          "activity_internal", "internal_nets", "ends", "outcomes", "activity_gap",
                          "outcome_ports", "scan", "pairs_want", NULL};
    int pairs = 0, arpu = 0, icmpu = 0, activity = 0, act_int = 0, ends = END_ALL, outcomes = 1;
    int pairs_want = 0;
    double gap = e->burst_gap;
    PyObject *sigs = Py_None, *deep = Py_None, *tcp_ports = Py_None, *close_ports = Py_None,
             *act_ignore = Py_None, *nets = Py_None, *outcome_ports = Py_None, *scan = Py_None;
    Py_buffer http = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$pppOOOy*OpOpOipdOOi", kwl, &pairs, &arpu,
                                     &icmpu, &sigs, &deep, &tcp_ports, &http, &close_ports,
                                     &activity, &act_ignore, &act_int, &nets, &ends, &outcomes,
                                     &gap, &outcome_ports, &scan, &pairs_want))
        return NULL;
    int ok = -1;
    if (scan != Py_None && (!PyObject_TypeCheck(scan, &ScanType) || !((struct ScanObject *)scan)->index)) {
        PyErr_SetString(PyExc_TypeError, "scan must be an initialised Scan or None");
        goto done;
    }
    memset(e->http_first, 0, sizeof(e->http_first));
    for (Py_ssize_t i = 0; http.buf && i < http.len; i++) {
        uint8_t b = ((uint8_t *)http.buf)[i];
        e->http_first[b >> 3] |= 1 << (b & 7);
    }
    if (portmap(tcp_ports, e->deep_tcp_ports) < 0 || portmap(close_ports, e->close_ports) < 0 ||
        portmap(act_ignore, e->act_ignore) < 0 || portmap(outcome_ports, e->outcome_ports) < 0)
        goto done;
    e->deep_on = deep != Py_None;
    e->deep_udp_dns = e->tls_on = e->hl7_on = e->rpc_on = e->dicom_on = e->http_on = 0;
    if (e->deep_on) {
        struct { const char *n; int *v; } names[] = {
            {"dns", &e->deep_udp_dns}, {"tls", &e->tls_on}, {"hl7", &e->hl7_on},
            {"dcerpc", &e->rpc_on}, {"dicom", &e->dicom_on}, {"http", &e->http_on}};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            PyObject *s = PyUnicode_FromString(names[i].n);
            int r = s ? PySequence_Contains(deep, s) : -1;
            Py_XDECREF(s);
            if (r < 0) goto done;
            *names[i].v = r;
        }
    }
    e->nsigs = 0;
    if (sigs != Py_None) {
        PyObject *seq = PySequence_Fast(sigs, "signatures must be a sequence");
        if (!seq) goto done;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            if (e->nsigs == MAX_SIGS) { PyErr_SetString(PyExc_ValueError, "too many signatures"); Py_DECREF(seq); goto done; }
            PyObject *protos, *ports;
            Py_buffer pre;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "OOy*", &protos, &ports, &pre)) { Py_DECREF(seq); goto done; }
            sig_t *s = &e->sigs[e->nsigs];
            if (pre.len > 16) { PyBuffer_Release(&pre); PyErr_SetString(PyExc_ValueError, "signature prefix longer than 16 bytes"); Py_DECREF(seq); goto done; }
            memcpy(s->prefix, pre.buf, pre.len);
            s->plen = (int)pre.len;
            PyBuffer_Release(&pre);
            PyObject *six = PyLong_FromLong(6), *sev = PyLong_FromLong(17);
            int a = PySequence_Contains(protos, six), b = PySequence_Contains(protos, sev);
            Py_DECREF(six); Py_DECREF(sev);
            if (a < 0 || b < 0 || portmap(ports, s->ports) < 0) { Py_DECREF(seq); goto done; }
            s->protos = (a ? 1 : 0) | (b ? 2 : 0);
            e->nsigs++;
        }
        Py_DECREF(seq);
    }
    if (nets == Py_None) {
        PyMem_Free(e->nets);
        e->nets = NULL;
        e->nnets = 0;
    } else if (cidrs_parse(nets, "internal_nets", &e->nets, &e->nnets) < 0)
        goto done;
    e->pairs_on = pairs;
    e->pairs_want = pairs_want;
    e->arp_up = arpu;
    e->icmp_up = icmpu;
    if (gap < 0) { PyErr_SetString(PyExc_ValueError, "activity_gap must not be negative"); goto done; }
    e->activity_on = activity;
    e->burst_gap = gap;
    e->act_internal_dests = act_int;
    e->ends = ends;
    e->outcomes_on = outcomes;
    Py_XSETREF(e->scan, scan == Py_None ? NULL : (struct ScanObject *)Py_NewRef(scan));
    ok = 0;
done:
    if (http.buf) PyBuffer_Release(&http);
    if (ok < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *engine_set_limits(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"max_flows", "attempt_timeout", "tcp_idle", "udp_idle",
                          "active_timeout", "sample_n", NULL};
    unsigned int max_flows = e->max_flows, sample_n = e->sample_n;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$IddddI", kwl, &max_flows, &e->attempt_timeout,
                                     &e->tcp_idle, &e->udp_idle, &e->active_timeout, &sample_n))
        return NULL;
    if (max_flows < 1 || sample_n < 1) { PyErr_SetString(PyExc_ValueError, "max_flows and sample_n must be at least 1"); return NULL; }
    e->max_flows = max_flows;
    e->sample_n = sample_n;
    Py_RETURN_NONE;
}

static PyObject *engine_feed(EngineObject *e, PyObject *args)
{
    double ts;
    int linktype;
    unsigned int wirelen;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "diIy*", &ts, &linktype, &wirelen, &b)) return NULL;
    int r = feed_frame(e, ts, linktype, wirelen, b.buf, b.len);
    PyBuffer_Release(&b);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* The capture walkers' one stop rule, after each frame: 1 at or past the tick time, 2
 * when `max_events` events wait for Python, 0 to go on. */
static inline int walk_stop(EngineObject *e, double ts, double tick_at, Py_ssize_t max_events)
{
    if (ts >= tick_at) return 1;
    return PyList_GET_SIZE(e->events) >= max_events ? 2 : 0;
}

static inline uint32_t rd32(const uint8_t *p, int big)
{
    return big ? ((uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | p[2] << 16 | p[1] << 8 | p[0]);
}

PyDoc_STRVAR(feed_pcap_doc,
"feed_pcap(buf, off, big_endian, scale, linktype, hdrsize, swap, max_caplen, tick_at,\n"
"          max_events) -> (off, records, status)\n\n"
"Walk classic-pcap records from `off`. Stops after the first packet at or past `tick_at`\n"
"(status 1), when `max_events` events wait (2), at the end (0), or at damage: -1 record\n"
"truncated, -2 bad record length. swap: 0 never, 1 when caplen > wirelen, 2 always.");

static PyObject *engine_feed_pcap(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, max_events;
    int big, linktype, hdrsize, swap;
    double scale, tick_at;
    unsigned int max_caplen;
    if (!PyArg_ParseTuple(args, "y*nidiiiIdn", &b, &off, &big, &scale, &linktype, &hdrsize,
                          &swap, &max_caplen, &tick_at, &max_events))
        return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = 0;
    while (off < end) {
        if (off + hdrsize > end) { status = -1; break; }
        const uint8_t *h = buf + off;
        uint32_t sec = rd32(h, big), frac = rd32(h + 4, big), caplen = rd32(h + 8, big),
                 wirelen = rd32(h + 12, big);
        if (swap && (swap == 2 || caplen > wirelen)) { uint32_t t = caplen; caplen = wirelen; wirelen = t; }
        if (caplen > max_caplen) { status = -2; break; }
        Py_ssize_t start = off + hdrsize;
        if (start + (Py_ssize_t)caplen > end) { status = -1; break; }
        double ts = sec + frac * scale;
        off = start + caplen;
        records++;
        if (feed_frame(e, ts, linktype, wirelen, buf + start, caplen) < 0) {
            PyBuffer_Release(&b);
            return NULL;
        }
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("(nli)", off, records, status);
}

PyDoc_STRVAR(feed_pcapng_doc,
"feed_pcapng(buf, off, big_endian, ifaces, max_caplen, tick_at, max_events)\n"
"            -> (off, records, status, last_ts)\n\n"
"Walk a run of pcapng enhanced packet blocks from `off`; ifaces: the section's interfaces\n"
"so far, (linktype, timestamp divisor, timestamp offset, ...) each. Stops after the first\n"
"packet at or past `tick_at` (status 1), when `max_events` events wait (2), or at a\n"
"block it leaves to the Python walker (0): any other block, the end, damage, an unknown\n"
"interface. Timestamps are computed as the Python walker computes them.");

/* (linktype, divisor, offset) of each interface, from the walker's tuples */
typedef struct { int linktype; uint64_t div; int64_t tsoff; } ngif_t;

static PyObject *engine_feed_pcapng(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, max_events;
    int big;
    PyObject *ifaces;
    double tick_at;
    unsigned int max_caplen;
    if (!PyArg_ParseTuple(args, "y*niOIdn", &b, &off, &big, &ifaces, &max_caplen, &tick_at,
                          &max_events))
        return NULL;
    PyObject *seq = PySequence_Fast(ifaces, "ifaces must be a sequence");
    Py_ssize_t nif = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    ngif_t *ifs = seq ? PyMem_Calloc(nif ? nif : 1, sizeof(ngif_t)) : NULL;
    if (!ifs) {
        if (seq) PyErr_NoMemory();
        Py_XDECREF(seq);
        PyBuffer_Release(&b);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nif; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long div;
        long long tsoff;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3 ||
            (ifs[i].linktype = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0))) == -1 ||
            (div = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, 1))) == (unsigned long long)-1 ||
            ((tsoff = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2))) == -1 && PyErr_Occurred())) {
            /* a divisor too big for 64 bits: this interface stays with the Python walker */
            PyErr_Clear();
            ifs[i].div = 0;
            continue;
        }
        ifs[i].div = div;
        ifs[i].tsoff = tsoff;
    }
    Py_DECREF(seq);
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = 0;
    double ts = 0.0;
    while (end - off >= 12) {
        const uint8_t *h = buf + off;
        uint32_t btype = rd32(h, big), blen = rd32(h + 4, big);
        if (btype != 6 || blen < 32 || (blen & 3) || blen > end - off) break;
        uint32_t ifid = rd32(h + 8, big), hi = rd32(h + 12, big), lo = rd32(h + 16, big),
                 caplen = rd32(h + 20, big), wirelen = rd32(h + 24, big);
        if (caplen > blen - 32 || caplen > max_caplen || ifid >= nif || !ifs[ifid].div) break;
        uint64_t units = (uint64_t)hi << 32 | lo, div = ifs[ifid].div;
        if (units <= (1ULL << 53) && div <= (1ULL << 53)) {
            /* both exact as doubles: one correctly rounded division, as Python's int / int */
            ts = (double)units / (double)div + (double)ifs[ifid].tsoff;
        } else {
            /* nanosecond clocks and odd resolutions: Python's own arithmetic */
            PyObject *u = PyLong_FromUnsignedLongLong(units), *d = PyLong_FromUnsignedLongLong(div);
            PyObject *q = u && d ? PyNumber_TrueDivide(u, d) : NULL;
            Py_XDECREF(u);
            Py_XDECREF(d);
            if (!q) goto fail;
            ts = PyFloat_AsDouble(q) + (double)ifs[ifid].tsoff;
            Py_DECREF(q);
        }
        off += blen;
        records++;
        if (feed_frame(e, ts, ifs[ifid].linktype, wirelen, h + 28, caplen) < 0) goto fail;
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyMem_Free(ifs);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nlid)", off, records, status, ts);
fail:
    PyMem_Free(ifs);
    PyBuffer_Release(&b);
    return NULL;
}

PyDoc_STRVAR(feed_ring_doc,
"feed_ring(buf, off, num, snaplen, tick_at, max_events) -> (off, num, records, status)\n\n"
"Walk `num` frames of a TPACKET_V3 ring block from `off` (tpacket3_hdr each, native byte\n"
"order), as agent/capture/live.py ring_frames reads them: the 802.1Q tag the kernel took\n"
"off put back. Stops after the first packet at or past `tick_at` (status 1), when\n"
"`max_events` events wait (2), or when the frames are done (0); returns where to go on.");

static PyObject *engine_feed_ring(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, num, max_events;
    unsigned int snaplen;
    double tick_at;
    if (!PyArg_ParseTuple(args, "y*nnIdn", &b, &off, &num, &snaplen, &tick_at, &max_events))
        return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = 0;
    uint8_t *tagged = NULL; /* a frame with its VLAN tag back: made on the first need */
    while (num > 0) {
        if (off < 0 || end - off < 38) goto bad;
        const uint8_t *h = buf + off;
        uint32_t nxt, sec, nsec, caplen, wirelen, st, tci;
        uint16_t mac, tpid;
        memcpy(&nxt, h, 4); memcpy(&sec, h + 4, 4); memcpy(&nsec, h + 8, 4);
        memcpy(&caplen, h + 12, 4); memcpy(&wirelen, h + 16, 4); memcpy(&st, h + 20, 4);
        memcpy(&mac, h + 24, 2); memcpy(&tci, h + 32, 4); memcpy(&tpid, h + 36, 2);
        if (caplen > snaplen) caplen = snaplen;
        if (mac > end - off || caplen > end - off - mac) goto bad;
        const uint8_t *frame = h + mac;
        double ts = sec + nsec * 1e-9;
        if (st & 0x10) { /* TP_STATUS_VLAN_VALID: the kernel took the tag off */
            uint16_t t = (st & 0x40) && tpid ? tpid : 0x8100; /* TP_STATUS_VLAN_TPID_VALID */
            if (!tagged && !(tagged = PyMem_Malloc((size_t)snaplen + 4))) {
                PyErr_NoMemory();
                goto fail;
            }
            uint32_t head = caplen < 12 ? caplen : 12;
            memcpy(tagged, frame, head);
            uint8_t tag[4] = {t >> 8, t & 255, (tci >> 8) & 255, tci & 255};
            memcpy(tagged + head, tag, 4);
            memcpy(tagged + head + 4, frame + head, caplen - head);
            frame = tagged;
            caplen += 4;
            wirelen += 4;
        }
        off += nxt;
        num--;
        records++;
        if (feed_frame(e, ts, 1, wirelen, frame, caplen) < 0) goto fail;
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyMem_Free(tagged);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nnli)", off, num, records, status);
bad:
    PyErr_SetString(PyExc_ValueError, "ring frame outside its block");
fail:
    PyMem_Free(tagged);
    PyBuffer_Release(&b);
    return NULL;
}

static PyObject *engine_packet(EngineObject *e, PyObject *p)
{
    if (!PyObject_TypeCheck(p, &PacketType)) {
        PyErr_SetString(PyExc_TypeError, "packet() takes a Packet");
        return NULL;
    }
    PacketObject *o = (PacketObject *)p;
    pkt_t k;
    memset(&k, 0, sizeof(k));
    char *s, *d, *pl;
    Py_ssize_t sl, dl, pll;
    if (PyBytes_AsStringAndSize(o->src, &s, &sl) < 0 || PyBytes_AsStringAndSize(o->dst, &d, &dl) < 0 ||
        PyBytes_AsStringAndSize(o->payload, &pl, &pll) < 0)
        return NULL;
    if ((sl != 4 && sl != 16) || dl != sl) { PyErr_SetString(PyExc_ValueError, "addresses must be 4 or 16 bytes, alike"); return NULL; }
    k.ts = o->ts; k.wirelen = (uint32_t)o->length; k.ver = o->ip_version; k.alen = (int)sl;
    memcpy(k.src, s, sl); memcpy(k.dst, d, dl);
    k.proto = o->proto; k.sport = o->sport; k.dport = o->dport; k.flags = o->flags;
    k.vlan = o->vlan; k.frag = o->frag; k.ttl = o->ttl; k.op = o->op;
    k.payload = (const uint8_t *)pl; k.plen = pll;
    PyObject *flow = NULL;
    e->packets++;
    e->bytes += k.wirelen;
    e->decoded++;
    if (process(e, &k, &flow) < 0) return NULL;
    return flow ? flow : Py_NewRef(Py_None);
}

static PyObject *engine_tick(EngineObject *e, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    if (do_tick(e, now) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *engine_flush(EngineObject *e, PyObject *unused)
{
    /* end of input: attempts still pending are not known to have failed */
    e->pend_len = 0;
    e->pend_head = 0;
    while (e->oldest != NIL)
        if (free_flow(e, e->oldest) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *engine_events(EngineObject *e, PyObject *unused) { return take_events(e); }

static PyObject *pair_tuple(const void *rec)
{
    const pair_t *q = rec;
    return Py_BuildValue("(y#y#iKKdi)", q->src, (Py_ssize_t)(q->other ? 0 : q->alen), q->dst,
                         (Py_ssize_t)q->alen, q->cls, (unsigned long long)q->packets,
                         (unsigned long long)q->bytes, q->last, q->dport);
}

/* In the order of their last packets, ties in the order the pairs were first counted:
 * what a stable sort of the insertion-ordered list gave. */
static int pair_order_cmp(const void *a, const void *b, void *items)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    double x = ((pair_t *)items)[i].last, y = ((pair_t *)items)[j].last;
    if (x != y) return x < y ? -1 : 1;
    return i < j ? -1 : i > j;
}

static PyObject *engine_pairs(EngineObject *e, PyObject *unused)
{
    uint32_t n = e->npairs;
    uint32_t *order = PyMem_Malloc(((size_t)n + 1) * sizeof(uint32_t));
    /* the next tick's table: as large, but untouched pages cost nothing resident */
    pair_t *fresh = PyMem_Malloc((size_t)e->pairs_cap * sizeof(pair_t));
    if (!order || !fresh) {
        PyMem_Free(order);
        PyMem_Free(fresh);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    qsort_r(order, n, sizeof(uint32_t), pair_order_cmp, e->pairs);
    PyObject *out = records_own((char *)e->pairs, order, n, sizeof(pair_t), pair_tuple);
    e->pairs = fresh;
    e->npairs = 0;
    memset(e->pidx, 0, ((size_t)e->pmask + 1) * sizeof(uint32_t));
    return out;
}

static PyObject *engine_activity(EngineObject *e, PyObject *unused)
{
    return recbuf_take(&e->bursts, burst_tuple);
}

static PyObject *engine_stats(EngineObject *e, PyObject *unused)
{
    PyObject *mal = PyDict_New(), *skip = PyDict_New();
    if (!mal || !skip) return NULL;
    for (size_t r = 1; r <= N_REASONS; r++) {
        if (!e->reasons[r]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(e->reasons[r]);
        if (!v || PyDict_SetItemString(r > FIRST_SKIP ? skip : mal, REASONS[r - 1], v) < 0) return NULL;
        Py_DECREF(v);
    }
    return Py_BuildValue(
        "{sKsKsKsNsNsIsKsKsKsKsKsKsK}", "packets", (unsigned long long)e->packets, "bytes",
        (unsigned long long)e->bytes, "decoded", (unsigned long long)e->decoded, "malformed", mal,
        "skipped", skip, "flows", e->nflows, "created", (unsigned long long)e->created, "evicted",
        (unsigned long long)e->evicted, "expired", (unsigned long long)e->expired, "restarted",
        (unsigned long long)e->restarted, "shed_packets", (unsigned long long)e->shed_packets,
        "handed_up", (unsigned long long)e->handed_up, "pairs_overflow",
        (unsigned long long)e->pairs_overflow);
}

static PyObject *engine_get(EngineObject *e, PyObject *key)
{
    /* the Flow with this key, or None */
    int proto, vlan, ap, bp;
    Py_buffer a, b;
    if (!PyArg_ParseTuple(key, "iiy*iy*i", &proto, &vlan, &a, &ap, &b, &bp)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    fkey_t k;
    memset(&k, 0, sizeof(k));
    int okay = (a.len == 4 || a.len == 16) && a.len == b.len;
    if (okay) {
        k.proto = proto; k.vlan = vlan; k.alen = (uint8_t)a.len; k.ap = ap; k.bp = bp;
        memcpy(k.a, a.buf, a.len);
        memcpy(k.b, b.buf, b.len);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    if (!okay) Py_RETURN_NONE;
    uint32_t pos, s = lookup(e, &k, key_hash(&k), &pos);
    if (s == NIL) Py_RETURN_NONE;
    return flow_py(e, s);
}

static PyObject *engine_last_ts(EngineObject *e, void *c) { return PyFloat_FromDouble(e->last_ts); }
static PyObject *engine_nflows(EngineObject *e, void *c) { return PyLong_FromUnsignedLong(e->nflows); }
static Py_ssize_t engine_len(EngineObject *e) { return e->nflows; }
#define EG(name) static PyObject *engine_##name(EngineObject *e, void *c) { return PyLong_FromUnsignedLongLong(e->name); }
EG(created) EG(evicted) EG(expired) EG(restarted) EG(packets) EG(bytes) EG(shed_packets)
static PyObject *engine_max_flows(EngineObject *e, void *c) { return PyLong_FromUnsignedLong(e->max_flows); }
static PyObject *engine_attempt_timeout(EngineObject *e, void *c) { return PyFloat_FromDouble(e->attempt_timeout); }
static PyObject *engine_tcp_idle(EngineObject *e, void *c) { return PyFloat_FromDouble(e->tcp_idle); }
static PyObject *engine_udp_idle(EngineObject *e, void *c) { return PyFloat_FromDouble(e->udp_idle); }
static PyObject *engine_active_timeout(EngineObject *e, void *c) { return PyFloat_FromDouble(e->active_timeout); }

static PyGetSetDef engine_getset[] = {
    {"last_ts", (getter)engine_last_ts, NULL, "latest packet time seen"},
    {"flows", (getter)engine_nflows, NULL, "flows in the table"},
    {"created", (getter)engine_created, NULL, NULL},
    {"evicted", (getter)engine_evicted, NULL, NULL},
    {"expired", (getter)engine_expired, NULL, NULL},
    {"restarted", (getter)engine_restarted, NULL, NULL},
    {"packets", (getter)engine_packets, NULL, NULL},
    {"bytes", (getter)engine_bytes, NULL, NULL},
    {"shed_packets", (getter)engine_shed_packets, NULL, NULL},
    {"max_flows", (getter)engine_max_flows, NULL, NULL},
    {"attempt_timeout", (getter)engine_attempt_timeout, NULL, NULL},
    {"tcp_idle", (getter)engine_tcp_idle, NULL, NULL},
    {"udp_idle", (getter)engine_udp_idle, NULL, NULL},
    {"active_timeout", (getter)engine_active_timeout, NULL, NULL},
    {NULL},
};

static PyMethodDef engine_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))engine_configure, METH_VARARGS | METH_KEYWORDS, configure_doc},
    {"set_limits", (PyCFunction)(void (*)(void))engine_set_limits, METH_VARARGS | METH_KEYWORDS,
     "set_limits(*, max_flows, attempt_timeout, tcp_idle, udp_idle, active_timeout, sample_n)"},
    {"feed", (PyCFunction)engine_feed, METH_VARARGS, "feed(ts, linktype, wirelen, frame): one frame"},
    {"feed_pcap", (PyCFunction)engine_feed_pcap, METH_VARARGS, feed_pcap_doc},
    {"feed_pcapng", (PyCFunction)engine_feed_pcapng, METH_VARARGS, feed_pcapng_doc},
    {"feed_ring", (PyCFunction)engine_feed_ring, METH_VARARGS, feed_ring_doc},
    {"packet", (PyCFunction)engine_packet, METH_O, "packet(p) -> Flow | None: a decoded Packet"},
    {"tick", (PyCFunction)engine_tick, METH_O, "tick(now): attempts unanswered, idle and long flows"},
    {"flush", (PyCFunction)engine_flush, METH_NOARGS, "flush(): end of input, every flow ends"},
    {"events", (PyCFunction)engine_events, METH_NOARGS,
     "events() -> [(0, flow, outcome, ts) | (1, flow) | (2, packet, flow|None, asked) | "
     "(3, flow, ts) | (4, packet, flow, dns, asked) | (5, scan record)]: outcome, end, packet "
     "handed up (asked: for on_packet, not only the deep decoder), close, a DNS message over "
     "UDP (dns: what parse_dns returns), a port scan report (see Scan); taken (the engine "
     "starts a new list)"},
    {"pairs", (PyCFunction)engine_pairs, METH_NOARGS,
     "pairs() -> Records of (src, dst, cls, packets, bytes, last_ts, dport) since the last "
     "call, in the order of their last packets (src b'' : other sources, once the tick's "
     "table is full)"},
    {"activity", (PyCFunction)engine_activity, METH_NOARGS,
     "activity() -> Records of (ts, src, dst, dport, bytes | None): watched flows' bursts started "
     "(None) and ended (their bytes, both ways) since the last call, in order; src: the "
     "originator"},
    {"stats", (PyCFunction)engine_stats, METH_NOARGS, "counters"},
    {"configure_dns", (PyCFunction)(void (*)(void))engine_configure_dns, METH_VARARGS | METH_KEYWORDS,
     "configure_dns(*, tunnel=settings|None, dga=settings|None, fresh=False, up=None, "
     "short_suffixes=None): DNS counting for net.dns_tunnel / net.dga (their "
     "engine_config()), None: off; fresh: their windows restart; up: DNS messages also "
     "handed up as events"},
    {"dns_tick", (PyCFunction)engine_dns_tick, METH_O,
     "dns_tick(now): paced reports due, quiet keys forgotten; dns_tick(inf): every report held"},
    {"read_stats", (PyCFunction)engine_read_stats, METH_NOARGS,
     "messages the engine read itself: {inspected, decoded: {protocol: n}, malformed: "
     "{reason: n}, keys, forgotten} (keys: what dnsstat.c counts for)"},
    {"configure_http", (PyCFunction)(void (*)(void))engine_configure_http, METH_VARARGS | METH_KEYWORDS,
     "configure_http(*, methods, headers, max_headers=8192): HTTP requests (a method of "
     "`methods`) without any of `headers` in their header block are counted, not handed "
     "up; headers empty: every request goes up"},
    {"get", (PyCFunction)engine_get, METH_O, "get(key) -> Flow | None"},
    {NULL},
};

static PySequenceMethods engine_seq = {.sq_length = (lenfunc)engine_len};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(max_flows=200000, attempt_timeout=3, tcp_idle=300, udp_idle=60, "
              "other_idle=30, active_timeout=3600, sweep_interval=5)",
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
    .tp_as_sequence = &engine_seq,
    .tp_init = (initproc)engine_init,
    .tp_new = engine_new,
};


static PyObject *mod_parse_dns(PyObject *m, PyObject *args)
{
    Py_buffer b;
    int tcp = 0;
    if (!PyArg_ParseTuple(args, "y*|p", &b, &tcp)) return NULL;
    PyObject *r = dns_parse(b.buf, b.len, tcp);
    PyBuffer_Release(&b);
    return r;
}

/* decode(ts, linktype, wirelen, frame) -> (Packet | None, reason | None, skipped) */
static PyObject *mod_decode(PyObject *m, PyObject *args)
{
    double ts;
    int linktype;
    unsigned int wirelen;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "diIy*", &ts, &linktype, &wirelen, &b)) return NULL;
    pkt_t k;
    int r = decode(&k, ts, linktype, wirelen, b.buf, b.len);
    PyObject *out;
    if (r) out = Py_BuildValue("(OsO)", Py_None, REASONS[r - 1], r > FIRST_SKIP ? Py_True : Py_False);
    else {
        PyObject *p = packet_new_from(&k);
        out = p ? Py_BuildValue("(NOO)", p, Py_None, Py_False) : NULL;
    }
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef mod_methods[] = {
    {"decode", mod_decode, METH_VARARGS,
     "decode(ts, linktype, wirelen, frame) -> (Packet | None, reason | None, skipped)"},
    {"parse_dns", mod_parse_dns, METH_VARARGS,
     "parse_dns(payload, tcp=False) -> (id, qr, opcode, rcode, qname, qtype, qdcount, "
     "ancount, answer_types, truncated) | malformed reason | None"},
    {NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, mod_methods};

PyMODINIT_FUNC PyInit__engine(void)
{
    if (PyType_Ready(&PacketType) < 0 || PyType_Ready(&FlowType) < 0 ||
        PyType_Ready(&RecordsType) < 0 ||
        PyType_Ready(&EngineType) < 0 || PyType_Ready(&TableType) < 0 ||
        PyType_Ready(&ScanType) < 0)
        return NULL;
    EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0);
    const char *outs[] = {"", "success", "rejected", "unanswered"};
    const char *sts[] = {"", "null", "fin", "xmas", "other"};
    for (int i = 0; i < 4; i++) OUTCOME_STR[i] = PyUnicode_InternFromString(outs[i]);
    for (int i = 0; i < 5; i++) STEALTH_STR[i] = PyUnicode_InternFromString(sts[i]);
#ifdef M_MMAP_THRESHOLD
    /* The flow table and detector tables grow by reallocation: glibc would raise its
     * mmap threshold after the first big free and serve the next ones from the heap,
     * where freed blocks stay resident (11 MB at 100k flows). A fixed threshold keeps
     * big blocks mapped, so that what is freed goes back to the system. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyModule_AddObjectRef(m, "Packet", (PyObject *)&PacketType);
    PyModule_AddObjectRef(m, "Flow", (PyObject *)&FlowType);
    PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType);
    PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType);
    PyModule_AddObjectRef(m, "Scan", (PyObject *)&ScanType);
    PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType);
    PyModule_AddIntConstant(m, "EV_OUTCOME", EV_OUTCOME);
    PyModule_AddIntConstant(m, "EV_END", EV_END);
    PyModule_AddIntConstant(m, "EV_PACKET", EV_PACKET);
    PyModule_AddIntConstant(m, "EV_CLOSE", EV_CLOSE);
    PyModule_AddIntConstant(m, "EV_DNS", EV_DNS);
    PyModule_AddIntConstant(m, "EV_SCAN", EV_SCAN);
    PyModule_AddIntConstant(m, "EV_DNS_TUNNEL", EV_DNS_TUNNEL);
    PyModule_AddIntConstant(m, "EV_DGA", EV_DGA);
    PyModule_AddIntConstant(m, "END_ALL", END_ALL);
    PyModule_AddIntConstant(m, "END_UNRESOLVED", END_UNRESOLVED);
    PyModule_AddIntConstant(m, "END_SESSIONS", END_SESSIONS);
    PyModule_AddIntConstant(m, "END_DEEP", END_DEEP);
    PyModule_AddIntConstant(m, "PAIRS_FLOODS", PAIRS_FLOODS);
    PyModule_AddIntConstant(m, "PAIRS_OUTBOUND", PAIRS_OUTBOUND);
    PyObject *reasons = PyTuple_New(N_REASONS);
    for (size_t i = 0; i < N_REASONS; i++) PyTuple_SET_ITEM(reasons, i, PyUnicode_FromString(REASONS[i]));
    PyModule_AddObject(m, "REASONS", reasons);
    return m;
}
