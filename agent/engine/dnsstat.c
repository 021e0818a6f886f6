/* DNS counting for net.dns_tunnel and net.dga (see dnsstat.h), done where the message is
 * read.
 *
 * Names are handled as Python handled the message's qname: the Latin-1 text, lower-cased,
 * labels split on '.'. Distinct subdomains and domains are remembered as 64-bit hashes:
 * two different names collide with probability about n^2 / 2^65 (10^-10 for the 4,096 a
 * zone remembers), which would undercount one name.
 */
#include "dnsstat.h"

#include <math.h>

#include "distinct.h"
#include "dnsmsg.h"
#include "flows.h"
#include "journal.h"

#define DNS_NAME_BUF (DNS_MAX_NAME + 64)

/* ---- keyed window: states by key, forgotten after `window` s without a touch, bounded
 * in keys with the oldest made forgotten first (as agent/detect/window.py KeyedWindow) */

static uint64_t kt_hash(const uint8_t *a, int alen, const char *s, int slen)
{
    uint64_t h = fnv64(a, alen, FNV64_INIT);
    h = fnv64(s, slen, h ^ 0xff);
    return h ? h : 1;
}

static kent_t **kt_find(ktab_t *t, uint64_t h, const uint8_t *a, int alen, const char *s, int slen)
{
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        kent_t *x = t->idx[i];
        if (!x || (x->h == h && x->alen == alen && x->slen == slen && !memcmp(x->addr, a, alen) &&
                   (!slen || !memcmp(x->str, s, slen))))
            return &t->idx[i];
    }
}

static void kt_remove(ktab_t *t, kent_t *x)
{
    kent_t **p = kt_find(t, x->h, x->addr, x->alen, x->str, x->slen);
    uint32_t i = (uint32_t)(p - t->idx);
    t->idx[i] = NULL;
    /* backward-shift: no tombstones, lookups stay short */
    for (uint32_t j = (i + 1) & t->mask; t->idx[j]; j = (j + 1) & t->mask) {
        uint32_t home = (uint32_t)t->idx[j]->h & t->mask;
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->idx[i] = t->idx[j];
            t->idx[j] = NULL;
            i = j;
        }
    }
    if (x->older) x->older->newer = x->newer; else t->oldest = x->newer;
    if (x->newer) x->newer->older = x->older; else t->newest = x->older;
    t->n--;
    t->drop(x);
}

static void kt_clear(ktab_t *t)
{
    for (kent_t *x = t->oldest, *nx; x; x = nx) { nx = x->newer; t->drop(x); }
    PyMem_Free(t->idx);
    t->idx = NULL;
    t->oldest = t->newest = NULL;
    t->n = 0;
}

static int kt_init(ktab_t *t, uint32_t max, double window, void (*drop)(kent_t *))
{
    kt_clear(t);
    uint32_t cap = 16;
    while (cap < 2 * max && cap < (1u << 31)) cap <<= 1;
    t->idx = PyMem_Calloc(cap, sizeof(kent_t *));
    if (!t->idx) { PyErr_NoMemory(); return -1; }
    t->mask = cap - 1;
    t->max = max ? max : 1;
    t->window = window;
    t->drop = drop;
    return 0;
}

/* The state of key (a, s), made with `size` zeroed bytes when new; NULL: out of memory. */
static kent_t *kt_get(ktab_t *t, size_t size, const uint8_t *a, int alen, const char *s,
                      int slen, double now)
{
    uint64_t h = kt_hash(a, alen, s, slen);
    kent_t **p = kt_find(t, h, a, alen, s, slen);
    if (*p) { (*p)->seen = now; return *p; }
    if (t->n >= t->max) {
        uint32_t n = t->max / 100 ? t->max / 100 : 1;
        for (uint32_t i = 0; i < n && t->oldest; i++) kt_remove(t, t->oldest);
        t->forgotten += n;
        p = kt_find(t, h, a, alen, s, slen);
    }
    kent_t *x = PyMem_Calloc(1, size);
    char *str = slen ? PyMem_Malloc(slen) : NULL;
    if (!x || (slen && !str)) { PyMem_Free(x); PyMem_Free(str); PyErr_NoMemory(); return NULL; }
    if (slen) memcpy(str, s, slen);
    x->h = h;
    memcpy(x->addr, a, alen);
    x->alen = alen;
    x->str = str;
    x->slen = slen;
    x->seen = now;
    x->older = t->newest;
    if (t->newest) t->newest->newer = x; else t->oldest = x;
    t->newest = x;
    *p = x;
    t->n++;
    return x;
}

