/* Settings Python hands the engine and its detectors, read once into C: port maps,
 * network lists and string lists, with the lookups the per-packet path makes on them. */
#ifndef ENGINE_SETTINGS_H
#define ENGINE_SETTINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A port map: one bit per TCP/UDP port, 8192 bytes. */
static inline int bit(const uint8_t *map, int port) { return map[port >> 3] & (1 << (port & 7)); }

/* The ports of an iterable of ints (None: none) into `map`. */
int portmap(PyObject *ports, uint8_t *map);

typedef struct { uint8_t net[16]; int alen, prefix; } cidr_t;

/* Whether `a` is in one of the networks, of its own family only (as ipaddress: an
 * IPv4-mapped IPv6 address is IPv6). Inline: the per-packet path asks it. */
static inline int cidr_any(const cidr_t *nets, int n, const uint8_t *a, int alen)
{
    for (int i = 0; i < n; i++) {
        const cidr_t *c = &nets[i];
        if (c->alen != alen) continue;
        int bits = c->prefix, j = 0;
        for (; bits >= 8; bits -= 8, j++)
            if (a[j] != c->net[j]) goto next;
        if (bits && ((a[j] ^ c->net[j]) & (0xFF00 >> bits) & 0xFF)) goto next;
        return 1;
    next:;
    }
    return 0;
}

/* A list of (packed network, prefix length) read in full, or not at all (the error set,
 * `*out` untouched); `what` names the setting in the error. */
int cidrs_parse(PyObject *list, const char *what, cidr_t **out, int *nout);

/* A list of strings (UTF-8 bytes, not NUL-terminated). */
typedef struct { char **s; int *len; int n; } strs_t;

void strs_free(strs_t *l);
/* The strings of a sequence (NULL or None: none) into `l`, emptied first. */
int strs_from(PyObject *seq_in, strs_t *l, const char *what);

#endif
