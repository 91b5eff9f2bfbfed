#!/usr/bin/env bash
# test/bench/fallback.sh: the benchmark of issue 12's fallback -- how long
# writes are blocked when the application moves back to the source with
# CALL zdm.fallback(), next to the cutover's window, under the same load
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/fallback.sh            # 3 rounds, about 2 minutes on 2 cores
#     bash test/bench/fallback.sh --quick    # 1 round
#
# Setup as test/bench/run.sh (test/bench/load_lib.sh): PostgreSQL 15, the
# extension built and installed, the load client test/bench/writer.c, two
# throwaway clusters src and tgt on 127.0.0.1 (wal_level = logical on both,
# so tgt can publish back to src).  The application is run.sh's: 500
# transactions/s from 4 persistent connections (80 tx/s each), 4 clients
# reconnecting for every transaction (35 tx/s each) and 4 clients running
# 75 ms transactions (BEGIN; INSERT; UPDATE; INSERT; COMMIT, 10 tx/s each).
#
# Each round, on fresh databases with a new zdm.init:
#
#   plain     (unless --no-plain) CALL zdm.cutover() under the load, the
#             application moving from src to tgt: the cutover's window, as
#             run.sh measures it, in the same run for comparison.
#   fbcut     CALL zdm.cutover(fallback => true, target_dsn => ...) under
#             the load, src to tgt: what asking for the fallback costs the
#             cutover's window.  Every commit src acknowledged must be on
#             tgt.
#   fallback  once zdm.status() says the reverse replication streams,
#             CALL zdm.fallback() on tgt while the application writes to
#             tgt; it moves back to src once tgt refused a write and the
#             call returned.  Every commit either server acknowledged (in
#             fbcut and in fallback) must be on src afterwards.  Then
#             CALL zdm.finish().
#
#   window = from the start of the first write that failed or stalled on
#            the server the application leaves, to the acknowledgement of
#            its first commit on the server it moves to (test/bench/writer.c,
#            report()).  For the fallback: writes blocked on the target
#            until the first commit on the source.
#
# It prints per-round lines, the medians and worst windows, the NOTICEs of
# each fallback with their times, and one "BENCH name=value unit=..." line
# per figure.  The exit status is non-zero when a call failed or a write
# either server acknowledged is missing where it must be ("BENCH FAILURE"
# lines say which).
#
# Options:
#   --quick          1 round, 2 s warm-up
#   --rounds N       rounds (default 3)
#   --no-plain       skip the plain cutovers
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
ROUNDS=3
PLAIN=1
WARMUP_MS=3000
AFTER_MS=1500
SEQ_BUFFER=5000
# the application, as in run.sh: clients:rate[:duration_ms] per kind
PERSISTENT=4:80
RECONNECT=4:35
LONG=4:10:75
TPS=$((4 * 80 + 4 * 35 + 4 * 10))

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) MODE=quick ROUNDS=1 WARMUP_MS=2000 ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --no-plain) PLAIN=0 ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) zdm_die "unknown option $1 (see --help)" ;;
    esac
    shift
done

# shellcheck source=test/bench/load_lib.sh
source "$BENCH_DIR/load_lib.sh"
ROUND_LINES=()              # per-round detail for the table
NOTICE_LINES=()             # what each fallback call said, with times
declare -A WINDOWS=() BACK=() GAPS=() CALLS=() LOST=() CHECKED=()

# Connection string of database $2 on cluster $1 for the reverse
# subscription: how src reaches tgt.
replication_dsn() {
    echo "host=127.0.0.1 port=$TGT_PORT dbname=$2 user=postgres"
}

# A fresh database $1 on both clusters with the load's schema, the seed
# rows on src, and a migration that zdm.status() says is ready.
fresh_migration() {
    local db=$1
    create_db src "$db"
    create_db tgt "$db"
    sql src "$db" -c "$LOAD_SCHEMA" -c "$LOAD_SEED" >/dev/null
    sql tgt "$db" -c "$LOAD_SCHEMA" >/dev/null
    sql tgt "$db" -c "CREATE EXTENSION pg_zdm" \
        -c "CALL zdm.init('host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres')" >/dev/null
    wait_true tgt "$db" "SELECT ok FROM zdm.status() WHERE component = 'overall'" 120 \
        "zdm.status() to say ready ($db)"
}

