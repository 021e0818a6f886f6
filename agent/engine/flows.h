/* The flow table: bidirectional flows keyed by the unordered 5-tuple plus VLAN, bounded
 * (the oldest go first), with attempt outcomes, idle and active timeouts; each packet's
 * way through it and through the taps that decide what reaches Python; and Flow, the
 * Python view of a flow. */
#ifndef ENGINE_FLOWS_H
#define ENGINE_FLOWS_H

#include "engine.h"

typedef struct FlowObject FlowObject;
extern PyTypeObject FlowType;

/* FlowType ready, and the strings Flows show; -1 on error. */
int flows_ready(void);

static inline uint32_t key_hash(const fkey_t *k) { return fnv1a(k, sizeof(fkey_t)); }

/* The slot of the flow with key k (hash h), or NIL; *pos: its index entry, or the empty
 * one where it would go. */
uint32_t lookup(EngineObject *e, const fkey_t *k, uint32_t h, uint32_t *pos);
/* Room for `want` slots, and an index to match; -1 on error. */
int grow_table(EngineObject *e, uint32_t want);
/* A new reference to the Flow of the slot, made on first need. */
PyObject *flow_py(EngineObject *e, uint32_t slot);
/* The Flow keeps a copy of its slot's values and stops reading the slot. */
void flow_detach(FlowObject *o);
/* The flow ends (its END event if wanted) and its slot goes back to the free list. */
int free_flow(EngineObject *e, uint32_t slot);

/* One decoded packet through the flow table and the taps; *flow_out (if asked): a new
 * reference to its Flow, or NULL when it has none. -1 on error. */
int process(EngineObject *e, pkt_t *k, PyObject **flow_out);
/* One captured frame: counted, decoded, processed. -1 on error. */
int feed_frame(EngineObject *e, double ts, int linktype, uint32_t wirelen,
               const uint8_t *frame, Py_ssize_t caplen);
/* Time has come to `now`: attempts unanswered, idle flows expired, long ones restarted. */
int do_tick(EngineObject *e, double now);

#endif
