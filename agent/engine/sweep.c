/* net.discovery's state and decisions (see sweep.h).
 *
 * Per source: `known`, every target it probed while it stayed active (forgotten with the
 * source, after `memory` seconds of silence), which is what makes a monitoring server
 * quiet: from its second round on it probes nothing new; `fresh`, the targets new to it
 * in the current sweep, and `answered`, those of them seen answering. A sweep starts at
 * a source's first new target and lasts `window` seconds, unless flagged (a flagged
 * sweep goes on while new targets come, and ends `window` seconds after the last one;
 * then it ends). Flagged: at least `min_targets` new
 * targets in the sweep, and either most of them silent (answered share at most
 * `max_answered`) or most of the smallest prefix covering them probed (`min_coverage`):
 * a list of live hosts probed for the first time (a new monitoring server) answers and
 * is scattered; a sweep runs through a range, mostly empty. (A first round over a dense
 * block of live hosts has a sweep's shape: only an allow-list tells it apart.) What is
 * reported, and counted as the alert's occurrences, is new targets: retries and later
 * rounds add nothing.
 *
 * Sets hold 64-bit hashes of addresses (distinct.h), 65,536 each at most. */
#include "sweep.h"

#include <math.h>

#include "distinct.h"
#include "engine.h"

#define SWEEP_CAP 65536

typedef struct sweep_src {
    uint8_t addr[16];
    double seen, start, last_new, last_report;
    hset_t known, fresh, answered;
    uint64_t pending; /* new targets not reported yet */
    /* Per probe family (0 ARP and neighbour discovery, 1 ICMP), the sweep's first target, OR of every target ^
     * first, and how many: the range is the larger family's (an ICMP sweep beyond the
     * segment starts with one ARP, for the gateway, whose address is elsewhere). */
    uint8_t first[2][16], diff[2][16];
    uint32_t nfam[2];
    uint32_t hash, older, newer;
    uint8_t alen, kinds, flagged, used;
} sweep_src_t;

static void set_clear(hset_t *h)
{
    PyMem_Free(h->items);
    memset(h, 0, sizeof(*h));
    h->limit = SWEEP_CAP;
}

static inline uint64_t addr_hash(const uint8_t *a, int alen)
{
    uint64_t h = fnv64(a, alen, FNV64_INIT);
    return h ? h : 1;
}

/* The source table: open addressing over slots, oldest forgotten first at the bound, as
 * scan.c's. */

static uint32_t sw_lookup(SweepObject *s, const uint8_t *a, int alen, uint32_t h, uint32_t *pos)
{
    uint32_t i = h & s->mask;
    for (;;) {
        uint32_t k = s->index[i];
        if (!k) { *pos = i; return NIL; }
        sweep_src_t *x = &s->slots[k - 1];
        if (x->hash == h && x->alen == alen && memcmp(x->addr, a, alen) == 0) { *pos = i; return k - 1; }
        i = (i + 1) & s->mask;
    }
}

static int sw_grow(SweepObject *s, uint32_t want)
{
    if (want > s->nslots) {
        sweep_src_t *ns = PyMem_Realloc(s->slots, (size_t)want * sizeof(sweep_src_t));
        if (!ns) { PyErr_NoMemory(); return -1; }
        s->slots = ns;
        s->nslots = want;
    }
    uint32_t cap = 256;
    while (cap < 2 * want) cap <<= 1;
    if (cap - 1 > s->mask || !s->index) {
        uint32_t *ni = PyMem_Calloc(cap, sizeof(uint32_t));
        if (!ni) { PyErr_NoMemory(); return -1; }
        PyMem_Free(s->index);
        s->index = ni;
        s->mask = cap - 1;
        for (uint32_t k = s->oldest; k != NIL; k = s->slots[k].newer) {
            uint32_t i = s->slots[k].hash & s->mask;
            while (s->index[i]) i = (i + 1) & s->mask;
            s->index[i] = k + 1;
        }
    }
    return 0;
}

