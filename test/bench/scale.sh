#!/usr/bin/env bash
# test/bench/scale.sh: how pg_zdm scales with the number of published tables
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/scale.sh                       # 1,000 5,000 10,000 20,000 tables
#     bash test/bench/scale.sh --sizes "1000 5000"   # other sizes
#
# It installs PostgreSQL 15 and the build tools if missing, builds and
# installs the extension (holding the machine-wide install lock, as
# test/bench/run.sh does), starts two throwaway clusters -- source and
# target -- as the postgres OS user on 127.0.0.1, and for each size N:
#
#   1. creates N tables "t1 .. tN (id serial PRIMARY KEY, v int)" on both
#      sides, in a database of their own (as pg_dump --schema-only would);
#   2. times SELECT * FROM zdm.check(dsn, defer_copy => true);
#   3. times CALL zdm.init(dsn, defer_copy => true) and the time to ready:
#      from the start of the init call until zdm.status()'s overall row is ok
#      (polled every 50 ms);
#   4. times CALL zdm.abort(), then init again (to ready once more);
#   5. times one zdm.status() and one zdm.tables() call;
#   6. writes one row to each of 100 tables (so that sequences are used),
#      then CALL zdm.cutover() with no other load, and reports from its
#      NOTICEs how long the LOCK of every table took ("fenced in") and how
#      long writes were blocked on the source (the blocked window: fence
#      taken until the target detached), plus the whole call;
#   7. drops both databases.
#
# Settings: both clusters run max_locks_per_transaction = 512, which 20,000
# tables need (the fence holds one lock per table on the source, and CREATE
# SUBSCRIPTION one per table on the target, in one transaction each) and
# which the fence_locks check asks for (the fence may take half of 512 x 100
# connections); everything else is
# PostgreSQL's default.  The initial copy is deferred (defer_copy): this
# measures pg_zdm, not PostgreSQL's table synchronisation.
#
# Prints one table and one "BENCH scale_<figure>_<N>=value unit=..." line
# per figure.  ZDM_KEEP_TMP=1 keeps the server logs.

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGCONNECT_TIMEOUT || true

COMMAND_LINE="$0${*:+ $*}"
SIZES="1000 5000 10000 20000"

while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) SIZES=${2:?}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) zdm_die "unknown option $1 (see --help)" ;;
    esac
    shift
done

SRC_PORT=""
ROWS=()
BENCH_LINES=()

sql() {
    local cluster=$1 db=$2
    shift 2
    zdm_psql "$cluster" -d "$db" -At "$@"
}

now() { date +%s.%N; }
ms_since() { echo "($(now) - $1) * 1000" | bc -l | xargs printf '%.1f'; }
s_since() { echo "$(now) - $1" | bc -l | xargs printf '%.2f'; }

wait_ready() {
    local db=$1 deadline=$((SECONDS + 1800))
    while ((SECONDS < deadline)); do
        [[ $(sql tgt "$db" -c "SELECT ok FROM zdm.status() WHERE component = 'overall'") == t ]] &&
            return 0
        sleep 0.05
    done
    zdm_die "$db: not ready after 30 minutes"
}

setup() {
    zdm_require_root
    zdm_install_packages
    zdm_lock_install
    zdm_log "building pg_zdm in $ZDM_REPO_ROOT (make with_llvm=no)"
    make -C "$ZDM_REPO_ROOT" -j"$(nproc)" PG_CONFIG="$ZDM_PG_CONFIG" with_llvm=no >/dev/null ||
        zdm_die "make failed"
    make -C "$ZDM_REPO_ROOT" PG_CONFIG="$ZDM_PG_CONFIG" with_llvm=no install >/dev/null ||
        zdm_die "make install failed"
    zdm_cluster_start src auto "max_locks_per_transaction = 512" "fsync = off"
    zdm_cluster_start tgt auto "max_locks_per_transaction = 512" "fsync = off" \
        "wal_receiver_status_interval = 1s"
    SRC_PORT=$(zdm_cluster_port src)
}

