/* See syslogscan.h. Each test below mirrors one of Parser.parse_block's, in its order. */
#include "syslogscan.h"

#include <string.h>

/* `s[0..n)` as a str (as Python decodes it: invalid UTF-8 replaced) in `set`: 1, 0, -1 */
static int in_set(PyObject *set, const char *s, Py_ssize_t n)
{
    PyObject *u = PyUnicode_DecodeUTF8(s, n, "replace");
    if (!u) return -1;
    int r = PySet_Contains(set, u);
    Py_DECREF(u);
    return r;
}

static Py_ssize_t find_byte(const char *s, Py_ssize_t from, Py_ssize_t n, char c)
{
    if (from >= n) return -1;
    const char *p = memchr(s + from, c, (size_t)(n - from));
    return p ? p - s : -1;
}

static Py_ssize_t find_str(const char *s, Py_ssize_t from, Py_ssize_t n, const char *needle)
{
    size_t k = strlen(needle);
    if (from > n) return -1;
    const char *p = memmem(s + from, (size_t)(n - from), needle, k);
    return p ? p - s : -1;
}

static int has_high(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 1;
    return 0;
}

enum { KEEP, OTHER, MALFORMED, FAIL };

static int classify(const char *s, Py_ssize_t n, PyObject *fast, PyObject *known,
                    PyObject *audit_only)
{
    unsigned char c0 = (unsigned char)s[0];
    if (c0 >= 0x80) return KEEP; /* str.isdigit knows non-ASCII digits: Python decides */
    Py_ssize_t host;
    if (c0 >= '0' && c0 <= '9') {
        host = find_byte(s, 0, n, ' ') + 1;
    } else if (n >= 5 && memcmp(s, "type=", 5) == 0) {
        return KEEP; /* auditd's own log */
    } else {
        /* line[15:16] counts characters: a multi-byte one before it moves it */
        if (has_high(s, n < 16 ? n : 16)) return KEEP;
        host = (n > 15 && s[15] == ' ') ? 16 : 0;
    }
    Py_ssize_t prog_at = host ? find_byte(s, host, n, ' ') + 1 : 0;
    Py_ssize_t end = prog_at ? find_str(s, prog_at, n, ": ") : -1;
    if (end < 0) {
        if (prog_at && s[n - 1] == ':') end = n - 1;
        else return MALFORMED;
    }
    Py_ssize_t bracket = find_byte(s, prog_at, end, '[');
    Py_ssize_t plen = (bracket < 0 ? end : bracket) - prog_at;
    const char *prog = s + prog_at;
    int r = in_set(fast, prog, plen);
    if (r) return r < 0 ? FAIL : KEEP;
    if (end + 2 + 4 <= n && memcmp(s + end + 2, "pam_", 4) == 0) return KEEP;
    r = in_set(known, prog, plen);
    if (r < 0) return FAIL;
    if (r) {
        r = in_set(audit_only, prog, plen);
        if (r < 0) return FAIL;
        if (r && find_str(s, end, n, "msg=audit(") < 0) return OTHER;
        return KEEP;
    }
    const char *slash = NULL;
    for (Py_ssize_t i = plen - 1; i >= 0; i--)
        if (prog[i] == '/') { slash = prog + i; break; }
    if (slash) {
        r = in_set(known, slash + 1, prog + plen - slash - 1);
        if (r) return r < 0 ? FAIL : KEEP;
    }
    return OTHER;
}

PyObject *syslog_scan(PyObject *mod, PyObject *args)
{
    Py_buffer b;
    PyObject *fast, *known, *audit_only;
    if (!PyArg_ParseTuple(args, "y*O!O!O!", &b, &PyFrozenSet_Type, &fast, &PyFrozenSet_Type,
                          &known, &PyFrozenSet_Type, &audit_only))
        return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t lines = 0, other = 0, malformed = 0;
    const char *s = b.buf;
    Py_ssize_t n = b.len, at = 0;
    if (!out) goto fail;
    while (at < n) {
        Py_ssize_t nl = find_byte(s, at, n, '\n');
        Py_ssize_t stop = nl < 0 ? n : nl;
        if (stop > at) {
            lines++;
            switch (classify(s + at, stop - at, fast, known, audit_only)) {
            case KEEP: {
                PyObject *line = PyUnicode_DecodeUTF8(s + at, stop - at, "replace");
                if (!line || PyList_Append(out, line) < 0) { Py_XDECREF(line); goto fail; }
                Py_DECREF(line);
                break;
            }
            case OTHER: other++; break;
            case MALFORMED: malformed++; break;
            default: goto fail;
            }
        }
        at = stop + 1;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("(Nnnn)", out, lines, other, malformed);
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&b);
    return NULL;
}