static kent_t *kt_peek(ktab_t *t, const uint8_t *a, int alen, const char *s, int slen)
{
    if (!t->idx) return NULL;
    return *kt_find(t, kt_hash(a, alen, s, slen), a, alen, s, slen);
}

static void kt_expire(ktab_t *t, double now)
{
    for (kent_t *x = t->oldest, *nx; x; x = nx) {
        nx = x->newer;
        if (now - x->seen > t->window) kt_remove(t, x);
    }
}

/* ---- names ------------------------------------------------------------------------- */

static inline int ends_with(const char *s, int n, const char *suf, int m)
{
    return m <= n && !memcmp(s + n - m, suf, m);
}

/* "reg == d or reg.endswith('.' + d)" for one of the domains */
static int under_domains(const strs_t *l, const char *reg, int n)
{
    for (int i = 0; i < l->n; i++) {
        int m = l->len[i];
        if (n == m ? !memcmp(reg, l->s[i], m)
                   : (n > m && reg[n - m - 1] == '.' && ends_with(reg, n, l->s[i], m)))
            return 1;
    }
    return 0;
}

/* agent/detect/dnsname.py registered_domain(): the last two labels, or three when the last
 * two are a listed short public suffix; a name of at most two labels is itself. */
static void registered(const strs_t *shorts, const char *name, int n, int *off, int *len)
{
    int m = n;
    while (m > 0 && name[m - 1] == '.') m--;
    int dots[3] = {-1, -1, -1}, nd = 0;
    for (int i = m - 1; i >= 0 && nd < 3; i--)
        if (name[i] == '.') dots[nd++] = i;
    if (nd < 2) { *off = 0; *len = n; return; } /* at most two labels: the name as is */
    int o = dots[1] + 1;
    for (int i = 0; i < shorts->n; i++)
        if (shorts->len[i] == m - o && !memcmp(name + o, shorts->s[i], m - o)) {
            o = nd >= 3 ? dots[2] + 1 : 0;
            break;
        }
    *off = o;
    *len = m - o;
}

/* Shannon entropy in bits per character, summed in the order Python's Counter would
 * (first occurrence), so that the float is the one dnsname.entropy() computes. */
static double entropy(const char *s, int n)
{
    if (n < 2) return 0.0;
    int count[256] = {0};
    unsigned char order[256];
    int k = 0;
    for (int i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (!count[c]++) order[k++] = c;
    }
    double sum = 0.0;
    for (int i = 0; i < k; i++) {
        double p = (double)count[order[i]] / (double)n;
        sum += p * log2(p);
    }
    return -sum;
}

/* ---- the two detectors' states ------------------------------------------------------ */

typedef struct {
    kent_t k; /* client address, registered domain ("" when the name carries none) */
    uint8_t resolver[16], ralen, flagged, held;
    double first, last_ts, last_report, max_entropy;
    uint64_t queries, odd, nx, answers, len_sum, pending, long_labels, max_label;
    hset_t subs;
} zone_t;

#define DGA_SAMPLE 5
typedef struct {
    kent_t k; /* client address */
    uint8_t resolver[16], ralen, flagged, nsample;
    double first, last;
    uint64_t answers, nx;
    hset_t domains;
    char *sample[DGA_SAMPLE];
    uint16_t sample_len[DGA_SAMPLE];
} dclient_t;

static void zone_drop(kent_t *x)
{
    PyMem_Free(((zone_t *)x)->subs.items);
    PyMem_Free(x->str);
    PyMem_Free(x);
}

