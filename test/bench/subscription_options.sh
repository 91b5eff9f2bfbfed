#!/usr/bin/env bash
# test/bench/subscription_options.sh: which subscription options pg_zdm should
# use on a PostgreSQL 16+ target -- binary = on/off x streaming = off/parallel
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/subscription_options.sh            # about 7.5 minutes on 2 cores
#     bash test/bench/subscription_options.sh --quick    # smoke run, under a minute
#
# Options: --reps N (default 3), --scale N (pgbench scale, default 10),
# --mix-rows N (default 1000000), --update-rows N (default 1000000),
# --pgbench-seconds N (default 10).  ZDM_KEEP_TMP=1 keeps the server logs.
#
# What it measures.  Two throwaway PostgreSQL 18 clusters (source and target,
# the 18 build of test/lib/servers.sh, as the postgres OS user on 127.0.0.1;
# autovacuum off on both so it cannot land in one round and not another).
# The source database holds pgbench -i -s SCALE (SCALE x 100,000 accounts) and
# a table "mix" of MIX_ROWS rows (bigint key, bytea, numeric, timestamptz,
# text, int4): the types whose text and binary forms differ most.  A
# publication FOR ALL TABLES.  Then, for each option set
# {binary off/on} x {streaming off/parallel}, REPS times, interleaved (the
# order rotates every repetition, so a noisy minute hits every set):
#
#   1. copy:   a fresh target database with the schema of `pg_dump
#              --schema-only`, a slot made beforehand on the source with
#              pg_create_logical_replication_slot (as pg_zdm does), then
#              CREATE SUBSCRIPTION ... WITH (create_slot = false, binary = X,
#              streaming = Y); seconds from CREATE SUBSCRIPTION until every
#              pg_subscription_rel row is 'r' (polled every 20 ms on the
#              target).  The source's server log tells whether the table-sync
#              COPY ran WITH (FORMAT binary) (only from a 16+ publisher: a
#              source older than 16 copies in text whatever binary says;
#              the changes themselves go in binary from a 14+ publisher).
#              Likewise streaming = parallel is parallel only from a 16+
#              publisher: a 14/15 one streams as streaming = on, an older
#              one does not stream (set_stream_options in worker.c).
#   2. bigtxn: one UPDATE of UPDATE_ROWS rows of "mix" in a single
#              transaction on the source.  src = the UPDATE's own duration;
#              lag = from its commit until the slot's confirmed_flush_lsn on
#              the source reaches pg_current_wal_lsn() read right after the
#              commit (applied and flushed on the target; polled every 20 ms
#              on the source); total = src + lag.  The lag is what a cutover
#              waits for when such a transaction commits just before it.
#   3. pgbench: pgbench -c 4 -j 2 -T SECONDS (TPC-B) on the source; its tps,
#              and the seconds from the end of the run until the slot's
#              confirmed_flush_lsn reaches the source's pg_current_wal_lsn()
#              (the target has caught up).
#
# After each round the slot's pg_stat_replication_slots counters (spilled /
# streamed transactions) and the parallel apply workers on the target are
# recorded, to show which mechanism really ran, and the target's mix and
# pgbench_accounts are compared with the source's (count and sums).  Medians
# over the repetitions; ratios against binary=off streaming=off (the defaults
# up to 17) in the same run.  Prints a table and "BENCH name=value unit=..."
# lines.  Everything it starts is stopped and removed at exit
# (test/lib/common.sh).

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGCONNECT_TIMEOUT || true

COMMAND_LINE="$0${*:+ $*}"

