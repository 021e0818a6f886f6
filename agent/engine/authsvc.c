/* Authentication services by handshake, cleartext logon failures, SSH packet sizes
 * (see authsvc.h). */
#include "authsvc.h"

#include "flows.h"

const char *SERVICE_NAMES[N_SVC] = {"", "ssh", "rdp", "smb", "mssql", "mysql", "postgresql",
                                    "ldap", "kerberos", "vnc", "http"};

#define AUTH_READS_SHIFT 4 /* flow_t.auth bits 4-7: server payloads read for a failure */
#define EV_AUTH_CODE EV_AUTH

static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A BER length at p (n bytes left): its value, and *used the bytes it took; -1 if bad. */
static long ber_len(const uint8_t *p, Py_ssize_t n, int *used)
{
    if (n < 1) return -1;
    if (p[0] < 0x80) { *used = 1; return p[0]; }
    int k = p[0] & 0x7f;
    if (k < 1 || k > 3 || n < 1 + k) return -1;
    long v = 0;
    for (int i = 1; i <= k; i++) v = (v << 8) | p[i];
    *used = 1 + k;
    return v;
}

/* An LDAP message's protocolOp tag (its first byte), or -1: SEQUENCE { messageID, op } */
static int ldap_op(const uint8_t *pl, Py_ssize_t n, Py_ssize_t *op_at)
{
    int u;
    if (n < 7 || pl[0] != 0x30 || ber_len(pl + 1, n - 1, &u) < 0) return -1;
    Py_ssize_t i = 1 + u;
    if (i + 2 > n || pl[i] != 0x02 || pl[i + 1] < 1 || pl[i + 1] > 4) return -1;
    i += 2 + pl[i + 1];
    if (i >= n) return -1;
    *op_at = i;
    return pl[i];
}

/* An HTTP request: 0 not one, 1 one, 2 one that tries to log in (credentials in an
 * Authorization header, or a POST to a login path). Requests without credentials are not
 * followed: a browser's first request answered 401 is the challenge, not a failure. */
