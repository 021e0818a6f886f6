/* The retro-hunt journal's records (see journal.h). What journal_take hands over reads
 * back (marshal.loads) as the lists agent/hunt/journal.py documents (FIELDS), item for
 * item, with the index keys agent/hunt/segment.py would compute for them. */
#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>

#include "journal.h"

#define MAX_BYTES (64u << 20) /* records Python has not taken: past this they are dropped */
#define ADDR_CACHE 4096       /* address strings kept (direct-mapped) */

typedef struct {
    uint8_t kind, alen, proto, state;
    uint16_t sport, dport;
    double first, last;
    uint8_t src[16], dst[16];
    uint64_t bo, br, po, pr;
} jconn_t;

typedef struct {
    uint8_t kind, alen, nans;
    uint16_t nlen, sport, dport, ablen;
    int32_t qtype, rcode, an;
    double ts;
    uint8_t cli[16], srv[16];
} jdns_t; /* followed by the name's nlen bytes, then the answers' ablen bytes: nans times
           * its type (DNS_ANS_*), its length, its 4 or 16 address bytes or its name */

/* A query waiting for its answer: keyed as journal.py did, (client, client port, server,
 * id, name), in a chained table, and in asking order for expiry. */
typedef struct jq {
    struct jq *chain, *older, *newer;
    uint32_t h;
    int ident;
    jdns_t r;
    char name[];
} jq_t;

/* An address's text (marshalled), packed bytes and index key, made once while it stays
 * cached. */
typedef struct { uint8_t alen, a[16], mlen; char m[48]; PyObject *packed, *key; } jaddr_t;

struct journal_s {
    char *buf;
    size_t head, len, cap;
    uint64_t dropped;
    jq_t **idx;
    uint32_t mask, npend, max_pend;
    jq_t *oldest, *newest;
    jaddr_t addrs[ADDR_CACHE];
};

static uint32_t CRC[256];
static int strings_ready(void)
{
    static int done;
    if (done) return 0;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        CRC[i] = c;
    }
    done = 1;
    return 0;
}

static void pend_clear(journal_t *j)
{
    jq_t *q = j->oldest;
    while (q) { jq_t *nx = q->newer; PyMem_Free(q); q = nx; }
    j->oldest = j->newest = NULL;
    j->npend = 0;
    if (j->idx) memset(j->idx, 0, ((size_t)j->mask + 1) * sizeof(jq_t *));
}

void journal_free(journal_t *j)
{
    if (!j) return;
    pend_clear(j);
    PyMem_Free(j->idx);
    PyMem_Free(j->buf);
    for (int i = 0; i < ADDR_CACHE; i++) {
        Py_XDECREF(j->addrs[i].packed);
        Py_XDECREF(j->addrs[i].key);
    }
    PyMem_Free(j);
}

/* Room for n more bytes at the end, or NULL: the record is dropped (counted). */
static char *room(journal_t *j, size_t n)
{
    if (j->len + n > j->cap) {
        if (j->head) { /* what was taken goes first */
            memmove(j->buf, j->buf + j->head, j->len - j->head);
            j->len -= j->head;
            j->head = 0;
        }
        if (j->len + n > j->cap) {
            size_t nc = j->cap ? j->cap : 1 << 16;
            while (nc < j->len + n) nc *= 2;
            if (nc > MAX_BYTES) { j->dropped++; return NULL; }
            char *p = PyMem_Realloc(j->buf, nc);
            if (!p) { j->dropped++; return NULL; }
            j->buf = p;
            j->cap = nc;
        }
    }
    char *at = j->buf + j->len;
    j->len += n;
    return at;
}

int journal_conn(EngineObject *e, const flow_t *f)
{
    journal_t *j = e->journal;
    jconn_t r;
    memset(&r, 0, sizeof r);
    r.kind = 'c';
    r.alen = f->k.alen;
    r.proto = f->k.proto;
    r.state = f->state;
    memcpy(r.src, f->rev ? f->k.b : f->k.a, f->k.alen);
    memcpy(r.dst, f->rev ? f->k.a : f->k.b, f->k.alen);
    if (f->k.proto == 1 || f->k.proto == 58) { /* as Flow shows them: type and code */
        r.sport = f->itype;
        r.dport = f->icode;
    } else {
        r.sport = f->rev ? f->k.bp : f->k.ap;
        r.dport = f->rev ? f->k.ap : f->k.bp;
    }
    r.first = f->first;
    r.last = f->last;
    r.bo = f->bytes_o; r.br = f->bytes_r; r.po = f->pkts_o; r.pr = f->pkts_r;
    char *at = room(j, sizeof r);
    if (at) memcpy(at, &r, sizeof r);
    return 0;
}

