/* Records, the Python sequence of a tick's records (see records.h). */
#include "records.h"

void *recbuf_push(recbuf_t *b)
{
    if (b->n == b->cap) {
        Py_ssize_t nc = b->cap ? b->cap * 2 : 256;
        char *p = PyMem_Realloc(b->items, (size_t)nc * b->size);
        if (!p) { PyErr_NoMemory(); return NULL; }
        b->items = p;
        b->cap = nc;
    }
    return b->items + (size_t)b->n++ * b->size;
}

typedef struct {
    PyObject_HEAD
    char *items;
    uint32_t *order; /* read order (indexes into items), or NULL: as stored */
    Py_ssize_t n;
    size_t size;
    rec_tuple_fn tuple;
} RecordsObject;

/* A Records object owning `items` (n of them, PyMem-allocated) and `order`. */
PyObject *records_own(char *items, uint32_t *order, Py_ssize_t n, size_t size, rec_tuple_fn fn)
{
    RecordsObject *r = PyObject_New(RecordsObject, &RecordsType);
    if (!r) { PyMem_Free(items); PyMem_Free(order); return NULL; }
    r->items = items;
    r->order = order;
    r->n = n;
    r->size = size;
    r->tuple = fn;
    return (PyObject *)r;
}

/* The buffer's records as a Records object; the buffer starts again empty. */
PyObject *recbuf_take(recbuf_t *b, rec_tuple_fn fn)
{
    PyObject *r = records_own(b->items, NULL, b->n, b->size, fn);
    b->items = NULL;
    b->n = b->cap = 0;
    return r;
}

static void records_dealloc(RecordsObject *r)
{
    PyMem_Free(r->items);
    PyMem_Free(r->order);
    PyObject_Free(r);
}

static Py_ssize_t records_len(RecordsObject *r) { return r->n; }

static PyObject *records_item(RecordsObject *r, Py_ssize_t i)
{
    if (i < 0 || i >= r->n) {
        PyErr_SetString(PyExc_IndexError, "record index out of range");
        return NULL;
    }
    size_t at = r->order ? r->order[i] : (size_t)i;
    return r->tuple(r->items + at * r->size);
}

static PySequenceMethods records_seq = {
    .sq_length = (lenfunc)records_len,
    .sq_item = (ssizeargfunc)records_item,
};

PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.engine._engine.Records",
    .tp_basicsize = sizeof(RecordsObject),
    .tp_dealloc = (destructor)records_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A tick's records (pairs() or activity()): a sequence whose tuples are made "
              "as they are read; iterate it rather than keeping the tuples.",
    .tp_as_sequence = &records_seq,
};
