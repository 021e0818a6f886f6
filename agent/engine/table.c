/* Table, per-key numbers (see table.h). */
#include "table.h"

#include <math.h>

static inline uint32_t tslot(TableObject *t, uint64_t k)
{
    k ^= k >> 29; /* keys are hashes already: fold the high bits in */
    return (uint32_t)(k * 0x9E3779B97F4A7C15ULL >> 32) & (t->cap - 1);
}

static int table_key(PyObject *o, uint64_t *k)
{
    unsigned long long v = PyLong_AsUnsignedLongLongMask(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *k = v ? v : TABLE_ZERO;
    return 0;
}

/* The slot holding k, or the empty slot where it would go. */
uint32_t table_find(TableObject *t, uint64_t k)
{
    uint32_t i = tslot(t, k);
    while (*tkey(t, i) != TABLE_EMPTY && *tkey(t, i) != k) i = (i + 1) & (t->cap - 1);
    return i;
}

static int table_resize(TableObject *t, uint32_t cap)
{
    double *old = t->rows;
    uint32_t ocap = t->cap;
    double *rows = PyMem_Calloc((size_t)cap * t->stride, sizeof(double));
    if (!rows) { PyErr_NoMemory(); return -1; }
    t->rows = rows;
    t->cap = cap;
    for (uint32_t j = 0; j < ocap; j++) {
        double *r = &old[(size_t)j * t->stride];
        uint64_t k = *(uint64_t *)r;
        if (k == TABLE_EMPTY) continue;
        memcpy(trow(t, table_find(t, k)), r, t->stride * sizeof(double));
    }
    PyMem_Free(old);
    return 0;
}

void table_delete(TableObject *t, uint32_t i)
{
    uint32_t mask = t->cap - 1;
    *tkey(t, i) = TABLE_EMPTY;
    for (uint32_t j = (i + 1) & mask; *tkey(t, j) != TABLE_EMPTY; j = (j + 1) & mask) {
        uint32_t home = tslot(t, *tkey(t, j));
        if (((j - home) & mask) >= ((j - i) & mask)) {
            memcpy(trow(t, i), trow(t, j), t->stride * sizeof(double));
            *tkey(t, j) = TABLE_EMPTY;
            i = j;
        }
    }
    t->n--;
}

/* Rebuild without the keys `drop` says go; returns how many went. */
int64_t table_sweep(TableObject *t, double now, double before)
{
    uint32_t gone = 0;
    for (uint32_t i = 0; i < t->cap; i++) {
        double seen = trow(t, i)[1];
        if (*tkey(t, i) != TABLE_EMPTY && (now - seen > t->window || seen <= before)) gone++;
    }
    if (!gone) return 0;
    for (uint32_t i = 0; i < t->cap; i++) {
        double seen = trow(t, i)[1];
        if (*tkey(t, i) != TABLE_EMPTY && (now - seen > t->window || seen <= before))
            *tkey(t, i) = TABLE_EMPTY;
    }
    t->n -= gone;
    return table_resize(t, t->cap) < 0 ? -1 : (int64_t)gone;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Full: forget the hundredth of the keys seen longest ago. */
static int table_forget_oldest(TableObject *t)
{
    uint32_t want = t->max / 100 ? t->max / 100 : 1;
    double *seen = PyMem_Malloc((size_t)t->n * sizeof(double));
    if (!seen) { PyErr_NoMemory(); return -1; }
    uint32_t m = 0;
    for (uint32_t i = 0; i < t->cap; i++)
        if (*tkey(t, i) != TABLE_EMPTY) seen[m++] = trow(t, i)[1];
    qsort(seen, m, sizeof(double), cmp_double);
    double before = seen[want <= m ? want - 1 : m - 1];
    PyMem_Free(seen);
    int64_t gone = table_sweep(t, -INFINITY, before);
    if (gone < 0) return -1;
    t->forgotten += (unsigned long long)gone;
    return 0;
}

static PyObject *table_values(TableObject *t, uint32_t i)
{
    PyObject *out = PyTuple_New(t->fields);
    if (!out) return NULL;
    double *r = trow(t, i);
    for (int f = 0; f < t->fields; f++) {
        PyObject *v = PyFloat_FromDouble(r[2 + f]);
        if (!v) { Py_DECREF(out); return NULL; }
        PyTuple_SET_ITEM(out, f, v);
    }
    return out;
}

/* (Re)start empty: `fields` numbers a key, forgotten after `window` unseen, `max` keys. */
int table_setup(TableObject *t, int fields, double window, uint32_t max)
{
    PyMem_Free(t->rows);
    t->fields = fields;
    t->stride = 2 + fields;
    t->window = window;
    t->max = max;
    t->n = 0;
    t->cap = 0;
    t->rows = NULL;
    t->forgotten = 0;
    return table_resize(t, 64);
}

static int table_init(TableObject *t, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"fields", "window", "max_keys", NULL};
    int fields = 0;
    double window = INFINITY;
    unsigned int max_keys = 100000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|idI", kwl, &fields, &window, &max_keys))
        return -1;
    if (fields < 0 || fields > 16) { PyErr_SetString(PyExc_ValueError, "fields: 0 to 16"); return -1; }
    if (max_keys < 1) { PyErr_SetString(PyExc_ValueError, "max_keys must be at least 1"); return -1; }
    return table_setup(t, fields, window, max_keys);
}

static void table_dealloc(TableObject *t)
{
    PyMem_Free(t->rows);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* The row of key k (made, zeros, if new; the hundredth seen longest ago forgotten first
 * when full), seen at now: its slot, or -1 on error. */
int64_t table_insert(TableObject *t, uint64_t k, double now)
{
    uint32_t i = table_find(t, k);
    if (*tkey(t, i) == TABLE_EMPTY) {
        if (t->n >= t->max) {
            if (table_forget_oldest(t) < 0) return -1;
        }
        /* up to 85 % full: linear probing over 16-56 B rows stays a few cache lines, and
         * at 100k keys a lower bound doubled the table for nothing */
        if ((uint64_t)(t->n + 1) * 100 > (uint64_t)t->cap * 85 && table_resize(t, t->cap * 2) < 0)
            return -1;
        i = table_find(t, k);
        memset(trow(t, i), 0, t->stride * sizeof(double));
        *tkey(t, i) = k;
        t->n++;
    }
    trow(t, i)[1] = now;
    return i;
}

static PyObject *table_get(TableObject *t, PyObject *args)
{
    PyObject *ko;
    double now;
    uint64_t k;
    if (!PyArg_ParseTuple(args, "Od", &ko, &now) || table_key(ko, &k) < 0) return NULL;
    int64_t i = table_insert(t, k, now);
    return i < 0 ? NULL : table_values(t, (uint32_t)i);
}

static PyObject *table_peek(TableObject *t, PyObject *ko)
{
    uint64_t k;
    if (table_key(ko, &k) < 0) return NULL;
    uint32_t i = table_find(t, k);
    if (*tkey(t, i) == TABLE_EMPTY) Py_RETURN_NONE;
    return table_values(t, i);
}

static PyObject *table_touch(TableObject *t, PyObject *args)
{
    PyObject *ko;
    double now;
    uint64_t k;
    if (!PyArg_ParseTuple(args, "Od", &ko, &now) || table_key(ko, &k) < 0) return NULL;
    uint32_t i = table_find(t, k);
    if (*tkey(t, i) == TABLE_EMPTY) Py_RETURN_FALSE;
    trow(t, i)[1] = now;
    Py_RETURN_TRUE;
}

static PyObject *table_set(TableObject *t, PyObject *args)
{
    PyObject *ko, *vals;
    uint64_t k;
    if (!PyArg_ParseTuple(args, "OO", &ko, &vals) || table_key(ko, &k) < 0) return NULL;
    PyObject *seq = PySequence_Fast(vals, "values must be a sequence");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != t->fields) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "expected %d values", t->fields);
    }
    double v[16];
    for (int f = 0; f < t->fields; f++) {
        v[f] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, f));
        if (v[f] == -1.0 && PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
    }
    Py_DECREF(seq);
    uint32_t i = table_find(t, k);
    if (*tkey(t, i) == TABLE_EMPTY) { PyErr_SetObject(PyExc_KeyError, ko); return NULL; }
    memcpy(trow(t, i) + 2, v, t->fields * sizeof(double));
    Py_RETURN_NONE;
}

