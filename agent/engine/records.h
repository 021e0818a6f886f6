/* Records: what the engine counted for a tick (pairs(), activity()), handed to Python as
 * one C array that makes each record's tuple only when it is read.
 *
 * Why: at 16k new flows a second a tick's pairs and bursts are tens of thousands of
 * tuples (about 250 B each with their bytes, int and float objects); built as one list
 * they are several megabytes alive at once, and the allocator keeps that high-water mark
 * resident long after. A record here is 56-64 B, and a detector walking the records one
 * by one holds one tuple at a time. The array is freed with the object, so between ticks
 * nothing of it stays.
 */
#ifndef ENGINE_RECORDS_H
#define ENGINE_RECORDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef PyObject *(*rec_tuple_fn)(const void *rec);

/* A growing array of fixed-size records, filled between two ticks. */
typedef struct {
    char *items;
    Py_ssize_t n, cap;
    size_t size;
} recbuf_t;

/* Room for one more record at the end (uninitialised), or NULL (out of memory). */
void *recbuf_push(recbuf_t *b);
/* The buffer's records as a Records object; the buffer starts again empty. */
PyObject *recbuf_take(recbuf_t *b, rec_tuple_fn fn);
/* A Records object owning `items` (n of them, PyMem-allocated) and `order` (read order,
 * indexes into items, or NULL: as stored); both are freed on error. */
PyObject *records_own(char *items, uint32_t *order, Py_ssize_t n, size_t size, rec_tuple_fn fn);

extern PyTypeObject RecordsType;

#endif
