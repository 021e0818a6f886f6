/* DNS counting for net.dns_tunnel and net.dga, done where the message is read.
 *
 * Why here: a resolver's clients send hundreds of thousands of DNS messages, and each
 * one handed to Python cost more (event, message object, three detectors' lookups) than
 * reading and decoding its whole packet. The detectors (agent/detect/dns_tunnel.py and
 * dga.py) keep their tunables, validation and documentation and turn the records counted
 * here into alerts (EV_DNS_TUNNEL, EV_DGA); the decisions follow what those modules
 * documented when they counted in Python (their git history), tested by the same replays.
 */
#ifndef ENGINE_DNSSTAT_H
#define ENGINE_DNSSTAT_H

#include "engine.h"

/* Keyed window: states by key, forgotten after `window` s without a touch, bounded in
 * keys with the oldest made forgotten first (as agent/detect/window.py KeyedWindow). */
typedef struct kent {
    struct kent *older, *newer;
    uint64_t h;
    double seen;
    uint8_t addr[16];
    uint8_t alen;
    uint16_t slen;
    char *str; /* the rest of the key (a zone's registered domain), or NULL */
} kent_t;

typedef struct {
    kent_t **idx;
    uint32_t mask, n, max;
    uint64_t forgotten;
    kent_t *oldest, *newest;
    double window;
    void (*drop)(kent_t *);
} ktab_t;

/* One detector's settings and counted state. */
typedef struct {
    int on;
    uint8_t ports[8192];
    cidr_t *allow;
    int nallow;
    strs_t allow_domains;
    ktab_t tab;
    /* dns_tunnel */
    int long_label, unique_subs, query_volume;
    double label_entropy, odd_ratio, mean_label, report_interval;
    /* dga */
    int nx_domains, min_label;
    double nx_ratio;
    strs_t skip; /* suffixes never counted, tested on "." + domain */
} dnsdet_t;

typedef struct dnsstat_s {
    dnsdet_t tunnel, dga;
    strs_t shorts;
    int up; /* messages also go to Python (net.ioc or another on_app) */
    uint64_t inspected, decoded;
    PyObject *malformed; /* reason -> count */
} dnsstat_t;

dnsstat_t *dnsstat_new(void);
void dnsstat_free(dnsstat_t *s);
/* A DNS message over UDP (the packet k of the flow in `slot`): counted here, and handed
 * up read when Python wants messages too. 1: it went up (with its packet), 0: not,
 * -1: error. */
int dns_udp(EngineObject *e, pkt_t *k, uint32_t slot, int want_pkt);

/* Engine.configure_dns() and Engine.dns_tick() */
PyObject *engine_configure_dns(EngineObject *e, PyObject *args, PyObject *kw);
PyObject *engine_dns_tick(EngineObject *e, PyObject *arg);

#endif