static int http_logon(const uint8_t *pl, Py_ssize_t n)
{
    static const char *methods[] = {"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "PATCH "};
    int m = -1;
    for (int i = 0; i < 6 && m < 0; i++) {
        size_t l = strlen(methods[i]);
        if ((size_t)n > l && !memcmp(pl, methods[i], l)) m = i;
    }
    if (m < 0) return 0;
    Py_ssize_t lim = n < 4096 ? n : 4096;
    if (memmem(pl, lim, "\nAuthorization:", 15) || memmem(pl, lim, "\nauthorization:", 15))
        return 2;
    if (m != 1) return 1;
    /* the request target, up to the first space after the method */
    const uint8_t *t = pl + 5, *end = memchr(t, ' ', lim - 5);
    if (!end) return 1;
    static const char *words[] = {"login", "logon", "signin", "sign-in", "auth", "session"};
    for (int i = 0; i < 6; i++) {
        size_t l = strlen(words[i]);
        for (const uint8_t *q = t; q + l <= end; q++) {
            size_t j = 0;
            while (j < l && (q[j] | 0x20) == (uint8_t)words[i][j]) j++;
            if (j == l) return 2;
        }
    }
    return 1;
}

static int kerberos_pvno5(const uint8_t *pl, Py_ssize_t n)
{
    static const uint8_t pvno[5] = {0xa1, 0x03, 0x02, 0x01, 0x05};
    Py_ssize_t lim = n < 24 ? n : 24;
    return lim >= 5 && memmem(pl, lim, pvno, 5) != NULL;
}

/* The service a flow's first payload in direction `dir` (0: from the originator) shows. */
static int identify(const uint8_t *pl, Py_ssize_t n, int dir, int proto)
{
    if (proto == 17) /* Kerberos over UDP: AS-REQ / TGS-REQ, protocol version 5 */
        return dir == 0 && n > 8 && (pl[0] == 0x6a || pl[0] == 0x6c) && kerberos_pvno5(pl, n)
                   ? SVC_KERBEROS : SVC_NONE;
    if (n >= 4 && !memcmp(pl, "SSH-", 4)) return SVC_SSH;
    /* TPKT (version 3) carrying an X.224 Connection Request (client) or Confirm (server) */
    if (n >= 11 && pl[0] == 3 && pl[1] == 0 && u16(pl + 2) == n &&
        pl[5] == (dir ? 0xD0 : 0xE0))
        return SVC_RDP;
    if (n >= 8 && pl[0] == 0 && (!memcmp(pl + 4, "\xfeSMB", 4) || !memcmp(pl + 4, "\xffSMB", 4)))
        return SVC_SMB;
    if (dir == 0) {
        /* TDS PRELOGIN, one packet, its length the payload's */
        if (n >= 8 && pl[0] == 0x12 && pl[1] == 0x01 && u16(pl + 2) == n) return SVC_MSSQL;
        /* PostgreSQL StartupMessage v3, SSLRequest, GSSENCRequest */
        if (n >= 8 && be32(pl) == (uint32_t)n) {
            uint32_t code = be32(pl + 4);
            if (code == 0x00030000 || code == 80877103 || code == 80877104) return SVC_POSTGRESQL;
        }
        Py_ssize_t at;
        int op = ldap_op(pl, n, &at);
        if (op == 0x60 || op == 0x63 || op == 0x77 || op == 0x42) return SVC_LDAP;
        /* Kerberos over TCP: a 4-byte length, then AS-REQ / TGS-REQ */
        if (n > 12 && be32(pl) + 4 == (uint32_t)n && (pl[4] == 0x6a || pl[4] == 0x6c) &&
            kerberos_pvno5(pl + 4, n - 4))
            return SVC_KERBEROS;
        if (http_logon(pl, n) == 2) return SVC_HTTP;
    } else {
        /* MySQL/MariaDB greeting: packet 0, protocol 10, a version string */
        if (n >= 8 && pl[3] == 0 && pl[4] == 0x0a && pl[5] >= '0' && pl[5] <= '9' &&
            (Py_ssize_t)(pl[0] | pl[1] << 8 | pl[2] << 16) + 4 <= n)
            return SVC_MYSQL;
        if (n >= 12 && !memcmp(pl, "RFB 00", 6)) return SVC_VNC;
    }
    return SVC_NONE;
}

/* Whether a server payload of a cleartext service is its answer to a failed logon. */
static int failure_answer(int svc, const uint8_t *pl, Py_ssize_t n, int proto)
{
    switch (svc) {
    case SVC_MYSQL: /* ERR packet, ER_ACCESS_DENIED_ERROR (1045) */
        return n >= 7 && pl[4] == 0xff && (pl[5] | pl[6] << 8) == 1045;
    case SVC_POSTGRESQL: /* ErrorResponse, SQLSTATE invalid_password / invalid authorization */
        return n >= 12 && pl[0] == 'E' &&
               (memmem(pl, n, "C28P01", 7) != NULL || memmem(pl, n, "C28000", 7) != NULL);
    case SVC_LDAP: { /* BindResponse, resultCode invalidCredentials (49) */
        Py_ssize_t at;
        if (ldap_op(pl, n, &at) != 0x61) return 0;
        int u;
        if (ber_len(pl + at + 1, n - at - 1, &u) < 0) return 0;
        Py_ssize_t i = at + 1 + u;
        return i + 3 <= n && pl[i] == 0x0a && pl[i + 1] == 1 && pl[i + 2] == 49;
    }
    case SVC_HTTP: /* a status line 401 Unauthorized or 403 Forbidden */
        return n >= 12 && !memcmp(pl, "HTTP/1.", 7) && pl[8] == ' ' &&
               (!memcmp(pl + 9, "401", 3) || !memcmp(pl + 9, "403", 3));
    case SVC_KERBEROS: { /* KRB-ERROR, error-code KDC_ERR_PREAUTH_FAILED (24) */
        static const uint8_t failed[5] = {0xa6, 0x03, 0x02, 0x01, 0x18};
        const uint8_t *m = pl;
        Py_ssize_t mn = n;
        if (proto == 6) { m += 4; mn -= 4; }
        return mn > 8 && m[0] == 0x7e && memmem(m, mn < 96 ? mn : 96, failed, 5) != NULL;
    }
    }
    return 0;
}

static int emit_auth(EngineObject *e, uint32_t slot, double ts)
{
    PyObject *py = flow_py(e, slot);
    if (!py) return -1;
    return emit(e, Py_BuildValue("(iNd)", EV_AUTH_CODE, py, ts));
}

static sshrec_t *ssh_rec(EngineObject *e, uint32_t slot)
{
    authsvc_t *a = e->auth;
    flow_t *f = &e->slots[slot];
    if (f->sshrec) return &a->recs[f->sshrec - 1];
    /* a free entry near the ring's cursor, else the cursor's own (the oldest handed out) */
    uint32_t i = a->next;
    for (uint32_t j = 0; j < 8; j++) {
        uint32_t c = (a->next + j) % a->cap;
        if (a->recs[c].slot == NIL) { i = c; break; }
    }
    sshrec_t *r = &a->recs[i];
    if (r->slot != NIL) {
        flow_t *o = &e->slots[r->slot];
        if (o->used && o->sshrec == i + 1) o->sshrec = 0;
        a->ssh_dropped++;
    }
    a->next = (i + 1) % a->cap;
    r->slot = slot;
    r->gen = f->gen;
    r->n = 0;
    f->sshrec = i + 1;
    return r;
}

/* SSH NEWKEYS as every implementation sends it: length 12, padding 10, message 21. */
static const uint8_t NEWKEYS[6] = {0, 0, 0, 0x0c, 0x0a, 0x15};

static int ssh_packet(EngineObject *e, uint32_t slot, const pkt_t *k, int dir)
{
    flow_t *f = &e->slots[slot];
    int keys = dir ? AUTH_KEYS1 : AUTH_KEYS0;
    Py_ssize_t len = k->plen;
    if (!(f->auth & keys)) {
        const uint8_t *p = memmem(k->payload, k->plen, NEWKEYS, 6);
        if (!p) return 0;
        /* The server's NEWKEYS went before the client's, in the segment of its key
         * exchange reply, which a short snaplen may have cut: the client's implies it. */
        f->auth |= dir ? AUTH_KEYS1 : AUTH_KEYS0 | AUTH_KEYS1;
        /* what follows NEWKEYS in the same segment is already encrypted */
        len = k->plen - (p - k->payload) - 16;
        if (len <= 0) return 0;
    }
    sshrec_t *r = ssh_rec(e, slot);
    if (r->n >= SSH_RECORDS) return 0;
    if (len > 32767) len = 32767;
    r->size[r->n++] = (int16_t)(dir ? -len : len);
    if (r->n % SSH_EVENT_EVERY == 0) return emit_auth(e, slot, k->ts);
    return 0;
}

int auth_packet(EngineObject *e, uint32_t slot, const pkt_t *k, int dir)
{
    flow_t *f = &e->slots[slot];
    int looked = dir ? AUTH_LOOKED1 : AUTH_LOOKED0;
    if (!(f->auth & looked)) {
        f->auth |= looked;
        if (!f->svc) {
            f->svc = identify(k->payload, k->plen, dir, k->proto);
            if (f->svc) e->auth->recognised[f->svc]++;
            /* HTTP that does not log in at once (keep-alive: a client's first request may
             * fetch the challenge): its next requests are read, a few at most */
            else if (dir == 0 && k->proto == 6 && http_logon(k->payload, k->plen))
                f->auth |= AUTH_HTTPQ;
        }
    } else if (!f->svc && (f->auth & AUTH_HTTPQ) && dir == 0) {
        int reads = f->auth >> AUTH_READS_SHIFT;
        if (http_logon(k->payload, k->plen) == 2) {
            f->svc = SVC_HTTP;
            e->auth->recognised[SVC_HTTP]++;
            f->auth &= 0x0f & ~AUTH_HTTPQ; /* its answers are read from now on */
        } else if (reads + 1 >= AUTH_SERVER_READS)
            f->auth &= 0x0f & ~AUTH_HTTPQ; /* never logs in: no longer followed */
        else
            f->auth = (uint8_t)((f->auth & 0x0f) | ((reads + 1) << AUTH_READS_SHIFT));
        return 0;
    }
    switch (f->svc) {
    case SVC_NONE:
        return 0;
    case SVC_SSH:
        return ssh_packet(e, slot, k, dir);
    case SVC_MYSQL: case SVC_POSTGRESQL: case SVC_LDAP: case SVC_KERBEROS: case SVC_HTTP: {
        int reads = f->auth >> AUTH_READS_SHIFT;
        if (dir != 1 || reads >= AUTH_SERVER_READS) return 0;
        f->auth = (uint8_t)((f->auth & 0x0f) | ((reads + 1) << AUTH_READS_SHIFT));
        if (!failure_answer(f->svc, k->payload, k->plen, k->proto)) return 0;
        if (f->fails < 255) f->fails++;
        return emit_auth(e, slot, k->ts);
    }
    }
    return 0;
}

PyObject *auth_ssh_sizes(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    if (!e->auth || !f->sshrec) return PyTuple_New(0);
    sshrec_t *r = &e->auth->recs[f->sshrec - 1];
    PyObject *t = PyTuple_New(r->n);
    if (!t) return NULL;
    for (int i = 0; i < r->n; i++) {
        PyObject *v = PyLong_FromLong(r->size[i]);
        if (!v) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

void auth_forget(EngineObject *e, uint32_t slot)
{
    flow_t *f = &e->slots[slot];
    if (e->auth && f->sshrec) {
        e->auth->recs[f->sshrec - 1].slot = NIL;
        f->sshrec = 0;
    }
}

#define SSH_FLOWS 4096 /* SSH flows recorded at once: past it the oldest record is reused */

PyObject *engine_configure_auth(EngineObject *e, PyObject *on)
{
    int want = PyObject_IsTrue(on);
    if (want < 0) return NULL;
    if (want && !e->auth) {
        authsvc_t *a = PyMem_Calloc(1, sizeof(authsvc_t));
        sshrec_t *recs = a ? PyMem_Malloc(SSH_FLOWS * sizeof(sshrec_t)) : NULL;
        if (!recs) { PyMem_Free(a); return PyErr_NoMemory(); }
        for (uint32_t i = 0; i < SSH_FLOWS; i++) recs[i].slot = NIL;
        a->recs = recs;
        a->cap = SSH_FLOWS;
        e->auth = a;
    } else if (!want && e->auth) {
        /* flows keep their service; their records go */
        for (uint32_t s = e->oldest; s != NIL; s = e->slots[s].newer) e->slots[s].sshrec = 0;
        auth_free(e);
    }
    Py_RETURN_NONE;
}

PyObject *engine_auth_stats(EngineObject *e, PyObject *unused)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 1; i < N_SVC; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(e->auth ? e->auth->recognised[i] : 0);
        if (!v || PyDict_SetItemString(d, SERVICE_NAMES[i], v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    PyObject *r = Py_BuildValue("{sNsK}", "recognised", d, "ssh_dropped",
                                (unsigned long long)(e->auth ? e->auth->ssh_dropped : 0));
    return r;
}

void auth_free(EngineObject *e)
{
    if (!e->auth) return;
    PyMem_Free(e->auth->recs);
    PyMem_Free(e->auth);
    e->auth = NULL;
}
