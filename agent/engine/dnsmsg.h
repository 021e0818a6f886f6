/* DNS messages: the deep decoder's hottest protocol, read in C (agent/decode/deep/dns.py
 * documents the fields), for parse_dns() and for the DNS counting of dnsstat.c. */
#ifndef ENGINE_DNSMSG_H
#define ENGINE_DNSMSG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define DNS_MAX_NAME 255
#define DNS_MAX_ANSWERS 64

typedef struct {
    int ident, qr, opcode, rcode, qtype, qd, an, ntypes, truncated, nlen;
    int types[DNS_MAX_ANSWERS];
    char name[DNS_MAX_NAME + 64];
} dnsmsg_t;

/* Reads a message into m: NULL, or the reason it is malformed ("" : too short over TCP
 * to say). The name is lower-cased as Python's str.lower() lowers its Latin-1 text. */
const char *dns_read(const uint8_t *buf, Py_ssize_t n, int tcp, dnsmsg_t *m);
/* (id, qr, opcode, rcode, qname, qtype, qdcount, ancount, answer_types, truncated) */
PyObject *dns_tuple(const dnsmsg_t *m);
/* parse_dns(payload, tcp) -> the tuple above | reason | None */
PyObject *dns_parse(const uint8_t *buf, Py_ssize_t n, int tcp);

#endif
