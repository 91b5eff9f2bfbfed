#!/usr/bin/env bash
# test/bench/run.sh: the pg_zdm benchmark -- how long writes are blocked at
# cutover, whether anything is lost, how it scales, next to the naive procedure
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/run.sh            # full run, about 3-5 minutes on 2 cores
#     bash test/bench/run.sh --quick    # smoke run: 2 rounds, smaller scales
#
# It installs PostgreSQL 15 and the build tools if missing (test/lib/common.sh),
# builds and installs the extension (make with_llvm=no), compiles the load
# client (test/bench/writer.c), starts two throwaway clusters -- source and
# target -- as the postgres OS user on 127.0.0.1, measures, prints a table
# and one "BENCH name=value unit=..." line per figure, and removes everything
# it made on exit (also on failure or Ctrl-C).
#
# What it measures (numbers as in issue 4):
#
#  1. Write-unavailability window at cutover, while an application writes at
#     a steady 500 transactions/s: 4 persistent connections at 80 tx/s each,
#     4 clients reconnecting for every transaction at 35 tx/s each, and 4
#     clients running long transactions (BEGIN; INSERT; UPDATE; INSERT;
#     COMMIT with 25 ms of client work between statements, 75 ms in all) at
#     10 tx/s each.  Each client writes rows with unique keys (client, seq).
#     A client keeps writing to the source until the source refuses a write
#     AND the cutover call has returned (the driver wakes it then); it then
#     repoints to the target and goes on there.
#
#       window = from the start of the first write on the source that failed
#                or stalled, to the acknowledgement of the first commit on
#                the target.
#       stall  = a write on the source that succeeded, but more than 200 ms
#                later than the median duration of its kind of transaction
#                before the cutover.  (A write queued behind the fence never
#                completes normally: it fails with SQLSTATE 25006 when the
#                fence commits, and counts from the moment it started.)
#
#     Median and worst over ROUNDS cutovers, each on fresh databases (a new
#     zdm.init every round).  Also printed: when the last client got a commit
#     through on the target, and the longest gap a single client saw.
#  2. Lost writes: every commit the source acknowledged (keys recorded by the
#     client) is looked up on the target after the cutover (for long
#     transactions: both rows, and the UPDATE).  Any missing after a pg_zdm
#     cutover fails the run.
#  3. The same for the naive procedure, run in the same rounds (alternating
#     with pg_zdm) on a publication and subscription made by hand:
#     ALTER SYSTEM SET default_transaction_read_only = on + pg_reload_conf(),
#     pg_current_wal_lsn(), poll pg_stat_subscription.latest_end_lsn on the
#     target once a second until it reaches that LSN, one setval statement
#     per sequence (source value + 5000, as pg_zdm's default buffer), DROP
#     SUBSCRIPTION; then the clients repoint.  Its lost writes are reported,
#     not failed on.
#  4. Sequences: a cutover (no load) of a database with SEQS used sequences;
#     the sequence step is the time between pg_zdm's NOTICEs "final source
#     position" and "N sequences set", as the client receives them.  Twice:
#     right after the schema was created ("fresh": the catalogs' planner
#     statistics do not know the new sequences yet, as after a schema restore
#     followed quickly by the cutover), and after ANALYZE of the catalogs on
#     both sides ("analyzed": what autovacuum leaves within a minute or so).
#     Baseline: one SELECT setval(...) per sequence from a client on
#     loopback, for the same sequences.
#  5. zdm.status() and zdm.tables() with TABLES published tables (10 rows
#     each, copied by zdm.init and ready): one
#     warm-up call, then the median of 20 calls on one connection.  Also the
#     time of the initial copy and of a cutover (no load) of those tables.
#  6. Catch-up: with the subscription disabled, BURST_ROWS rows are inserted
#     on the source in transactions of 100 rows, followed by a marker row;
#     then the subscription is enabled and the target polled every 5 ms until
#     the marker is there.  rows/s and MB/s (10^6 bytes of source WAL between
#     before and after the burst), counted from the start of the apply worker
#     (PostgreSQL 15's launcher starts it up to wal_retrieve_retry_interval,
#     5 s, after ENABLE; reported apart), for zdm's subscription and for the
#     same subscription created by hand, alternating, CATCHUP_REPS (3) times
#     each; medians.
#
#  (How pg_zdm scales to tens of thousands of tables -- check, init, status,
#  abort, and the blocked window of a cutover with 1,000 to 20,000 tables --
#  is measured by test/bench/scale.sh, whose clusters need other settings.)
#
# Options:
#   --quick          2 rounds, 1,000 sequences, 100 tables, 20,000-row burst
#   --rounds N       cutover rounds per procedure (default 5)
#   --sequences N    default 10000
#   --tables N       default 1000
#   --burst-rows N   default 200000
#
# Environment: ZDM_KEEP_TMP=1 keeps the temporary directory (per-round
# attempt logs, server logs) for inspection.

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

