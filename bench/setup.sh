#!/usr/bin/env bash
# Install what the benchmarks drive, on a fresh Debian bookworm machine (as root):
# Suricata 7 from bookworm-backports, tcpdump, tcpreplay, nmap, dnsmasq, ethtool, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x /work/shared/scripts/enable-backports ]; then
    /work/shared/scripts/enable-backports
elif ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
        > /etc/apt/sources.list.d/backports.list
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends tcpdump tcpreplay nmap dnsmasq-base ethtool \
    curl iproute2 util-linux >/dev/null
apt-get install -y -qq -t bookworm-backports suricata >/dev/null
[ -x .venv/bin/python ] || ./dev test --co -q >/dev/null
.venv/bin/python -c "import scapy, psutil" # the scapy baseline and bench/memory.py
echo "bench: ready (suricata $(suricata -V | grep -o '[0-9][0-9.]*' | head -1))"
