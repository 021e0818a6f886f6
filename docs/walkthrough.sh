#!/usr/bin/env bash
# docs/DEPLOYMENT.md, "The agent's side and operations", followed step by step on one
# machine, without systemd and without root: everything lives in a temporary directory,
# every listener is on 127.0.0.1, and the collector is stopped and the directory removed
# at the end, whatever happens.
#
#   docs/walkthrough.sh [BIN_DIR]      # BIN_DIR: where vigie-agent etc. are (default .venv/bin)
#
# Exit status 0 and a last line "walkthrough: OK" when every step did what the document
# says. tests/test_walkthrough.py runs it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(cd "${1:-$REPO/.venv/bin}" && pwd)
PCAP="$REPO/tests/data/nmap_syn_scan_1000ports.pcap"
PY="$BIN/python"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vigie-walkthrough.XXXXXX")
COLLECTOR_PID=""
cleanup() {
    if [[ -n "$COLLECTOR_PID" ]] && kill -0 "$COLLECTOR_PID" 2>/dev/null; then
        kill "$COLLECTOR_PID" 2>/dev/null || true
        wait "$COLLECTOR_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'walkthrough: FAILED: %s\n' "$*" >&2
    exit 1
}

# The analysts' CLI reads these before cli.toml: the walkthrough tests the file.
unset VIGIE_COLLECTOR VIGIE_CA VIGIE_CERT VIGIE_KEY VIGIE_CLI_CONFIG
export HOME="$WORK/home" # cli.toml goes to $HOME/.config/vigie/, not the caller's

# A port P with P+1 free too: the enrollment listener is the collector's port + 1.
PORT=$("$PY" - <<'EOF'
import socket

for _ in range(100):
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        print(port)
        break
EOF
)
ENROLL_PORT=$((PORT + 1))
COLLECTOR="127.0.0.1:$PORT"
C_STATE="$WORK/collector"
A_STATE="$WORK/agent"

step "1. prerequisites: Python 3.11 and the programs"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version; print(sys.version.split()[0])'
for prog in vigie-agent vigie-collector vigie; do
    [[ -x "$BIN/$prog" ]] || fail "$BIN/$prog is missing (pip install the wheel into that venv)"
done

step "2. the collector, its state directory and PKI (made at first start)"
"$BIN/vigie-collector" serve --state-dir "$C_STATE" --listen "$COLLECTOR" \
    --enroll-listen "127.0.0.1:$ENROLL_PORT" >"$WORK/collector.log" 2>&1 &
COLLECTOR_PID=$!
for _ in $(seq 300); do
    grep -q collector_listening "$WORK/collector.log" 2>/dev/null && break
    kill -0 "$COLLECTOR_PID" 2>/dev/null || fail "collector exited: $(cat "$WORK/collector.log")"
    sleep 0.1
done
grep -q collector_listening "$WORK/collector.log" || fail "collector did not start in 30 s"
echo "collector listening on $COLLECTOR, enrollment on 127.0.0.1:$ENROLL_PORT"

step "3. enrollment: a one-time token on the collector, enroll on the agent"
TOKEN=$("$BIN/vigie-collector" token create --state-dir "$C_STATE" \
    --region 11 --ght GHT-EXAMPLE --finess 750000001 --ttl 1h)
"$BIN/vigie-agent" enroll --collector "127.0.0.1:$ENROLL_PORT" --token "$TOKEN" \
    --state-dir "$A_STATE"

step "4. vigie-agent doctor"
# Without root or the unit's capabilities, the capability checks fail: that is expected
# here, so only the identity and collector checks are required to pass.
DOCTOR=$("$BIN/vigie-agent" doctor --state-dir "$A_STATE" --collector "$COLLECTOR" -i lo) || true
echo "$DOCTOR"
for check in certificate key ca "collector tls" "collector grpc"; do
    grep -q "^OK    $check " <<<"$DOCTOR" || fail "doctor: '$check' is not OK"
done

step "5. an agent streams a capture to the collector"
"$BIN/vigie-agent" replay "$PCAP" --state-dir "$A_STATE" --output collector \
    --collector "$COLLECTOR" 2>&1 | tail -n 1