/* `r` with its name and answers (r->ablen bytes of `ans`) */
static void put_dns(journal_t *j, const jdns_t *r, const char *name, const uint8_t *ans)
{
    char *at = room(j, sizeof *r + r->nlen + r->ablen);
    if (!at) return;
    memcpy(at, r, sizeof *r);
    memcpy(at + sizeof *r, name, r->nlen);
    if (r->ablen) memcpy(at + sizeof *r + r->nlen, ans, r->ablen);
}

/* An answer's kept answers into `ans` (see journal_dns), their count and bytes into r: a
 * malformed one is left out, as dns_tuple leaves it out of DnsMessage.answers. */
static void dns_answers(jdns_t *r, const dnsmsg_t *m, uint8_t *ans)
{
    int n = 0, used = 0;
    for (int i = 0; i < m->nkept; i++) {
        int type, len = dns_answer(m, i, &type, (char *)ans + used + 2);
        if (len < 0) continue;
        ans[used] = (uint8_t)type;
        ans[used + 1] = (uint8_t)len;
        used += 2 + len;
        n++;
    }
    r->nans = (uint8_t)n;
    r->ablen = (uint16_t)used;
}

static uint32_t qhash(const uint8_t *cli, int sport, const uint8_t *srv, int alen, int ident,
                      const char *name, int nlen)
{
    uint8_t k[40];
    memcpy(k, cli, alen);
    memcpy(k + alen, srv, alen);
    k[2 * alen] = (uint8_t)(sport >> 8); k[2 * alen + 1] = (uint8_t)sport;
    k[2 * alen + 2] = (uint8_t)(ident >> 8); k[2 * alen + 3] = (uint8_t)ident;
    return fnv1a(k, 2 * alen + 4) ^ fnv1a(name, nlen) * 2654435761u;
}

static jq_t **qfind(journal_t *j, uint32_t h, const uint8_t *cli, int sport, const uint8_t *srv,
                    int alen, int ident, const char *name, int nlen)
{
    jq_t **pp = &j->idx[h & j->mask];
    for (; *pp; pp = &(*pp)->chain) {
        jq_t *q = *pp;
        if (q->h == h && q->ident == ident && q->r.sport == sport && q->r.alen == alen &&
            q->r.nlen == nlen && memcmp(q->r.cli, cli, alen) == 0 &&
            memcmp(q->r.srv, srv, alen) == 0 && memcmp(q->name, name, nlen) == 0)
            return pp;
    }
    return pp;
}

/* Unlinked from the table (its chain pointer `pp`) and the asking order. */
static void qunlink(journal_t *j, jq_t **pp)
{
    jq_t *q = *pp;
    *pp = q->chain;
    if (q->older) q->older->newer = q->newer; else j->oldest = q->newer;
    if (q->newer) q->newer->older = q->older; else j->newest = q->older;
    j->npend--;
}

/* The oldest waiting query, written without its answer. */
static void qexpire_oldest(journal_t *j)
{
    jq_t *q = j->oldest;
    jq_t **pp = &j->idx[q->h & j->mask];
    while (*pp != q) pp = &(*pp)->chain;
    qunlink(j, pp);
    put_dns(j, &q->r, q->name, NULL);
    PyMem_Free(q);
}

