/* Distinct items as 64-bit hashes, bounded: what net.portscan's and the DNS detectors'
 * counting in the engine share (scan.c, dnsstat.c). Past `limit` items, new ones are
 * only counted (`overflow`), as agent/detect/window.py Distinct does. Two different
 * items count as one only if their hashes collide: about n^2 / 2^65 for n items. */
#ifndef ENGINE_DISTINCT_H
#define ENGINE_DISTINCT_H

#include <stddef.h>
#include <stdint.h>

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

static inline uint64_t hset_len(const hset_t *s) { return (uint64_t)s->n + s->overflow; }

/* 1 if new (remembered, or counted past the limit), 0 if seen, -1 out of memory. */
int hset_add(hset_t *s, uint64_t x);
/* 1 if remembered (items counted past the limit are not), else 0. */
int hset_has(const hset_t *s, uint64_t x);

#endif
