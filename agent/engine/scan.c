/* net.portscan's state and decisions (see scan.h).
 *
 * A source whose only first contact so far succeeded has no slot: `single` (a Table,
 * table.h) holds its target by a 64-bit hash of its address, until another contact
 * makes its slot and replays that success into it (scan_single).
 *
 * Distinct sets (distinct.h) hold 64-bit hashes of their items (host addresses; (host, port)
 * targets), not the items: two different items count as one only if their hashes
 * collide, about n^2 / 2^65 for n items (1e-10 for a full set of 65,536). Ports are held
 * as is. Hashes are not keyed: a scanner that found a collision between two of its own
 * targets would only make them count as one probe.                                     */
#include "scan.h"

#include <math.h>

#include "distinct.h"
#include "engine.h"

#define SCAN_CAP 65536 /* items a distinct set remembers; past it, counted only */
static const uint16_t STEALTH_STYLE[] = {0, STYLE_NULL, STYLE_FIN, STYLE_XMAS, STYLE_OTHER,
                                         STYLE_ACK, STYLE_MAIMON};

/* Made at a source's second target, or when it is flagged: most sources only ever
 * contact one service and never need it. */
typedef struct {
    hset_t targets, hosts, ports; /* (host, port) first contacts; hosts; ports */
    double last_report, last_probe;
    uint64_t pending; /* failed probes not reported yet */
    uint8_t last_dst[16];
} scan_ext_t;

typedef struct scan_src {
    uint8_t addr[16];
    double seen, llr;
    uint64_t first_host; /* without ext: hash of the one target's host (0: none yet) */
    scan_ext_t *ext;
    uint32_t failed, succeeded, stealth; /* first contacts, saturating: 80 B a source */
    uint32_t first_port; /* without ext: the one target's port */
    uint32_t hash, older, newer; /* creation order, oldest forgotten first at the bound */
    uint16_t styles;
    uint8_t alen, flagged, used;
} scan_src_t;

static inline uint64_t host_hash(const uint8_t *p, size_t n)
{
    uint64_t h = fnv64(p, n, FNV64_INIT);
    return h ? h : 1; /* 0: no host yet */
}

static inline uint64_t target_of(uint64_t host, uint32_t port)
{
    return (host ^ (port * 0x9E3779B97F4A7C15ULL)) | 1; /* never 0 */
}

static int ext_make(scan_src_t *x)
{
    scan_ext_t *ext = PyMem_Calloc(1, sizeof(scan_ext_t));
    if (!ext) { PyErr_NoMemory(); return -1; }
    ext->last_report = -INFINITY;
    ext->targets.limit = ext->hosts.limit = ext->ports.limit = SCAN_CAP;
    x->ext = ext;
    if (hset_add(&ext->targets, target_of(x->first_host, x->first_port)) < 0 ||
        hset_add(&ext->hosts, x->first_host) < 0 || hset_add(&ext->ports, x->first_port + 1ULL) < 0)
        return -1;
    return 0;
}

static void ext_free(scan_ext_t *ext)
{
    if (!ext) return;
    PyMem_Free(ext->targets.items);
    PyMem_Free(ext->hosts.items);
    PyMem_Free(ext->ports.items);
    PyMem_Free(ext);
}

/* A contact with (host, port): 1 when it is the first one, 0 if not, -1 on error. */
static int scan_contact(scan_src_t *x, uint64_t host, uint32_t port)
{
    if (!x->ext) {
        if (!x->first_host) { x->first_host = host; x->first_port = port; return 1; }
        if (x->first_host == host && x->first_port == port) return 0;
        if (ext_make(x) < 0) return -1;
    }
    scan_ext_t *ext = x->ext;
    int r = hset_add(&ext->targets, target_of(host, port));
    if (r <= 0) return r;
    if (hset_add(&ext->hosts, host) < 0 || hset_add(&ext->ports, port + 1ULL) < 0) return -1;
    return 1;
}

static inline uint64_t src_hosts(const scan_src_t *x) { return x->ext ? hset_len(&x->ext->hosts) : 1; }
static inline uint64_t src_ports(const scan_src_t *x) { return x->ext ? hset_len(&x->ext->ports) : 1; }

/* The source table: open addressing over slots, like the flow table. */

static uint32_t scan_lookup(ScanObject *s, const uint8_t *a, int alen, uint32_t h, uint32_t *pos)
{
    uint32_t i = h & s->mask;
    for (;;) {
        uint32_t k = s->index[i];
        if (!k) { *pos = i; return NIL; }
        scan_src_t *x = &s->slots[k - 1];
        if (x->hash == h && x->alen == alen && memcmp(x->addr, a, alen) == 0) { *pos = i; return k - 1; }
        i = (i + 1) & s->mask;
    }
}