int journal_dns(EngineObject *e, const pkt_t *k, const dnsmsg_t *m)
{
    journal_t *j = e->journal;
    if (!m->nlen) return 0;
    int nlen = m->nlen;
    if (!m->qr) {
        uint32_t h = qhash(k->src, k->sport, k->dst, k->alen, m->ident, m->name, nlen);
        jq_t **pp = qfind(j, h, k->src, k->sport, k->dst, k->alen, m->ident, m->name, nlen);
        jq_t *q = *pp;
        if (!q) {
            if (j->npend >= j->max_pend) { /* the oldest half go unanswered */
                while (j->npend > j->max_pend / 2) qexpire_oldest(j);
                pp = qfind(j, h, k->src, k->sport, k->dst, k->alen, m->ident, m->name, nlen);
            }
            q = PyMem_Malloc(sizeof(jq_t) + nlen);
            if (!q) { j->dropped++; return 0; }
            memset(q, 0, sizeof(jq_t));
            q->h = h;
            q->ident = m->ident;
            memcpy(q->name, m->name, nlen);
            q->chain = NULL;
            *pp = q;
            q->older = j->newest;
            q->newer = NULL;
            if (j->newest) j->newest->newer = q; else j->oldest = q;
            j->newest = q;
            j->npend++;
        }
        /* a repeated query takes the place of the first (the dict assignment it was) */
        jdns_t *r = &q->r;
        r->kind = 'd';
        r->alen = (uint8_t)k->alen;
        r->nlen = (uint16_t)nlen;
        memcpy(r->cli, k->src, k->alen);
        memcpy(r->srv, k->dst, k->alen);
        r->sport = (uint16_t)k->sport;
        r->dport = (uint16_t)k->dport;
        r->ts = k->ts;
        r->qtype = m->qtype;
        r->rcode = -1;
        r->an = 0;
        return 0;
    }
    /* an answer: its type and length, then at most 254 bytes (a name); dns_answer may
     * have the last one's out buffer reach DNS_NAME_OUT bytes */
    uint8_t ans[DNS_KEPT_ANSWERS * (2 + DNS_MAX_NAME) + DNS_NAME_OUT];
    uint32_t h = qhash(k->dst, k->dport, k->src, k->alen, m->ident, m->name, nlen);
    jq_t **pp = qfind(j, h, k->dst, k->dport, k->src, k->alen, m->ident, m->name, nlen);
    if (*pp) {
        jq_t *q = *pp;
        qunlink(j, pp);
        q->r.rcode = m->rcode;
        q->r.an = m->an;
        dns_answers(&q->r, m, ans);
        put_dns(j, &q->r, q->name, ans);
        PyMem_Free(q);
        return 0;
    }
    /* the answer alone (the query was not seen) */
    jdns_t r;
    memset(&r, 0, sizeof r);
    r.kind = 'd';
    r.alen = (uint8_t)k->alen;
    r.nlen = (uint16_t)nlen;
    memcpy(r.cli, k->dst, k->alen);
    memcpy(r.srv, k->src, k->alen);
    r.sport = (uint16_t)k->dport;
    r.dport = (uint16_t)k->sport;
    r.ts = k->ts;
    r.qtype = m->qtype;
    r.rcode = m->rcode;
    r.an = m->an;
    dns_answers(&r, m, ans);
    put_dns(j, &r, m->name, ans);
    return 0;
}

/* ---- to Python ------------------------------------------------------------------------- */

