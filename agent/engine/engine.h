/* The engine's shared definitions: the numbers Python and C agree on, and the Engine's
 * state, which every part of the per-packet path reads or fills.
 *
 * Why C: at 100k+ packets/s, every Python call made per packet costs more than the
 * whole budget of a packet. Here a packet costs no Python object at all unless a
 * detector declared it wants that packet (ARP, ICMP, payloads of the application
 * protocols it decodes, payloads with a declared signature). Everything else reaches
 * Python as events (attempt outcomes, flow ends, sessions closing) and counters
 * (packets per source/destination pair, bursts of watched flows), once per tick, as
 * Records whose tuples are made as they are read.
 *
 * The parts, each a compilation unit with its header:
 *   walk.c       capture buffers (pcap, pcapng, TPACKET_V3 ring) walked frame by frame
 *   decode.c     frames decoded into pkt_t; Packet, the Python form of one
 *   flows.c      the flow table, a packet's way through it and the taps; Flow; time
 *   counters.c   what a tick counted: pairs and bursts (handed out as Records, records.c)
 *   dnsmsg.c     DNS messages read; dnsstat.c counts them for net.dns_tunnel, net.dga
 *   httpfilter.c HTTP requests no reader needs, counted instead of handed up
 *   authsvc.c    authentication services by handshake, their logon failures, SSH sizes
 *   scan.c       net.portscan's state (Scan); sweep.c net.discovery's (Sweep);
 *                table.c per-key numbers (Table);
 *                distinct.c bounded distinct counting; settings.c settings read from Python
 *   journal.c    the retro-hunt journal's connection and DNS records (agent/hunt)
 *   _engine.c    the module: the Engine type, module functions, the constants exported
 */
#ifndef ENGINE_ENGINE_H
#define ENGINE_ENGINE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "decode.h"
#include "records.h"
#include "settings.h"

#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define PSH 0x08
#define ACK 0x10
#define URG 0x20
#define NIL UINT32_MAX /* no slot (flow table, scan sources) */

/* Shared with Python: _engine.c exports each of these under its name, and the Python
 * side imports them from agent.engine rather than repeating the numbers. */

/* TCP states (Flow.state; agent.flows.table) */
enum { S_ATTEMPT, S_PROBE, S_ESTABLISHED, S_REJECTED, S_MIDSTREAM, S_CLOSED };
/* Event codes: the first item of each events() tuple. 5: portscan reports (scan.c); 6 and
 * 7: records counted in dnsstat.c; 8: discovery reports (sweep.c); 9: logon attempts seen
 * in a session of a recognised authentication service (authsvc.c) */
enum { EV_OUTCOME, EV_END, EV_PACKET, EV_CLOSE, EV_DNS, EV_SCAN, EV_DNS_TUNNEL, EV_DGA, EV_SWEEP,
       EV_AUTH };
/* Classes of the pairs() records (on_pairs, agent.detect.base) */
enum { PAIR_SYN, PAIR_TCP, PAIR_UDP, PAIR_ICMP, PAIR_ICMP_ERROR, PAIR_OTHER };
/* Which flow ends Python hears of (configure(ends=...)): most flows of a scan or of DNS
 * interest nobody once they end, and an event per flow is a Python call per flow. */
enum { END_ALL = 1, END_UNRESOLVED = 2, END_SESSIONS = 4, END_DEEP = 8 };
/* Which pairs are counted (configure(pairs_want=...)): floods (SYN, UDP, ICMP towards a
 * unicast address: net.dos) and outbound (internal towards external unicast: net.exfil). */
enum { PAIRS_FLOODS = 1, PAIRS_OUTBOUND = 2 };

/* C only: indexes of the outcome and stealth strings Flow shows (flows.c) */
enum { O_NONE, O_SUCCESS, O_REJECTED, O_UNANSWERED };
enum { ST_NONE, ST_NULL, ST_FIN, ST_XMAS, ST_OTHER, ST_ACK, ST_MAIMON };

typedef struct {
    uint8_t a[16], b[16]; /* a: the lower endpoint */
    uint16_t ap, bp, vlan;
    uint8_t proto, alen;
} fkey_t;

typedef struct {
    fkey_t k;
    double first, last;
    uint64_t pkts_o, pkts_r, bytes_o, bytes_r;
    uint32_t older, newer, gen, hash;
    uint8_t used, rev, state, outcome, stealth, itype, icode, closed, watch;
    uint8_t credit[2]; /* payload packets still handed up per direction (reassembly) */
    uint8_t deep_seen; /* a TCP payload went up to the deep decoder (it may keep state) */
    uint8_t svc, auth, fails; /* authsvc.c: service recognised, AUTH_* bits, logon failures */
    uint32_t sshrec; /* authsvc.c: its SSH size record + 1, or 0 */
    /* watched flows: whether a burst is open, and its bytes so far from the originator
     * and from the responder (saturating: 4 GB in one burst is a transfer however
     * counted) */
    uint32_t burst_o, burst_r;
    uint8_t in_burst;
    PyObject *py; /* borrowed: the Flow object while Python holds one, else NULL */
} flow_t;

