/* What a tick counted, for the detectors that read counters instead of packets: packets
 * and bytes per (source, destination, class) pair (pairs(), on_pairs), and the bursts of
 * watched flows (activity(), on_activity). Each is handed out as Records (records.h). */
#ifndef ENGINE_COUNTERS_H
#define ENGINE_COUNTERS_H

#include "engine.h"

/* The packet counted into its pair, unless no on_pairs reads that pair; -1 on error. */
int pair_add(EngineObject *e, pkt_t *k);
/* A watched flow's burst starts (`start`) or ends at ts; -1 on error. */
int burst_record(EngineObject *e, flow_t *f, double ts, int start);

/* Engine.pairs() and Engine.activity(): the tick's records, the counting starts again. */
PyObject *engine_pairs(EngineObject *e, PyObject *unused);
PyObject *engine_activity(EngineObject *e, PyObject *unused);

#endif