/* zlib.crc32(p, crc) */
static uint32_t crc32_up(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) crc = CRC[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* agent/hunt/segment.py key(kind, value), value as its UTF-8 bytes */
static PyObject *index_key(uint8_t kind, const uint8_t *v, size_t n)
{
    uint64_t hi = crc32_up(crc32_up(0, &kind, 1), v, n);
    uint64_t lo = crc32_up(crc32_up(0x9E3779B9u, &kind, 1), v, n);
    return PyLong_FromUnsignedLongLong(hi << 32 | lo);
}

/* segment.py domain_keys(name) into `keys`: the name (Latin-1, lower-cased by dns_read)
 * and each parent with two labels or more. */
static int domain_keys(PyObject *keys, const char *name, int nlen)
{
    uint8_t u[2 * DNS_MAX_NAME + 128];
    size_t n = 0;
    while (nlen && name[nlen - 1] == '.') nlen--;
    for (int i = 0; i < nlen; i++) {
        uint8_t c = (uint8_t)name[i];
        if (c < 0x80) u[n++] = c;
        else { u[n++] = 0xC0 | c >> 6; u[n++] = 0x80 | (c & 0x3F); }
    }
    size_t at = 0;
    for (;;) {
        const uint8_t *dot = memchr(u + at, '.', n - at);
        if (!dot) return 0;
        PyObject *k = index_key('d', u + at, n - at);
        if (!k || PySet_Add(keys, k) < 0) { Py_XDECREF(k); return -1; }
        Py_DECREF(k);
        at = (size_t)(dot - u) + 1;
    }
}

/* A CNAME target's keys: its domain keys, or, for a name that reads as an address (as
 * journal.py's answer_address tells), that address's. */
static jaddr_t *addr_entry(journal_t *j, const uint8_t *a, int alen, PyObject *keys,
                           PyObject *packed);
static int answer_keys(journal_t *j, PyObject *keys, PyObject *packed, const char *name,
                       int nlen)
{
    char last = name[nlen - 1];
    if (memchr(name, ':', nlen) || (last >= '0' && last <= '9')) {
        char z[DNS_NAME_OUT];
        uint8_t v[16];
        memcpy(z, name, nlen);
        z[nlen] = 0;
        int v6 = memchr(name, ':', nlen) != NULL;
        if (strlen(z) == (size_t)nlen && inet_pton(v6 ? AF_INET6 : AF_INET, z, v) == 1)
            return addr_entry(j, v, v6 ? 16 : 4, keys, packed) ? 0 : -1;
    }
    return domain_keys(keys, name, nlen);
}

/* ---- marshal: the records as marshal.loads reads them (a list's items, format 2: no
 * references), written straight from the buffer: no Python object per record. */

typedef struct { char *p; size_t n, cap; } mbuf_t;

static int mb_room(mbuf_t *b, size_t n)
{
    if (b->n + n <= b->cap) return 0;
    size_t nc = b->cap ? b->cap * 2 : 1 << 16;
    while (nc < b->n + n) nc *= 2;
    char *p = PyMem_Realloc(b->p, nc);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = nc;
    return 0;
}

static inline void mw_i32(mbuf_t *b, int32_t v)
{
    uint32_t u = (uint32_t)v;
    uint8_t *o = (uint8_t *)b->p + b->n;
    o[0] = (uint8_t)u; o[1] = (uint8_t)(u >> 8); o[2] = (uint8_t)(u >> 16); o[3] = (uint8_t)(u >> 24);
    b->n += 4;
}

static inline void mw_int(mbuf_t *b, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX) {
        b->p[b->n++] = 'i';
        mw_i32(b, (int32_t)v);
        return;
    }
    /* TYPE_LONG: 15-bit digits, least significant first; the count's sign is the sign */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    int nd = 0;
    uint16_t d[5];
    while (u) { d[nd++] = (uint16_t)(u & 0x7FFF); u >>= 15; }
    b->p[b->n++] = 'l';
    mw_i32(b, v < 0 ? -nd : nd);
    for (int i = 0; i < nd; i++) { b->p[b->n++] = (char)(d[i] & 0xFF); b->p[b->n++] = (char)(d[i] >> 8); }
}

static inline void mw_uint(mbuf_t *b, uint64_t v)
{
    if (v <= INT32_MAX) { mw_int(b, (int64_t)v); return; }
    int nd = 0;
    uint16_t d[5];
    while (v) { d[nd++] = (uint16_t)(v & 0x7FFF); v >>= 15; }
    b->p[b->n++] = 'l';
    mw_i32(b, nd);
    for (int i = 0; i < nd; i++) { b->p[b->n++] = (char)(d[i] & 0xFF); b->p[b->n++] = (char)(d[i] >> 8); }
}

static inline void mw_float(mbuf_t *b, double x)
{
    b->p[b->n++] = 'g';
    PyFloat_Pack8(x, b->p + b->n, 1);
    b->n += 8;
}

/* A short ASCII string (TYPE_SHORT_ASCII) */
static inline void mw_ascii(mbuf_t *b, const char *s, int n)
{
    b->p[b->n++] = 'z';
    b->p[b->n++] = (char)n;
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

/* A DNS name (Latin-1): short ASCII, or TYPE_UNICODE with its UTF-8 bytes */
static void mw_name(mbuf_t *b, const char *s, int n)
{
    int ascii = 1;
    for (int i = 0; i < n; i++) ascii &= (uint8_t)s[i] < 0x80;
    if (ascii && n < 256) { mw_ascii(b, s, n); return; }
    b->p[b->n++] = 'u';
    size_t at = b->n;
    b->n += 4;
    uint8_t *o = (uint8_t *)b->p + b->n;
    size_t u = 0;
    for (int i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x80) o[u++] = c;
        else { o[u++] = 0xC0 | c >> 6; o[u++] = 0x80 | (c & 0x3F); }
    }
    size_t end = b->n + u;
    b->n = at;
    mw_i32(b, (int32_t)u);
    b->n = end;
}

/* The address's cache entry (its marshalled text; its packed form and index key into
 * the sets), or NULL. */