one_size() {
    local n=$1 db=scale_$1 dsn t0 out
    local check_s init_s ready_s abort_s status_ms tables_ms fenced_ms window_ms call_s
    local make_tables="DO \$\$ BEGIN
        FOR i IN 1..$n LOOP
            EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, v int)', i);
            IF i % 500 = 0 THEN COMMIT; END IF;
        END LOOP; END \$\$"

    zdm_log "$n tables: creating them on both sides"
    dsn="host=127.0.0.1 port=$SRC_PORT dbname=$db user=postgres"
    sql src postgres -c "CREATE DATABASE $db"
    sql tgt postgres -c "CREATE DATABASE $db"
    sql src "$db" -c "$make_tables"
    sql tgt "$db" -c "$make_tables" -c "CREATE EXTENSION pg_zdm"

    zdm_log "$n tables: check, init, abort, init"
    t0=$(now)
    if sql tgt "$db" -c "SELECT count(*) FROM zdm.check('$dsn', defer_copy => true)" >/dev/null; then
        check_s=$(s_since "$t0")
    else
        check_s=failed
    fi
    t0=$(now)
    sql tgt "$db" -c "SET client_min_messages = warning" -c "CALL zdm.init('$dsn', defer_copy => true)"
    init_s=$(s_since "$t0")
    wait_ready "$db"
    t0=$(now)
    sql tgt "$db" -c "SET client_min_messages = warning" -c "CALL zdm.abort()"
    abort_s=$(s_since "$t0")
    t0=$(now)
    sql tgt "$db" -c "SET client_min_messages = warning" -c "CALL zdm.init('$dsn', defer_copy => true)"
    wait_ready "$db"
    ready_s=$(s_since "$t0")

    t0=$(now)
    sql tgt "$db" -c "SELECT * FROM zdm.status()" >/dev/null
    status_ms=$(ms_since "$t0")
    t0=$(now)
    sql tgt "$db" -c "SELECT * FROM zdm.tables()" >/dev/null
    tables_ms=$(ms_since "$t0")

    sql src "$db" -c "DO \$\$ BEGIN FOR i IN 1..100 LOOP
        EXECUTE format('INSERT INTO t%s (v) VALUES (1)', (i - 1) * $n / 100 + 1);
        END LOOP; END \$\$"
    zdm_log "$n tables: cutover"
    t0=$(now)
    out=$(sql tgt "$db" -c "CALL zdm.cutover()" 2>&1) ||
        zdm_die "$n tables: the cutover failed: $out"
    call_s=$(s_since "$t0")
    echo "$out" | sed 's/^/    /'
    fenced_ms=$(sed -n 's/.*tables fenced in \([0-9.]*\) ms.*/\1/p' <<<"$out")
    window_ms=$(sed -n 's/.*writes were blocked on the source for \([0-9.]*\) ms.*/\1/p' <<<"$out")
    [[ $(sql tgt "$db" -c "SELECT count(*) FROM t1") == 1 ]] ||
        zdm_die "$n tables: the row written to t1 is not on the target"

    ROWS+=("$(printf '%7s %8s %8s %9s %8s %10s %10s %10s %11s %9s' "$n" "$check_s" "$init_s" \
        "$ready_s" "$abort_s" "$status_ms" "$tables_ms" "$fenced_ms" "$window_ms" "$call_s")")
    BENCH_LINES+=("BENCH scale_check_s_$n=$check_s unit=s"
        "BENCH scale_init_s_$n=$init_s unit=s"
        "BENCH scale_time_to_ready_s_$n=$ready_s unit=s"
        "BENCH scale_abort_s_$n=$abort_s unit=s"
        "BENCH scale_status_ms_$n=$status_ms unit=ms"
        "BENCH scale_tables_ms_$n=$tables_ms unit=ms"
        "BENCH scale_fenced_in_ms_$n=$fenced_ms unit=ms"
        "BENCH scale_writes_blocked_ms_$n=$window_ms unit=ms"
        "BENCH scale_cutover_call_s_$n=$call_s unit=s")

    sql src "$db" -c "DROP SCHEMA zdm_fence CASCADE" >/dev/null 2>&1 || true
    sql tgt postgres -c "DROP DATABASE $db WITH (FORCE)"
    sql src postgres -c "DROP DATABASE $db WITH (FORCE)"
}

main() {
    local n started=$SECONDS
    setup
    for n in $SIZES; do
        one_size "$n"
    done
    echo
    echo "pg_zdm at scale: $COMMAND_LINE"
    echo "machine: nproc=$(nproc), $(uname -sr), PostgreSQL $(sql src postgres -c 'SHOW server_version'); defer_copy; no load; max_locks_per_transaction = 512 on both sides"
    echo "(s: seconds, ms: milliseconds; ready: from the second init call to zdm.status() ready;"
    echo " fenced: LOCK of every table; blocked: writes blocked on the source, fence to detach)"
    printf '%7s %8s %8s %9s %8s %10s %10s %10s %11s %9s\n' tables check_s init_s ready_s \
        abort_s status_ms tables_ms fenced_ms blocked_ms cutover_s
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "BENCH_INFO command=\"$COMMAND_LINE\" duration_s=$((SECONDS - started)) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    printf '%s\n' "${BENCH_LINES[@]}"
}

main
