/* The retro-hunt journal's records, made where the engine already has what they hold
 * (agent/hunt/journal.py writes them): one per flow end and one per DNS exchange over UDP.
 *
 * Why here: on a busy server these are most of the traffic's events; handed up one by one
 * (a Flow or DNS event per record, then a Python handler) they cost three times the whole
 * replay. Here a record is a few dozen bytes appended to a buffer, a DNS query waits in
 * a C table for its answer, and Python takes a block's worth at a time already marshalled
 * as the segment stores records, with the block's index keys and addresses: no Python
 * object per record. index_arrays builds a segment's key table from its blocks' keys.
 */
#ifndef ENGINE_JOURNAL_H
#define ENGINE_JOURNAL_H

#include "engine.h"
#include "dnsmsg.h"

typedef struct journal_s journal_t;

void journal_free(journal_t *j);
/* A flow's record ends (free_flow, or its active timeout): its connection record. */
int journal_conn(EngineObject *e, const flow_t *f);
/* A DNS message over UDP, read: a query waits for its answer, an answer completes it. */
int journal_dns(EngineObject *e, const pkt_t *k, const dnsmsg_t *m);

/* Engine.configure_journal(), Engine.journal_take(), Engine.journal_expire() */
PyObject *engine_configure_journal(EngineObject *e, PyObject *args, PyObject *kw);
PyObject *engine_journal_take(EngineObject *e, PyObject *args);
PyObject *engine_journal_expire(EngineObject *e, PyObject *arg);
/* index_arrays(blocks, probes): a segment's key table from each block's keys (module) */
PyObject *journal_index_arrays(PyObject *mod, PyObject *args);
/* sorted_u32(buffer): its u32 values sorted, each once (module) */
PyObject *journal_sorted_u32(PyObject *mod, PyObject *arg);

#endif