static jaddr_t *addr_entry(journal_t *j, const uint8_t *a, int alen, PyObject *keys,
                           PyObject *packed)
{
    jaddr_t *c = &j->addrs[fnv1a(a, alen) & (ADDR_CACHE - 1)];
    if (!(c->packed && c->alen == alen && memcmp(c->a, a, alen) == 0)) {
        PyObject *p = PyBytes_FromStringAndSize((const char *)a, alen);
        PyObject *k = p ? index_key('i', a, alen) : NULL;
        if (!k) { Py_XDECREF(p); return NULL; }
        Py_XSETREF(c->packed, p);
        Py_XSETREF(c->key, k);
        c->alen = (uint8_t)alen;
        memcpy(c->a, a, alen);
        char t[48];
        int n = addr_text(t, a, alen);
        c->m[0] = 'z';
        c->m[1] = (char)n;
        memcpy(c->m + 2, t, n);
        c->mlen = (uint8_t)(n + 2);
    }
    if (PySet_Add(keys, c->key) < 0 || PySet_Add(packed, c->packed) < 0) return NULL;
    return c;
}

static inline void mw_addr(mbuf_t *b, const jaddr_t *c)
{
    memcpy(b->p + b->n, c->m, c->mlen);
    b->n += c->mlen;
}

static const char *STATE_TEXT[] = {"attempt", "probe", "established", "rejected", "midstream",
                                   "closed"};

/* The record at `at` marshalled into `b`; its time (what the segment it goes to is chosen
 * by), its size in the buffer. -1 on error. */
static int record_marshal(journal_t *j, const char *at, size_t *size, mbuf_t *b,
                          PyObject *keys, PyObject *packed)
{
    if (at[0] == 'c') {
        jconn_t r;
        memcpy(&r, at, sizeof r);
        *size = sizeof r;
        jaddr_t *src = addr_entry(j, r.src, r.alen, keys, packed);
        if (!src) return -1;
        const uint8_t *sm = (const uint8_t *)src->m;
        uint8_t smc[48];
        memcpy(smc, sm, src->mlen); /* the next lookup may take the same cache entry */
        int slen = src->mlen;
        jaddr_t *dst = addr_entry(j, r.dst, r.alen, keys, packed);
        if (!dst || mb_room(b, 512) < 0) return -1;
        const char *state = r.proto == 6 ? (r.state <= S_CLOSED ? STATE_TEXT[r.state] : "other")
                                         : (r.pr ? "answered" : "one-way");
        b->p[b->n++] = '[';
        mw_i32(b, 13);
        mw_ascii(b, "c", 1);
        mw_float(b, r.first);
        mw_float(b, r.last);
        memcpy(b->p + b->n, smc, slen);
        b->n += slen;
        mw_int(b, r.sport);
        mw_addr(b, dst);
        mw_int(b, r.dport);
        mw_int(b, r.proto);
        mw_ascii(b, state, (int)strlen(state));
        mw_uint(b, r.bo);
        mw_uint(b, r.br);
        mw_uint(b, r.po);
        mw_uint(b, r.pr);
        return 0;
    }
    jdns_t r;
    memcpy(&r, at, sizeof r);
    *size = sizeof r + r.nlen + r.ablen;
    const char *name = at + sizeof r;
    jaddr_t *cli = addr_entry(j, r.cli, r.alen, keys, packed);
    if (!cli) return -1;
    uint8_t cm[48];
    int clen = cli->mlen;
    memcpy(cm, cli->m, clen);
    jaddr_t *srv = addr_entry(j, r.srv, r.alen, keys, packed);
    if (!srv || domain_keys(keys, name, r.nlen) < 0 ||
        mb_room(b, 256 + 2 * (size_t)r.nlen + 48 * (size_t)r.nans + 2 * (size_t)r.ablen) < 0)
        return -1;
    b->p[b->n++] = '[';
    mw_i32(b, 11);
    mw_ascii(b, "d", 1);
    mw_float(b, r.ts);
    memcpy(b->p + b->n, cm, clen);
    b->n += clen;
    mw_int(b, r.sport);
    mw_addr(b, srv);
    mw_int(b, r.dport);
    mw_name(b, name, r.nlen);
    mw_int(b, r.qtype);
    mw_int(b, r.rcode);
    mw_int(b, r.an);
    b->p[b->n++] = '[';
    mw_i32(b, r.nans);
    const uint8_t *a = (const uint8_t *)name + r.nlen;
    for (int i = 0; i < r.nans; i++, a += 2 + a[1]) {
        if (a[0] != DNS_ANS_CNAME) { /* the srv entry was written: its slot may go */
            jaddr_t *c = addr_entry(j, a + 2, a[1], keys, packed);
            if (!c) return -1;
            mw_addr(b, c);
            continue;
        }
        if (answer_keys(j, keys, packed, (const char *)a + 2, a[1]) < 0) return -1;
        mw_name(b, (const char *)a + 2, a[1]);
    }
    return 0;
}

