/* HTTP requests counted instead of handed up (see httpfilter.h). */
#include "httpfilter.h"

#include "dnsstat.h"

static inline int http_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0b || c == 0x0c;
}

/* 1: hand the payload up (a header a reader needs, or no filter); 0: counted here. */
int http_wanted(EngineObject *e, const uint8_t *pl, Py_ssize_t n)
{
    httpf_t *h = e->http;
    if (!h->headers.n) return 1;
    /* looks_like_http(): a method, then a space within the first 8 bytes */
    Py_ssize_t sp = -1;
    for (Py_ssize_t i = 0; i < n && i < 8; i++)
        if (pl[i] == ' ') { sp = i; break; }
    if (sp <= 0) return 1; /* not a request: the deep decoder says so */
    int method = 0;
    for (int i = 0; i < h->methods.n && !method; i++)
        method = h->methods.len[i] == sp && !memcmp(pl, h->methods.s[i], sp);
    if (!method) return 1;
    Py_ssize_t end = n < h->max_headers ? n : h->max_headers, off = 0;
    /* the request line: two or three words, the third starting with HTTP/ */
    Py_ssize_t eol = off;
    while (eol < end && pl[eol] != '\n') eol++;
    int words = 0, third_ok = 0;
    for (Py_ssize_t i = 0; i < eol;) {
        while (i < eol && http_space(pl[i])) i++;
        if (i >= eol) break;
        Py_ssize_t w = i;
        while (i < eol && !http_space(pl[i])) i++;
        if (++words == 3) third_ok = i - w >= 5 && !memcmp(pl + w, "HTTP/", 5);
    }
    /* header lines up to the blank one: a name a reader needs sends the request up */
    for (off = eol + 1; off < end;) {
        Py_ssize_t le = off;
        while (le < end && pl[le] != '\n') le++;
        Py_ssize_t a = off, b = le;
        while (b > a && pl[b - 1] == '\r') b--;
        if (a == b) break; /* end of the header block */
        Py_ssize_t colon = a;
        while (colon < b && pl[colon] != ':') colon++;
        Py_ssize_t na = a, nb = colon;
        while (na < nb && http_space(pl[na])) na++;
        while (nb > na && http_space(pl[nb - 1])) nb--;
        for (int i = 0; i < h->headers.n; i++) {
            int m = h->headers.len[i];
            if (nb - na != m) continue;
            int same = 1;
            for (int j = 0; j < m && same; j++) {
                uint8_t c = pl[na + j];
                same = (c >= 'A' && c <= 'Z' ? c + 32 : c) == (uint8_t)h->headers.s[i][j];
            }
            if (same) return 1;
        }
        off = le + 1;
    }
    h->inspected++;
    if (words == 2 || (words == 3 && third_ok)) h->decoded++;
    else h->bad_line++;
    return 0;
}

PyObject *engine_configure_http(EngineObject *e, PyObject *args, PyObject *kw)
{
    static char *kwl[] = {"methods", "headers", "max_headers", NULL};
    PyObject *methods = NULL, *headers = NULL;
    int max_headers = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOi", kwl, &methods, &headers, &max_headers))
        return NULL;
    strs_t m = {0}, hd = {0};
    if (strs_from(methods, &m, "methods") < 0 || strs_from(headers, &hd, "headers") < 0) {
        strs_free(&m);
        strs_free(&hd);
        return NULL;
    }
    for (int i = 0; i < hd.n; i++)
        for (int j = 0; j < hd.len[i]; j++)
            if (hd.s[i][j] >= 'A' && hd.s[i][j] <= 'Z') hd.s[i][j] += 32;
    httpf_t *h = e->http;
    strs_free(&h->methods);
    strs_free(&h->headers);
    h->methods = m;
    h->headers = hd;
    h->max_headers = max_headers;
    Py_RETURN_NONE;
}

/* What the engine read itself, DNS (dnsstat.c) and HTTP, as the deep decoder counts. */
PyObject *engine_read_stats(EngineObject *e, PyObject *unused)
{
    dnsstat_t *s = e->dns;
    httpf_t *h = e->http;
    PyObject *mal = PyDict_Copy(s->malformed);
    if (!mal) return NULL;
    if (h->bad_line) {
        PyObject *n = PyLong_FromUnsignedLongLong(h->bad_line);
        if (!n || PyDict_SetItemString(mal, "http_bad_request_line", n) < 0) {
            Py_XDECREF(n);
            Py_DECREF(mal);
            return NULL;
        }
        Py_DECREF(n);
    }
    return Py_BuildValue("{sKs{sKsK}sNsIsK}", "inspected",
                         (unsigned long long)(s->inspected + h->inspected), "decoded", "dns",
                         (unsigned long long)s->decoded, "http", (unsigned long long)h->decoded,
                         "malformed", mal, "keys", s->tunnel.tab.n + s->dga.tab.n, "forgotten",
                         (unsigned long long)(s->tunnel.tab.forgotten + s->dga.tab.forgotten));
}