# libpq variables of the caller must not redirect the load client
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGCONNECT_TIMEOUT || true

COMMAND_LINE="$0${*:+ $*}"
BENCH_DIR=$ZDM_REPO_ROOT/test/bench

# --- settings -------------------------------------------------------------
MODE=full
ROUNDS=5
SEQS=10000
TABLES=1000
BURST_ROWS=200000
CATCHUP_REPS=3
WARMUP_MS=3000
AFTER_MS=1500
STATUS_CALLS=20
SEQ_BUFFER=5000
# the application: clients:rate[:duration_ms] per kind
PERSISTENT=4:80
RECONNECT=4:35
LONG=4:10:75
TPS=$((4 * 80 + 4 * 35 + 4 * 10))

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick)
            MODE=quick ROUNDS=2 SEQS=1000 TABLES=100 BURST_ROWS=20000
            CATCHUP_REPS=1 WARMUP_MS=2000 ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --sequences) SEQS=${2:?}; shift ;;
        --tables) TABLES=${2:?}; shift ;;
        --burst-rows) BURST_ROWS=${2:?}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) zdm_die "unknown option $1 (see --help)" ;;
    esac
    shift
done

# --- state ----------------------------------------------------------------
# (the shared state, helpers, setup, the load's schema and count_lost)
# shellcheck source=test/bench/load_lib.sh
source "$BENCH_DIR/load_lib.sh"
ROUND_LINES=()              # per-round detail for the table
TIMELINE_LINES=()           # where the window of each pg_zdm round went
ZDM_LOST_TOTAL=0
NAIVE_LOST_TOTAL=0

# --- 1-3: cutover under load ----------------------------------------------