static void dclient_drop(kent_t *x)
{
    dclient_t *c = (dclient_t *)x;
    PyMem_Free(c->domains.items);
    for (int i = 0; i < c->nsample; i++) PyMem_Free(c->sample[i]);
    PyMem_Free(x->str);
    PyMem_Free(x);
}

static inline int allowed(const dnsdet_t *d, const uint8_t *a, int alen)
{
    return cidr_any(d->allow, d->nallow, a, alen);
}

static PyObject *addr_bytes(const uint8_t *a, int alen)
{
    return PyBytes_FromStringAndSize((const char *)a, alen);
}

static int tunnel_emit(EngineObject *e, zone_t *z)
{
    uint64_t count = z->pending;
    z->pending = 0;
    z->last_report = z->last_ts;
    return emit(e, Py_BuildValue(
        "(iNs#NKKKKKdKKKKdd)", EV_DNS_TUNNEL, addr_bytes(z->k.addr, z->k.alen),
        z->k.str ? z->k.str : "", (Py_ssize_t)z->k.slen, addr_bytes(z->resolver, z->ralen),
        (unsigned long long)count, (unsigned long long)z->queries,
        (unsigned long long)hset_len(&z->subs), (unsigned long long)z->long_labels,
        (unsigned long long)z->max_label, z->max_entropy, (unsigned long long)z->len_sum,
        (unsigned long long)z->odd, (unsigned long long)z->nx, (unsigned long long)z->answers,
        z->first, z->last_ts));
}

static int tunnel_message(EngineObject *e, dnsdet_t *d, pkt_t *k, dnsmsg_t *m, const char *reg,
                          int rlen)
{
    if (!m->nlen || m->opcode != 0 || !(bit(d->ports, k->dport) || bit(d->ports, k->sport)))
        return 0;
    int L = d->long_label;
    if (rlen > 2 * L) rlen = 0;
    for (int i = 0, start = 0; rlen && i <= rlen; i++)
        if (i == rlen || reg[i] == '.') {
            if (i - start >= L) rlen = 0;
            start = i + 1;
        }
    if (m->qr) { /* an answer: counted for the zone its client (the destination) has */
        zone_t *z = (zone_t *)kt_peek(&d->tab, k->dst, k->alen, reg, rlen);
        if (z) { z->answers++; z->nx += m->rcode == 3; }
        return 0;
    }
    if (ends_with(reg, rlen, ".arpa", 5) || under_domains(&d->allow_domains, reg, rlen) ||
        allowed(d, k->src, k->alen))
        return 0;
    /* the subdomain: what the name has before its registered domain */
    int slen = !rlen ? m->nlen : m->nlen > rlen ? m->nlen - rlen - 1 : 0;
    zone_t *z = (zone_t *)kt_get(&d->tab, sizeof(zone_t), k->src, k->alen, reg, rlen, k->ts);
    if (!z) return -1;
    if (!z->queries && !z->subs.limit) {
        z->first = k->ts;
        z->last_report = -INFINITY;
        z->subs.limit = 4096;
    }
    z->queries++;
    z->last_ts = k->ts;
    memcpy(z->resolver, k->dst, k->alen);
    z->ralen = k->alen;
    if (m->qtype == 16 || m->qtype == 10 || m->qtype == 5 || m->qtype == 15) z->odd++;
    int hit = 0;
    if (slen) {
        int r = hset_add(&z->subs, fnv64(m->name, slen, FNV64_INIT));
        if (r < 0) { PyErr_NoMemory(); return -1; }
        if (r) {
            int best = 0, bstart = 0;
            for (int i = 0, start = 0; i <= slen; i++)
                if (i == slen || m->name[i] == '.') {
                    if (i - start > best) { best = i - start; bstart = start; }
                    start = i + 1;
                }
            z->len_sum += best;
            if ((uint64_t)best > z->max_label) z->max_label = best;
            if (best >= L) {
                double ent = entropy(m->name + bstart, best);
                if (ent > z->max_entropy) z->max_entropy = ent;
                if (ent >= d->label_entropy) { z->long_labels++; hit = 1; }
            }
        }
    }
    uint64_t distinct = hset_len(&z->subs);
    if (!hit && distinct >= (uint64_t)d->unique_subs)
        hit = z->odd >= d->odd_ratio * z->queries || z->len_sum >= d->mean_label * distinct ||
              z->queries >= (uint64_t)d->query_volume;
    if (hit || z->flagged) {
        z->pending += z->flagged ? 1 : z->queries;
        z->flagged = z->held = 1;
        if (k->ts - z->last_report >= d->report_interval) return tunnel_emit(e, z);
    }
    return 0;
}

