/* net.discovery's per-packet work, in C. agent/detect/discovery.py holds the settings,
 * their documentation and the alert text; sweep.c is its state and decisions.
 *
 * Why here: a sweep is one probe per address (nmap -sn, arp-scan, fping send hundreds a
 * second), and ARP and ICMP otherwise reach Python only for the detectors that read
 * packets; counting them here costs no Python call per probe.
 *
 * A `Sweep` object belongs to the Discovery detector. The engine, once given it by
 * configure(sweep=...), hands it every ARP frame and every ICMP/ICMPv6 packet
 * (sweep_packet): requests (ARP who-has; ICMP echo, timestamp, address mask; ICMPv6 echo
 * and neighbour solicitation) are probes of their target by their sender, replies (ARP
 * is-at, the matching ICMP replies, neighbour advertisements, an ICMP error sent by the
 * target itself) answer them. A report record
 * (EV_SWEEP) is queued when a flagged source is due one; the detector's tick and finish
 * flush the rest. A record is
 *   (src, ts, count, targets, answered, prefix, network, kinds, rate, in_range)
 * count: new targets since the last report; targets: new addresses probed in the current
 * sweep; answered: of those, how many were seen answering; prefix, network: the smallest
 * prefix covering those of its larger family (ARP or ICMP), in_range how many those are;
 * kinds: SWEEP_* bits below; rate: new targets a second.
 */
#ifndef ENGINE_SWEEP_H
#define ENGINE_SWEEP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "decode.h"
#include "settings.h"

enum { SWEEP_ARP = 1, SWEEP_ECHO = 2, SWEEP_TIMESTAMP = 4, SWEEP_MASK = 8, SWEEP_ND = 16 };

typedef struct SweepObject {
    PyObject_HEAD
    struct sweep_src *slots;
    uint32_t nslots, nsrc, free_head, oldest, newest, max_sources, fresh;
    uint32_t *index, mask;
    double window, memory, report_interval, max_answered, min_coverage, min_rate;
    unsigned long long min_targets, forgotten;
    cidr_t *allow;
    int nallow;
} SweepObject;

extern PyTypeObject SweepType;

/* One decoded packet (only ARP and ICMP/ICMPv6 are read); a report due now goes to
 * `events` as (EV_SWEEP, record). -1 on error. */
int sweep_packet(SweepObject *s, PyObject *events, const pkt_t *k);

#endif