# One cutover under load.  $1: zdm or naive, $2: round number.
load_round() {
    local how=$1 round=$2
    local db=${how}_r$round
    local dir=$BENCH_TMP/$db
    local out=$dir/writer.out
    local src_dsn rc=0 lost checked lost_where window

    mkdir -p "$dir"
    src_dsn="host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres"
    create_db src "$db"
    create_db tgt "$db"
    sql src "$db" -c "$LOAD_SCHEMA" -c "$LOAD_SEED" >/dev/null
    sql tgt "$db" -c "$LOAD_SCHEMA" >/dev/null

    if [[ $how == zdm ]]; then
        sql tgt "$db" -c "CREATE EXTENSION pg_zdm" -c "CALL zdm.init('$src_dsn')" >/dev/null
        wait_true tgt "$db" "SELECT ok FROM zdm.status() WHERE component = 'overall'" 120 \
            "zdm.status() to say ready ($db)"
    else
        sql src "$db" -c "CREATE PUBLICATION naive_pub FOR ALL TABLES" >/dev/null
        sql tgt "$db" -c "CREATE SUBSCRIPTION naive_sub CONNECTION '$src_dsn' PUBLICATION naive_pub" >/dev/null
        wait_true tgt "$db" "SELECT count(*) = 3 AND bool_and(srsubstate = 'r')
                             FROM pg_subscription_rel" 120 "the initial copy ($db)"
        # the apply worker streams (not only the table syncs have finished)
        wait_true tgt "$db" "SELECT pid IS NOT NULL FROM pg_stat_subscription
                             WHERE subname = 'naive_sub' AND relid IS NULL" 60 "the apply worker ($db)"
    fi

    zdm_log "round $round, $how: cutover under load ($TPS tx/s)"
    run_writer "$out" load --cutover "$how" \
        --source "$(conninfo src "$db")" --target "$(conninfo tgt "$db")" \
        --persistent "$PERSISTENT" --reconnect "$RECONNECT" --long "$LONG" \
        --warmup-ms "$WARMUP_MS" --after-ms "$AFTER_MS" \
        --seq-buffer "$SEQ_BUFFER" --out "$dir" || rc=$?
    sed -n 's/^mark=/    /p' "$out"

    if [[ $how == naive ]]; then
        # make the source writable again (in a session that may still be
        # read-only until the reload reaches it)
        sql src postgres -c "SET default_transaction_read_only = off" \
            -c "ALTER SYSTEM RESET default_transaction_read_only" \
            -c "SELECT pg_reload_conf()" >/dev/null
        wait_true src postgres "SELECT current_setting('default_transaction_read_only') = 'off'" 30 \
            "the source to be writable again"
    fi

    if [[ $rc -ne 0 || $(kv "$out" window_ms) == NA || -z $(kv "$out" window_ms) ]]; then
        FAILURES+=("round $round $how: load client exit $rc, window $(kv "$out" window_ms), $(kv "$out" cutover_error_text)")
        zdm_warn "round $round $how failed: $(kv "$out" cutover_error_text)"
        cat "$out"
        return 0
    fi

    if [[ $how == zdm ]]; then
        # the extension's own event log, on the same clock as the marks above
        sql tgt "$db" -F ' ' -c "SELECT CASE WHEN ms >= 0 THEN '+' ELSE '' END || ms, event
                                 FROM (SELECT id, event, round(1000 * (extract(epoch FROM at)
                                              - $(kv "$out" window_start_epoch))::numeric, 1) AS ms
                                       FROM zdm.event_log) e
                                 WHERE id >= (SELECT max(id) FROM zdm.event_log WHERE event = 'cutover_started')
                                 ORDER BY id" >"$dir/events.txt"
        sed 's/^ */    /; s/ / ms: event_log /' "$dir/events.txt"
        TIMELINE_LINES+=("$(printf 'zdm %2s: stall 0, fenced %s, final LSN %s, sequences %s, caught up %s, fence committed %s, call returned %s, first target commit %s' \
            "$round" "$(mark_at "$out" 'writes blocked on the source')" "$(mark_at "$out" 'final source position')" \
            "$(mark_at "$out" 'sequences set')" "$(mark_at "$out" 'target caught up')" \
            "$(awk '$2 == "fence_committed" { print $1 }' "$dir/events.txt")" \
            "+$(kv "$out" cutover_return_in_window_ms)" "+$(kv "$out" window_ms)")")
    fi
    lost=$(count_lost tgt "$db" "$dir/acked.tsv") || zdm_die "the lost-write check of $db failed"
    read -r lost checked lost_where <<<"$lost"
    window=$(kv "$out" window_ms)
    if [[ $how == zdm ]]; then
        ZDM_WINDOWS+=("$window")
        ZDM_LOST_TOTAL=$((ZDM_LOST_TOTAL + lost))
        ZDM_CHECKED=$((ZDM_CHECKED + checked))
        ZDM_LAST_BACK+=("$(kv "$out" last_client_back_in_window_ms)")
        ZDM_GAPS+=("$(kv "$out" worst_client_gap_ms)")
        ZDM_CALLS+=("$(kv "$out" cutover_call_ms)")
        if [[ $lost -ne 0 ]]; then
            FAILURES+=("round $round zdm: $lost of $checked acknowledged commits MISSING on the target")
            printf '\n!!!!!!!! LOST WRITES: round %s, pg_zdm: %s of %s acknowledged commits are not on the target !!!!!!!!\n\n' \
                "$round" "$lost" "$checked" >&2
        fi
    else
        NAIVE_WINDOWS+=("$window")
        NAIVE_LOST_TOTAL=$((NAIVE_LOST_TOTAL + lost))
        NAIVE_CHECKED=$((NAIVE_CHECKED + checked))
        NAIVE_LAST_BACK+=("$(kv "$out" last_client_back_in_window_ms)")
        NAIVE_GAPS+=("$(kv "$out" worst_client_gap_ms)")
        NAIVE_CALLS+=("$(kv "$out" cutover_call_ms)")
    fi
    ROUND_LINES+=("$(printf '%-6s %5s %10s %12s %12s %10s %9s %8s %8s  %s' \
        "$how" "$round" "$window" "$(kv "$out" last_client_back_in_window_ms)" \
        "$(kv "$out" worst_client_gap_ms)" "$(kv "$out" cutover_call_ms)" \
        "$checked" "$lost" "$(kv "$out" target_ok)" "$lost_where")")
    zdm_log "round $round, $how: window $window ms, $lost of $checked acknowledged commits missing ($lost_where)"
    drop_db_both "$db"
}

