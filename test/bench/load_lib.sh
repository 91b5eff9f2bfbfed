# test/bench/load_lib.sh: what the load benchmarks (test/bench/run.sh, the
# cutover; test/bench/fallback.sh, the fallback) share: the setup (build,
# install, the load client test/bench/writer.c, two throwaway clusters src
# and tgt), small helpers, the load's schema and the lost-write check.
#
# Sourced after test/lib/common.sh by a script running with
# `set -euo pipefail` that has set BENCH_DIR.

# --- state ----------------------------------------------------------------
BENCH_TMP=""                # root-owned scratch directory (writer, outputs)
WRITER=""                   # the compiled load client
BENCH_CHILD=""              # pid of the writer running now, if any
SRC_PORT=""
TGT_PORT=""
declare -A R=()             # figures, by name
RESULT_LINES=()             # "name value unit" for the BENCH lines
FAILURES=()                 # what went wrong, for the BENCH FAILURE lines

# --- helpers --------------------------------------------------------------

# Value of key $2 in the key=value output file $1 (first occurrence).
kv() {
    sed -n "s/^$2=//p" "$1" | head -n 1
}

# awk arithmetic: calc EXPR (printf format %.1f unless $2 given)
calc() {
    awk "BEGIN { v = $1; printf \"${2:-%.1f}\", v }"
}

# Median of the numbers given as arguments (mean of the middle two for an
# even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "NA"; exit }
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2];
        else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

maximum() {
    printf '%s\n' "$@" | sort -g | tail -n 1
}

# Time of the first mark of writer output $1 that contains $2 ("+12.3").
mark_at() {
    grep -F -- "$2" "$1" | sed -n 's/^mark=\([-+][0-9.]*\) ms: .*/\1/p' | head -n 1
}

# Record a figure: name value unit.
figure() {
    R[$1]=$2
    RESULT_LINES+=("$1 $2 $3")
}

# bench_lines: the BENCH lines of every figure(), then a BENCH FAILURE line
# for each thing that went wrong (the callers print their BENCH_INFO first).
bench_lines() {
    local line name value unit
    for line in "${RESULT_LINES[@]}"; do
        read -r name value unit <<<"$line"
        echo "BENCH $name=$value unit=$unit"
    done
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        echo
        for line in "${FAILURES[@]}"; do
            echo "BENCH FAILURE: $line"
        done
    fi
}

# psql into database $2 of cluster $1, unaligned, tuples only, quiet.
sql() {
    local cluster=$1 db=$2
    shift 2
    zdm_psql "$cluster" -d "$db" -At "$@"
}

# Connection string of database $2 on cluster $1 (src or tgt), over TCP.
conninfo() {
    local port
    if [[ $1 == src ]]; then port=$SRC_PORT; else port=$TGT_PORT; fi
    echo "host=127.0.0.1 port=$port dbname=$2 user=postgres application_name=zdm_bench"
}

# Wait until query $3 on database $2 of cluster $1 returns "t"; at most $4
# seconds; $5 says what for.
wait_true() {
    local cluster=$1 db=$2 query=$3 timeout=$4 what=$5
    local deadline=$((SECONDS + timeout)) out
    while ((SECONDS < deadline)); do
        out=$(sql "$cluster" "$db" -c "$query" 2>/dev/null || true)
        [[ $out == t ]] && return 0
        sleep 0.2
    done
    zdm_die "timed out after ${timeout}s waiting for $what"
}

# Run the load client with the given arguments, stdout to $1, stderr to $1.err,
# in the background so that a signal stops the benchmark at once (the EXIT
# trap kills it).  Returns its status.
run_writer() {
    local out=$1 rc=0
    shift
    "$WRITER" "$@" >"$out" 2>"$out.err" &
    BENCH_CHILD=$!
    wait "$BENCH_CHILD" || rc=$?
    BENCH_CHILD=""
    if [[ -s $out.err ]]; then
        sed 's/^/    writer: /' "$out.err" | head -n 20
    fi
    return "$rc"
}

kill_writer() {
    if [[ -n $BENCH_CHILD ]]; then
        kill "$BENCH_CHILD" 2>/dev/null || true
        wait "$BENCH_CHILD" 2>/dev/null || true
    fi
}

# Create database $2 on cluster $1.
create_db() {
    sql "$1" postgres -c "CREATE DATABASE \"$2\""
}