static void sw_free(SweepObject *s, uint32_t k)
{
    sweep_src_t *x = &s->slots[k];
    uint32_t i = x->hash & s->mask;
    while (s->index[i] != k + 1) i = (i + 1) & s->mask;
    s->index[i] = 0; /* backward-shift deletion */
    for (uint32_t j = i;;) {
        j = (j + 1) & s->mask;
        uint32_t o = s->index[j];
        if (!o) break;
        uint32_t home = s->slots[o - 1].hash & s->mask;
        if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
            s->index[i] = o;
            s->index[j] = 0;
            i = j;
        }
    }
    if (x->older != NIL) s->slots[x->older].newer = x->newer; else s->oldest = x->newer;
    if (x->newer != NIL) s->slots[x->newer].older = x->older; else s->newest = x->older;
    PyMem_Free(x->known.items);
    PyMem_Free(x->fresh.items);
    PyMem_Free(x->answered.items);
    memset(x, 0, sizeof(*x));
    x->newer = s->free_head;
    s->free_head = k;
    s->nsrc--;
}

static uint32_t sw_get(SweepObject *s, const uint8_t *a, int alen)
{
    uint32_t pos, h = fnv1a(a, alen);
    uint32_t k = sw_lookup(s, a, alen, h, &pos);
    if (k != NIL) return k;
    if (s->nsrc >= s->max_sources) {
        /* a spoofed flood must not grow it: the oldest hundredth goes, counted */
        uint32_t n = s->max_sources / 100 ? s->max_sources / 100 : 1;
        for (uint32_t i = 0; i < n && s->oldest != NIL; i++) sw_free(s, s->oldest);
        s->forgotten += n;
        sw_lookup(s, a, alen, h, &pos);
    }
    if (s->free_head == NIL && s->fresh == s->nslots) {
        uint32_t want = s->nslots ? s->nslots * 2 : 256;
        if (want > s->max_sources) want = s->max_sources;
        if (sw_grow(s, want) < 0) return NIL;
        sw_lookup(s, a, alen, h, &pos);
    }
    if (s->free_head != NIL) {
        k = s->free_head;
        s->free_head = s->slots[k].newer;
    } else {
        k = s->fresh++;
    }
    sweep_src_t *x = &s->slots[k];
    memset(x, 0, sizeof(*x));
    memcpy(x->addr, a, alen);
    x->alen = alen;
    x->hash = h;
    x->used = 1;
    x->known.limit = x->fresh.limit = x->answered.limit = SWEEP_CAP;
    x->last_report = -INFINITY;
    x->older = s->newest;
    x->newer = NIL;
    if (s->newest != NIL) s->slots[s->newest].newer = k; else s->oldest = k;
    s->newest = k;
    s->index[pos] = k + 1;
    s->nsrc++;
    return k;
}

static inline int family(const sweep_src_t *x) { return x->nfam[1] > x->nfam[0]; }

/* Length of the smallest prefix covering the targets of the sweep's larger family. */
static int prefix_len(const sweep_src_t *x)
{
    const uint8_t *d = x->diff[family(x)];
    for (int i = 0; i < x->alen; i++)
        if (d[i]) return i * 8 + __builtin_clz((unsigned)d[i]) - 24;
    return x->alen * 8;
}

static PyObject *sw_record(sweep_src_t *x, double ts)
{
    int p = prefix_len(x);
    uint8_t net[16];
    for (int i = 0; i < x->alen; i++) {
        int bits = p - i * 8;
        uint8_t m = bits >= 8 ? 0xFF : bits <= 0 ? 0 : (uint8_t)(0xFF00 >> bits);
        net[i] = x->first[family(x)][i] & m;
    }
    double span = x->last_new - x->start;
    double rate = hset_len(&x->fresh) / (span > 1.0 ? span : 1.0);
    unsigned long long count = x->pending;
    x->pending = 0;
    x->last_report = ts;
    return Py_BuildValue("(y#dKKKiy#idI)", x->addr, (Py_ssize_t)x->alen, ts, count,
                         (unsigned long long)hset_len(&x->fresh),
                         (unsigned long long)hset_len(&x->answered), p, net,
                         (Py_ssize_t)x->alen, x->kinds, rate, x->nfam[family(x)]);
}

static int is_sweep(SweepObject *s, const sweep_src_t *x)
{
    uint64_t n = hset_len(&x->fresh);
    if (n < s->min_targets) return 0;
    if ((double)hset_len(&x->answered) <= s->max_answered * (double)n) return 1;
    double size = ldexp(1.0, x->alen * 8 - prefix_len(x));
    return (double)x->nfam[family(x)] >= s->min_coverage * size;
}