# run_phase PHASE ROUND DB DIR LOST_CLUSTER LOAD_ARGS...: one switch under
# load (the load client's arguments follow), its acknowledged commits
# looked up on LOST_CLUSTER.  Records the figures of PHASE; returns non-zero
# when the call failed.
run_phase() {
    local phase=$1 round=$2 db=$3 dir=$4 lost_cluster=$5 rc=0 lost checked where
    shift 5
    local out=$dir/writer.out
    mkdir -p "$dir"
    zdm_log "round $round, $phase: under load ($TPS tx/s)"
    run_writer "$out" load --cutover zdm --persistent "$PERSISTENT" --reconnect "$RECONNECT" \
        --long "$LONG" --warmup-ms "$WARMUP_MS" --after-ms "$AFTER_MS" \
        --seq-buffer "$SEQ_BUFFER" --out "$dir" "$@" || rc=$?
    sed -n 's/^mark=/    /p' "$out"
    if [[ $rc -ne 0 || -z $(kv "$out" window_ms) || $(kv "$out" window_ms) == NA ]]; then
        FAILURES+=("round $round $phase: load client exit $rc, window $(kv "$out" window_ms), $(kv "$out" cutover_error_text)")
        zdm_warn "round $round $phase failed: $(kv "$out" cutover_error_text)"
        return 1
    fi
    read -r lost checked where < <(count_lost "$lost_cluster" "$db" "$dir/acked.tsv") ||
        zdm_die "the lost-write check of $db failed"
    if [[ $lost -ne 0 ]]; then
        FAILURES+=("round $round $phase: $lost of $checked acknowledged commits MISSING on $lost_cluster ($where)")
    fi
    WINDOWS[$phase]+="$(kv "$out" window_ms) "
    BACK[$phase]+="$(kv "$out" last_client_back_in_window_ms) "
    GAPS[$phase]+="$(kv "$out" worst_client_gap_ms) "
    CALLS[$phase]+="$(kv "$out" cutover_call_ms) "
    LOST[$phase]=$((${LOST[$phase]:-0} + lost))
    CHECKED[$phase]=$((${CHECKED[$phase]:-0} + checked))
    ROUND_LINES+=("$(printf '%-9s %5s %10s %12s %12s %10s %9s %8s %8s  %s' \
        "$phase" "$round" "$(kv "$out" window_ms)" "$(kv "$out" last_client_back_in_window_ms)" \
        "$(kv "$out" worst_client_gap_ms)" "$(kv "$out" cutover_call_ms)" \
        "$checked" "$lost" "$(kv "$out" target_ok)" "$where")")
    zdm_log "round $round, $phase: window $(kv "$out" window_ms) ms, $lost of $checked acknowledged commits missing"
    return 0
}

# One round: plain cutover (on a database of its own), then cutover with
# fallback and fallback.
fallback_round() {
    local round=$1 db dir line
    if [[ $PLAIN == 1 ]]; then
        db=plain_r$round
        fresh_migration "$db"
        run_phase plain "$round" "$db" "$BENCH_TMP/$db" tgt \
            --source "$(conninfo src "$db")" --target "$(conninfo tgt "$db")" || true
        drop_db_both "$db"
    fi

    db=fb_r$round
    dir=$BENCH_TMP/$db
    fresh_migration "$db"
    if run_phase fbcut "$round" "$db" "$dir/cutover" tgt \
        --source "$(conninfo src "$db")" --target "$(conninfo tgt "$db")" \
        --zdm-call "CALL zdm.cutover(fallback => true, target_dsn => '$(replication_dsn tgt "$db")')"; then
        wait_true tgt "$db" "SELECT coalesce(bool_and(value LIKE 'streaming%' AND ok), false)
                             FROM zdm.status() WHERE component = 'fallback' AND metric = 'state'" 120 \
            "zdm.status() to say the reverse replication streams ($db)"
        if run_phase fallback "$round" "$db" "$dir/fallback" src \
            --source "$(conninfo tgt "$db")" --target "$(conninfo src "$db")" \
            --call-conninfo "$(conninfo tgt "$db")" --client-base 1000 \
            --zdm-call "CALL zdm.fallback()"; then
            # what the source acknowledged before the cutover is there too
            read -r line < <(count_lost src "$db" "$dir/cutover/acked.tsv") || line="? (the check failed)"
            [[ ${line%% *} == 0 ]] ||
                FAILURES+=("round $round fallback: of the commits acknowledged before the cutover, $line are missing on src")
            while IFS= read -r line; do
                NOTICE_LINES+=("round $round: $line")
            done < <(sed -n 's/^mark=//p' "$dir/fallback/writer.out")
            sql tgt "$db" -c "CALL zdm.finish()" >/dev/null ||
                FAILURES+=("round $round: zdm.finish() after the fallback failed")
        fi
    fi
    drop_db_both "$db"
}