step "6. vigie-agent status"
STATUS=$("$BIN/vigie-agent" status --state-dir "$A_STATE")
echo "$STATUS"
grep -q "^identity:    agt-.* (FINESS 750000001, GHT GHT-EXAMPLE, region 11)" <<<"$STATUS" ||
    fail "status does not show the enrolled identity"
grep -q "^outbox:      0 alert(s) waiting" <<<"$STATUS" || fail "the outbox was not drained"
AGENT_ID=$("$BIN/vigie-agent" status --state-dir "$A_STATE" --json |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["identity"]["agent_id"])')

step "7. analyst onboarding: a certificate, then ~/.config/vigie/cli.toml"
"$BIN/vigie-collector" pki issue-analyst --state-dir "$C_STATE" --name jdupont \
    --role national --out "$WORK/analyst"
mkdir -p "$HOME/.config/vigie"
cat >"$HOME/.config/vigie/cli.toml" <<EOF
collector = "$COLLECTOR"
ca = "$WORK/analyst/ca.crt"
cert = "$WORK/analyst/analyst.crt"
key = "$WORK/analyst/analyst.key"
EOF
chmod 0600 "$HOME/.config/vigie/cli.toml"

step "8. vigie alerts"
"$BIN/vigie" alerts | tee "$WORK/alerts.txt"
grep -q "net.portscan .*GHT-EXAMPLE / 750000001" "$WORK/alerts.txt" ||
    fail "the analyst does not see the agent's alert"

step "9. backup of the agent's anon.key and tls/ (the agent stopped)"
tar -C "$A_STATE" -czf "$WORK/agent-backup.tgz" anon.key tls
tar -tzvf "$WORK/agent-backup.tgz"

step "10. restore into a fresh state directory: same identity, same pseudonyms"
R_STATE="$WORK/agent-restored"
install -d -m 0700 "$R_STATE"
tar -C "$R_STATE" -xzpf "$WORK/agent-backup.tgz"
[[ $(stat -c %a "$R_STATE/anon.key") == 600 ]] || fail "anon.key lost its mode 0600"
RESTORED_ID=$("$BIN/vigie-agent" status --state-dir "$R_STATE" --json |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["identity"]["agent_id"])')
[[ "$RESTORED_ID" == "$AGENT_ID" ]] || fail "restored identity $RESTORED_ID, not $AGENT_ID"
"$BIN/vigie-agent" replay "$PCAP" --state-dir "$R_STATE" --output collector \
    --collector "$COLLECTOR" 2>&1 | tail -n 1
# Both runs' net.portscan alerts, as the analyst sees them: the same agent and the same
# pseudonym for the scanning (internal) source, so the collector can follow that host.
PSEUDONYM=$("$BIN/vigie" alerts --json --detector net.portscan | "$PY" -c '
import json, sys
alerts = [json.loads(line) for line in sys.stdin if line.strip()]
assert len(alerts) == 2, f"expected the alert of each run, got {len(alerts)}"
agents = {a["origin"]["agent_id"] for a in alerts}
sources = {e["value"] for a in alerts for e in a["entities"] if e["role"] == "source"}
assert len(agents) == 1, agents
assert len(sources) == 1 and next(iter(sources)).startswith("p:"), sources
print(sources.pop())
') || fail "the two runs' alerts differ in agent or pseudonym"
echo "same agent $AGENT_ID, same pseudonym $PSEUDONYM before and after restore"
# And what the backup is for: without anon.key the same host gets another pseudonym.
install -d -m 0700 "$WORK/agent-without-key"
WITHOUT=$("$BIN/vigie-agent" replay "$PCAP" --state-dir "$WORK/agent-without-key" 2>/dev/null |
    "$PY" -c '
import json, sys
print(" ".join(sorted({e["value"] for line in sys.stdin for e in json.loads(line)["entities"]
                       if e["role"] == "source"})))
')
echo "without the backed-up anon.key the same source is: $WITHOUT"
[[ -n "$WITHOUT" && "$WITHOUT" != *"$PSEUDONYM"* ]] || fail "a new anon.key kept the pseudonym"

printf '\nwalkthrough: OK\n'
