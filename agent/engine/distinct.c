/* Distinct items as hashes (see distinct.h). */
#include "distinct.h"

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static inline uint32_t hset_home(uint64_t x, uint32_t mask)
{
    return (uint32_t)((x * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

int hset_add(hset_t *s, uint64_t x)
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

int hset_has(const hset_t *s, uint64_t x)
{
    if (!x) x = 1;
    if (!s->cap) return 0;
    uint32_t m = s->cap - 1;
    for (uint32_t i = hset_home(x, m); s->items[i]; i = (i + 1) & m)
        if (s->items[i] == x) return 1;
    return 0;
}
