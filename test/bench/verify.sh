#!/usr/bin/env bash
# test/bench/verify.sh: how long zdm.verify() takes, next to the cheapest
# whole-table checksum, on the same data in the same run
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/verify.sh              # pgbench scale 20 + 1,000,000 rows
#     bash test/bench/verify.sh --scale 50 --rows 2000000 --reps 3
#
# It builds and installs the extension (a fresh copy of the tree), starts two
# throwaway clusters (source and target) as the postgres OS user, loads the
# same data set into both -- `pgbench -i -s SCALE` (pgbench_accounts has
# SCALE x 100,000 rows) and `items`, ROWS rows of mixed types (text,
# numeric, float8, timestamptz, jsonb) with two secondary indexes --,
# starts a migration with zdm.init(defer_copy => true) (both sides already
# hold the rows) and waits until it streams.  Then, REPS times each,
# alternating:
#
#   checksum  per table, count(*) + sum(hashtext(t::text)), on both servers at
#             once (one psql per server, tables one after the other), wall
#             time until both are done;
#   verify    SELECT * FROM zdm.verify() on the target (all tables, both
#             servers at once per table), wall time.
#
# and once more zdm.verify() after one row of pgbench_accounts was changed
# on the target behind replication's back (the drill-down's cost).  Prints
# the medians and their ratio, and BENCH lines.  Everything it made is
# removed on exit.

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGCONNECT_TIMEOUT || true

COMMAND_LINE="$0${*:+ $*}"
SCALE=20
ROWS=1000000
REPS=3

while [[ $# -gt 0 ]]; do
    case $1 in
        --scale) SCALE=${2:?}; shift ;;
        --rows) ROWS=${2:?}; shift ;;
        --reps) REPS=${2:?}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) zdm_die "unknown option $1 (see --help)" ;;
    esac
    shift
done

sql() {
    local cluster=$1
    shift
    zdm_psql "$cluster" -d app -At "$@"
}

