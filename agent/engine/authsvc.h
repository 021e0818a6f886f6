/* Authentication services recognised by their own handshake, on any port, for
 * net.bruteforce; and what their sessions say about logon attempts.
 *
 * Why here: the service must be known from the first bytes each way of every TCP flow
 * (an SSH banner on 2222, RDP's X.224 on 3390, a database on a custom port), and a Python
 * call per flow for that would cost more than the flow. So the first payload of each
 * direction is matched here (a few byte comparisons), and only flows of a recognised
 * service cost anything more:
 * - cleartext protocols whose server answers a failed logon in clear (MySQL ERR 1045,
 *   PostgreSQL ErrorResponse 28P01/28000, LDAP BindResponse invalidCredentials, Kerberos
 *   KRB-ERROR PREAUTH_FAILED; HTTP 401/403, on connections whose first request carries
 *   credentials (an Authorization header) or posts to a login path) have their first
 *   server payloads read for that answer,
 *   counted on the flow (Flow.auth_failures) and reported as an EV_AUTH event;
 * - SSH has the size and direction of its first packets after each side's NEWKEYS
 *   recorded (Flow.ssh_sizes: + from the client, - from the server), bounded per flow and
 *   in number of flows, from which agent/detect/sshauth.py infers the attempts made inside
 *   the encrypted session (as Zeek's SSH analyzer infers auth_attempts); an EV_AUTH event
 *   goes up every few records so that guessing is seen before the connection ends;
 * - RDP, TDS (SQL Server), SMB, VNC are only named: their logon is encrypted or read by the
 *   deep decoders, and net.bruteforce counts their short sessions by service, not port.
 * Sessions of a recognised service also have their first FIN/RST reported (EV_CLOSE) and
 * their end if none was (END_SESSIONS), as close_ports does for ports.
 */
#ifndef ENGINE_AUTHSVC_H
#define ENGINE_AUTHSVC_H

#include "engine.h"

/* Flow.service names, in this order (exported as SERVICES). */
enum { SVC_NONE, SVC_SSH, SVC_RDP, SVC_SMB, SVC_MSSQL, SVC_MYSQL, SVC_POSTGRESQL, SVC_LDAP,
       SVC_KERBEROS, SVC_VNC, SVC_HTTP, N_SVC };

#define SSH_RECORDS 48   /* sizes kept per SSH flow: MaxAuthTries 6 with 2-3 packets each */
#define SSH_EVENT_EVERY 8 /* an EV_AUTH event every this many records */
#define AUTH_SERVER_READS 15 /* server payloads read for a cleartext failure answer */

typedef struct {
    uint32_t slot, gen; /* the flow it belongs to (a reused entry is told by gen) */
    uint8_t n;
    int16_t size[SSH_RECORDS];
} sshrec_t;

typedef struct authsvc_s {
    sshrec_t *recs;
    uint32_t cap, next; /* entries, and the next one handed out (a ring: oldest reused) */
    uint64_t recognised[N_SVC], ssh_dropped;
} authsvc_t;

/* flow_t.auth bits */
#define AUTH_LOOKED0 1   /* first originator payload matched */
#define AUTH_LOOKED1 2   /* first responder payload matched */
#define AUTH_KEYS0 4     /* SSH: the client's NEWKEYS seen */
#define AUTH_KEYS1 8     /* SSH: the server's NEWKEYS seen */
#define AUTH_HTTPQ 4     /* HTTP not logging in yet: its next requests are read (the bit
                          * SSH flows use for AUTH_KEYS0: a flow is one or the other) */

extern const char *SERVICE_NAMES[N_SVC];

/* Whether a payload of the flow needs auth_packet(): most flows, once their first payload
 * each way matched nothing, cost this test only. */
static inline int auth_wants(const flow_t *f, int dir)
{
    return f->svc || (f->auth & (AUTH_LOOKED0 | AUTH_LOOKED1)) != (AUTH_LOOKED0 | AUTH_LOOKED1) ||
           (dir == 0 && (f->auth & AUTH_HTTPQ));
}

/* A TCP/UDP payload of the flow in `slot`, dir 0 from the originator: matched, recorded,
 * events emitted; -1 on error. Only called when e->auth is set. */
int auth_packet(EngineObject *e, uint32_t slot, const pkt_t *k, int dir);
/* The SSH sizes recorded for the flow in `slot`, as a new tuple (empty if none). */
PyObject *auth_ssh_sizes(EngineObject *e, uint32_t slot);
/* The flow in `slot` ends: its record is free again. */
void auth_forget(EngineObject *e, uint32_t slot);
/* Engine.configure_auth(on) and Engine.auth_stats() */
PyObject *engine_configure_auth(EngineObject *e, PyObject *on);
PyObject *engine_auth_stats(EngineObject *e, PyObject *unused);
void auth_free(EngineObject *e);

#endif
