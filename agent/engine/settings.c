/* Settings read from Python objects into the engine's C forms (see settings.h). */
#include "settings.h"

int portmap(PyObject *ports, uint8_t *map)
{
    memset(map, 0, 8192);
    if (ports == Py_None) return 0;
    PyObject *it = PyObject_GetIter(ports);
    if (!it) return -1;
    PyObject *x;
    while ((x = PyIter_Next(it))) {
        long p = PyLong_AsLong(x);
        Py_DECREF(x);
        if (p == -1 && PyErr_Occurred()) { Py_DECREF(it); return -1; }
        if (p < 0 || p > 65535) {
            Py_DECREF(it);
            PyErr_Format(PyExc_ValueError, "port %ld out of range", p);
            return -1;
        }
        map[p >> 3] |= 1 << (p & 7);
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

int cidrs_parse(PyObject *list, const char *what, cidr_t **out, int *nout)
{
    PyObject *seq = PySequence_Fast(list, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    cidr_t *c = PyMem_Calloc(n ? n : 1, sizeof(cidr_t));
    if (!c) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer net;
        int prefix;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y*i", &net, &prefix)) goto bad;
        int okay = (net.len == 4 || net.len == 16) && prefix >= 0 && prefix <= net.len * 8;
        if (okay) {
            memcpy(c[i].net, net.buf, net.len);
            c[i].alen = (int)net.len;
            c[i].prefix = prefix;
        }
        PyBuffer_Release(&net);
        if (!okay) {
            PyErr_Format(PyExc_ValueError, "%s: (packed network, prefix length)", what);
            goto bad;
        }
    }
    Py_DECREF(seq);
    PyMem_Free(*out);
    *out = c;
    *nout = (int)n;
    return 0;
bad:
    Py_DECREF(seq);
    PyMem_Free(c);
    return -1;
}

void strs_free(strs_t *l)
{
    for (int i = 0; i < l->n; i++) PyMem_Free(l->s[i]);
    PyMem_Free(l->s);
    PyMem_Free(l->len);
    l->s = NULL; l->len = NULL; l->n = 0;
}

int strs_from(PyObject *seq_in, strs_t *l, const char *what)
{
    strs_free(l);
    if (!seq_in || seq_in == Py_None) return 0;
    PyObject *seq = PySequence_Fast(seq_in, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    l->s = PyMem_Calloc(n ? n : 1, sizeof(char *));
    l->len = PyMem_Calloc(n ? n : 1, sizeof(int));
    if (!l->s || !l->len) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);
        if (!s) { Py_DECREF(seq); PyErr_Format(PyExc_TypeError, "%s: strings only", what); return -1; }
        l->s[i] = PyMem_Malloc(len ? len : 1);
        if (!l->s[i]) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
        memcpy(l->s[i], s, len);
        l->len[i] = (int)len;
        l->n++;
    }
    Py_DECREF(seq);
    return 0;
}