static PyObject *table_pop(TableObject *t, PyObject *ko)
{
    uint64_t k;
    if (table_key(ko, &k) < 0) return NULL;
    uint32_t i = table_find(t, k);
    if (*tkey(t, i) == TABLE_EMPTY) Py_RETURN_NONE;
    PyObject *vals = table_values(t, i);
    PyObject *out = vals ? Py_BuildValue("(dN)", trow(t, i)[1], vals) : NULL;
    if (out) table_delete(t, i);
    return out;
}

static PyObject *table_expire(TableObject *t, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    int64_t gone = table_sweep(t, now, -INFINITY);
    return gone < 0 ? NULL : PyLong_FromLongLong(gone);
}

static Py_ssize_t table_len(TableObject *t) { return t->n; }

static int table_contains(TableObject *t, PyObject *ko)
{
    uint64_t k;
    if (table_key(ko, &k) < 0) return -1;
    return *tkey(t, table_find(t, k)) != TABLE_EMPTY;
}

static PyObject *table_forgotten(TableObject *t, void *c) { return PyLong_FromUnsignedLongLong(t->forgotten); }

static PyMethodDef table_methods[] = {
    {"get", (PyCFunction)table_get, METH_VARARGS,
     "get(key, now) -> values: the key's numbers (zeros when new); seen at now"},
    {"peek", (PyCFunction)table_peek, METH_O, "peek(key) -> values | None, without a touch"},
    {"touch", (PyCFunction)table_touch, METH_VARARGS,
     "touch(key, now) -> bool: seen at now if held (True), nothing made otherwise"},
    {"set", (PyCFunction)table_set, METH_VARARGS, "set(key, values): a held key's numbers"},
    {"pop", (PyCFunction)table_pop, METH_O, "pop(key) -> (last seen, values) | None"},
    {"expire", (PyCFunction)table_expire, METH_O,
     "expire(now) -> keys forgotten: those unseen for longer than the window"},
    {NULL},
};

static PyGetSetDef table_getset[] = {
    {"forgotten", (getter)table_forgotten, NULL, "keys forgotten to stay within max_keys", NULL},
    {NULL},
};

static PySequenceMethods table_seq = {
    .sq_length = (lenfunc)table_len,
    .sq_contains = (objobjproc)table_contains,
};

PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine.Table",
    .tp_basicsize = sizeof(TableObject),
    .tp_dealloc = (destructor)table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Table(fields=0, window=inf, max_keys=100000): per-key numbers, windowed and "
              "bounded (see table.h)",
    .tp_methods = table_methods,
    .tp_getset = table_getset,
    .tp_as_sequence = &table_seq,
    .tp_init = (initproc)table_init,
    .tp_new = PyType_GenericNew,
};
