/* DNS messages (see dnsmsg.h). Names are followed through compression pointers with a
 * jump limit, so a pointer loop costs a bounded number of steps. */
#include "dnsmsg.h"

#include <stdio.h>
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

/* As Python's str.lower() lowers Latin-1 text */
static void dns_lower(char *name, int n)
{
    for (int i = 0; i < n; i++) {
        unsigned char c = name[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7)) name[i] = c + 32;
    }
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
    m->nlen = m->qtype = m->ntypes = m->truncated = m->nkept = 0;
    m->msg = buf;
    m->mlen = n;
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
            int t = u16(buf + off);
            m->types[m->ntypes++] = t;
            if ((t == DNS_ANS_A || t == DNS_ANS_AAAA || t == DNS_ANS_CNAME) &&
                m->nkept < DNS_KEPT_ANSWERS)
                m->kept[m->nkept++] = (int32_t)off;
            off += 10 + u16(buf + off + 8);
        }
        if (off > n) m->truncated = 1;
    }
    dns_lower(m->name, m->nlen);
    return NULL;
}

int dns_answer(const dnsmsg_t *m, int i, int *type, char *out)
{
    const uint8_t *buf = m->msg;
    Py_ssize_t n = m->mlen, off = m->kept[i]; /* its 10 fixed bytes are inside (dns_read) */
    int t = u16(buf + off), rdlen = u16(buf + off + 8);
    Py_ssize_t rd = off + 10, end = rd + rdlen;
    if (end > n) return -1;
    *type = t;
    if (t != DNS_ANS_CNAME) {
        int want = t == DNS_ANS_A ? 4 : 16;
        if (rdlen != want) return -1;
        memcpy(out, buf + rd, want);
        return want;
    }
    int len = 0;
    /* the name's own bytes within the rdata (a pointer may lead anywhere before) */
    if (dns_name(buf, n, &rd, out, &len) || rd > end || !len) return -1;
    dns_lower(out, len);
    return len;
}

/* An address as Python's ipaddress writes it (IPv6: lower-case hextets, the longest run
 * of two zero hextets or more, the first of equals, as "::"). */
int addr_text(char *s, const uint8_t *a, int alen)
{
    if (alen == 4) return sprintf(s, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
    int h[8], best = -1, blen = 1;
    for (int i = 0; i < 8; i++) h[i] = a[2 * i] << 8 | a[2 * i + 1];
    for (int i = 0; i < 8;) {
        if (h[i]) { i++; continue; }
        int n = 0;
        while (i + n < 8 && !h[i + n]) n++;
        if (n > blen) { best = i; blen = n; }
        i += n;
    }
    char *p = s;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            p += sprintf(p, "::");
            i += blen - 1;
            continue;
        }
        p += sprintf(p, i == 7 || i + 1 == best ? "%x" : "%x:", h[i]);
    }
    return (int)(p - s);
}

/* The kept answers as text: addresses as ipaddress writes them, names as the qname */
static PyObject *answers_tuple(const dnsmsg_t *m)
{
    PyObject *got[DNS_KEPT_ANSWERS];
    int n = 0;
    for (int i = 0; i < m->nkept; i++) {
        char v[DNS_NAME_OUT], t[48];
        int type, len = dns_answer(m, i, &type, v);
        if (len < 0) continue;
        PyObject *s = type == DNS_ANS_CNAME
            ? PyUnicode_DecodeLatin1(v, len, NULL)
            : PyUnicode_DecodeASCII(t, addr_text(t, (const uint8_t *)v, len), NULL);
        if (!s) { while (n) Py_DECREF(got[--n]); return NULL; }
        got[n++] = s;
    }
    PyObject *tt = PyTuple_New(n);
    if (!tt) { while (n) Py_DECREF(got[--n]); return NULL; }
    for (int i = 0; i < n; i++) PyTuple_SET_ITEM(tt, i, got[i]);
    return tt;
}

/* (id, qr, opcode, rcode, qname, qtype, qdcount, ancount, answer_types, truncated,
 *  answers) */
PyObject *dns_tuple(const dnsmsg_t *m)
{
    PyObject *qname = PyUnicode_DecodeLatin1(m->name, m->nlen, NULL);
    PyObject *tt = PyTuple_New(m->ntypes);
    PyObject *an = m->nkept ? answers_tuple(m) : PyTuple_New(0);
    if (!qname || !tt || !an) { Py_XDECREF(qname); Py_XDECREF(tt); Py_XDECREF(an); return NULL; }
    for (int i = 0; i < m->ntypes; i++) PyTuple_SET_ITEM(tt, i, PyLong_FromLong(m->types[i]));
    return Py_BuildValue("(iOiiNiiiNON)", m->ident, m->qr ? Py_True : Py_False, m->opcode,
                         m->rcode, qname, m->qtype, m->qd, m->an, tt,
                         m->truncated ? Py_True : Py_False, an);
}

/* parse_dns(payload, tcp) -> the tuple above | reason | None */
PyObject *dns_parse(const uint8_t *buf, Py_ssize_t n, int tcp)
{
    dnsmsg_t m;
    const char *bad = dns_read(buf, n, tcp, &m);
    if (bad && !*bad) Py_RETURN_NONE;
    return bad ? PyUnicode_FromString(bad) : dns_tuple(&m);
}