# Drop database $1 on both clusters, with whatever replication objects still
# hang on it in either direction (subscriptions, slots), so no slot keeps WAL.
drop_db_both() {
    local db=$1 sub cluster
    for cluster in tgt src; do
        for sub in $(sql "$cluster" postgres -c "SELECT s.subname FROM pg_subscription s
                     JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = '$db'"); do
            sql "$cluster" "$db" -c "ALTER SUBSCRIPTION \"$sub\" DISABLE" \
                -c "ALTER SUBSCRIPTION \"$sub\" SET (slot_name = NONE)" \
                -c "DROP SUBSCRIPTION \"$sub\"" >/dev/null || true
        done
    done
    for cluster in tgt src; do
        sql "$cluster" postgres -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                                    WHERE database = '$db' AND active_pid IS NOT NULL" >/dev/null || true
        sql "$cluster" postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                                    WHERE database = '$db'" >/dev/null 2>&1 ||
            { sleep 1; sql "$cluster" postgres -c "SELECT pg_drop_replication_slot(slot_name)
                       FROM pg_replication_slots WHERE database = '$db'" >/dev/null || true; }
        sql "$cluster" postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
            zdm_warn "could not drop database $db on cluster $cluster"
    done
}

# --- setup ----------------------------------------------------------------

setup() {
    zdm_require_root
    zdm_install_packages
    if ! zdm_package_installed libpq-dev; then
        zdm_log "installing libpq-dev (the load client is a libpq program)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y libpq-dev ||
            zdm_die "apt-get install libpq-dev failed"
    fi

    zdm_lock_install
    zdm_log "building pg_zdm in $ZDM_REPO_ROOT (make with_llvm=no)"
    make -C "$ZDM_REPO_ROOT" -j"$(nproc)" PG_CONFIG="$ZDM_PG_CONFIG" with_llvm=no ||
        zdm_die "make failed"
    make -C "$ZDM_REPO_ROOT" PG_CONFIG="$ZDM_PG_CONFIG" with_llvm=no install >/dev/null ||
        zdm_die "make install failed"

    BENCH_TMP=$(mktemp -d -t pg_zdm.bench.XXXXXX)
    ZDM_TMP_DIRS+=("$BENCH_TMP")
    zdm_before_cleanup kill_writer
    WRITER=$BENCH_TMP/writer
    zdm_log "compiling the load client"
    gcc -O2 -Wall -Wextra -Wno-unused-parameter -pthread \
        -I"$("$ZDM_PG_CONFIG" --includedir)" "$BENCH_DIR/writer.c" \
        -L"$("$ZDM_PG_CONFIG" --libdir)" -lpq -o "$WRITER" ||
        zdm_die "could not compile $BENCH_DIR/writer.c"

    # log_lock_waits: writers queued behind a fence longer than 1 s show up
    zdm_cluster_start src auto "log_lock_waits = on" "log_min_messages = notice"
    zdm_cluster_start tgt auto "log_min_messages = notice"
    SRC_PORT=$(zdm_cluster_port src)
    TGT_PORT=$(zdm_cluster_port tgt)
    if [[ ${ZDM_KEEP_TMP:-0} == 1 ]]; then
        zdm_before_cleanup "cp $(zdm_cluster_log src) $BENCH_TMP/source.log; cp $(zdm_cluster_log tgt) $BENCH_TMP/target.log"
    fi
}

# --- the load ---------------------------------------------------------------

# The tables the load client writes to (test/bench/writer.c), and rows for
# the initial copy.
LOAD_SCHEMA="
CREATE TABLE bench_persistent (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client integer NOT NULL, seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (client, seq));
CREATE TABLE bench_reconnect (
    id serial PRIMARY KEY,
    client integer NOT NULL, seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (client, seq));
CREATE TABLE bench_long (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    client integer NOT NULL, seq bigint NOT NULL, part integer NOT NULL,
    note text NOT NULL,
    UNIQUE (client, seq, part));"

LOAD_SEED="
INSERT INTO bench_persistent (client, seq) SELECT 0, g FROM generate_series(1, 10000) g;
INSERT INTO bench_reconnect (client, seq) SELECT 0, g FROM generate_series(1, 10000) g;
INSERT INTO bench_long (client, seq, part, note) SELECT 0, g, 1, 'b' FROM generate_series(1, 10000) g;"

# How many acknowledged commits of file $3 are missing on database $2 of
# cluster $1 (tgt after a cutover, src after a fallback); prints "missing
# checked per-table" (per-table: "bench_long:2" or -).
count_lost() {
    local cluster=$1 db=$2 acked=$3
    sql "$cluster" "$db" -c "CREATE TEMP TABLE acked (tbl text, client int, seq bigint)" \
        -c "\\copy acked FROM pstdin" \
        -c "WITH c AS (
              SELECT a.tbl, CASE a.tbl
                WHEN 'bench_persistent' THEN EXISTS (SELECT 1 FROM bench_persistent t
                    WHERE t.client = a.client AND t.seq = a.seq)
                WHEN 'bench_reconnect' THEN EXISTS (SELECT 1 FROM bench_reconnect t
                    WHERE t.client = a.client AND t.seq = a.seq)
                WHEN 'bench_long' THEN (SELECT count(*) FROM bench_long t
                    WHERE t.client = a.client AND t.seq = a.seq
                      AND (t.part = 2 OR t.note = 'b')) = 2
              END AS found FROM acked a)
            SELECT (SELECT count(*) FROM c WHERE NOT found) || ' ' || (SELECT count(*) FROM c) || ' ' ||
                   coalesce((SELECT string_agg(tbl || ':' || n, ',' ORDER BY tbl)
                             FROM (SELECT tbl, count(*) AS n FROM c WHERE NOT found GROUP BY tbl) x), '-')" <"$acked"
}