# --- settings -------------------------------------------------------------
MODE=full
REPS=3
SCALE=10
MIX_ROWS=1000000
UPDATE_ROWS=1000000
PGBENCH_SECONDS=10
PGBENCH_CLIENTS=4

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) MODE=quick REPS=1 SCALE=2 MIX_ROWS=200000 UPDATE_ROWS=200000 PGBENCH_SECONDS=3 ;;
        --reps) REPS=${2:?}; shift ;;
        --scale) SCALE=${2:?}; shift ;;
        --mix-rows) MIX_ROWS=${2:?}; shift ;;
        --update-rows) UPDATE_ROWS=${2:?}; shift ;;
        --pgbench-seconds) PGBENCH_SECONDS=${2:?}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) zdm_die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $UPDATE_ROWS -le $MIX_ROWS ]] || zdm_die "--update-rows must not exceed --mix-rows"

# The option sets: "binary streaming".  The first is the baseline.
SETS=("off off" "on off" "off parallel" "on parallel")
NTABLES=5        # pgbench_accounts, _branches, _tellers, _history, mix

# Both clusters: room for the copy without checkpoints in the middle of a
# round, no autovacuum (the source is vacuumed by hand between rounds).
CONF=(
    "shared_buffers = 256MB"
    "max_wal_size = 4GB"
    "checkpoint_timeout = 30min"
    "autovacuum = off"
    "max_logical_replication_workers = 8"
)

declare -A V=()          # "metric|set" -> space-separated values, one per rep
ROUND_LINES=()
FAILURES=()
SCHEMA=""
CONNINFO=""

# --- helpers --------------------------------------------------------------

# sq DB [psql args...]: psql into the source, unaligned, tuples only.
sq() { local db=$1; shift; zdm_psql src -d "$db" -At "$@"; }
tq() { local db=$1; shift; zdm_psql tgt -d "$db" -At "$@"; }

now() { date +%s.%N; }

# median of the arguments (mean of the middle two for an even count)
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) { print "NA"; exit }
        if (NR % 2) printf "%.2f\n", a[(NR+1)/2];
        else printf "%.2f\n", (a[NR/2] + a[NR/2+1]) / 2 }'
}

record() {   # record METRIC SET VALUE
    V["$1|$2"]="${V["$1|$2"]:-} $3"
}

set_name() { echo "binary=$1 streaming=$2"; }
set_key()  { echo "binary_$1_streaming_$2"; }

# --- setup ----------------------------------------------------------------

setup() {
    zdm_require_root
    zdm_use_target 18
    zdm_cluster_start src auto "${CONF[@]}"
    zdm_cluster_start tgt auto "${CONF[@]}"
    if [[ ${ZDM_KEEP_TMP:-0} == 1 ]]; then
        zdm_before_cleanup "cp $(zdm_cluster_log src) /tmp/pg_zdm.subopts.source.log; cp $(zdm_cluster_log tgt) /tmp/pg_zdm.subopts.target.log"
    fi

    zdm_log "loading the source: pgbench -i -s $SCALE and $MIX_ROWS rows of mix"
    sq postgres -c "CREATE DATABASE bench"
    zdm_as_postgres pgbench -i -q -s "$SCALE" -h "$(zdm_cluster_sockdir src)" \
        -p "$(zdm_cluster_port src)" -U postgres bench 2>&1 | tail -n 1
    sq bench <<SQL
CREATE TABLE mix (
    id    bigint PRIMARY KEY,
    b     bytea NOT NULL,
    n     numeric(20,6) NOT NULL,
    t     timestamptz NOT NULL,
    label text NOT NULL,
    k     int4 NOT NULL
);
INSERT INTO mix
SELECT i,
       decode(md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text), 'hex'),
       (i * 1234.567891)::numeric(20,6),
       timestamptz '2020-01-01 00:00:00+00' + i * interval '37 seconds',
       'row ' || i,
       (i % 1000)::int4
