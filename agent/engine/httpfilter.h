/* HTTP requests read here when no reader needs them.
 *
 * Why: net.cleartext_credentials, the one HTTP reader, only looks at requests carrying an
 * Authorization header (Basic credentials); every other request of a busy web client cost
 * a Python event and a header parse for nothing. When every HTTP reader declared the
 * headers it needs (`http_headers`), requests without any of them are counted here,
 * as agent/decode/deep/auth.py parse_http() counts them (a request, or a malformed
 * request line), and not handed up.
 */
#ifndef ENGINE_HTTPFILTER_H
#define ENGINE_HTTPFILTER_H

#include "engine.h"

typedef struct httpf_s {
    strs_t methods, headers; /* headers: lower case; none: every request goes up */
    int max_headers;
    uint64_t inspected, decoded, bad_line;
} httpf_t;

/* 1: hand the payload up (a header a reader needs, or no filter); 0: counted here. */
int http_wanted(EngineObject *e, const uint8_t *pl, Py_ssize_t n);

/* Engine.configure_http(), and Engine.read_stats() (what the engine read itself: DNS
 * and HTTP, as the deep decoder counts) */
PyObject *engine_configure_http(EngineObject *e, PyObject *args, PyObject *kw);
PyObject *engine_read_stats(EngineObject *e, PyObject *unused);

#endif