static int dga_message(EngineObject *e, dnsdet_t *d, dnsstat_t *s, pkt_t *k, dnsmsg_t *m)
{
    if (!m->qr || m->opcode != 0 || !bit(d->ports, k->sport) || allowed(d, k->dst, k->alen))
        return 0;
    dclient_t *c = (dclient_t *)kt_get(&d->tab, sizeof(dclient_t), k->dst, k->alen, NULL, 0, k->ts);
    if (!c) return -1;
    if (!c->domains.limit) { c->first = k->ts; c->domains.limit = 1024; }
    c->answers++;
    c->last = k->ts;
    if (m->rcode != 3 || !m->nlen) return 0;
    c->nx++;
    int off, rlen;
    registered(&s->shorts, m->name, m->nlen, &off, &rlen);
    const char *reg = m->name + off;
    char dotted[DNS_NAME_BUF + 1];
    dotted[0] = '.';
    memcpy(dotted + 1, reg, rlen);
    for (int i = 0; i < d->skip.n; i++)
        if (ends_with(dotted, rlen + 1, d->skip.s[i], d->skip.len[i])) return 0;
    if (under_domains(&d->allow_domains, reg, rlen)) return 0;
    int label = 0;
    while (label < rlen && reg[label] != '.') label++;
    if (label < d->min_label || entropy(reg, label) < d->label_entropy) return 0;
    int r = hset_add(&c->domains, fnv64(reg, rlen, FNV64_INIT));
    if (r < 0) { PyErr_NoMemory(); return -1; }
    if (!r) return 0;
    memcpy(c->resolver, k->src, k->alen);
    c->ralen = k->alen;
    if (c->nsample < DGA_SAMPLE) {
        char *copy = PyMem_Malloc(rlen ? rlen : 1);
        if (!copy) { PyErr_NoMemory(); return -1; }
        memcpy(copy, reg, rlen);
        c->sample[c->nsample] = copy;
        c->sample_len[c->nsample++] = rlen;
    }
    uint64_t n = hset_len(&c->domains);
    if (n < (uint64_t)d->nx_domains || c->nx < d->nx_ratio * c->answers) return 0;
    int first = !c->flagged;
    c->flagged = 1;
    PyObject *sample = PyTuple_New(c->nsample);
    if (!sample) return -1;
    for (int i = 0; i < c->nsample; i++) {
        PyObject *t = PyUnicode_DecodeLatin1(c->sample[i], c->sample_len[i], NULL);
        if (!t) { Py_DECREF(sample); return -1; }
        PyTuple_SET_ITEM(sample, i, t);
    }
    return emit(e, Py_BuildValue("(iNNNKKKKdd)", EV_DGA, addr_bytes(c->k.addr, c->k.alen),
                                 addr_bytes(c->resolver, c->ralen), sample,
                                 (unsigned long long)(first ? n : 1), (unsigned long long)n,
                                 (unsigned long long)c->nx, (unsigned long long)c->answers,
                                 c->first, k->ts));
}

/* One DNS message over UDP, read: counted for the detectors that are on. */
static int dnsstat_message(EngineObject *e, dnsstat_t *s, pkt_t *k, dnsmsg_t *m)
{
    if (s->tunnel.on && m->nlen) {
        int off, rlen;
        registered(&s->shorts, m->name, m->nlen, &off, &rlen);
        if (tunnel_message(e, &s->tunnel, k, m, m->name + off, rlen) < 0) return -1;
    }
    if (s->dga.on && dga_message(e, &s->dga, s, k, m) < 0) return -1;
    return 0;
}