PyObject *engine_configure_journal(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"on", "max_pending_dns", NULL};
    int on = 0;
    unsigned int max_pend = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "p|$I", kwl, &on, &max_pend)) return NULL;
    if (!on) {
        journal_free(e->journal);
        e->journal = NULL;
        Py_RETURN_NONE;
    }
    if (strings_ready() < 0) return NULL;
    if (max_pend < 2) max_pend = 2;
    journal_t *j = e->journal;
    if (!j) {
        j = PyMem_Calloc(1, sizeof(journal_t));
        if (!j) return PyErr_NoMemory();
    } else {
        pend_clear(j); /* the table is sized anew; waiting queries go unanswered */
        PyMem_Free(j->idx);
        j->idx = NULL;
    }
    uint32_t n = 1024;
    while (n < max_pend * 2u && n < (1u << 24)) n *= 2;
    j->idx = PyMem_Calloc(n, sizeof(jq_t *));
    if (!j->idx) {
        journal_free(j);
        e->journal = NULL;
        return PyErr_NoMemory();
    }
    j->mask = n - 1;
    j->max_pend = max_pend;
    e->journal = j;
    Py_RETURN_NONE;
}

PyObject *engine_journal_take(EngineObject *e, PyObject *args)
{
    Py_ssize_t max;
    double until;
    if (!PyArg_ParseTuple(args, "nd", &max, &until)) return NULL;
    journal_t *j = e->journal;
    if (!j) {
        PyErr_SetString(PyExc_RuntimeError, "the journal is off (configure_journal)");
        return NULL;
    }
    PyObject *keys = PySet_New(NULL), *packed = PySet_New(NULL);
    mbuf_t b = {NULL, 0, 0};
    if (!keys || !packed) goto fail;
    double first = INFINITY, last = -INFINITY, next = NAN;
    long nconn = 0, ndns = 0;
    Py_ssize_t n = 0;
    while (j->head < j->len) {
        const char *at = j->buf + j->head;
        double t, f;
        size_t size;
        if (at[0] == 'c') {
            jconn_t r;
            memcpy(&r, at, sizeof r);
            t = r.last;
            f = r.first;
        } else {
            jdns_t r;
            memcpy(&r, at, sizeof r);
            t = f = r.ts;
        }
        if (n >= max || t >= until) { next = t; break; }
        if (record_marshal(j, at, &size, &b, keys, packed) < 0) goto fail;
        n++;
        if (at[0] == 'c') nconn++; else ndns++;
        j->head += size;
        if (f < first) first = f;
        if (t > last) last = t;
    }
    if (j->head == j->len) j->head = j->len = 0;
    PyObject *items = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.n);
    PyMem_Free(b.p);
    b.p = NULL;
    PyObject *nx = isnan(next) ? Py_NewRef(Py_None) : PyFloat_FromDouble(next);
    if (!items || !nx) { Py_XDECREF(items); Py_XDECREF(nx); goto fail; }
    return Py_BuildValue("(NnNNNddllK)", items, n, nx, keys, packed, first, last, nconn, ndns,
                         (unsigned long long)j->dropped);
fail:
    PyMem_Free(b.p);
    Py_XDECREF(keys); Py_XDECREF(packed);
    return NULL;
}

PyObject *engine_journal_expire(EngineObject *e, PyObject *arg)
{
    double before = PyFloat_AsDouble(arg);
    if (before == -1.0 && PyErr_Occurred()) return NULL;
    journal_t *j = e->journal;
    if (j)
        while (j->oldest && j->oldest->r.ts <= before) qexpire_oldest(j);
    Py_RETURN_NONE;
}

/* ---- a segment's index (agent/hunt/segment.py) ---------------------------------------- */

typedef struct { uint64_t k; uint32_t b; } kb_t;

static int kb_cmp(const void *x, const void *y)
{
    const kb_t *a = x, *b = y;
    if (a->k != b->k) return a->k < b->k ? -1 : 1;
    return a->b < b->b ? -1 : a->b > b->b;
}

