/* net.portscan's per-attempt work, in C. agent/detect/portscan.py holds the settings,
 * their documentation and the alert text; scan.c is its state and decisions.
 *
 * Why here: a scan makes one attempt per probe, and a Python call per attempt was the
 * biggest cost of a replay; a Python object per source the biggest detector memory.
 *
 * A `Scan` object belongs to the PortScan detector (so its state lives and dies with the
 * detector: restarted by new settings, it starts afresh). The engine, once given it by
 * configure(scan=...), scores every attempt outcome into it and queues a report record
 * (EV_SCAN) when a flagged source is due one; the detector's tick and finish flush the
 * rest. A record is
 *   (src, ts, count, failed, succeeded, hosts, ports, stealth, styles, llr, last_dst)
 * with `styles` the STYLE_* bits below, exported to Python.
 */
#ifndef ENGINE_SCAN_H
#define ENGINE_SCAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "settings.h"
#include "table.h"

enum { STYLE_FIN = 1, STYLE_NULL = 2, STYLE_OTHER = 4, STYLE_SYN = 8, STYLE_UDP = 16, STYLE_XMAS = 32,
       STYLE_ACK = 64, STYLE_MAIMON = 128, STYLE_PROTO = 256, STYLE_SCTP = 512 };

typedef struct ScanObject {
    PyObject_HEAD
    struct scan_src *slots;
    uint32_t nslots, nsrc, free_head, oldest, newest, max_sources;
    uint32_t fresh; /* slots from here on were never used: untouched, so not resident */
    uint32_t *index, mask;
    double window, report_interval, ln_upper, ln_lower, ln_fail, ln_success;
    unsigned long long fanout_ports, fanout_hosts, stealth_probes, forgotten;
    cidr_t *allow;
    int nallow;
    /* Sources whose only first contact so far succeeded: their one target's host hash
     * and port, by their own address's hash, at 32 B a source instead of a full slot
     * (most sources at a busy site: a client that reached its one server). */
    TableObject *single;
} ScanObject;

extern PyTypeObject ScanType;

/* One attempt's outcome (`stealth`: its ST_* kind); a report due now goes to `events` as
 * (EV_SCAN, record). -1 on error. */
int scan_outcome(ScanObject *s, PyObject *events, const uint8_t *src, const uint8_t *dst,
                 int alen, int proto, int dport, int stealth, int success, double ts);
/* A probe of another IP protocol (nmap -sO), or SCTP (-sY, `dport` its port), that its
 * target refused (ICMP protocol unreachable): a failed first contact. */
int scan_refused(ScanObject *s, PyObject *events, const uint8_t *src, const uint8_t *dst,
                 int alen, int proto, int dport, double ts);

#endif
