/* DNS messages (see dnsmsg.h). Names are followed through compression pointers with a
 * jump limit, so a pointer loop costs a bounded number of steps. */
#include "dnsmsg.h"

#include <string.h>

#include "decode.h"

#define DNS_MAX_JUMPS 16

static const char *dns_name(const uint8_t *buf, Py_ssize_t n, Py_ssize_t *offp, char *out,
                            int *outlen)
{
    Py_ssize_t off = *offp, end = -1;
    int jumps = 0, total = 0, len = 0;
    for (;;) {
        if (off >= n) return "dns_truncated";
        int ln = buf[off];
        if (ln == 0) { off++; break; }
        if (ln >= 0xC0) {
            if (off + 1 >= n) return "dns_truncated";
            if (++jumps > DNS_MAX_JUMPS) return "dns_pointer_loop";
            if (end < 0) end = off + 2;
            off = ((ln & 0x3F) << 8) | buf[off + 1];
            continue;
        }
        if (ln > 63) return "dns_bad_label";
        total += ln + 1;
        if (total > DNS_MAX_NAME) return "dns_name_too_long";
        if (off + 1 + ln > n) return "dns_truncated";
        if (len) out[len++] = '.';
        memcpy(out + len, buf + off + 1, ln);
        len += ln;
        off += 1 + ln;
    }
    *outlen = len;
    *offp = end >= 0 ? end : off;
    return NULL;
}

static const char *dns_skip(const uint8_t *buf, Py_ssize_t n, Py_ssize_t *offp)
{
    Py_ssize_t off = *offp;
    for (int i = 0; i < 128; i++) {
        if (off >= n) return "dns_truncated";
        int ln = buf[off];
        if (ln == 0) { *offp = off + 1; return NULL; }
        if (ln >= 0xC0) { *offp = off + 2; return NULL; }
        if (ln > 63) return "dns_bad_label";
        off += 1 + ln;
    }
    return "dns_bad_label";
}

/* Reads a message into m: NULL, or the reason it is malformed ("" : too short over TCP
 * to say). The name is lower-cased as Python's str.lower() lowers its Latin-1 text. */
const char *dns_read(const uint8_t *buf, Py_ssize_t n, int tcp, dnsmsg_t *m)
{
    if (tcp) {
        if (n < 14) return "";
        int ln = u16(buf);
        if (ln < 12) return "dns_bad_length";
        buf += 2;
        n -= 2;
        if (ln < n) n = ln;
    }
    if (n < 12) return "dns_truncated";
    int flags = u16(buf + 2);
    m->ident = u16(buf);
    m->qr = (flags & 0x8000) != 0;
    m->opcode = (flags >> 11) & 0xF;
    m->rcode = flags & 0xF;
    m->qd = u16(buf + 4);
    m->an = u16(buf + 6);
    m->nlen = m->qtype = m->ntypes = m->truncated = 0;
    Py_ssize_t off = 12;
    const char *bad;
    if (m->qd) {
        if ((bad = dns_name(buf, n, &off, m->name, &m->nlen))) return bad;
        if (off + 4 > n) return "dns_truncated";
        m->qtype = u16(buf + off);
        off += 4;
        for (int i = 0; i < (m->qd < 16 ? m->qd : 16) - 1; i++) {
            if ((bad = dns_skip(buf, n, &off))) return bad;
            off += 4;
        }
    }
    if (m->an) {
        for (int i = 0; i < (m->an < DNS_MAX_ANSWERS ? m->an : DNS_MAX_ANSWERS); i++) {
            if (dns_skip(buf, n, &off) || off + 10 > n) { m->truncated = 1; break; }
            m->types[m->ntypes++] = u16(buf + off);
            off += 10 + u16(buf + off + 8);
        }
        if (off > n) m->truncated = 1;
    }
    for (int i = 0; i < m->nlen; i++) {
        unsigned char c = m->name[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7)) m->name[i] = c + 32;
    }
    return NULL;
}

/* (id, qr, opcode, rcode, qname, qtype, qdcount, ancount, answer_types, truncated) */
PyObject *dns_tuple(const dnsmsg_t *m)
{
    PyObject *qname = PyUnicode_DecodeLatin1(m->name, m->nlen, NULL);
    PyObject *tt = PyTuple_New(m->ntypes);
    if (!qname || !tt) { Py_XDECREF(qname); Py_XDECREF(tt); return NULL; }
    for (int i = 0; i < m->ntypes; i++) PyTuple_SET_ITEM(tt, i, PyLong_FromLong(m->types[i]));
    return Py_BuildValue("(iOiiNiiiNO)", m->ident, m->qr ? Py_True : Py_False, m->opcode,
                         m->rcode, qname, m->qtype, m->qd, m->an, tt,
                         m->truncated ? Py_True : Py_False);
}

/* parse_dns(payload, tcp) -> the tuple above | reason | None */
PyObject *dns_parse(const uint8_t *buf, Py_ssize_t n, int tcp)
{
    dnsmsg_t m;
    const char *bad = dns_read(buf, n, tcp, &m);
    if (bad && !*bad) Py_RETURN_NONE;
    return bad ? PyUnicode_FromString(bad) : dns_tuple(&m);
}