ZDM_WINDOWS=() NAIVE_WINDOWS=() ZDM_LAST_BACK=() NAIVE_LAST_BACK=()
ZDM_GAPS=() NAIVE_GAPS=() ZDM_CALLS=() NAIVE_CALLS=()
ZDM_CHECKED=0 NAIVE_CHECKED=0

bench_cutover_under_load() {
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        load_round zdm "$r"
        load_round naive "$r"
    done
    figure zdm_window_median_ms "$(median "${ZDM_WINDOWS[@]}")" ms
    figure zdm_window_worst_ms "$(maximum "${ZDM_WINDOWS[@]}")" ms
    figure naive_window_median_ms "$(median "${NAIVE_WINDOWS[@]}")" ms
    figure naive_window_worst_ms "$(maximum "${NAIVE_WINDOWS[@]}")" ms
    figure zdm_all_clients_back_median_ms "$(median "${ZDM_LAST_BACK[@]}")" ms
    figure naive_all_clients_back_median_ms "$(median "${NAIVE_LAST_BACK[@]}")" ms
    figure zdm_cutover_call_median_ms "$(median "${ZDM_CALLS[@]}")" ms
    figure naive_procedure_median_ms "$(median "${NAIVE_CALLS[@]}")" ms
    if [[ ${#ZDM_WINDOWS[@]} -gt 0 && ${#NAIVE_WINDOWS[@]} -gt 0 ]]; then
        figure window_ratio_zdm_over_naive \
            "$(calc "${R[zdm_window_median_ms]} / ${R[naive_window_median_ms]}" %.3f)" ratio
    fi
    figure zdm_lost_writes "$ZDM_LOST_TOTAL" rows
    figure zdm_acked_writes_checked "$ZDM_CHECKED" rows
    figure naive_lost_writes "$NAIVE_LOST_TOTAL" rows
    figure naive_acked_writes_checked "$NAIVE_CHECKED" rows
}

# --- 4: sequences ---------------------------------------------------------

# One cutover, no load, of a database with $SEQS used sequences.  $1 is
# "fresh": right after the schema was made, as the catalog statistics are
# then (autovacuum has not analyzed pg_class yet), or "analyzed": after
# ANALYZE of the catalogs on both sides, as autovacuum leaves them a minute
# later.  With "analyzed" the baseline runs too.
seq_cutover() {
    local variant=$1 db=seqs_$1 out=$BENCH_TMP/seqs_$1.out base=$BENCH_TMP/seqs_baseline.out
    local t_final t_set step set_count ahead ok=yes
    local src_dsn="host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres"
    local make_seqs="CREATE TABLE anchor (id int PRIMARY KEY); INSERT INTO anchor VALUES (1);"
    local analyze="ANALYZE pg_catalog.pg_class, pg_catalog.pg_sequence, pg_catalog.pg_namespace,
                   pg_catalog.pg_depend, pg_catalog.pg_attribute"

    zdm_log "sequences ($variant catalog statistics): $SEQS used sequences on the source, $SEQS on the target"
    create_db src "$db"
    create_db tgt "$db"
    sql src "$db" -c "$make_seqs" -c "DO \$\$ BEGIN
        FOR i IN 1..$SEQS LOOP
            EXECUTE format('CREATE SEQUENCE bench_seq_%s', i);
            PERFORM nextval(format('bench_seq_%s', i));
            IF i % 500 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$" >/dev/null
    sql tgt "$db" -c "$make_seqs" -c "TRUNCATE anchor" -c "DO \$\$ BEGIN
        FOR i IN 1..$SEQS LOOP
            EXECUTE format('CREATE SEQUENCE bench_seq_%s', i);
            IF i % 500 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$" >/dev/null
    sql tgt "$db" -c "CREATE EXTENSION pg_zdm" -c "CALL zdm.init('$src_dsn')" >/dev/null
    wait_true tgt "$db" "SELECT ok FROM zdm.status() WHERE component = 'overall'" 120 \
        "zdm.status() to say ready ($db)"
    if [[ $variant == analyzed ]]; then
        sql src "$db" -c "$analyze" >/dev/null
        sql tgt "$db" -c "$analyze" >/dev/null
    fi

    zdm_log "sequences ($variant): cutover with $SEQS sequences, no load"
    if ! run_writer "$out" call "$(conninfo tgt "$db")" "CALL zdm.cutover()"; then
        ok=no
        FAILURES+=("sequences ($variant): the cutover with $SEQS sequences failed: $(tr '\n' ' ' <"$out.err")")
    fi
    sed -n 's/^notice=/    /p' "$out"
    # the step's NOTICEs come even when the cutover fails afterwards
    t_final=$(sed -n 's/^notice=\([0-9.]*\) ms: .*final source position.*/\1/p' "$out" | head -n 1)
    t_set=$(sed -n 's/^notice=\([0-9.]*\) ms: .*sequences set to the source.*/\1/p' "$out" | head -n 1)
    set_count=$(sed -n 's/^notice=[0-9.]* ms: .*NOTICE: *\([0-9]*\) sequences set.*/\1/p' "$out" | head -n 1)
    if [[ -n $t_final && -n $t_set ]]; then
        step=$(calc "$t_set - $t_final")
        figure "seq_${variant}_count_set" "${set_count:-NA}" sequences
        figure "seq_${variant}_step_ms" "$step" ms
    fi
    if [[ $ok == yes ]]; then
        figure "seq_${variant}_writes_blocked_ms" \
            "$(sed -n 's/.*writes were blocked on the source for \([0-9.]*\) ms.*/\1/p' "$out" | head -n 1)" ms
        ahead=$(sql tgt "$db" -c "SELECT count(*) FROM pg_sequences
                                  WHERE sequencename LIKE 'bench_seq_%' AND last_value = 1 + $SEQ_BUFFER")
        [[ $ahead == "$SEQS" ]] ||
            FAILURES+=("sequences ($variant): only $ahead of $SEQS sequences are at the source's value + $SEQ_BUFFER on the target")
    fi

    if [[ $variant == analyzed ]]; then
        zdm_log "sequences: baseline, one setval statement per sequence"
        run_writer "$base" setval "$(conninfo tgt "$db")" "bench_seq_%d" "$SEQS" $((1 + SEQ_BUFFER)) ||
            zdm_die "the setval baseline failed"
        figure seq_one_round_trip_each_ms "$(kv "$base" elapsed_ms)" ms
    fi
    drop_db_both "$db"
}

bench_sequences() {
    seq_cutover fresh
    seq_cutover analyzed
    if [[ -n ${R[seq_one_round_trip_each_ms]:-} ]]; then
        [[ -n ${R[seq_fresh_step_ms]:-} ]] &&
            figure seq_fresh_speedup_vs_round_trips \
                "$(calc "${R[seq_one_round_trip_each_ms]} / ${R[seq_fresh_step_ms]}" %.1f)" x
        [[ -n ${R[seq_analyzed_step_ms]:-} ]] &&
            figure seq_analyzed_speedup_vs_round_trips \
                "$(calc "${R[seq_one_round_trip_each_ms]} / ${R[seq_analyzed_step_ms]}" %.1f)" x
    fi
    return 0
}

# --- 5: status at scale ---------------------------------------------------

bench_status() {
    local db=tabs out
    local src_dsn="host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres"
    local make_tables="DO \$\$ BEGIN
        FOR i IN 1..$TABLES LOOP
            EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, v text)', i);
            IF i % 100 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$"
    local t0

    zdm_log "status: $TABLES tables with 10 rows each"
    create_db src "$db"
    create_db tgt "$db"
    sql src "$db" -c "$make_tables" -c "DO \$\$ BEGIN
        FOR i IN 1..$TABLES LOOP
            EXECUTE format('INSERT INTO t_%s SELECT g, ''row '' || g FROM generate_series(1, 10) g', i);
            IF i % 100 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$" >/dev/null
    sql tgt "$db" -c "$make_tables" -c "CREATE EXTENSION pg_zdm" >/dev/null
    t0=$(date +%s.%N)
    sql tgt "$db" -c "CALL zdm.init('$src_dsn')" >/dev/null
    wait_true tgt "$db" "SELECT ok FROM zdm.status() WHERE component = 'overall'" 600 \
        "the initial copy of $TABLES tables"
    figure status_initial_copy_s "$(calc "$(date +%s.%N) - $t0")" s

    out=$BENCH_TMP/status.out
    run_writer "$out" timeq "$(conninfo tgt "$db")" "SELECT * FROM zdm.status()" "$STATUS_CALLS" ||
        zdm_die "timing zdm.status() failed"
    figure status_median_ms "$(kv "$out" median_ms)" ms
    figure status_max_ms "$(kv "$out" max_ms)" ms
    figure status_first_call_ms "$(kv "$out" first_ms)" ms
    out=$BENCH_TMP/tables.out
    run_writer "$out" timeq "$(conninfo tgt "$db")" "SELECT * FROM zdm.tables()" "$STATUS_CALLS" ||
        zdm_die "timing zdm.tables() failed"
    figure tables_median_ms "$(kv "$out" median_ms)" ms
    figure tables_max_ms "$(kv "$out" max_ms)" ms
    figure tables_rows "$(kv "$out" rows)" rows

    zdm_log "status: cutover of $TABLES tables, no load"
    out=$BENCH_TMP/tables_cutover.out
    if run_writer "$out" call "$(conninfo tgt "$db")" "CALL zdm.cutover()"; then
        sed -n 's/^notice=/    /p' "$out"
        figure cutover_many_tables_blocked_ms \
            "$(sed -n 's/.*writes were blocked on the source for \([0-9.]*\) ms.*/\1/p' "$out" | head -n 1)" ms
    else
        FAILURES+=("status: the cutover of $TABLES tables failed: $(cat "$out.err")")
    fi
    drop_db_both "$db"
}

# --- 6: catch-up ------------------------------------------------------------

CATCHUP_ZDM=() CATCHUP_HAND=() CATCHUP_ZDM_MB=() CATCHUP_HAND_MB=() CATCHUP_LAUNCH=()

catchup_once() {
    local how=$1 rep=$2
    local db=cu_${how}_$rep out=$BENCH_TMP/cu_${how}_$rep.out
    local src_dsn="host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres"
    local schema="CREATE TABLE burst (id bigserial PRIMARY KEY, client int NOT NULL, payload text NOT NULL);
                  CREATE TABLE marker (id int PRIMARY KEY);"
    local sub lsn0 lsn1 wal_bytes elapsed n

    create_db src "$db"
    create_db tgt "$db"
    sql src "$db" -c "$schema" >/dev/null
    sql tgt "$db" -c "$schema" >/dev/null
    if [[ $how == zdm ]]; then
        sub=zdm_sub
        sql tgt "$db" -c "CREATE EXTENSION pg_zdm" -c "CALL zdm.init('$src_dsn')" >/dev/null
        wait_true tgt "$db" "SELECT ok FROM zdm.status() WHERE component = 'overall'" 120 \
            "zdm.status() to say ready ($db)"
    else
        sub=hand_sub
        sql src "$db" -c "CREATE PUBLICATION hand_pub FOR ALL TABLES" >/dev/null
        sql tgt "$db" -c "CREATE SUBSCRIPTION hand_sub CONNECTION '$src_dsn' PUBLICATION hand_pub" >/dev/null
        wait_true tgt "$db" "SELECT count(*) = 2 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel" \
            120 "the initial copy ($db)"
    fi
    sql tgt "$db" -c "ALTER SUBSCRIPTION $sub DISABLE" >/dev/null
    wait_true tgt "$db" "SELECT pid IS NULL FROM pg_stat_subscription WHERE subname = '$sub'" 60 \
        "the apply worker of $sub to stop"

    lsn0=$(sql src "$db" -c "SELECT pg_current_wal_lsn()")
    sql src "$db" -c "DO \$\$ BEGIN
        FOR i IN 1..$((BURST_ROWS / 100)) LOOP
            INSERT INTO burst (client, payload)
                SELECT i, repeat(md5(g::text), 3) FROM generate_series(1, 100) g;
            COMMIT;
        END LOOP; END \$\$" -c "INSERT INTO marker VALUES (1)" >/dev/null
    lsn1=$(sql src "$db" -c "SELECT pg_current_wal_lsn()")
    wal_bytes=$(sql src "$db" -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")

    run_writer "$out" execpoll "$(conninfo tgt "$db")" "ALTER SUBSCRIPTION $sub ENABLE" \
        "$(conninfo tgt "$db")" "SELECT EXISTS (SELECT 1 FROM marker WHERE id = 1),
            coalesce((SELECT pid IS NOT NULL FROM pg_stat_subscription
                      WHERE subname = '$sub' AND relid IS NULL), false)" 300 5 ||
        zdm_die "catch-up of $how did not finish"
    # PostgreSQL 15's launcher starts apply workers at most once per
    # wal_retrieve_retry_interval (5 s): the rate counts from the worker's start.
    elapsed=$(calc "$(kv "$out" elapsed_ms) - $(kv "$out" started_ms)")
    CATCHUP_LAUNCH+=("$(kv "$out" started_ms)")
    n=$(sql tgt "$db" -c "SELECT count(*) FROM burst")
    [[ $n == "$BURST_ROWS" ]] ||
        FAILURES+=("catch-up $how: $n rows on the target, $BURST_ROWS on the source")
    zdm_log "catch-up, $how: $BURST_ROWS rows, $wal_bytes bytes of WAL applied in $elapsed ms (apply worker started $(kv "$out" started_ms) ms after ENABLE)"
    if [[ $how == zdm ]]; then
        CATCHUP_ZDM+=("$(calc "$BURST_ROWS / ($elapsed / 1000)" %.0f)")
        CATCHUP_ZDM_MB+=("$(calc "$wal_bytes / 1e6 / ($elapsed / 1000)" %.2f)")
        sql tgt "$db" -c "CALL zdm.abort()" >/dev/null || true
    else
        CATCHUP_HAND+=("$(calc "$BURST_ROWS / ($elapsed / 1000)" %.0f)")
        CATCHUP_HAND_MB+=("$(calc "$wal_bytes / 1e6 / ($elapsed / 1000)" %.2f)")
        sql tgt "$db" -c "DROP SUBSCRIPTION hand_sub" >/dev/null || true
    fi
    R[catchup_wal_bytes]=$wal_bytes
    drop_db_both "$db"
}

bench_catchup() {
    local rep
    for ((rep = 1; rep <= CATCHUP_REPS; rep++)); do
        catchup_once zdm "$rep"
        catchup_once hand "$rep"
    done
    figure catchup_zdm_rows_per_s "$(median "${CATCHUP_ZDM[@]}")" rows/s
    figure catchup_hand_rows_per_s "$(median "${CATCHUP_HAND[@]}")" rows/s
    figure catchup_zdm_wal_mb_per_s "$(median "${CATCHUP_ZDM_MB[@]}")" MB/s
    figure catchup_hand_wal_mb_per_s "$(median "${CATCHUP_HAND_MB[@]}")" MB/s
    figure catchup_worker_start_after_enable_median_ms "$(median "${CATCHUP_LAUNCH[@]}")" ms
    figure catchup_ratio_zdm_over_hand \
        "$(calc "${R[catchup_zdm_rows_per_s]} / ${R[catchup_hand_rows_per_s]}" %.3f)" ratio
}

# --- output -----------------------------------------------------------------

print_results() {
    local pgver line
    pgver=$(sql src postgres -c "SHOW server_version")
    echo
    echo "================================ pg_zdm benchmark ================================"
    echo "command:  $COMMAND_LINE  ($MODE mode)"
    echo "machine:  nproc=$(nproc), $(uname -sr), PostgreSQL $pgver, source and target clusters on 127.0.0.1"
    echo "          load average at start: $LOADAVG_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
    local ln lr ld
    IFS=: read -r ln lr ld <<<"$LONG"
    echo "load:     $TPS tx/s in all: ${PERSISTENT%%:*} persistent connections x ${PERSISTENT##*:} tx/s,"
    echo "          ${RECONNECT%%:*} reconnect-per-transaction clients x ${RECONNECT##*:} tx/s,"
    echo "          $ln long-transaction clients x $lr tx/s (BEGIN; INSERT; UPDATE; INSERT; COMMIT over $ld ms);"
    echo "          warm-up ${WARMUP_MS} ms before each cutover; $ROUNDS cutovers per procedure"
    echo "scales:   $SEQS sequences, $TABLES tables, $BURST_ROWS-row catch-up burst x $CATCHUP_REPS"
    echo
    echo "Cutover rounds (ms from the first stalled write; all_back: every client has committed on the target;"
    echo "worst_gap: longest time one client went without a commit; acked: commits the source acknowledged,"
    echo "lost: of those, missing on the target; tgt_ok: commits on the target afterwards):"
    printf '%-6s %5s %10s %12s %12s %10s %9s %8s %8s  %s\n' \
        proc round window all_back worst_gap call/proc acked lost tgt_ok lost_in
    for line in "${ROUND_LINES[@]}"; do
        echo "$line"
    done
    echo
    echo "pg_zdm window timelines (ms from the first stalled write; from the cutover's NOTICEs and zdm.event_log):"
    for line in "${TIMELINE_LINES[@]}"; do
        echo "  $line"
    done
    echo
    printf '%-58s %12s %12s %10s\n' "figure" "pg_zdm" "naive/hand" "ratio"
    printf '%-58s %12s %12s %10s\n' "write-unavailability window, median (ms)" \
        "${R[zdm_window_median_ms]:-NA}" "${R[naive_window_median_ms]:-NA}" "${R[window_ratio_zdm_over_naive]:-NA}"
    printf '%-58s %12s %12s\n' "write-unavailability window, worst (ms)" \
        "${R[zdm_window_worst_ms]:-NA}" "${R[naive_window_worst_ms]:-NA}"
    printf '%-58s %12s %12s\n' "all clients back on the target, median (ms)" \
        "${R[zdm_all_clients_back_median_ms]:-NA}" "${R[naive_all_clients_back_median_ms]:-NA}"
    printf '%-58s %12s %12s\n' "cutover call / naive procedure, median (ms)" \
        "${R[zdm_cutover_call_median_ms]:-NA}" "${R[naive_procedure_median_ms]:-NA}"
    printf '%-58s %12s %12s\n' "lost writes (acknowledged, missing on target)" \
        "$ZDM_LOST_TOTAL/$ZDM_CHECKED" "$NAIVE_LOST_TOTAL/$NAIVE_CHECKED"
    printf '%-58s %12s %12s %10s\n' "$SEQS sequences, fresh schema: step (ms) / setval each" \
        "${R[seq_fresh_step_ms]:-NA}" "${R[seq_one_round_trip_each_ms]:-NA}" "${R[seq_fresh_speedup_vs_round_trips]:-NA}x"
    printf '%-58s %12s %12s %10s\n' "$SEQS sequences, analyzed catalogs: step (ms) / setval each" \
        "${R[seq_analyzed_step_ms]:-NA}" "${R[seq_one_round_trip_each_ms]:-NA}" "${R[seq_analyzed_speedup_vs_round_trips]:-NA}x"
    printf '%-58s %12s\n' "$SEQS sequences, writes blocked, fresh / analyzed (ms)" \
        "${R[seq_fresh_writes_blocked_ms]:-NA} / ${R[seq_analyzed_writes_blocked_ms]:-NA}"
    printf '%-58s %12s\n' "zdm.status() with $TABLES tables, median of $STATUS_CALLS (ms)" "${R[status_median_ms]:-NA}"
    printf '%-58s %12s\n' "zdm.tables() with $TABLES tables, median of $STATUS_CALLS (ms)" "${R[tables_median_ms]:-NA}"
    printf '%-58s %12s\n' "initial copy of $TABLES tables (s)" "${R[status_initial_copy_s]:-NA}"
    printf '%-58s %12s\n' "cutover of $TABLES tables, no load: writes blocked (ms)" "${R[cutover_many_tables_blocked_ms]:-NA}"
    printf '%-58s %12s %12s %10s\n' "catch-up of $BURST_ROWS rows (rows/s)" \
        "${R[catchup_zdm_rows_per_s]:-NA}" "${R[catchup_hand_rows_per_s]:-NA}" "${R[catchup_ratio_zdm_over_hand]:-NA}"
    printf '%-58s %12s %12s\n' "catch-up, source WAL applied (MB/s, ${R[catchup_wal_bytes]:-?} bytes)" \
        "${R[catchup_zdm_wal_mb_per_s]:-NA}" "${R[catchup_hand_wal_mb_per_s]:-NA}"
    echo
    echo "BENCH_INFO command=\"$COMMAND_LINE\" mode=$MODE"
    echo "BENCH_INFO nproc=$(nproc) postgresql=\"$pgver\" kernel=\"$(uname -r)\""
    echo "BENCH_INFO tps=$TPS persistent=$PERSISTENT reconnect=$RECONNECT long=$LONG warmup_ms=$WARMUP_MS rounds=$ROUNDS sequences=$SEQS tables=$TABLES burst_rows=$BURST_ROWS catchup_reps=$CATCHUP_REPS"
    bench_lines
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

main() {
    local started=$SECONDS
    setup
    bench_cutover_under_load
    bench_sequences
    bench_status
    bench_catchup
    figure bench_duration_s "$((SECONDS - started))" s
    print_results
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        if [[ $ZDM_LOST_TOTAL -gt 0 ]]; then
            printf '\n!!!!!!!! pg_zdm LOST %s ACKNOWLEDGED WRITES !!!!!!!!\n' "$ZDM_LOST_TOTAL" >&2
        fi
        zdm_die "the benchmark had failures (see BENCH FAILURE lines)"
    fi
}

main
