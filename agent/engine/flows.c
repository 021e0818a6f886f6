/* The flow table, the per-packet path and Flow (see flows.h).
 *
 * Semantics follow the pure-Python flow table this replaced and the tests that pinned it
 * (tests/test_flows.py, tests/test_engine.py).
 */
#include "flows.h"

#include "authsvc.h"
#include "counters.h"
#include "dnsstat.h"
#include "httpfilter.h"
#include "journal.h"
#include "scan.h"
#include "sweep.h"

/* Flow objects read the engine's slot while the flow lives and their own copy after. */
struct FlowObject {
    PyObject_HEAD
    EngineObject *eng; /* NULL once detached */
    uint32_t slot, gen;
    PyObject *key;
    int proto, vlan, rev, isport, idport;
    /* the copy, valid once detached */
    double first, last;
    unsigned long long pkts_o, pkts_r, bytes_o, bytes_r;
    int state, outcome, stealth, closed;
    int svc, fails; /* authsvc.c */
    PyObject *ssh_sizes; /* authsvc.c: the copy of its SSH record, or NULL */
};

static PyObject *OUTCOME_STR[4], *STEALTH_STR[7];

static inline uint32_t sat_add32(uint32_t a, uint32_t b)
{
    return a > UINT32_MAX - b ? UINT32_MAX : a + b;
}

static inline flow_t *flow_live(FlowObject *o)
{
    if (!o->eng) return NULL;
    flow_t *f = &o->eng->slots[o->slot];
    return f->used && f->gen == o->gen ? f : NULL;
}

void flow_detach(FlowObject *o)
{
    flow_t *f = flow_live(o);
    if (f) {
        o->first = f->first; o->last = f->last;
        o->pkts_o = f->pkts_o; o->pkts_r = f->pkts_r;
        o->bytes_o = f->bytes_o; o->bytes_r = f->bytes_r;
        o->state = f->state; o->outcome = f->outcome; o->stealth = f->stealth;
        o->closed = f->closed;
        o->svc = f->svc; o->fails = f->fails;
        if (f->sshrec && !o->ssh_sizes) {
            o->ssh_sizes = auth_ssh_sizes(o->eng, o->slot);
            if (!o->ssh_sizes) PyErr_Clear(); /* out of memory: the getter shows none */
        }
    }
    o->eng = NULL;
}

/* A new reference to the flow's Python object, made on first need. The slot only
 * borrows it: once Python lets go of it (most flows: after their events), it is freed
 * and its dealloc clears the slot; the next event makes another. */
PyObject *flow_py(EngineObject *e, uint32_t slot)
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
    o->svc = o->fails = 0;
    o->ssh_sizes = NULL;
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
    Py_XDECREF(o->ssh_sizes);
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
static PyObject *flow_get_service(FlowObject *o, void *c)
{
    flow_t *f = flow_live(o);
    return PyUnicode_FromString(SERVICE_NAMES[f ? f->svc : o->svc]);
}
static PyObject *flow_get_auth_failures(FlowObject *o, void *c)
{
    flow_t *f = flow_live(o);
    return PyLong_FromLong(f ? f->fails : o->fails);
}
static PyObject *flow_get_ssh_sizes(FlowObject *o, void *c)
{
    if (flow_live(o)) return auth_ssh_sizes(o->eng, o->slot);
    return o->ssh_sizes ? Py_NewRef(o->ssh_sizes) : PyTuple_New(0);
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
    {"service", (getter)flow_get_service, NULL,
     "authentication service recognised by its handshake (authsvc.h SERVICES) or ''"},
    {"auth_failures", (getter)flow_get_auth_failures, NULL,
     "failed logons the server answered in clear (MySQL, PostgreSQL, LDAP, Kerberos)"},
    {"ssh_sizes", (getter)flow_get_ssh_sizes, NULL,
     "SSH: sizes of the first payloads after each side's NEWKEYS, + client, - server"},
    {NULL},
};

static PyObject *flow_repr(FlowObject *o)
{
    return PyUnicode_FromFormat("Flow(%R)", o->key);
}

PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Flow",
    .tp_basicsize = sizeof(FlowObject),
    .tp_dealloc = (destructor)flow_dealloc,
    .tp_repr = (reprfunc)flow_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One bidirectional flow; live while in the table, a final copy after.",
    .tp_getset = flow_getset,
};