/* Flagged zones with queries not reported yet, last reported at or before `before`. */
static int dnsstat_flush(EngineObject *e, dnsstat_t *s, double before)
{
    if (!s->tunnel.on) return 0;
    for (kent_t *x = s->tunnel.tab.oldest; x; x = x->newer) {
        zone_t *z = (zone_t *)x;
        if (!z->held) continue;
        if (!z->pending) z->held = 0;
        else if (z->last_report <= before) {
            z->held = 0;
            if (tunnel_emit(e, z) < 0) return -1;
        }
    }
    return 0;
}

static void dnsstat_expire(dnsstat_t *s, double now)
{
    if (s->tunnel.on) kt_expire(&s->tunnel.tab, now);
    if (s->dga.on) kt_expire(&s->dga.tab, now);
}

static void dnsdet_free(dnsdet_t *d)
{
    kt_clear(&d->tab);
    PyMem_Free(d->allow);
    d->allow = NULL;
    d->nallow = 0;
    strs_free(&d->allow_domains);
    strs_free(&d->skip);
    d->on = 0;
}

void dnsstat_free(dnsstat_t *s)
{
    if (!s) return;
    dnsdet_free(&s->tunnel);
    dnsdet_free(&s->dga);
    strs_free(&s->shorts);
    Py_XDECREF(s->malformed);
    PyMem_Free(s);
}

/* ---- configuration ------------------------------------------------------------------ */

static int cfg_num(PyObject *cfg, const char *key, double *out)
{
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v) { PyErr_Format(PyExc_ValueError, "missing setting %s", key); return -1; }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

static int cfg_int(PyObject *cfg, const char *key, int *out)
{
    double x;
    if (cfg_num(cfg, key, &x) < 0) return -1;
    *out = (int)x;
    return 0;
}

/* One detector's settings (a dict, as the detector's engine_config() makes it), checked
 * in full before anything changes; `fresh`: its windows start empty. */
static int dnsdet_configure(dnsdet_t *d, PyObject *cfg, int is_tunnel, int fresh, uint32_t max_keys)
{
    if (cfg == Py_None) { dnsdet_free(d); return 0; }
    if (!PyDict_Check(cfg)) { PyErr_SetString(PyExc_TypeError, "settings must be a dict"); return -1; }
    dnsdet_t n = {0};
    double window;
    PyObject *ports = PyDict_GetItemString(cfg, "ports");
    if (!ports) { PyErr_SetString(PyExc_ValueError, "missing setting ports"); return -1; }
    if (portmap(ports, n.ports) < 0 || cfg_num(cfg, "window_seconds", &window) < 0) return -1;
    if (is_tunnel) {
        if (cfg_int(cfg, "long_label_length", &n.long_label) < 0 ||
            cfg_int(cfg, "unique_subdomains", &n.unique_subs) < 0 ||
            cfg_int(cfg, "query_volume", &n.query_volume) < 0 ||
            cfg_num(cfg, "label_entropy", &n.label_entropy) < 0 ||
            cfg_num(cfg, "odd_type_ratio", &n.odd_ratio) < 0 ||
            cfg_num(cfg, "mean_label_length", &n.mean_label) < 0 ||
            cfg_num(cfg, "report_interval_seconds", &n.report_interval) < 0)
            return -1;
    } else if (cfg_int(cfg, "nx_domains", &n.nx_domains) < 0 ||
               cfg_int(cfg, "min_label_length", &n.min_label) < 0 ||
               cfg_num(cfg, "nxdomain_ratio", &n.nx_ratio) < 0 ||
               cfg_num(cfg, "label_entropy", &n.label_entropy) < 0)
        return -1;
    PyObject *allow = PyDict_GetItemString(cfg, "allow");
    if ((allow && cidrs_parse(allow, "allow", &n.allow, &n.nallow) < 0) ||
        strs_from(PyDict_GetItemString(cfg, "allow_domains"), &n.allow_domains, "allow_domains") < 0 ||
        strs_from(PyDict_GetItemString(cfg, "skip_suffixes"), &n.skip, "skip_suffixes") < 0) {
        PyMem_Free(n.allow);
        strs_free(&n.allow_domains);
        strs_free(&n.skip);
        return -1;
    }
    /* all read: apply, keeping the counted state unless a fresh start was asked */
    ktab_t tab = d->tab;
    PyMem_Free(d->allow);
    strs_free(&d->allow_domains);
    strs_free(&d->skip);
    *d = n;
    d->tab = tab;
    d->on = 1;
    if (fresh || !d->tab.idx) {
        if (kt_init(&d->tab, max_keys, window, is_tunnel ? zone_drop : dclient_drop) < 0) {
            d->on = 0;
            return -1;
        }
    }
    d->tab.window = window;
    return 0;
}

