"""Retro-hunting: the local metadata journal (journal.py, segment.py), searching it
(search.py), the collector's look-back requests run in the background (retro.py) and the
`vigie-agent hunt` command (command.py). Nothing here leaves the server except a retro
match, as an anonymised net.ioc alert."""
