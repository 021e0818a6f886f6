/* Frame decoding: link layer, IPv4/IPv6 (extension headers, fragments), TCP, UDP,
 * ICMP/ICMPv6 and ARP, into a pkt_t that points into the frame; and Packet, the Python
 * form of a decoded frame, made only for the frames Python asked for. */
#ifndef ENGINE_DECODE_H
#define ENGINE_DECODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define P_ARP 0x0806 /* `proto` of an ARP frame (no IP protocol number applies) */

/* Why a frame was not decoded: REASONS[r - 1] names reason r. Up to FIRST_SKIP the frame
 * is malformed (counted as damage); past it, skipped (not ours). */
#define N_REASONS 24
#define FIRST_SKIP 20
extern const char *const REASONS[N_REASONS];

static inline int u16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

typedef struct {
    double ts;
    uint32_t wirelen;
    int ver;      /* 4, 6, 0 for ARP */
    int alen;     /* 4 or 16 */
    uint8_t src[16], dst[16];
    int proto;
    int sport, dport, flags, vlan, frag, ttl, op;
    const uint8_t *payload;
    Py_ssize_t plen;
    Py_ssize_t dlen; /* payload bytes the datagram carries, captured or not (a snaplen cuts
                      * plen, not dlen) */
    const uint8_t *smac, *dmac; /* 6 bytes each, or NULL */
} pkt_t;

/* Returns 0 and fills *k, or a reason (>= FIRST_SKIP + 1: skipped, not malformed). */
int decode(pkt_t *k, double ts, int linktype, uint32_t wirelen, const uint8_t *f,
           Py_ssize_t flen);

typedef struct {
    PyObject_HEAD
    double ts;
    long length;
    int ip_version, proto, sport, dport, flags, vlan, frag, ttl, op;
    PyObject *src, *dst, *payload, *smac, *dmac;
} PacketObject;

extern PyTypeObject PacketType;

/* A new Packet holding copies of k's addresses and payload. */
PyObject *packet_new_from(pkt_t *k);
/* PacketType ready, and what Packets share; -1 on error. */
int decode_ready(void);

#endif
