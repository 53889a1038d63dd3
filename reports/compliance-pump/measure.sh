#!/bin/bash
# Measures the compliance pump of a pool of four (reports/compliance-pump.md):
# starts `reference-server pool local --nodes 4`, runs the conformance suite
# against node 2 with compliance off and again with it on, and prints
# PostgreSQL's table statistics after each run. Needs the debug binaries
# (`cargo build -p reference-server -p conformance`) and psql.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
# PostgreSQL may run as another user (pgcluster drops root to postgres).
chmod 755 "$work"
trap 'kill -TERM "$pool" 2>/dev/null; wait "$pool" 2>/dev/null; rm -rf "$work"' EXIT
PCHAT_LOG__FILTER=warn PCHAT_STREAM__HEARTBEAT_INTERVAL_S=1 \
PCHAT_STREAM__HEARTBEAT_TIMEOUT_S=12 PCHAT_STREAM__ENDPOINT_LINGER_S=10 \
  "$root/target/debug/reference-server" pool local --nodes 4 --base-port 0 \
  --dir "$work/pool" --ready-file "$work/ready.json" > "$work/pool.log" 2>&1 &
pool=$!
for _ in $(seq 600); do
  [ -f "$work/ready.json" ] && break
  kill -0 "$pool" 2>/dev/null || break
  sleep 0.1
done
[ -f "$work/ready.json" ] || { cat "$work/pool.log"; exit 1; }
field() { python3 -c "import json,sys;print(json.load(open('$work/ready.json'))$1)"; }
port=$(field '["postgres_port"]')
node=$(field '["nodes"][1]')
printf 'admin_token_file = "%s"\n[run]\nmax_wait_s = 15\nevent_wait_s = 15\nseed = 42\n' \
  "$work/pool/admin-token" > "$work/profile.toml"
stats() {
  psql -h 127.0.0.1 -p "$port" -U postgres -d chat -Atc \
    "select 'outbox inserted, seq rows read, index rows read', n_tup_ins, seq_tup_read, idx_tup_fetch
     from pg_stat_user_tables where relname = 'compliance_outbox'"
  psql -h 127.0.0.1 -p "$port" -U postgres -d compliance -Atc \
    "select 'mark updates', n_tup_upd from pg_stat_user_tables where relname = 'pumped';
     select 'compliance commits, rollbacks', xact_commit, xact_rollback
     from pg_stat_database where datname = 'compliance'"
}
suite() {
  local start=$SECONDS
  "$root/target/debug/conformance" run --target "$node" --profile "$work/profile.toml" \
    --out "$work/out-$1" --quiet > "$work/suite-$1.txt" 2>&1 || true
  echo "== $1: suite $((SECONDS - start)) s, $(grep -c '  pass ' "$work/suite-$1.txt") pass," \
    "$(grep -c '  fail ' "$work/suite-$1.txt") fail"
  sleep 5
  stats
}
suite compliance-off
curl -sf -X PATCH -H "authorization: Bearer $(cat "$work/pool/admin-token")" \
  -H 'content-type: application/json' -d '{"enabled": true}' "$node/v1/admin/compliance" > /dev/null
suite compliance-on