static void sweep_restart(sweep_src_t *x, double ts)
{
    set_clear(&x->fresh);
    set_clear(&x->answered);
    x->start = x->last_new = ts;
    x->pending = 0;
    x->kinds = x->flagged = 0;
    memset(x->diff, 0, sizeof(x->diff));
    x->nfam[0] = x->nfam[1] = 0;
}

/* `src` probed `dst` with a `kind` probe. */
static int probe(SweepObject *s, PyObject *events, const uint8_t *src, const uint8_t *dst,
                 int alen, int kind, double ts)
{
    if (!is_unicast(dst, alen) || !is_unicast(src, alen) || memcmp(src, dst, alen) == 0)
        return 0; /* multicast and broadcast, gratuitous ARP, ARP probes (from 0.0.0.0) */
    if (cidr_any(s->allow, s->nallow, src, alen)) return 0;
    uint32_t k = sw_get(s, src, alen);
    if (k == NIL) return -1;
    sweep_src_t *x = &s->slots[k];
    x->seen = ts;
    if (ts - (x->flagged ? x->last_new : x->start) > s->window) sweep_restart(x, ts);
    uint64_t h = addr_hash(dst, alen);
    int r = hset_add(&x->known, h);
    if (r < 0) return -1;
    if (r) { /* new to this source: part of a sweep */
        if (hset_add(&x->fresh, h) < 0) return -1;
        if (hset_len(&x->fresh) == 1) x->start = ts;
        int f = kind != SWEEP_ARP && kind != SWEEP_ND;
        if (!x->nfam[f]++) memcpy(x->first[f], dst, alen);
        for (int i = 0; i < alen; i++) x->diff[f][i] |= x->first[f][i] ^ dst[i];
        x->last_new = ts;
        x->kinds |= kind;
        x->pending++;
    }
    if (!r) return 0; /* nothing new to report */
    if (!x->flagged) {
        if (!is_sweep(s, x)) return 0;
        x->flagged = 1;
    }
    if (ts - x->last_report < s->report_interval) return 0;
    PyObject *rec = sw_record(x, ts);
    PyObject *ev = rec ? Py_BuildValue("(iN)", EV_SWEEP, rec) : NULL;
    if (!ev) return -1;
    r = PyList_Append(events, ev);
    Py_DECREF(ev);
    return r;
}

/* `dst` answered a probe of `src`'s (a reply, from the target to the prober). */
static int answer(SweepObject *s, const uint8_t *prober, const uint8_t *target, int alen)
{
    uint32_t pos, k = sw_lookup(s, prober, alen, fnv1a(prober, alen), &pos);
    if (k == NIL) return 0;
    sweep_src_t *x = &s->slots[k];
    uint64_t h = addr_hash(target, alen);
    if (!hset_has(&x->fresh, h)) return 0;
    return hset_add(&x->answered, h) < 0 ? -1 : 0;
}

int sweep_packet(SweepObject *s, PyObject *events, const pkt_t *k)
{
    if (k->proto == P_ARP) {
        if (k->op == 1) return probe(s, events, k->src, k->dst, 4, SWEEP_ARP, k->ts);
        if (k->op == 2) return answer(s, k->dst, k->src, 4);
        return 0;
    }
    if (k->frag == 2) return 0;
    if (k->proto == 1) {
        switch (k->sport) { /* the ICMP type */
        case 8: return probe(s, events, k->src, k->dst, 4, SWEEP_ECHO, k->ts);
        case 13: return probe(s, events, k->src, k->dst, 4, SWEEP_TIMESTAMP, k->ts);
        case 17: return probe(s, events, k->src, k->dst, 4, SWEEP_MASK, k->ts);
        case 0: case 14: case 18: return answer(s, k->dst, k->src, 4);
        case 3: { /* an error from the target itself (port unreachable): it is there */
            const uint8_t *q = k->payload + 4;
            if (k->plen >= 24 && q[0] >> 4 == 4 && memcmp(q + 16, k->src, 4) == 0)
                return answer(s, k->dst, k->src, 4);
            return 0;
        }
        default: return 0;
        }
    }
    if (k->proto == 58 && k->alen == 16) {
        if (k->sport == 128) return probe(s, events, k->src, k->dst, 16, SWEEP_ECHO, k->ts);
        if (k->sport == 129) return answer(s, k->dst, k->src, 16);
        /* neighbour solicitation and advertisement, IPv6's ARP: the target address
         * follows 4 reserved bytes; duplicate address detection (from ::) probes nothing */
        static const uint8_t unspecified[16] = {0};
        if ((k->sport == 135 || k->sport == 136) && k->plen >= 20) {
            const uint8_t *target = k->payload + 4;
            if (k->sport == 136) return answer(s, k->dst, target, 16);
            if (memcmp(k->src, unspecified, 16) == 0) return 0;
            return probe(s, events, k->src, target, 16, SWEEP_ND, k->ts);
        }
        if (k->sport == 1) {
            const uint8_t *q = k->payload + 4;
            if (k->plen >= 44 && q[0] >> 4 == 6 && memcmp(q + 24, k->src, 16) == 0)
                return answer(s, k->dst, k->src, 16);
        }
    }
    return 0;
}