FROM generate_series(1, $MIX_ROWS) AS i;
-- the subscription's role: its sessions log their statements, so the log
-- shows how table sync ran COPY
CREATE ROLE bench_repl LOGIN REPLICATION SUPERUSER;
ALTER ROLE bench_repl SET log_statement = 'all';
SQL
    zdm_log "schema for the target (pg_dump --schema-only)"
    SCHEMA=$(zdm_cluster_dir src)/schema.sql
    zdm_as_postgres pg_dump -h "$(zdm_cluster_sockdir src)" -p "$(zdm_cluster_port src)" \
        -U postgres --schema-only --no-publications --no-subscriptions \
        -f "$SCHEMA" bench
    chmod a+r "$SCHEMA"
    sq bench <<'SQL'
CREATE PUBLICATION bench_pub FOR ALL TABLES;
-- bench_wait_flush(): wait until slot bench_slot has confirmed the flush of
-- the LSN in the setting bench.lsn; seconds waited.
CREATE FUNCTION bench_wait_flush(timeout_s float8 DEFAULT 900) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    target pg_lsn := current_setting('bench.lsn')::pg_lsn;
    t0 timestamptz := clock_timestamp();
BEGIN
    LOOP
        EXIT WHEN (SELECT confirmed_flush_lsn >= target FROM pg_replication_slots
                   WHERE slot_name = 'bench_slot');
        IF clock_timestamp() > t0 + make_interval(secs => timeout_s) THEN
            RAISE EXCEPTION 'slot bench_slot did not reach % within % s', target, timeout_s;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0);
END $$;
SQL
    # One full-table update and a vacuum first, so that every round starts
    # from the same table layout (live rows plus reusable free space).
    zdm_log "warm-up update and VACUUM ANALYZE on the source"
    sq bench -c "UPDATE mix SET k = k + 0" -c "VACUUM ANALYZE"
    CONNINFO="host=127.0.0.1 port=$(zdm_cluster_port src) dbname=bench user=bench_repl application_name=bench_sub"
}

# --- one round ------------------------------------------------------------