static int scan_grow(ScanObject *s, uint32_t want)
{
    if (want > s->nslots) {
        scan_src_t *ns = PyMem_Realloc(s->slots, (size_t)want * sizeof(scan_src_t));
        if (!ns) { PyErr_NoMemory(); return -1; }
        s->slots = ns;
        s->nslots = want; /* taken from `fresh` on, when the free list is empty */
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

static void scan_free(ScanObject *s, uint32_t k)
{
    scan_src_t *x = &s->slots[k];
    uint32_t i = x->hash & s->mask;
    while (s->index[i] != k + 1) i = (i + 1) & s->mask;
    s->index[i] = 0; /* backward-shift deletion, as the flow table's index_remove() */
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
    ext_free(x->ext);
    memset(x, 0, sizeof(*x));
    x->newer = s->free_head;
    s->free_head = k;
    s->nsrc--;
}

/* The source's state, made if new (KeyedWindow.get): NIL on error. */
static uint32_t scan_get(ScanObject *s, const uint8_t *a, int alen, double now)
{
    uint32_t pos, h = fnv1a(a, alen);
    uint32_t k = scan_lookup(s, a, alen, h, &pos);
    if (k == NIL) {
        if (s->nsrc >= s->max_sources) {
            /* a spoofed flood must not grow it: the oldest hundredth goes, counted */
            uint32_t n = s->max_sources / 100 ? s->max_sources / 100 : 1;
            for (uint32_t i = 0; i < n && s->oldest != NIL; i++) scan_free(s, s->oldest);
            s->forgotten += n;
            scan_lookup(s, a, alen, h, &pos); /* deletions moved entries */
        }
        if (s->free_head == NIL && s->fresh == s->nslots) {
            uint32_t want = s->nslots ? s->nslots * 2 : 256;
            if (want > s->max_sources) want = s->max_sources;
            if (scan_grow(s, want) < 0) return NIL;
            scan_lookup(s, a, alen, h, &pos);
        }
        if (s->free_head != NIL) {
            k = s->free_head;
            s->free_head = s->slots[k].newer; /* free list through `newer` */
        } else {
            k = s->fresh++;
        }
        scan_src_t *x = &s->slots[k];
        memset(x, 0, sizeof(*x));
        memcpy(x->addr, a, alen);
        x->alen = alen;
        x->hash = h;
        x->used = 1;
        x->older = s->newest;
        x->newer = NIL;
        if (s->newest != NIL) s->slots[s->newest].newer = k; else s->oldest = k;
        s->newest = k;
        s->index[pos] = k + 1;
        s->nsrc++;
    }
    s->slots[k].seen = now;
    return k;
}

/* The report record of a flagged source; its pending probes are now reported. */
static PyObject *scan_record(scan_src_t *x, double ts)
{
    scan_ext_t *ext = x->ext;
    unsigned long long count = ext->pending;
    ext->pending = 0;
    ext->last_report = ts;
    return Py_BuildValue("(y#dKKKKKKidy#)", x->addr, (Py_ssize_t)x->alen, ts, count,
                         (unsigned long long)x->failed, (unsigned long long)x->succeeded,
                         (unsigned long long)src_hosts(x), (unsigned long long)src_ports(x),
                         (unsigned long long)x->stealth, x->styles, x->llr, ext->last_dst,
                         (Py_ssize_t)x->alen);
}

/* A source not followed in full yet: 1 if `single` took this contact (its first, a
 * success; or a repeat of that one), 0 if the source needs its full slot, now made with
 * the first contact replayed into it, -1 on error. */
static int scan_single(ScanObject *s, const uint8_t *src, int alen, uint64_t host, uint32_t port,
                       int success, double ts)
{
    TableObject *t = s->single;
    uint64_t key = host_hash(src, alen);
    uint32_t i = table_find(t, key);
    if (*tkey(t, i) == TABLE_EMPTY) {
        if (!success) return 0;
        int64_t j = table_insert(t, key, ts);
        if (j < 0) return -1;
        double *r = trow(t, (uint32_t)j);
        memcpy(&r[2], &host, sizeof(host)); /* the bits, never read as a number */
        r[3] = port;
        return 1;
    }
    double *r = trow(t, i);
    uint64_t first_host;
    memcpy(&first_host, &r[2], sizeof(first_host));
    uint32_t first_port = (uint32_t)r[3];
    if (first_host == host && first_port == port) { r[1] = ts; return 1; }
    table_delete(t, i);
    uint32_t k = scan_get(s, src, alen, ts);
    if (k == NIL) return -1;
    scan_src_t *x = &s->slots[k];
    x->first_host = first_host;
    x->first_port = first_port;
    x->succeeded = 1;
    x->llr = s->ln_success;
    if (x->llr <= s->ln_lower) x->llr = 0.0; /* benign: a fresh walk */
    return 0;
}

/* One attempt's outcome, as PortScan.on_outcome scored it; a report due now goes to
 * `events` as (EV_SCAN, record). */
int scan_outcome(ScanObject *s, PyObject *events, const uint8_t *src, const uint8_t *dst,
                 int alen, int proto, int dport, int stealth, int success, double ts)
{
    if (alen == 4 ? dst[0] >= 224 || (dst[0] == 255 && dst[1] == 255 && dst[2] == 255 && dst[3] == 255)
                  : dst[0] == 0xFF)
        return 0; /* multicast and broadcast: discovery, not scanning */
    if (cidr_any(s->allow, s->nallow, src, alen)) return 0;
    /* a TCP port as is, other protocols above 65535 */
    uint32_t port = proto == 6 ? (uint32_t)dport : (uint32_t)proto << 16 | (uint32_t)dport;
    uint64_t host = host_hash(dst, alen);
    uint32_t pos, k = scan_lookup(s, src, alen, fnv1a(src, alen), &pos);
    if (k == NIL) {
        int r = scan_single(s, src, alen, host, port, success, ts);
        if (r) return r < 0 ? -1 : 0;
        if ((k = scan_get(s, src, alen, ts)) == NIL) return -1; /* made, or just promoted */
    }
    scan_src_t *x = &s->slots[k];
    x->seen = ts;
    int r = scan_contact(x, host, port);
    if (r <= 0) return r; /* only first contacts count */
    if (success) {
        if (x->succeeded != UINT32_MAX) x->succeeded++;
        x->llr += s->ln_success;
        if (x->llr <= s->ln_lower && !x->flagged) x->llr = 0.0; /* benign: a fresh walk */
        return 0;
    }
    if (x->failed != UINT32_MAX) x->failed++;
    /* An RST to a lone ACK or FIN/ACK says only that no such session exists: stale ones
     * (a host back from sleep) get it too, so those count towards fan-out alone. */
    int reset_only = stealth == ST_ACK || stealth == ST_MAIMON;
    if (!reset_only) x->llr += s->ln_fail;
    x->styles |= stealth ? STEALTH_STYLE[stealth]
                 : proto == 6 ? STYLE_SYN : proto == 17 ? STYLE_UDP
                 : proto == 132 ? STYLE_SCTP : STYLE_PROTO;
    if (stealth && !reset_only && x->stealth != UINT32_MAX) x->stealth++;
    int was = x->flagged;
    if (!was) {
        if (!(x->llr >= s->ln_upper || src_ports(x) >= s->fanout_ports ||
              src_hosts(x) >= s->fanout_hosts || x->stealth >= s->stealth_probes))
            return 0;
        if (!x->ext && ext_make(x) < 0) return -1; /* a flagged source always has one */
        x->flagged = 1;
    }
    scan_ext_t *ext = x->ext;
    ext->pending += was ? 1 : x->failed;
    ext->last_probe = ts;
    memcpy(ext->last_dst, dst, alen);
    if (ts - ext->last_report < s->report_interval) return 0;
    PyObject *rec = scan_record(x, ts);
    PyObject *ev = rec ? Py_BuildValue("(iN)", EV_SCAN, rec) : NULL;
    if (!ev) return -1;
    r = PyList_Append(events, ev);
    Py_DECREF(ev);
    return r;
}

int scan_refused(ScanObject *s, PyObject *events, const uint8_t *src, const uint8_t *dst,
                 int alen, int proto, int dport, double ts)
{
    return scan_outcome(s, events, src, dst, alen, proto, dport, ST_NONE, 0, ts);
}

/* Flagged sources with pending probes last reported at or before `before`, in creation
 * order, reported as of their last probe; in the same walk, sources silent at `now` for
 * more than the window are forgotten (none at a `now` of -INFINITY). */
static PyObject *scan_flush(ScanObject *s, double before, double now)
{
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (uint32_t k = s->oldest; k != NIL;) {
        scan_src_t *x = &s->slots[k];
        uint32_t nx = x->newer;
        if (x->flagged && x->ext->pending && x->ext->last_report <= before) {
            PyObject *rec = scan_record(x, x->ext->last_probe);
            if (!rec || PyList_Append(out, rec) < 0) { Py_XDECREF(rec); Py_DECREF(out); return NULL; }
            Py_DECREF(rec);
        }
        if (now - x->seen > s->window) scan_free(s, k);
        k = nx;
    }
    if (now > -INFINITY && table_sweep(s->single, now, -INFINITY) < 0) { Py_DECREF(out); return NULL; }
    return out;
}

/* Python side ------------------------------------------------------------------------ */

static int scan_init(ScanObject *s, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"window", "report_interval", "ln_upper", "ln_lower", "ln_fail",
                          "ln_success", "fanout_ports", "fanout_hosts", "stealth_probes",
                          "max_sources", NULL};
    unsigned int max_sources = 100000;
    if (s->slots) { PyErr_SetString(PyExc_RuntimeError, "Scan is initialised once"); return -1; }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "$ddddddKKKI", kwl, &s->window,
                                     &s->report_interval, &s->ln_upper, &s->ln_lower, &s->ln_fail,
                                     &s->ln_success, &s->fanout_ports, &s->fanout_hosts,
                                     &s->stealth_probes, &max_sources))
        return -1;
    if (max_sources < 1) { PyErr_SetString(PyExc_ValueError, "max_sources must be at least 1"); return -1; }
    s->max_sources = max_sources;
    s->oldest = s->newest = s->free_head = NIL;
    s->single = PyObject_New(TableObject, &TableType);
    if (!s->single) return -1;
    s->single->rows = NULL;
    if (table_setup(s->single, 2, s->window, max_sources) < 0) return -1;
    return scan_grow(s, max_sources < 256 ? max_sources : 256);
}

