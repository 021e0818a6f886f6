"""Host signals: what the server itself shows of an attack (psutil, /proc).

    sampler.py     reads the process, socket, session and file tables on an interval,
                   diffing them against the previous sample so each round stays cheap
    sample.py      the normalised records a sample carries (detectors see only these)
    procnet.py     the kernel socket tables, read without resolving owners
    intel.py       the indicator list (state_dir/intel.json) the IOC detector matches
    detectors/     one file per host detector, registered in agent/detect/registry.py

The sampler runs in its own thread and hands each sample to the pipeline through a
bounded queue; the pipeline thread runs the host detectors, so detectors, aggregator,
anonymiser and outbox stay single-threaded (see docs/HOST_SIGNALS.md).
"""