/* A DNS message over UDP: counted here, and handed up read when Python wants messages
 * too. 1: it went up (with its packet), 0: not, -1: error. */
int dns_udp(EngineObject *e, pkt_t *k, uint32_t slot, int want_pkt)
{
    dnsstat_t *s = e->dns;
    dnsmsg_t m;
    const char *bad = dns_read(k->payload, k->plen, 0, &m);
    s->inspected++;
    if (bad) {
        PyObject *v = PyDict_GetItemString(s->malformed, bad);
        PyObject *n = PyLong_FromLong(v ? PyLong_AsLong(v) + 1 : 1);
        if (!n || PyDict_SetItemString(s->malformed, bad, n) < 0) { Py_XDECREF(n); return -1; }
        Py_DECREF(n);
    } else {
        s->decoded++;
        if (dnsstat_message(e, s, k, &m) < 0) return -1;
        if (e->journal) journal_dns(e, k, &m);
    }
    if (!s->up) return 0;
    PyObject *py = flow_py(e, slot);
    PyObject *pk = py ? packet_new_from(k) : NULL;
    PyObject *msg = pk ? (bad ? PyUnicode_FromString(bad) : dns_tuple(&m)) : NULL;
    if (!msg) { Py_XDECREF(py); Py_XDECREF(pk); return -1; }
    e->handed_up++;
    if (emit(e, Py_BuildValue("(iNNNO)", EV_DNS, pk, py, msg, want_pkt ? Py_True : Py_False)) < 0)
        return -1;
    return 1;
}

dnsstat_t *dnsstat_new(void)
{
    dnsstat_t *s = PyMem_Calloc(1, sizeof(dnsstat_t));
    if (!s) return NULL;
    s->up = 1;
    s->malformed = PyDict_New();
    if (!s->malformed) { PyMem_Free(s); return NULL; }
    return s;
}

/* ---- Engine methods ------------------------------------------------------------------ */

PyObject *engine_configure_dns(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"tunnel", "dga", "fresh", "up", "short_suffixes", NULL};
    PyObject *tunnel = NULL, *dga = NULL, *shorts = NULL;
    int fresh = 0, up = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOpiO", kwl, &tunnel, &dga, &fresh, &up, &shorts))
        return NULL;
    dnsstat_t *s = e->dns;
    uint32_t max_keys = e->max_flows < 50000 ? e->max_flows : 50000;
    if (shorts && strs_from(shorts, &s->shorts, "short_suffixes") < 0) return NULL;
    if (tunnel && dnsdet_configure(&s->tunnel, tunnel, 1, fresh, max_keys) < 0) return NULL;
    if (dga && dnsdet_configure(&s->dga, dga, 0, fresh, max_keys) < 0) return NULL;
    if (up >= 0) s->up = up;
    Py_RETURN_NONE;
}

PyObject *engine_dns_tick(EngineObject *e, PyObject *arg)
{
    /* at a tick: report what pacing held back, then forget what went quiet; an infinite
     * `now` (end of input) reports everything held and forgets nothing */
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    dnsstat_t *s = e->dns;
    if (dnsstat_flush(e, s, isinf(now) ? now : now - s->tunnel.report_interval) < 0) return NULL;
    if (!isinf(now)) dnsstat_expire(s, now);
    Py_RETURN_NONE;
}