now_ms() {
    date +%s%3N
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%d", v[(NR + 1) / 2];
        else printf "%d", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ITEMS_SCHEMA="
ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
CREATE TABLE items (
    id bigint PRIMARY KEY,
    sku text NOT NULL,
    price numeric(12, 2) NOT NULL,
    weight float8,
    created timestamptz NOT NULL,
    attrs jsonb
);
CREATE INDEX items_sku ON items (sku);
CREATE INDEX items_created ON items (created);"

ITEMS_DATA="
INSERT INTO items
SELECT i, 'sku-' || (i::bigint * 7919 % 1000003), (i % 100000) / 100.0, i / 3.0,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '17 seconds',
       jsonb_build_object('color', i % 17, 'size', i % 5, 'tag', 'x' || i % 101)
FROM generate_series(1, $ROWS) i;
ANALYZE;"

zdm_require_root
zdm_install_packages
zdm_build_install

zdm_cluster_start src auto "shared_buffers = 512MB" "max_wal_size = 4GB"
zdm_cluster_start tgt auto "shared_buffers = 512MB" "max_wal_size = 4GB" \
    "max_logical_replication_workers = 8" "wal_receiver_status_interval = 1s"

for c in src tgt; do
    zdm_psql "$c" -c "CREATE DATABASE app"
    zdm_log "loading pgbench scale $SCALE and $ROWS items into $c"
    zdm_as_postgres pgbench -q -i -s "$SCALE" -h "$(zdm_cluster_sockdir "$c")" \
        -p "$(zdm_cluster_port "$c")" -U postgres app >/dev/null 2>&1 ||
        zdm_die "pgbench -i failed on $c"
    sql "$c" -c "$ITEMS_SCHEMA" -c "$ITEMS_DATA" >/dev/null
done
zdm_psql tgt -d app -c "CREATE EXTENSION pg_zdm"
SRC_DSN="host=127.0.0.1 port=$(zdm_cluster_port src) dbname=app user=postgres"
sql tgt -c "CALL zdm.init('$SRC_DSN', defer_copy => true)"
deadline=$((SECONDS + 120))
until [[ $(sql tgt -c "SELECT ok FROM zdm.status() WHERE component = 'overall'") == t ]]; do
    ((SECONDS < deadline)) || zdm_die "the migration did not become ready"
    sleep 0.5
done

TABLES=$(sql tgt -c "SELECT string_agg(quote_ident(schema_name::text) || '.' || quote_ident(table_name::text), ' ' ORDER BY 1) FROM zdm.tables()")
ROW_TOTAL=$(sql src -c "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM items)
    + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_branches)")
SIZE=$(sql src -c "SELECT pg_size_pretty(pg_database_size('app'))")
zdm_log "tables: $TABLES; $ROW_TOTAL rows; database $SIZE on each side"

checksum_sql() {
    local t
    for t in $TABLES; do
        echo "SELECT count(*), sum(hashtext(t::text)) FROM $t t;"
    done
}

run_checksum() {
    local start end
    start=$(now_ms)
    checksum_sql | sql src >/dev/null &
    local p1=$!
    checksum_sql | sql tgt >/dev/null &
    local p2=$!
    wait "$p1" && wait "$p2" || zdm_die "the checksum query failed"
    end=$(now_ms)
    echo $((end - start))
}

run_verify() {
    local start end out
    start=$(now_ms)
    out=$(sql tgt -c "SELECT table_name, ok FROM zdm.verify()" 2>/dev/null) ||
        zdm_die "zdm.verify() failed"
    end=$(now_ms)
    VERIFY_OUT=$out
    echo $((end - start))
}

CHECKSUMS=()
VERIFIES=()
for rep in $(seq 1 "$REPS"); do
    c=$(run_checksum)
    v=$(run_verify)
    CHECKSUMS+=("$c")
    VERIFIES+=("$v")
    zdm_log "rep $rep: checksum $c ms, zdm.verify() $v ms"
done
VERIFY_OUT=$(sql tgt -c "SELECT table_name || ' ' || ok FROM zdm.verify()" 2>/dev/null)
if grep -q ' f$' <<<"$VERIFY_OUT"; then
    zdm_die "zdm.verify() found differences where there are none: $VERIFY_OUT"
fi

sql tgt -c "SET session_replication_role = replica; UPDATE pgbench_accounts SET abalance = 1 WHERE aid = 123457" >/dev/null
start=$(now_ms)
DIFF_OUT=$(sql tgt -c "SELECT detail FROM zdm.verify() WHERE NOT ok" 2>/dev/null)
end=$(now_ms)
DIFF_MS=$((end - start))

MC=$(median "${CHECKSUMS[@]}")
MV=$(median "${VERIFIES[@]}")
RATIO=$(awk "BEGIN { printf \"%.2f\", $MV / $MC }")

echo
echo "data set: pgbench scale $SCALE + $ROWS items ($ROW_TOTAL rows, $SIZE per side), $REPS reps"
printf '%-58s %10s\n' "figure" "ms"
printf '%-58s %10s\n' "checksum, both servers at once, median" "$MC"
printf '%-58s %10s\n' "zdm.verify(), median" "$MV"
printf '%-58s %10s\n' "zdm.verify() / checksum" "$RATIO"
printf '%-58s %10s\n' "zdm.verify() with one changed row (drill-down)" "$DIFF_MS"
echo "checksum runs: ${CHECKSUMS[*]}"
echo "verify runs:   ${VERIFIES[*]}"
echo "the changed row: $DIFF_OUT"
echo
echo "BENCH verify_checksum_ms=$MC unit=ms"
echo "BENCH verify_ms=$MV unit=ms"
echo "BENCH verify_ratio=$RATIO unit=x"
echo "BENCH verify_one_difference_ms=$DIFF_MS unit=ms"
echo "BENCH_INFO command=\"$COMMAND_LINE\" scale=$SCALE rows=$ROWS reps=$REPS total_rows=$ROW_TOTAL"
echo "BENCH_INFO nproc=$(nproc) postgresql=\"$(sql tgt -c 'SHOW server_version')\" kernel=\"$(uname -r)\""