static PyObject *scan_tp_new(PyTypeObject *t, PyObject *a, PyObject *k)
{
    ScanObject *s = (ScanObject *)t->tp_alloc(t, 0);
    if (s) s->oldest = s->newest = s->free_head = NIL;
    return (PyObject *)s;
}

static void scan_dealloc(ScanObject *s)
{
    for (uint32_t k = 0; k < s->fresh; k++)
        if (s->slots[k].used) ext_free(s->slots[k].ext);
    PyMem_Free(s->slots);
    PyMem_Free(s->index);
    PyMem_Free(s->allow);
    Py_XDECREF(s->single);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *scan_set_allow(ScanObject *s, PyObject *nets)
{
    if (cidrs_parse(nets, "allow", &s->allow, &s->nallow) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *scan_tick(ScanObject *s, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    return scan_flush(s, now - s->report_interval, now);
}

static PyObject *scan_finish(ScanObject *s, PyObject *unused) { return scan_flush(s, INFINITY, -INFINITY); }

static Py_ssize_t scan_len(ScanObject *s) { return s->nsrc + (s->single ? s->single->n : 0); }

static PyObject *scan_get_forgotten(ScanObject *s, void *c)
{
    return PyLong_FromUnsignedLongLong(s->forgotten + (s->single ? s->single->forgotten : 0));
}

static PyObject *scan_get_flagged(ScanObject *s, void *c)
{
    unsigned long n = 0;
    for (uint32_t k = s->oldest; k != NIL; k = s->slots[k].newer) n += s->slots[k].flagged;
    return PyLong_FromUnsignedLong(n);
}

static PyMethodDef scan_methods[] = {
    {"set_allow", (PyCFunction)scan_set_allow, METH_O,
     "set_allow([(packed network, prefix length)]): sources never scored (state kept)"},
    {"tick", (PyCFunction)scan_tick, METH_O,
     "tick(now) -> [record]: flagged sources not reported for report_interval and with "
     "probes pending, then sources silent for more than window are forgotten"},
    {"finish", (PyCFunction)scan_finish, METH_NOARGS,
     "finish() -> [record]: every flagged source with probes pending (end of input)"},
    {NULL},
};

static PyGetSetDef scan_getset[] = {
    {"forgotten", (getter)scan_get_forgotten, NULL, "sources dropped at the max_sources bound"},
    {"flagged", (getter)scan_get_flagged, NULL, "sources flagged as scanners"},
    {NULL},
};

static PySequenceMethods scan_seq = {.sq_length = (lenfunc)scan_len};

PyTypeObject ScanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Scan",
    .tp_basicsize = sizeof(ScanObject),
    .tp_dealloc = (destructor)scan_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scan(*, window, report_interval, ln_upper, ln_lower, ln_fail, ln_success, "
              "fanout_ports, fanout_hosts, stealth_probes, max_sources): net.portscan's "
              "per-source state, scored by the Engine it is configured into (len(): sources "
              "held). Records: (src, ts, count, failed, succeeded, hosts, ports, stealth, "
              "styles, llr, last_dst).",
    .tp_methods = scan_methods,
    .tp_getset = scan_getset,
    .tp_as_sequence = &scan_seq,
    .tp_init = (initproc)scan_init,
    .tp_new = scan_tp_new,
};
