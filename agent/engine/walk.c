/* Capture buffers walked frame by frame in C (see walk.h). */
#include "walk.h"

#include "flows.h"

/* The walkers' one stop rule, after each frame: at or past the tick time, when
 * `max_events` events wait for Python, or go on (WALK_DONE). */
static inline int walk_stop(EngineObject *e, double ts, double tick_at, Py_ssize_t max_events)
{
    if (ts >= tick_at) return WALK_TICK;
    return PyList_GET_SIZE(e->events) >= max_events ? WALK_EVENTS : WALK_DONE;
}

static inline uint32_t rd32(const uint8_t *p, int big)
{
    return big ? ((uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3])
               : ((uint32_t)p[3] << 24 | p[2] << 16 | p[1] << 8 | p[0]);
}

const char feed_pcap_doc[] = PyDoc_STR(
"feed_pcap(buf, off, big_endian, scale, linktype, hdrsize, swap, max_caplen, tick_at,\n"
"          max_events) -> (off, records, status)\n\n"
"Walk classic-pcap records from `off`. Stops after the first packet at or past `tick_at`\n"
"(status 1), when `max_events` events wait (2), at the end (0), or at damage: -1 record\n"
"truncated, -2 bad record length. swap: 0 never, 1 when caplen > wirelen, 2 always.");

PyObject *engine_feed_pcap(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, max_events;
    int big, linktype, hdrsize, swap;
    double scale, tick_at;
    unsigned int max_caplen;
    if (!PyArg_ParseTuple(args, "y*nidiiiIdn", &b, &off, &big, &scale, &linktype, &hdrsize,
                          &swap, &max_caplen, &tick_at, &max_events))
        return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = WALK_DONE;
    while (off < end) {
        if (off + hdrsize > end) { status = WALK_TRUNCATED; break; }
        const uint8_t *h = buf + off;
        uint32_t sec = rd32(h, big), frac = rd32(h + 4, big), caplen = rd32(h + 8, big),
                 wirelen = rd32(h + 12, big);
        if (swap && (swap == 2 || caplen > wirelen)) { uint32_t t = caplen; caplen = wirelen; wirelen = t; }
        if (caplen > max_caplen) { status = WALK_BAD_LENGTH; break; }
        Py_ssize_t start = off + hdrsize;
        if (start + (Py_ssize_t)caplen > end) { status = WALK_TRUNCATED; break; }
        double ts = sec + frac * scale;
        off = start + caplen;
        records++;
        if (feed_frame(e, ts, linktype, wirelen, buf + start, caplen) < 0) {
            PyBuffer_Release(&b);
            return NULL;
        }
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("(nli)", off, records, status);
}

const char feed_pcapng_doc[] = PyDoc_STR(
"feed_pcapng(buf, off, big_endian, ifaces, max_caplen, tick_at, max_events)\n"
"            -> (off, records, status, last_ts)\n\n"
"Walk a run of pcapng enhanced packet blocks from `off`; ifaces: the section's interfaces\n"
"so far, (linktype, timestamp divisor, timestamp offset, ...) each. Stops after the first\n"
"packet at or past `tick_at` (status 1), when `max_events` events wait (2), or at a\n"
"block it leaves to the Python walker (0): any other block, the end, damage, an unknown\n"
"interface. Timestamps are computed as the Python walker computes them.");

/* (linktype, divisor, offset) of each interface, from the walker's tuples */
typedef struct { int linktype; uint64_t div; int64_t tsoff; } ngif_t;

PyObject *engine_feed_pcapng(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, max_events;
    int big;
    PyObject *ifaces;
    double tick_at;
    unsigned int max_caplen;
    if (!PyArg_ParseTuple(args, "y*niOIdn", &b, &off, &big, &ifaces, &max_caplen, &tick_at,
                          &max_events))
        return NULL;
    PyObject *seq = PySequence_Fast(ifaces, "ifaces must be a sequence");
    Py_ssize_t nif = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    ngif_t *ifs = seq ? PyMem_Calloc(nif ? nif : 1, sizeof(ngif_t)) : NULL;
    if (!ifs) {
        if (seq) PyErr_NoMemory();
        Py_XDECREF(seq);
        PyBuffer_Release(&b);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nif; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long div;
        long long tsoff;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3 ||
            (ifs[i].linktype = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0))) == -1 ||
            (div = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, 1))) == (unsigned long long)-1 ||
            ((tsoff = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2))) == -1 && PyErr_Occurred())) {
            /* a divisor too big for 64 bits: this interface stays with the Python walker */
            PyErr_Clear();
            ifs[i].div = 0;
            continue;
        }
        ifs[i].div = div;
        ifs[i].tsoff = tsoff;
    }
    Py_DECREF(seq);
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = WALK_DONE;
    double ts = 0.0;
    while (end - off >= 12) {
        const uint8_t *h = buf + off;
        uint32_t btype = rd32(h, big), blen = rd32(h + 4, big);
        if (btype != 6 || blen < 32 || (blen & 3) || blen > end - off) break;
        uint32_t ifid = rd32(h + 8, big), hi = rd32(h + 12, big), lo = rd32(h + 16, big),
                 caplen = rd32(h + 20, big), wirelen = rd32(h + 24, big);
        if (caplen > blen - 32 || caplen > max_caplen || ifid >= nif || !ifs[ifid].div) break;
        uint64_t units = (uint64_t)hi << 32 | lo, div = ifs[ifid].div;
        if (units <= (1ULL << 53) && div <= (1ULL << 53)) {
            /* both exact as doubles: one correctly rounded division, as Python's int / int */
            ts = (double)units / (double)div + (double)ifs[ifid].tsoff;
        } else {
            /* nanosecond clocks and odd resolutions: Python's own arithmetic */
            PyObject *u = PyLong_FromUnsignedLongLong(units), *d = PyLong_FromUnsignedLongLong(div);
            PyObject *q = u && d ? PyNumber_TrueDivide(u, d) : NULL;
            Py_XDECREF(u);
            Py_XDECREF(d);
            if (!q) goto fail;
            ts = PyFloat_AsDouble(q) + (double)ifs[ifid].tsoff;
            Py_DECREF(q);
        }
        off += blen;
        records++;
        if (feed_frame(e, ts, ifs[ifid].linktype, wirelen, h + 28, caplen) < 0) goto fail;
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyMem_Free(ifs);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nlid)", off, records, status, ts);
fail:
    PyMem_Free(ifs);
    PyBuffer_Release(&b);
    return NULL;
}

