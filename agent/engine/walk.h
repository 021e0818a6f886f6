/* Capture walking: a run of classic-pcap records, of pcapng enhanced packet blocks, or of
 * TPACKET_V3 ring frames, each frame fed to the engine in one C loop. The Python walkers
 * (agent/capture) read the file and section headers, hand over the buffer, and handle
 * what these leave to them; they stop for a tick or when events wait, so that Python
 * keeps its pace.
 */
#ifndef ENGINE_WALK_H
#define ENGINE_WALK_H

#include "engine.h"

/* Why a walk stopped: the `status` each walker returns, exported to Python. */
enum {
    WALK_DONE = 0,        /* the end, or (pcapng) a block left to the Python walker */
    WALK_TICK = 1,        /* after the first packet at or past `tick_at` */
    WALK_EVENTS = 2,      /* `max_events` events wait for Python */
    WALK_TRUNCATED = -1,  /* pcap: a record cut short */
    WALK_BAD_LENGTH = -2, /* pcap: a record longer than the snaplen allows */
};

/* Engine.feed_pcap(), feed_pcapng(), feed_ring(), and their docstrings */
PyObject *engine_feed_pcap(EngineObject *e, PyObject *args);
PyObject *engine_feed_pcapng(EngineObject *e, PyObject *args);
PyObject *engine_feed_ring(EngineObject *e, PyObject *args);
extern const char feed_pcap_doc[], feed_pcapng_doc[], feed_ring_doc[];

#endif
