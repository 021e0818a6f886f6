/* Pair counters and bursts (see counters.h). */
#include "counters.h"

#include <stddef.h>
#include <stdlib.h>

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

int pair_add(EngineObject *e, pkt_t *k)
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

/* A watched flow's burst starts, (ts, src, dst, dport, None, new flow), or ends, (ts,
 * src, dst, dport, bytes from the originator, bytes from the responder), with the
 * originator as src: one list, in the order they happened. `start`: 0 an end, 1 a start
 * with a new flow, 2 a start after a silence on a known one. */
int burst_record(EngineObject *e, flow_t *f, double ts, int start)
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
    b->bytes_o = f->burst_o;
    b->bytes_r = f->burst_r;
    return 0;
}

static PyObject *burst_tuple(const void *rec)
{
    const burst_t *b = rec;
    if (b->start)
        return Py_BuildValue("(dy#y#iOO)", b->ts, b->src, (Py_ssize_t)b->alen, b->dst,
                             (Py_ssize_t)b->alen, (int)b->dport, Py_None,
                             b->start == 1 ? Py_True : Py_False);
    return Py_BuildValue("(dy#y#iII)", b->ts, b->src, (Py_ssize_t)b->alen, b->dst,
                         (Py_ssize_t)b->alen, (int)b->dport, (unsigned int)b->bytes_o,
                         (unsigned int)b->bytes_r);
}

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

PyObject *engine_pairs(EngineObject *e, PyObject *unused)
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

PyObject *engine_activity(EngineObject *e, PyObject *unused)
{
    return recbuf_take(&e->bursts, burst_tuple);
}