typedef struct { double due; uint32_t slot, gen; } pending_t;

typedef struct {
    uint8_t src[16], dst[16];
    uint8_t alen, cls, other;
    int dport;
    uint64_t packets, bytes;
    double last;
} pair_t;

/* A watched flow's burst, started (bytes unknown yet; `start` 1 with a new flow, 2 on a
 * known one after a silence) or ended (its bytes each way). */
typedef struct {
    double ts;
    uint32_t bytes_o, bytes_r;
    uint8_t src[16], dst[16];
    uint8_t alen, start;
    uint16_t dport;
} burst_t;

typedef struct EngineObject EngineObject;

/* Payload signatures handed up (configure(signatures=...)): protocols, ports, a prefix. */
#define MAX_SIGS 8
typedef struct { uint8_t protos; uint8_t ports[8192]; uint8_t prefix[16]; int plen; } sig_t;

struct EngineObject {
    PyObject_HEAD
    /* flow table */
    flow_t *slots;
    uint32_t nslots, nflows, free_head, oldest, newest;
    uint32_t fresh; /* slots from here on were never used: untouched, so not resident */
    uint32_t *index, mask;
    pending_t *pend;
    size_t pend_head, pend_len, pend_cap;
    double attempt_timeout, tcp_idle, udp_idle, other_idle, active_timeout, sweep_interval;
    double next_sweep;
    uint32_t max_flows, sample_n;
    /* events for Python */
    PyObject *events;
    struct ScanObject *scan; /* net.portscan's state (scan.c), or NULL */
    struct SweepObject *sweep; /* net.discovery's state (sweep.c), or NULL */
    uint8_t outcome_ports[8192]; /* TCP responder ports whose outcomes are events anyway */
    /* taps */
    int pairs_on, activity_on, arp_up, icmp_up, deep_on, ends, outcomes_on;
    int pairs_want; /* PAIRS_* bits: the pairs some on_pairs reads; 0: all */
    int deep_udp_dns, tls_on, hl7_on, rpc_on, dicom_on, http_on;
    uint8_t deep_tcp_ports[8192], close_ports[8192], act_ignore[8192], http_first[32];
    int act_internal_dests;
    cidr_t *nets;
    int nnets;
    sig_t sigs[MAX_SIGS];
    int nsigs;
    pair_t *pairs;
    uint32_t *pidx, pmask, npairs, pairs_cap;
    uint64_t pairs_overflow;
    double burst_gap;           /* silence that ends a watched flow's burst */
    recbuf_t bursts;            /* burst_t: bursts started and ended since activity() */
    /* counters */
    uint64_t packets, bytes, decoded, reasons[N_REASONS + 1];
    uint64_t created, evicted, expired, restarted, shed_packets, handed_up;
    double last_ts;
    struct dnsstat_s *dns; /* DNS counting for net.dns_tunnel and net.dga (dnsstat.c) */
    struct httpf_s *http;  /* HTTP requests no reader needs (httpfilter.c) */
    struct authsvc_s *auth; /* services by handshake, SSH sizes (authsvc.c), or NULL: off */
    struct journal_s *journal; /* the retro-hunt journal's records (journal.c), or NULL: off */
};


/* FNV-1a, folded to 32 bits: good enough spread for linear probing (flows, pairs, scan
 * sources). */
static inline uint32_t fnv1a(const void *data, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return (uint32_t)(h ^ (h >> 32));
}

static inline int is_unicast(const uint8_t *a, int alen)
{
    if (alen == 4)
        return a[0] > 0 && a[0] < 224 && !(a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255);
    return a[0] != 0xFF;
}

/* Inside addresses (`internal_nets`: the built-in and configured ranges of agent/inside.py),
 * IPv4-mapped IPv6 read as IPv4 (as Inside.is_internal does). */
static inline int in_nets(EngineObject *e, const uint8_t *a, int alen)
{
    uint8_t v4[4];
    if (alen == 16) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) { memcpy(v4, a + 12, 4); a = v4; alen = 4; }
    }
    return cidr_any(e->nets, e->nnets, a, alen);
}

/* An event for Python (a new tuple, or NULL: the error is set), appended; -1 on error. */
static inline int emit(EngineObject *e, PyObject *t)
{
    if (!t) return -1;
    int r = PyList_Append(e->events, t);
    Py_DECREF(t);
    return r;
}

#endif
