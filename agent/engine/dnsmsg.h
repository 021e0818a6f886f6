/* DNS messages: the deep decoder's hottest protocol, read in C (agent/decode/deep/dns.py
 * documents the fields), for parse_dns() and for the DNS counting of dnsstat.c. */
#ifndef ENGINE_DNSMSG_H
#define ENGINE_DNSMSG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define DNS_MAX_NAME 255
#define DNS_MAX_ANSWERS 64
#define DNS_KEPT_ANSWERS 8 /* A, AAAA and CNAME answers whose data is kept (the journal) */
#define DNS_NAME_OUT (DNS_MAX_NAME + 64)

typedef struct {
    int ident, qr, opcode, rcode, qtype, qd, an, ntypes, truncated, nlen, nkept;
    int types[DNS_MAX_ANSWERS];
    /* The first A, AAAA and CNAME answers: where each starts (its type field), in msg,
     * read only on demand (dns_answer) since most readers never look. msg is the buffer
     * dns_read was given (past the TCP length): valid as long as that buffer is. */
    int32_t kept[DNS_KEPT_ANSWERS];
    const uint8_t *msg;
    Py_ssize_t mlen;
    char name[DNS_NAME_OUT];
} dnsmsg_t;

/* What dns_answer reads: 4 or 16 address bytes, or a CNAME's target (lower-cased). */
enum { DNS_ANS_A = 1, DNS_ANS_CNAME = 5, DNS_ANS_AAAA = 28 };

/* Reads a message into m: NULL, or the reason it is malformed ("" : too short over TCP
 * to say). The name is lower-cased as Python's str.lower() lowers its Latin-1 text. */
const char *dns_read(const uint8_t *buf, Py_ssize_t n, int tcp, dnsmsg_t *m);
/* The i-th kept answer (i < m->nkept) into out (DNS_NAME_OUT bytes): its data's length,
 * its type in *type; -1 when its data is malformed (cut short, a bad name): skip it. */
int dns_answer(const dnsmsg_t *m, int i, int *type, char *out);
/* An address as Python's ipaddress writes it, into s (48 bytes); its length. */
int addr_text(char *s, const uint8_t *a, int alen);
/* (id, qr, opcode, rcode, qname, qtype, qdcount, ancount, answer_types, truncated,
 *  answers): answers as text, addresses and CNAME targets (agent/decode/deep/dns.py) */
PyObject *dns_tuple(const dnsmsg_t *m);
/* parse_dns(payload, tcp) -> the tuple above | reason | None */
PyObject *dns_parse(const uint8_t *buf, Py_ssize_t n, int tcp);

#endif