# round REP BINARY STREAMING
round() {
    local rep=$1 bin=$2 str=$3
    local set db out copy_s bin_copies log_before src_s lag_s total_s
    local tps pb_lag spill stream pa_workers check_src check_tgt check
    set=$(set_key "$bin" "$str")
    db=r${rep}_$set

    zdm_log "round $rep: $(set_name "$bin" "$str")"
    tq postgres -c "CREATE DATABASE $db"
    tq "$db" -f "$SCHEMA" >/dev/null
    sq bench -c "CHECKPOINT"
    tq postgres -c "CHECKPOINT"
    sq bench -c "SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')" >/dev/null
    log_before=$(grep -c 'FORMAT binary' "$(zdm_cluster_log src)" || true)

    # 1. initial copy
    copy_s=$(tq "$db" -v conninfo="$CONNINFO" -v bin="$bin" -v str="$str" <<SQL
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
CREATE SUBSCRIPTION bench_sub CONNECTION :'conninfo' PUBLICATION bench_pub
    WITH (create_slot = false, slot_name = 'bench_slot', binary = :bin, streaming = :str);
DO \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    LOOP
        EXIT WHEN (SELECT count(*) = $NTABLES AND bool_and(srsubstate = 'r')
                   FROM pg_subscription_rel);
        IF clock_timestamp() > t0 + interval '900 s' THEN
            RAISE EXCEPTION 'initial copy did not finish within 900 s';
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
END \$\$;
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 2);
SQL
)
    bin_copies=$(( $(grep -c 'FORMAT binary' "$(zdm_cluster_log src)" || true) - log_before ))

    # 2. one large transaction
    out=$(sq bench <<SQL
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
UPDATE mix SET n = n + 1, t = t + interval '1 second' WHERE id <= $UPDATE_ROWS;
SELECT extract(epoch FROM clock_timestamp()) AS t1,
       set_config('bench.lsn', pg_current_wal_lsn()::text, false) AS lsn \gset
SELECT bench_wait_flush() AS lag \gset
SELECT round((:t1 - :t0)::numeric, 2), round(:lag::numeric, 2),
       round((:t1 - :t0 + :lag)::numeric, 2);
SQL
)
    read -r src_s lag_s total_s <<<"${out//|/ }"
    pa_workers=$(tq postgres -c "SELECT count(*) FROM pg_stat_activity
                                 WHERE backend_type = 'logical replication parallel worker'")

    # 3. many small transactions
    tps=$(zdm_as_postgres pgbench -n -c "$PGBENCH_CLIENTS" -j 2 -T "$PGBENCH_SECONDS" \
              -h "$(zdm_cluster_sockdir src)" -p "$(zdm_cluster_port src)" -U postgres bench 2>&1 |
          sed -n 's/^tps = \([0-9]*\).*/\1/p' | tail -n 1)
    pb_lag=$(sq bench <<'SQL'
SELECT set_config('bench.lsn', pg_current_wal_lsn()::text, false) \g /dev/null
SELECT round(bench_wait_flush()::numeric, 2);
SQL
)
    # let the walsender report its slot statistics
    sleep 1
    read -r spill stream <<<"$(sq bench -F ' ' -c "SELECT spill_txns, stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'bench_slot'")"

    # the same data on both sides?
    local q="SELECT (SELECT count(*) || '/' || sum(n) || '/' || max(t) || '/' || sum(length(b)) FROM mix)
               || '/' || (SELECT sum(abalance) FROM pgbench_accounts)
               || '/' || (SELECT count(*) FROM pgbench_history)"
    check_src=$(sq bench -c "$q")
    check_tgt=$(tq "$db" -c "$q")
    if [[ $check_src == "$check_tgt" ]]; then
        check=ok
    else
        check=DIFF
        FAILURES+=("round $rep $(set_name "$bin" "$str"): target differs from source: $check_tgt vs $check_src")
    fi

    tq "$db" -c "DROP SUBSCRIPTION bench_sub"      # drops bench_slot on the source
    tq postgres -c "DROP DATABASE $db"
    sq bench -c "VACUUM"

    record copy "$set" "$copy_s"
    record bigtxn_src "$set" "$src_s"
    record bigtxn_lag "$set" "$lag_s"
    record bigtxn_total "$set" "$total_s"
    record pgbench_tps "$set" "$tps"
    record pgbench_lag "$set" "$pb_lag"
    ROUND_LINES+=("$(printf '%-3s %-30s %8s %8s %8s %8s %8s %8s %7s %6s %6s %4s %5s' \
        "$rep" "$(set_name "$bin" "$str")" "$copy_s" "$src_s" "$lag_s" "$total_s" \
        "$tps" "$pb_lag" "$bin_copies/$NTABLES" "$spill" "$stream" "$pa_workers" "$check")")
    echo "${ROUND_LINES[-1]}"
}

# --- results --------------------------------------------------------------

