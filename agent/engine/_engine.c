/* The module agent.engine._engine: the Engine type, the module's functions, and the
 * constants Python shares with the C side, exported here under their C names.
 *
 * The per-packet path itself lives in the units engine.h lists. Semantics follow the
 * pure-Python reference this replaced (git history: agent/decode/fast.py and
 * agent/flows/table.py), and the tests that pinned it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "counters.h"
#include "decode.h"
#include "dnsmsg.h"
#include "dnsstat.h"
#include "engine.h"
#include "flows.h"
#include "httpfilter.h"
#include "authsvc.h"
#include "scan.h"
#include "sweep.h"
#include "table.h"
#include "walk.h"
#include "journal.h"
#include "syslogscan.h"

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
    Py_XDECREF(e->sweep);
    dnsstat_free(e->dns);
    auth_free(e);
    journal_free(e->journal);
    if (e->http) {
        strs_free(&e->http->methods);
        strs_free(&e->http->headers);
        PyMem_Free(e->http);
    }
    Py_TYPE(e)->tp_free((PyObject *)e);
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
"scan: a Scan (net.portscan's state) every outcome is scored into, or None;\n"
"sweep: a Sweep (net.discovery's state) every ARP and ICMP packet is counted into, or None.");

static PyObject *engine_configure(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"pairs", "arp", "icmp", "signatures", "deep", "deep_tcp_ports",
                          "http_first", "close_ports", "activity", "activity_ignore",
                          "activity_internal", "internal_nets", "ends", "outcomes", "activity_gap",
                          "outcome_ports", "scan", "pairs_want", "sweep", NULL};
    int pairs = 0, arpu = 0, icmpu = 0, activity = 0, act_int = 0, ends = END_ALL, outcomes = 1;
    int pairs_want = 0;
    double gap = e->burst_gap;
    PyObject *sigs = Py_None, *deep = Py_None, *tcp_ports = Py_None, *close_ports = Py_None,
             *act_ignore = Py_None, *nets = Py_None, *outcome_ports = Py_None, *scan = Py_None,
             *sweep = Py_None;
    Py_buffer http = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$pppOOOy*OpOpOipdOOiO", kwl, &pairs, &arpu,
                                     &icmpu, &sigs, &deep, &tcp_ports, &http, &close_ports,
                                     &activity, &act_ignore, &act_int, &nets, &ends, &outcomes,
                                     &gap, &outcome_ports, &scan, &pairs_want, &sweep))
        return NULL;
    int ok = -1;
    if (scan != Py_None && (!PyObject_TypeCheck(scan, &ScanType) || !((struct ScanObject *)scan)->index)) {
        PyErr_SetString(PyExc_TypeError, "scan must be an initialised Scan or None");
        goto done;
    }
    if (sweep != Py_None && (!PyObject_TypeCheck(sweep, &SweepType) || !((SweepObject *)sweep)->index)) {
        PyErr_SetString(PyExc_TypeError, "sweep must be an initialised Sweep or None");
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
    Py_XSETREF(e->sweep, sweep == Py_None ? NULL : (SweepObject *)Py_NewRef(sweep));
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
    k.payload = (const uint8_t *)pl; k.plen = k.dlen = pll;
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
     "activity() -> Records of watched flows' bursts since the last call, in order: started, "
     "(ts, src, dst, dport, None, new: with a new flow, else after a silence on a known one), "
     "and ended, (ts, src, dst, dport, bytes from src, bytes from dst); src: the originator"},
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
    {"configure_auth", (PyCFunction)engine_configure_auth, METH_O,
     "configure_auth(on): recognise authentication services by handshake on any port "
     "(Flow.service), count their cleartext logon failures and record SSH packet sizes "
     "(Flow.auth_failures, Flow.ssh_sizes), with EV_AUTH events and their sessions' "
     "closes and ends (authsvc.h)"},
    {"configure_journal", (PyCFunction)(void (*)(void))engine_configure_journal,
     METH_VARARGS | METH_KEYWORDS,
     "configure_journal(on, *, max_pending_dns=65536): the retro-hunt journal's records "
     "(a connection per flow end, a DNS exchange per UDP query and its answer) kept for "
     "journal_take(); off: dropped with the queries still waiting"},
    {"journal_take", (PyCFunction)engine_journal_take, METH_VARARGS,
     "journal_take(max, until) -> (items, n, next, keys, addresses, first, last, "
     "connections, dns, dropped): up to `max` records (agent/hunt/journal.py FIELDS), "
     "marshalled one after the other (format 2: a list's items), n of them, "
     "stopping before the first whose time is `until` or later; next: that record's time, "
     "None when all were taken; the taken records' index keys (agent/hunt/segment.py key "
     "and domain_keys) and packed addresses (sets), their first and last times and "
     "counts; records dropped so far (buffer full)"},
    {"journal_expire", (PyCFunction)engine_journal_expire, METH_O,
     "journal_expire(before): DNS queries asked at `before` or earlier, still unanswered, "
     "become records (rcode -1)"},
    {"auth_stats", (PyCFunction)engine_auth_stats, METH_NOARGS,
     "{recognised: {service: flows}, ssh_dropped: SSH records reused before their flow ended}"},
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
    {"scan_syslog", syslog_scan, METH_VARARGS,
     "scan_syslog(block, fast, known, audit_only) -> (kept, lines, other, malformed): "
     "the lines of a syslog block (bytes) Parser.parse_block must read, as str, and how "
     "many lines it would have counted in all, as other and as malformed (agent/logs)"},
    {"sorted_u32", journal_sorted_u32, METH_O,
     "sorted_u32(buffer) -> bytes: its native u32 values sorted, each once (a journal "
     "segment's IPv4 addresses, agent/hunt/journal.py)"},
    {"index_arrays", journal_index_arrays, METH_VARARGS,
     "index_arrays(blocks, probes) -> (keys, starts, postings, bloom): a journal segment's "
     "index (agent/hunt/segment.py) from each block's set of keys, as the bytes of its "
     "arrays (u64 sorted keys, u32 starts, u32 block numbers) and its Bloom filter"},
    {NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, mod_methods};

PyMODINIT_FUNC PyInit__engine(void)
{
    if (decode_ready() < 0 || flows_ready() < 0 || PyType_Ready(&RecordsType) < 0 ||
        PyType_Ready(&EngineType) < 0 || PyType_Ready(&TableType) < 0 ||
        PyType_Ready(&ScanType) < 0 || PyType_Ready(&SweepType) < 0)
        return NULL;
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
    PyModule_AddObjectRef(m, "Sweep", (PyObject *)&SweepType);
    PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType);
    /* Every number Python shares with the C side, defined once (engine.h, scan.h, walk.h,
     * decode.h) and read from here by agent.engine. */
    static const struct { const char *name; long value; } consts[] = {
#define C(name) {#name, name}
        C(EV_OUTCOME), C(EV_END), C(EV_PACKET), C(EV_CLOSE), C(EV_DNS), C(EV_SCAN),
        C(EV_DNS_TUNNEL), C(EV_DGA), C(EV_SWEEP), C(EV_AUTH),
        C(SWEEP_ARP), C(SWEEP_ECHO), C(SWEEP_TIMESTAMP), C(SWEEP_MASK), C(SWEEP_ND),
        C(END_ALL), C(END_UNRESOLVED), C(END_SESSIONS), C(END_DEEP),
        C(PAIRS_FLOODS), C(PAIRS_OUTBOUND),
        C(PAIR_SYN), C(PAIR_TCP), C(PAIR_UDP), C(PAIR_ICMP), C(PAIR_ICMP_ERROR), C(PAIR_OTHER),
        C(S_ATTEMPT), C(S_PROBE), C(S_ESTABLISHED), C(S_REJECTED), C(S_MIDSTREAM), C(S_CLOSED),
        C(STYLE_FIN), C(STYLE_NULL), C(STYLE_OTHER), C(STYLE_SYN), C(STYLE_UDP), C(STYLE_XMAS),
        C(STYLE_ACK), C(STYLE_MAIMON), C(STYLE_PROTO), C(STYLE_SCTP),
        C(WALK_DONE), C(WALK_TICK), C(WALK_EVENTS), C(WALK_TRUNCATED), C(WALK_BAD_LENGTH),
        C(P_ARP),
#undef C
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++)
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    PyObject *reasons = PyTuple_New(N_REASONS);
    for (size_t i = 0; i < N_REASONS; i++) PyTuple_SET_ITEM(reasons, i, PyUnicode_FromString(REASONS[i]));
    PyModule_AddObject(m, "REASONS", reasons);
    PyObject *services = PyTuple_New(N_SVC); /* Flow.service names (authsvc.h) */
    for (size_t i = 0; i < N_SVC; i++) PyTuple_SET_ITEM(services, i, PyUnicode_FromString(SERVICE_NAMES[i]));
    PyModule_AddObject(m, "SERVICES", services);
    return m;
}