# phase_figures PHASE: the BENCH figures of one phase.
phase_figures() {
    local phase=$1
    local -a w b g c
    read -r -a w <<<"${WINDOWS[$phase]:-}"
    read -r -a b <<<"${BACK[$phase]:-}"
    read -r -a g <<<"${GAPS[$phase]:-}"
    read -r -a c <<<"${CALLS[$phase]:-}"
    [[ ${#w[@]} -gt 0 ]] || return 0
    figure "${phase}_window_median_ms" "$(median "${w[@]}")" ms
    figure "${phase}_window_worst_ms" "$(maximum "${w[@]}")" ms
    figure "${phase}_all_clients_back_median_ms" "$(median "${b[@]}")" ms
    figure "${phase}_worst_client_gap_median_ms" "$(median "${g[@]}")" ms
    figure "${phase}_call_median_ms" "$(median "${c[@]}")" ms
    figure "${phase}_lost_writes" "${LOST[$phase]:-0}" rows
    figure "${phase}_acked_writes_checked" "${CHECKED[$phase]:-0}" rows
}

print_results() {
    local pgver line
    pgver=$(sql src postgres -c "SHOW server_version")
    echo
    echo "============================ pg_zdm fallback benchmark ============================"
    echo "command:  $COMMAND_LINE  ($MODE mode)"
    echo "machine:  nproc=$(nproc), $(uname -sr), PostgreSQL $pgver, source and target clusters on 127.0.0.1"
    echo "          load average at start: $LOADAVG_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "load:     $TPS tx/s (persistent $PERSISTENT, reconnect $RECONNECT, long $LONG), warm-up $WARMUP_MS ms, $ROUNDS rounds"
    echo
    echo "Rounds (ms from the first failed or stalled write on the server left; all_back: every client has"
    echo "committed on the other server; acked: commits acknowledged by the server left, lost: of those, missing):"
    printf '%-9s %5s %10s %12s %12s %10s %9s %8s %8s  %s\n' \
        phase round window all_back worst_gap call acked lost new_ok lost_in
    for line in "${ROUND_LINES[@]}"; do
        echo "$line"
    done
    echo
    echo "What each CALL zdm.fallback() said (ms from the first blocked write on the target):"
    for line in "${NOTICE_LINES[@]}"; do
        echo "  $line"
    done
    echo
    printf '%-52s %12s %12s %12s\n' figure plain fbcut fallback
    printf '%-52s %12s %12s %12s\n' "write-unavailability window, median (ms)" \
        "${R[plain_window_median_ms]:-NA}" "${R[fbcut_window_median_ms]:-NA}" "${R[fallback_window_median_ms]:-NA}"
    printf '%-52s %12s %12s %12s\n' "write-unavailability window, worst (ms)" \
        "${R[plain_window_worst_ms]:-NA}" "${R[fbcut_window_worst_ms]:-NA}" "${R[fallback_window_worst_ms]:-NA}"
    printf '%-52s %12s %12s %12s\n' "all clients back, median (ms)" \
        "${R[plain_all_clients_back_median_ms]:-NA}" "${R[fbcut_all_clients_back_median_ms]:-NA}" "${R[fallback_all_clients_back_median_ms]:-NA}"
    printf '%-52s %12s %12s %12s\n' "call, median (ms)" \
        "${R[plain_call_median_ms]:-NA}" "${R[fbcut_call_median_ms]:-NA}" "${R[fallback_call_median_ms]:-NA}"
    printf '%-52s %12s %12s %12s\n' "lost writes (acknowledged, missing)" \
        "${R[plain_lost_writes]:-NA}/${R[plain_acked_writes_checked]:-NA}" \
        "${R[fbcut_lost_writes]:-NA}/${R[fbcut_acked_writes_checked]:-NA}" \
        "${R[fallback_lost_writes]:-NA}/${R[fallback_acked_writes_checked]:-NA}"
    echo
    echo "BENCH_INFO command=\"$COMMAND_LINE\" mode=$MODE"
    echo "BENCH_INFO nproc=$(nproc) postgresql=\"$pgver\" kernel=\"$(uname -r)\""
    echo "BENCH_INFO tps=$TPS persistent=$PERSISTENT reconnect=$RECONNECT long=$LONG warmup_ms=$WARMUP_MS rounds=$ROUNDS plain=$PLAIN"
    bench_lines
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

main() {
    local started=$SECONDS r
    setup
    for ((r = 1; r <= ROUNDS; r++)); do
        fallback_round "$r"
    done
    phase_figures plain
    phase_figures fbcut
    phase_figures fallback
    if [[ -n ${R[plain_window_median_ms]:-} && -n ${R[fallback_window_median_ms]:-} ]]; then
        figure fallback_window_ratio_over_plain_cutover \
            "$(calc "${R[fallback_window_median_ms]} / ${R[plain_window_median_ms]}" %.3f)" ratio
    fi
    if [[ -n ${R[plain_window_median_ms]:-} && -n ${R[fbcut_window_median_ms]:-} ]]; then
        figure fbcut_window_ratio_over_plain_cutover \
            "$(calc "${R[fbcut_window_median_ms]} / ${R[plain_window_median_ms]}" %.3f)" ratio
    fi
    figure bench_duration_s "$((SECONDS - started))" s
    print_results
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        zdm_die "the benchmark had failures (see BENCH FAILURE lines)"
    fi
}

main