int flows_ready(void)
{
    if (PyType_Ready(&FlowType) < 0) return -1;
    const char *outs[] = {"", "success", "rejected", "unanswered"};
    const char *sts[] = {"", "null", "fin", "xmas", "other", "ack", "maimon"};
    for (int i = 0; i < 4; i++) OUTCOME_STR[i] = PyUnicode_InternFromString(outs[i]);
    for (int i = 0; i < 7; i++) STEALTH_STR[i] = PyUnicode_InternFromString(sts[i]);
    return 0;
}

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

uint32_t lookup(EngineObject *e, const fkey_t *k, uint32_t h, uint32_t *pos)
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
int grow_table(EngineObject *e, uint32_t want)
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

static int emit_flow(EngineObject *e, int code, uint32_t slot)
{
    PyObject *py = flow_py(e, slot);
    if (!py) return -1;
    return emit(e, Py_BuildValue("(iN)", code, py));
}

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

/* The flow's record ends (expired, evicted, end of input, or reported at the active
 * timeout): Python gets the END event with a final copy. */
static int end_wanted(EngineObject *e, flow_t *f)
{
    int m = e->ends;
    if (m & END_ALL) return 1;
    if ((m & END_UNRESOLVED) && !f->outcome) return 1;
    if ((m & END_SESSIONS) && f->state == S_ESTABLISHED && !f->closed &&
        (bit(e->close_ports, f->rev ? f->k.ap : f->k.bp) || (e->auth && f->svc)))
        return 1;
    return (m & END_DEEP) && f->deep_seen;
}

static int end_record(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    if (e->journal) journal_conn(e, f);
    if (end_wanted(e, f) && emit_flow(e, EV_END, slot) < 0) return -1;
    if (f->py) { /* the event, or whoever kept it, holds it: it keeps the final values */
        flow_detach((FlowObject *)f->py);
        f->py = NULL;
    }
    return 0;
}

int free_flow(EngineObject *e, uint32_t slot)
{
    /* a burst ends with its flow (not at the active timeout: the session goes on) */
    if (e->slots[slot].in_burst && (e->slots[slot].burst_o || e->slots[slot].burst_r) &&
        burst_record(e, &e->slots[slot], e->slots[slot].last, 0) < 0)
        return -1;
    if (end_record(e, slot) < 0) return -1;
    auth_forget(e, slot);
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
    /* a lone ACK or FIN/ACK opening a flow: an ACK/Window or Maimon probe, or a session
     * begun before the capture (told apart by the answer: only a probe gets an RST) */
    if (f == ACK) return ST_ACK;
    if (f == (FIN | ACK)) return ST_MAIMON;
    return ST_NONE;
}


/* A packet through the flow table and the taps */

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
    if (k->proto == 1 && k->sport == 3 && n >= 20 && q[0] >> 4 == 4) { /* a header may come alone */
        int ihl = (q[0] & 15) * 4;
        proto = q[9]; src = q + 12; dst = q + 16; alen = 4;
        l4p = q + ihl; l4n = n - ihl;
    } else if (k->proto == 58 && k->sport == 1 && n >= 48 && q[0] >> 4 == 6) {
        proto = q[6]; src = q + 8; dst = q + 24; alen = 16;
        l4p = q + 40; l4n = n - 40;
    } else return 0;
    if (proto != 6 && proto != 17) /* an IP protocol or SCTP probe, refused by its target */
        return e->scan && k->proto == 1 && k->dport == 2 && memcmp(k->src, dst, 4) == 0
                   ? scan_refused(e->scan, e->events, src, dst, alen, proto,
                                  proto == 132 && l4n >= 4 ? u16(l4p + 2) : 0, k->ts)
                   : 0;
    if (l4n < 4) return 0;
    flow_key(&key, proto, k->vlan, alen, src, u16(l4p), dst, u16(l4p + 2), 1);
    uint32_t pos, h = key_hash(&key);
    uint32_t s = lookup(e, &key, h, &pos);
    if (s == NIL) return 0;
    flow_t *f = &e->slots[s];
    if (f->outcome) return 0;
    f->state = S_REJECTED;
    return emit_outcome(e, s, O_REJECTED, k->ts);
}