PyObject *journal_index_arrays(PyObject *mod, PyObject *args)
{
    PyObject *blocks;
    int probes;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &blocks, &probes)) return NULL;
    size_t n = 0, cap = 1024;
    kb_t *kb = PyMem_Malloc(cap * sizeof(kb_t));
    if (!kb) return PyErr_NoMemory();
    for (Py_ssize_t b = 0; b < PyList_GET_SIZE(blocks); b++) {
        PyObject *it = PyObject_GetIter(PyList_GET_ITEM(blocks, b)), *k;
        if (!it) goto fail;
        while ((k = PyIter_Next(it))) {
            uint64_t v = PyLong_AsUnsignedLongLong(k);
            Py_DECREF(k);
            if (v == (uint64_t)-1 && PyErr_Occurred()) { Py_DECREF(it); goto fail; }
            if (n == cap) {
                kb_t *p = PyMem_Realloc(kb, cap * 2 * sizeof(kb_t));
                if (!p) { Py_DECREF(it); PyErr_NoMemory(); goto fail; }
                kb = p;
                cap *= 2;
            }
            kb[n].k = v;
            kb[n++].b = (uint32_t)b;
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) goto fail;
    }
    qsort(kb, n, sizeof(kb_t), kb_cmp);
    size_t nkeys = 0;
    for (size_t i = 0; i < n; i++) nkeys += !i || kb[i].k != kb[i - 1].k;
    /* as make_bloom: about 10 bits a key, `probes` positions from the key's two halves */
    size_t nbits = nkeys * 10 > 64 ? nkeys * 10 : 64, nbytes = (nbits + 7) / 8;
    nbits = nbytes * 8;
    PyObject *keys = PyBytes_FromStringAndSize(NULL, nkeys * 8);
    PyObject *starts = PyBytes_FromStringAndSize(NULL, (nkeys + 1) * 4);
    PyObject *posts = PyBytes_FromStringAndSize(NULL, n * 4);
    PyObject *bloom = PyByteArray_FromStringAndSize(NULL, nbytes);
    if (!keys || !starts || !posts || !bloom) {
        Py_XDECREF(keys); Py_XDECREF(starts); Py_XDECREF(posts); Py_XDECREF(bloom);
        goto fail;
    }
    uint64_t *kp = (uint64_t *)PyBytes_AS_STRING(keys);
    uint32_t *sp = (uint32_t *)PyBytes_AS_STRING(starts), *pp = (uint32_t *)PyBytes_AS_STRING(posts);
    uint8_t *bits = (uint8_t *)PyByteArray_AS_STRING(bloom);
    memset(bits, 0, nbytes);
    size_t ki = 0;
    sp[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (!i || kb[i].k != kb[i - 1].k) {
            uint64_t k = kb[i].k, h1 = k & 0xFFFFFFFFu, h2 = (k >> 32) | 1;
            for (int p = 0; p < probes; p++) {
                uint64_t pos = (h1 + (uint64_t)p * h2) % nbits;
                bits[pos >> 3] |= (uint8_t)(1u << (pos & 7));
            }
            if (i) sp[ki] = (uint32_t)i;
            kp[ki++] = k;
        }
        pp[i] = kb[i].b;
    }
    sp[nkeys] = (uint32_t)n;
    PyMem_Free(kb);
    return Py_BuildValue("(NNNN)", keys, starts, posts, bloom);
fail:
    PyMem_Free(kb);
    return NULL;
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

/* sorted_u32(buffer) -> bytes: its native u32 values sorted, each once. The segment's
 * IPv4 addresses, without a Python int per address: a set of a busy hour's millions of
 * ints would leave the heap tens of MB larger (pymalloc keeps its arenas). */
PyObject *journal_sorted_u32(PyObject *mod, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = b.len / 4;
    uint32_t *v = PyMem_Malloc(n ? n * 4 : 1);
    if (!v) { PyBuffer_Release(&b); return PyErr_NoMemory(); }
    memcpy(v, b.buf, n * 4);
    PyBuffer_Release(&b);
    qsort(v, n, 4, cmp_u32);
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (k == 0 || v[i] != v[k - 1]) v[k++] = v[i];
    PyObject *out = PyBytes_FromStringAndSize((const char *)v, k * 4);
    PyMem_Free(v);
    return out;
}
