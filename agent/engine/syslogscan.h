/* Syslog lines that no log family reads, counted and skipped before Python sees them
 * (agent/logs/parse/__init__.py, Parser.parse_bytes).
 *
 * Why here: on a busy server most syslog lines come from programs nothing reads (the
 * kernel, dbus, postfix...); cutting each one's header in Python costs about 1.5 us,
 * most of the log path's CPU at 10,000 lines a second. This applies the same tests as
 * Parser.parse_block, on the bytes, and hands up only the lines Python must read; any
 * line whose header holds a non-ASCII byte goes up as well, so that Python decides it.
 */
#ifndef ENGINE_SYSLOGSCAN_H
#define ENGINE_SYSLOGSCAN_H

#include <Python.h>

/* scan_syslog(block, fast, known, audit_only) -> (kept, lines, other, malformed): the
 * lines to read (str), and the non-empty lines, others and malformed ones counted */
PyObject *syslog_scan(PyObject *mod, PyObject *args);

#endif