int process(EngineObject *e, pkt_t *k, PyObject **flow_out)
{
    int proto = k->proto;
    if (k->ts > e->last_ts) e->last_ts = k->ts;
    if (e->pairs_on && k->ver && pair_add(e, k) < 0) return -1;
    if (e->sweep && (proto == P_ARP || proto == 1 || proto == 58) &&
        sweep_packet(e->sweep, e->events, k) < 0)
        return -1;
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
            } else if ((st = stealth_kind(fl)) && (st < ST_ACK || !k->plen)) {
                f->state = S_PROBE;
                f->stealth = st;
                /* ACK and FIN/ACK count only when reset: unanswered, they are as likely
                 * the tail of a session whose other half this link does not carry */
                if (st < ST_ACK && pend_push(e, k->ts + e->attempt_timeout, slot) < 0) return -1;
            }
        }
        if (f->watch) {
            if (burst_record(e, f, k->ts, 1) < 0) return -1;
            f->in_burst = 1;
        }
    } else if (e->slots[slot].watch) {
        flow_t *w = &e->slots[slot];
        if (w->in_burst && k->ts - w->last > e->burst_gap) { /* a silence ends the burst */
            if ((w->burst_o || w->burst_r) && burst_record(e, w, w->last, 0) < 0) return -1;
            w->burst_o = w->burst_r = 0;
            w->in_burst = 0;
        }
        /* data starts the next (a check-in on a long-lived session); a bare TCP segment
         * (a keep-alive probe, the FIN of an idle session) is no check-in */
        if (!w->in_burst && (k->dlen || proto == 17)) {
            if (burst_record(e, w, k->ts, 2) < 0) return -1;
            w->in_burst = 1;
        }
    }
    flow_t *f = &e->slots[slot];
    f->last = k->ts;
    /* From the originator: sent from the originator's end of the key (and, for ICMP,
     * with the type the flow began with). */
    int dir;
    if (lo != f->rev && (tcpudp || k->sport == f->itype)) {
        dir = 0;
        f->pkts_o++;
        f->bytes_o += k->wirelen;
        if (f->in_burst) f->burst_o = sat_add32(f->burst_o, k->wirelen);
    } else {
        dir = 1;
        f->pkts_r++;
        f->bytes_r += k->wirelen;
        if (f->in_burst) f->burst_r = sat_add32(f->burst_r, k->wirelen);
        if (!f->outcome) {
            if (proto == 6) {
                int fl = k->flags;
                if (f->state == S_ATTEMPT && (fl & SYN) && (fl & ACK)) {
                    f->state = S_ESTABLISHED;
                    if (emit_outcome(e, slot, O_SUCCESS, k->ts) < 0) return -1;
                } else if ((f->state == S_ATTEMPT || f->state == S_PROBE) && (fl & RST)) {
                    f->state = S_REJECTED;
                    if (emit_outcome(e, slot, O_REJECTED, k->ts) < 0) return -1;
                } else if (f->state == S_PROBE && f->stealth >= ST_ACK) {
                    f->state = S_MIDSTREAM; /* answered as a session is: it was one */
                }
            } else if (proto == 17) {
                if (emit_outcome(e, slot, O_SUCCESS, k->ts) < 0) return -1;
            }
        }
    }
    if (e->auth && k->plen && tcpudp && auth_wants(f, dir) && auth_packet(e, slot, k, dir) < 0)
        return -1;
    f = &e->slots[slot];
    if (proto == 6 && (k->flags & (FIN | RST)) && f->state == S_ESTABLISHED && !f->closed) {
        int rport = f->rev ? f->k.ap : f->k.bp;
        if (bit(e->close_ports, rport) || (e->auth && f->svc)) {
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

int feed_frame(EngineObject *e, double ts, int linktype, uint32_t wirelen,
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

int do_tick(EngineObject *e, double now)
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
        } else if (f->in_burst && now - f->last > e->burst_gap) {
            /* a silence ends the burst: its bytes are known now, not when an idle TCP
             * session expires minutes later */
            if ((f->burst_o || f->burst_r) && burst_record(e, f, f->last, 0) < 0) return -1;
            f->burst_o = f->burst_r = 0;
            f->in_burst = 0;
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
