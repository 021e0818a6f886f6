/* Table: per-key numbers for detectors, windowed and bounded, at ~40 B a key.
 *
 * Why: a Python detector keeping a little state per pair or per host pays ~110 B a key
 * for the dict slot, the int key and a float, and ~200 B with a small object; with 100k
 * active flows between distinct hosts that was most of the agent's memory. A Table keeps
 * a 64-bit key (window.key_of), its last-seen time and `fields` doubles in one flat
 * open-addressed array, with the semantics of agent/detect/window.py KeyedWindow: keys
 * unseen for longer than `window` are forgotten by expire(), and past `max_keys` the
 * hundredth of them seen longest ago is forgotten (counted in `forgotten`).
 *
 * scan.c keeps its single-contact sources in one (scan_single).
 */
#ifndef ENGINE_TABLE_H
#define ENGINE_TABLE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define TABLE_EMPTY 0
#define TABLE_ZERO (1ULL << 63) /* stands for key 0, which marks empty slots */

typedef struct {
    PyObject_HEAD
    double *rows; /* per slot: key bits, seen, fields */
    uint32_t cap, n, max, stride;
    int fields;
    double window;
    unsigned long long forgotten;
} TableObject;

extern PyTypeObject TableType;

static inline uint64_t *tkey(TableObject *t, uint32_t i) { return (uint64_t *)&t->rows[(size_t)i * t->stride]; }
static inline double *trow(TableObject *t, uint32_t i) { return &t->rows[(size_t)i * t->stride]; }

/* The slot holding k, or the empty slot where it would go. */
uint32_t table_find(TableObject *t, uint64_t k);
/* The row of key k (made, zeros, if new; the hundredth seen longest ago forgotten first
 * when full), seen at now: its slot, or -1 on error. */
int64_t table_insert(TableObject *t, uint64_t k, double now);
/* The key of slot i forgotten. */
void table_delete(TableObject *t, uint32_t i);
/* Keys unseen at `now` for longer than the window, or seen at or before `before`,
 * forgotten: how many, or -1 on error. */
int64_t table_sweep(TableObject *t, double now, double before);
/* (Re)start empty: `fields` numbers a key, forgotten after `window` unseen, `max` keys. */
int table_setup(TableObject *t, int fields, double window, uint32_t max);

#endif