const char feed_ring_doc[] = PyDoc_STR(
"feed_ring(buf, off, num, snaplen, tick_at, max_events) -> (off, num, records, status)\n\n"
"Walk `num` frames of a TPACKET_V3 ring block from `off` (tpacket3_hdr each, native byte\n"
"order), as agent/capture/live.py ring_frames reads them: the 802.1Q tag the kernel took\n"
"off put back. Stops after the first packet at or past `tick_at` (status 1), when\n"
"`max_events` events wait (2), or when the frames are done (0); returns where to go on.");

PyObject *engine_feed_ring(EngineObject *e, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off, num, max_events;
    unsigned int snaplen;
    double tick_at;
    if (!PyArg_ParseTuple(args, "y*nnIdn", &b, &off, &num, &snaplen, &tick_at, &max_events))
        return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t end = b.len;
    long records = 0;
    int status = WALK_DONE;
    uint8_t *tagged = NULL; /* a frame with its VLAN tag back: made on the first need */
    while (num > 0) {
        if (off < 0 || end - off < 38) goto bad;
        const uint8_t *h = buf + off;
        uint32_t nxt, sec, nsec, caplen, wirelen, st, tci;
        uint16_t mac, tpid;
        memcpy(&nxt, h, 4); memcpy(&sec, h + 4, 4); memcpy(&nsec, h + 8, 4);
        memcpy(&caplen, h + 12, 4); memcpy(&wirelen, h + 16, 4); memcpy(&st, h + 20, 4);
        memcpy(&mac, h + 24, 2); memcpy(&tci, h + 32, 4); memcpy(&tpid, h + 36, 2);
        if (caplen > snaplen) caplen = snaplen;
        if (mac > end - off || caplen > end - off - mac) goto bad;
        const uint8_t *frame = h + mac;
        double ts = sec + nsec * 1e-9;
        if (st & 0x10) { /* TP_STATUS_VLAN_VALID: the kernel took the tag off */
            uint16_t t = (st & 0x40) && tpid ? tpid : 0x8100; /* TP_STATUS_VLAN_TPID_VALID */
            if (!tagged && !(tagged = PyMem_Malloc((size_t)snaplen + 4))) {
                PyErr_NoMemory();
                goto fail;
            }
            uint32_t head = caplen < 12 ? caplen : 12;
            memcpy(tagged, frame, head);
            uint8_t tag[4] = {t >> 8, t & 255, (tci >> 8) & 255, tci & 255};
            memcpy(tagged + head, tag, 4);
            memcpy(tagged + head + 4, frame + head, caplen - head);
            frame = tagged;
            caplen += 4;
            wirelen += 4;
        }
        off += nxt;
        num--;
        records++;
        if (feed_frame(e, ts, 1, wirelen, frame, caplen) < 0) goto fail;
        if ((status = walk_stop(e, ts, tick_at, max_events))) break;
    }
    PyMem_Free(tagged);
    PyBuffer_Release(&b);
    return Py_BuildValue("(nnli)", off, num, records, status);
bad:
    PyErr_SetString(PyExc_ValueError, "ring frame outside its block");
fail:
    PyMem_Free(tagged);
    PyBuffer_Release(&b);
    return NULL;
}
