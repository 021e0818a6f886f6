/* Distinct items as 64-bit hashes, bounded: what net.portscan's and the DNS detectors'
 * counting in the engine share (scan.c, dnsstat.c). Past `limit` items, new ones are
 * only counted (`overflow`), as agent/detect/window.py Distinct does. Two different
 * items count as one only if their hashes collide: about n^2 / 2^65 for n items.
 * Included by _engine.c. */

typedef struct {
    uint64_t *items;   /* open addressing, 0 = empty */
    uint32_t n, cap;   /* cap: slots, a power of two (0 until the first item) */
    uint32_t limit;    /* items remembered at most */
    uint64_t overflow; /* new items past the limit */
} hset_t;

#define FNV64_INIT 0xcbf29ce484222325ULL

static inline uint64_t fnv64(const void *data, size_t n, uint64_t h)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static inline uint32_t hset_home(uint64_t x, uint32_t mask)
{
    return (uint32_t)((x * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

static inline uint64_t hset_len(const hset_t *s) { return (uint64_t)s->n + s->overflow; }

/* 1 if new (remembered, or counted past the limit), 0 if seen, -1 out of memory. */
static int hset_add(hset_t *s, uint64_t x)
{
    if (!x) x = 1; /* 0 marks an empty slot */
    if (s->cap) {
        uint32_t m = s->cap - 1;
        for (uint32_t i = hset_home(x, m); s->items[i]; i = (i + 1) & m)
            if (s->items[i] == x) return 0;
    }
    if (s->n >= s->limit) { s->overflow++; return 1; }
    if (2 * (s->n + 1) > s->cap) {
        uint32_t nc = s->cap ? s->cap * 2 : 4, m = nc - 1;
        uint64_t *ni = PyMem_Calloc(nc, sizeof(uint64_t));
        if (!ni) { PyErr_NoMemory(); return -1; }
        for (uint32_t j = 0; j < s->cap; j++) {
            uint64_t y = s->items[j];
            if (!y) continue;
            uint32_t i = hset_home(y, m);
            while (ni[i]) i = (i + 1) & m;
            ni[i] = y;
        }
        PyMem_Free(s->items);
        s->items = ni;
        s->cap = nc;
    }
    uint32_t m = s->cap - 1, i = hset_home(x, m);
    while (s->items[i]) i = (i + 1) & m;
    s->items[i] = x;
    s->n++;
    return 1;
}