/* Flagged sources with probes pending last reported at or before `before`, in creation
 * order, as of their last probe; sweeps silent for `window` end, sources silent for
 * `memory` are forgotten (none at a `now` of -INFINITY). */
static PyObject *sw_flush(SweepObject *s, double before, double now)
{
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (uint32_t k = s->oldest; k != NIL;) {
        sweep_src_t *x = &s->slots[k];
        uint32_t nx = x->newer;
        if (x->flagged && x->pending && x->last_report <= before) {
            PyObject *rec = sw_record(x, x->last_new);
            if (!rec || PyList_Append(out, rec) < 0) { Py_XDECREF(rec); Py_DECREF(out); return NULL; }
            Py_DECREF(rec);
        }
        if (now - x->seen > s->memory) sw_free(s, k);
        else if (x->flagged && now - x->last_new > s->window) sweep_restart(x, now);
        k = nx;
    }
    return out;
}

/* Python side ------------------------------------------------------------------------ */

static int sweep_init(SweepObject *s, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"window", "memory", "report_interval", "min_targets", "max_answered",
                          "min_coverage", "max_sources", NULL};
    unsigned int max_sources = 100000;
    if (s->slots) { PyErr_SetString(PyExc_RuntimeError, "Sweep is initialised once"); return -1; }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "$dddKddI", kwl, &s->window, &s->memory,
                                     &s->report_interval, &s->min_targets, &s->max_answered,
                                     &s->min_coverage, &max_sources))
        return -1;
    if (max_sources < 1) { PyErr_SetString(PyExc_ValueError, "max_sources must be at least 1"); return -1; }
    s->max_sources = max_sources;
    s->oldest = s->newest = s->free_head = NIL;
    return sw_grow(s, max_sources < 256 ? max_sources : 256);
}

static PyObject *sweep_tp_new(PyTypeObject *t, PyObject *a, PyObject *k)
{
    SweepObject *s = (SweepObject *)t->tp_alloc(t, 0);
    if (s) s->oldest = s->newest = s->free_head = NIL;
    return (PyObject *)s;
}