print_results() {
    local s bin str key m base line
    local -A MED=()
    echo
    echo "Rounds (seconds; copy: CREATE SUBSCRIPTION -> all tables 'r'; big: UPDATE of $UPDATE_ROWS rows in one"
    echo "transaction, src = its duration, lag = commit -> applied+flushed on the target; pgbench: -c $PGBENCH_CLIENTS -T $PGBENCH_SECONDS,"
    echo "catch-up after it ends; bincopy: table-sync COPYs WITH (FORMAT binary); spill/stream: slot's spilled/streamed"
    echo "transactions; pa: parallel apply workers on the target after the big transaction; check: target = source):"
    printf '%-3s %-30s %8s %8s %8s %8s %8s %8s %7s %6s %6s %4s %5s\n' \
        rep set copy big_src big_lag big_tot pgb_tps pgb_lag bincopy spill stream pa check
    printf '%s\n' "${ROUND_LINES[@]}"

    for s in "${SETS[@]}"; do
        read -r bin str <<<"$s"
        key=$(set_key "$bin" "$str")
        for m in copy bigtxn_src bigtxn_lag bigtxn_total pgbench_tps pgbench_lag; do
            # shellcheck disable=SC2086
            MED["$m|$key"]=$(median ${V["$m|$key"]})
        done
    done
    base=$(set_key off off)

    echo
    echo "Medians of $REPS repetitions (ratio: against binary=off streaming=off in this run):"
    printf '%-30s %14s %14s %14s %14s %14s %14s\n' set "copy_s" "big_src_s" "big_lag_s" "big_total_s" "pgbench_tps" "pgbench_lag_s"
    for s in "${SETS[@]}"; do
        read -r bin str <<<"$s"
        key=$(set_key "$bin" "$str")
        line=$(printf '%-30s' "$(set_name "$bin" "$str")")
        for m in copy bigtxn_src bigtxn_lag bigtxn_total pgbench_tps pgbench_lag; do
            line+=$(printf ' %6s (%5s)' "${MED["$m|$key"]}" \
                "$(awk -v a="${MED["$m|$key"]}" -v b="${MED["$m|$base"]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }')")
        done
        echo "$line"
    done

    # the copy does not depend on streaming: pool both streaming settings
    local pooled_off pooled_on
    # shellcheck disable=SC2086
    pooled_off=$(median ${V["copy|$(set_key off off)"]} ${V["copy|$(set_key off parallel)"]})
    # shellcheck disable=SC2086
    pooled_on=$(median ${V["copy|$(set_key on off)"]} ${V["copy|$(set_key on parallel)"]})
    echo
    echo "Initial copy, both streaming settings pooled ($((2 * REPS)) copies each): binary=off $pooled_off s, binary=on $pooled_on s," \
         "ratio $(awk -v a="$pooled_on" -v b="$pooled_off" 'BEGIN { printf "%.2f", a / b }')"

    echo
    echo "BENCH_INFO command=\"$COMMAND_LINE\" mode=$MODE reps=$REPS"
    echo "BENCH_INFO nproc=$(nproc) source=\"$(sq bench -c 'SHOW server_version')\" target=\"$(tq postgres -c 'SHOW server_version')\" kernel=\"$(uname -r)\""
    echo "BENCH_INFO data=\"pgbench -s $SCALE ($((SCALE * 100000)) accounts) + mix $MIX_ROWS rows\" source_db_mb=$(sq bench -c "SELECT pg_database_size('bench') / 1048576") update_rows=$UPDATE_ROWS pgbench=\"-c $PGBENCH_CLIENTS -j 2 -T $PGBENCH_SECONDS\""
    echo "BENCH_INFO loadavg_start=\"$LOADAVG_START\" loadavg_end=\"$(cut -d' ' -f1-3 /proc/loadavg)\" duration_s=$((SECONDS - STARTED))"
    for s in "${SETS[@]}"; do
        read -r bin str <<<"$s"
        key=$(set_key "$bin" "$str")
        for m in copy bigtxn_src bigtxn_lag bigtxn_total pgbench_lag; do
            echo "BENCH ${m}_s.$key=${MED["$m|$key"]} unit=s"
        done
        echo "BENCH pgbench_tps.$key=${MED["pgbench_tps|$key"]} unit=tps"
    done
    echo "BENCH copy_s.binary_off_pooled=$pooled_off unit=s"
    echo "BENCH copy_s.binary_on_pooled=$pooled_on unit=s"
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        echo
        printf 'BENCH FAILURE: %s\n' "${FAILURES[@]}"
        return 1
    fi
}

# --- main -----------------------------------------------------------------

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$SECONDS

main() {
    local rep k idx bin str
    setup
    for ((rep = 1; rep <= REPS; rep++)); do
        for ((k = 0; k < ${#SETS[@]}; k++)); do
            idx=$(( (k + rep - 1) % ${#SETS[@]} ))
            read -r bin str <<<"${SETS[idx]}"
            round "$rep" "$bin" "$str"
        done
    done
    print_results
}

main