static void sweep_dealloc(SweepObject *s)
{
    for (uint32_t k = 0; k < s->fresh; k++)
        if (s->slots[k].used) {
            PyMem_Free(s->slots[k].known.items);
            PyMem_Free(s->slots[k].fresh.items);
            PyMem_Free(s->slots[k].answered.items);
        }
    PyMem_Free(s->slots);
    PyMem_Free(s->index);
    PyMem_Free(s->allow);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *sweep_set_allow(SweepObject *s, PyObject *nets)
{
    if (cidrs_parse(nets, "allow", &s->allow, &s->nallow) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *sweep_tick(SweepObject *s, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    return sw_flush(s, now - s->report_interval, now);
}

static PyObject *sweep_finish(SweepObject *s, PyObject *unused) { return sw_flush(s, INFINITY, -INFINITY); }

/* What a restart must not lose: each source's known targets (their hashes), so that a
 * monitoring server's next round is not new to a restarted agent. */
static PyObject *sweep_known(SweepObject *s, PyObject *arg)
{
    unsigned long long least = PyLong_AsUnsignedLongLong(arg);
    if (least == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (uint32_t k = s->oldest; k != NIL; k = s->slots[k].newer) {
        sweep_src_t *x = &s->slots[k];
        if (x->known.n < least || !x->known.n) continue;
        PyObject *hs = PyList_New(0), *rec = NULL;
        for (uint32_t i = 0; hs && i < x->known.cap; i++) {
            if (!x->known.items[i]) continue;
            PyObject *h = PyLong_FromUnsignedLongLong(x->known.items[i]);
            if (!h || PyList_Append(hs, h) < 0) { Py_XDECREF(h); Py_CLEAR(hs); break; }
            Py_DECREF(h);
        }
        if (hs) rec = Py_BuildValue("(y#dN)", x->addr, (Py_ssize_t)x->alen, x->seen, hs);
        if (!rec || PyList_Append(out, rec) < 0) { Py_XDECREF(rec); Py_DECREF(out); return NULL; }
        Py_DECREF(rec);
    }
    return out;
}

static PyObject *sweep_remember(SweepObject *s, PyObject *args)
{
    Py_buffer src;
    double seen;
    PyObject *hashes;
    if (!PyArg_ParseTuple(args, "y*dO", &src, &seen, &hashes)) return NULL;
    PyObject *seq = NULL;
    if (src.len != 4 && src.len != 16) {
        PyErr_SetString(PyExc_ValueError, "a source is 4 or 16 bytes");
        goto fail;
    }
    if (!(seq = PySequence_Fast(hashes, "hashes must be a sequence"))) goto fail;
    uint32_t k = sw_get(s, src.buf, (int)src.len);
    if (k == NIL) goto fail;
    sweep_src_t *x = &s->slots[k];
    if (seen > x->seen) x->seen = seen;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        unsigned long long h = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (h == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        if (hset_add(&x->known, h) < 0) goto fail;
    }
    Py_DECREF(seq);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(seq);
    PyBuffer_Release(&src);
    return NULL;
}

static Py_ssize_t sweep_len(SweepObject *s) { return s->nsrc; }

static PyObject *sweep_get_forgotten(SweepObject *s, void *c)
{
    return PyLong_FromUnsignedLongLong(s->forgotten);
}

static PyObject *sweep_get_flagged(SweepObject *s, void *c)
{
    unsigned long n = 0;
    for (uint32_t k = s->oldest; k != NIL; k = s->slots[k].newer) n += s->slots[k].flagged;
    return PyLong_FromUnsignedLong(n);
}

static PyMethodDef sweep_methods[] = {
    {"set_allow", (PyCFunction)sweep_set_allow, METH_O,
     "set_allow([(packed network, prefix length)]): sources never counted"},
    {"tick", (PyCFunction)sweep_tick, METH_O,
     "tick(now) -> [record]: flagged sources not reported for report_interval with probes "
     "pending; then sweeps silent for window end and sources silent for memory go"},
    {"finish", (PyCFunction)sweep_finish, METH_NOARGS,
     "finish() -> [record]: every flagged source with probes pending (end of input)"},
    {"known", (PyCFunction)sweep_known, METH_O,
     "known(least) -> [(src, seen, [target hash])]: sources knowing at least `least` targets"},
    {"remember", (PyCFunction)sweep_remember, METH_VARARGS,
     "remember(src, seen, [target hash]): known() of a previous run taken back"},
    {NULL},
};

static PyGetSetDef sweep_getset[] = {
    {"forgotten", (getter)sweep_get_forgotten, NULL, "sources dropped at the max_sources bound"},
    {"flagged", (getter)sweep_get_flagged, NULL, "sources whose current sweep is flagged"},
    {NULL},
};

static PySequenceMethods sweep_seq = {.sq_length = (lenfunc)sweep_len};

PyTypeObject SweepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Sweep",
    .tp_basicsize = sizeof(SweepObject),
    .tp_dealloc = (destructor)sweep_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sweep(*, window, memory, report_interval, min_targets, max_answered, "
              "min_coverage, max_sources): net.discovery's per-source state, counted by the "
              "Engine it is configured into (len(): sources held). Records: (src, ts, count, "
              "targets, answered, prefix, network, kinds, rate, in_range).",
    .tp_methods = sweep_methods,
    .tp_getset = sweep_getset,
    .tp_as_sequence = &sweep_seq,
    .tp_init = (initproc)sweep_init,
    .tp_new = sweep_tp_new,
};
