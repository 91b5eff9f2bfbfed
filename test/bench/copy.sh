#!/usr/bin/env bash
# test/bench/copy.sh: the initial copy of pg_zdm next to pgcopydb clone (issue 10)
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/bench/copy.sh                 # data sets a b c, methods parallel pgcopydb
#     DATASETS="a" METHODS="parallel native pgcopydb" bash test/bench/copy.sh
#
# It installs PostgreSQL 15 and pgcopydb (Debian package) if missing, builds
# and installs the extension, starts two throwaway clusters -- source and
# target -- on 127.0.0.1, and for each data set loads the source once, then
# copies it with each method into a fresh target database:
#
#   parallel   CALL zdm.init(dsn, copy_method => 'parallel', copy_jobs => 2)
#              then CALL zdm.wait_ready(): time from the CALL to ready for
#              cutover (copy, index builds, subscription streaming, caught up)
#   native     the same with copy_method => 'native' (table synchronization)
#   pgcopydb   pgcopydb clone --table-jobs 2 --index-jobs 2 (schema, data,
#              indexes, constraints, vacuum; no slot: it does not stream)
#
# For pg_zdm the schema is restored on the target first (pg_dump
# --schema-only | psql, as the README asks); that step is timed apart.  The
# WAL the source retains for the slot is sampled every second during the
# copy (pg_current_wal_lsn() - restart_lsn of the slot); its maximum is
# reported, with the WAL the source wrote from the start of the copy to
# its end.  Data sets:
#
#   a  pgbench scale 50 and a 2M-row table with 3 secondary indexes (1.2 GB)
#   b  one table of 10M rows (bigint key, int, text, timestamptz; 1.0 GB)
#   c  5,000 tables of one row each
#
# Output: one "COPYBENCH dataset=.. method=.. seconds=.. ..." line per run,
# repeated at the end, then one "COPYBENCH_MEDIAN" line per data set and
# method.  For a parallel copy, where its time went (per table: data
# ranges, index builds).  Everything is removed on exit.
#
# REPEAT=N copies each data set N times with each method, the methods
# taking turns (default 1), so that a noisy machine weighs on all alike.
# WRITE_TPS=N runs a light writer on the source during every copy: pgbench
# inserting N rows a second (of about 150 bytes) into a table of its own,
# copied like the others; the retained WAL then shows what a live source
# keeps for the slot (default 0: no writer, for the timings).
#
# COPYBENCH_PG_BIN=/path/bin runs the clusters from that PostgreSQL 15
# installation instead (one where pg_zdm is already installed: a private
# copy of Debian's, for instance, so that the benchmark does not wait for the
# machine-wide install lock); nothing is built or installed then.

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

DATASETS=${DATASETS:-a b c}
METHODS=${METHODS:-pgcopydb parallel}
REPEAT=${REPEAT:-1}
WRITE_TPS=${WRITE_TPS:-0}
RESULTS=()

sql() {  # sql CLUSTER DB [psql args...]
    local c=$1 db=$2
    shift 2
    zdm_psql "$c" -d "$db" -At "$@"
}

now() { date +%s.%N; }

load_dataset() {
    local ds=$1 db=src_$1
    sql src postgres -c "CREATE DATABASE $db" >/dev/null
    case $ds in
        a)
            zdm_as_postgres pgbench -i -q -s 50 -h "$(zdm_cluster_sockdir src)" \
                -p "$(zdm_cluster_port src)" -U postgres "$db" >/dev/null 2>&1 ||
                zdm_die "pgbench -i failed"
            sql src "$db" >/dev/null <<'SQL'
CREATE TABLE events (id bigint PRIMARY KEY, account int NOT NULL, kind text NOT NULL,
                     at timestamptz NOT NULL, payload text);
INSERT INTO events SELECT g, g % 500000, 'kind' || (g % 17), now() - g * interval '1 s',
                          md5(g::text) FROM generate_series(1, 2000000) g;
CREATE INDEX events_account ON events (account);
CREATE INDEX events_kind ON events (kind);
CREATE INDEX events_at ON events (at);
-- pg_zdm refuses a published table without replica identity
ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
VACUUM ANALYZE;
SQL
            ;;
        b)
            sql src "$db" >/dev/null <<'SQL'
CREATE TABLE big (id bigint PRIMARY KEY, a int NOT NULL, b text, c timestamptz);
INSERT INTO big SELECT g, g % 1000, md5(g::text), now() - g * interval '1 s'
FROM generate_series(1, 10000000) g;
VACUUM ANALYZE;
SQL
            ;;
        c)
            local batch
            for batch in $(seq 0 9); do
                sql src "$db" -c "
DO \$\$ BEGIN
  FOR i IN $((batch * 500 + 1))..$((batch * 500 + 500)) LOOP
    EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
    EXECUTE format('INSERT INTO t%s VALUES (1, ''one'')', i);
  END LOOP;
END \$\$;" >/dev/null
            done
            sql src "$db" -c "VACUUM ANALYZE" >/dev/null ;;
    esac
    sql src "$db" -c "CREATE TABLE copybench_writes (id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(), pad text)" >/dev/null
    zdm_log "data set $ds: $(sql src "$db" -c "SELECT pg_size_pretty(pg_database_size(current_database()))") on the source"
}

# Sample the WAL the slots of the source keep, every second, into $1 (max).
sample_wal() {
    local out=$1 max=0 v
    while :; do
        v=$(sql src postgres -c "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint FROM pg_replication_slots" 2>/dev/null || echo 0)
        ((v > max)) && max=$v
        echo "$max" >"$out"
        sleep 1
    done
}

# Where the time of a parallel copy went, per table (the 8 largest): from
# the CALL (epoch $2) to the first and last data range, and to the first
# and last index build; then when the copy was done.
copy_timeline() {
    local db=$1 t0=$2
    sql tgt "$db" <<SQL | sed 's/^/    /'
WITH t AS (
  SELECT relid, kind, extract(epoch FROM min(started_at)) - $t0 AS s,
         extract(epoch FROM max(finished_at)) - $t0 AS f, sum(est_bytes) AS b
  FROM zdm.copy_task GROUP BY relid, kind)
SELECT format('%-24s data %5s..%5s s  indexes %5s..%5s s', d.relid,
              round(d.s::numeric, 1), round(d.f::numeric, 1),
              coalesce(round(i.s::numeric, 1)::text, '-'), coalesce(round(i.f::numeric, 1)::text, '-'))
FROM t d LEFT JOIN t i ON i.relid = d.relid AND i.kind = 'index'
WHERE d.kind = 'data' ORDER BY d.b DESC LIMIT 8;
SELECT format('copy started %s s, done %s s after the CALL',
              round((extract(epoch FROM started_at) - $t0)::numeric, 1),
              round((extract(epoch FROM finished_at) - $t0)::numeric, 1))
FROM zdm.copy_run;
SQL
}

# Start the light writer on database $1 of the source (WRITE_TPS rows a
# second) and put its pid in WRITER; nothing when WRITE_TPS is 0.
start_writer() {
    WRITER=
    ((WRITE_TPS > 0)) || return 0
    printf '%s\n' "INSERT INTO copybench_writes (pad) VALUES (repeat('w', 120));" \
        >"$BENCH_TMP/writes.sql"
    zdm_as_postgres env PGAPPNAME=copybench_writer \
        pgbench -n -c 1 -R "$WRITE_TPS" -T 100000 -f "$BENCH_TMP/writes.sql" \
        -h "$(zdm_cluster_sockdir src)" -p "$(zdm_cluster_port src)" -U postgres "$1" \
        >/dev/null 2>&1 & WRITER=$!
}

# Stop the writer: its session on the source ends, and pgbench with it.
stop_writer() {
    [[ -n $WRITER ]] || return 0
    sql src postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = 'copybench_writer'" >/dev/null
    wait "$WRITER" 2>/dev/null || true
}

src_lsn() { sql src postgres -c "SELECT pg_current_wal_lsn()"; }

run_method() {
    local ds=$1 method=$2 db=tgt_$1_$2 src_db=src_$1
    local t0 t1 schema_s secs walfile sampler maxwal dsn lsn0 written
    sql tgt postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    walfile=$(mktemp)
    ZDM_TMP_DIRS+=("$walfile")
    schema_s=0
    start_writer "$src_db"
    if [[ $method == pgcopydb ]]; then
        rm -rf "$BENCH_TMP/pgcopydb_$ds"   # its state of an earlier run
        sample_wal "$walfile" & sampler=$!
        lsn0=$(src_lsn)
        t0=$(now)
        zdm_as_postgres env TMPDIR=/tmp pgcopydb clone --table-jobs 2 --index-jobs 2 \
            --dir "$BENCH_TMP/pgcopydb_$ds" \
            --source "postgres://postgres@127.0.0.1:$(zdm_cluster_port src)/$src_db" \
            --target "postgres://postgres@127.0.0.1:$(zdm_cluster_port tgt)/$db" \
            >"$BENCH_TMP/pgcopydb_$ds.log" 2>&1 ||
            { tail -20 "$BENCH_TMP/pgcopydb_$ds.log"; zdm_die "pgcopydb clone failed"; }
        t1=$(now)
    else
        t0=$(now)
        zdm_as_postgres bash -c "pg_dump --schema-only -h '$(zdm_cluster_sockdir src)' -p $(zdm_cluster_port src) -U postgres $src_db |
            psql -X -q -v ON_ERROR_STOP=1 -h '$(zdm_cluster_sockdir tgt)' -p $(zdm_cluster_port tgt) -U postgres -d $db" >/dev/null ||
            zdm_die "schema restore failed"
        sql tgt "$db" -c "CREATE EXTENSION pg_zdm" >/dev/null
        schema_s=$(echo "$(now) - $t0" | bc)
        dsn="host=127.0.0.1 port=$(zdm_cluster_port src) dbname=$src_db user=postgres"
        sample_wal "$walfile" & sampler=$!
        lsn0=$(src_lsn)
        t0=$(now)
        sql tgt "$db" -c "CALL zdm.init('$dsn', copy_method => '$method', copy_jobs => 2)" \
            -c "CALL zdm.wait_ready(NULL, '10 s')" 2>&1 | sed 's/^/    /'
        t1=$(now)
        sql tgt "$db" -c "SELECT '    ' || value FROM zdm.status() WHERE metric = 'parallel_copy'"
        [[ $method == parallel ]] && copy_timeline "$db" "$t0"
    fi
    written=$(sql src postgres -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
    stop_writer
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    maxwal=$(cat "$walfile" 2>/dev/null || echo 0)
    secs=$(echo "$t1 - $t0" | bc)
    if [[ $method != pgcopydb ]]; then
        sql tgt "$db" -c "CALL zdm.abort()" >/dev/null 2>&1 || zdm_warn "abort failed"
    fi
    printf -v line 'COPYBENCH dataset=%s method=%s seconds=%.1f schema_seconds=%.1f max_retained_wal_bytes=%s source_wal_written_bytes=%s write_tps=%s target_size=%s' \
        "$ds" "$method" "$secs" "$schema_s" "${maxwal:-0}" "${written:-0}" "$WRITE_TPS" \
        "$(sql tgt "$db" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
    echo "$line"
    RESULTS+=("$line")
    sql tgt postgres -c "DROP DATABASE $db WITH (FORCE)" >/dev/null || true
}

# One COPYBENCH_MEDIAN line per data set and method: the median of its
# runs' seconds and of their maximum retained WAL, and every run's seconds.
print_medians() {
    printf '%s\n' "${RESULTS[@]}" | awk '
        function median(list,   n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 1; i <= n; i++)
                for (j = i + 1; j <= n; j++)
                    if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        {
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            k = f["dataset"] " " f["method"]
            if (!(k in secs)) order[++n] = k
            secs[k] = secs[k] " " f["seconds"]
            wal[k] = wal[k] " " f["max_retained_wal_bytes"]
        }
        END {
            for (i = 1; i <= n; i++) {
                split(order[i], dm, " ")
                runs = substr(secs[order[i]], 2)
                gsub(/ /, ",", runs)
                printf "COPYBENCH_MEDIAN dataset=%s method=%s seconds=%.1f max_retained_wal_bytes=%d runs=%s\n",
                    dm[1], dm[2], median(secs[order[i]]), median(wal[order[i]]), runs
            }
        }'
}

main() {
    zdm_require_root
    zdm_install_packages
    command -v pgcopydb >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y pgcopydb >/dev/null ||
        zdm_die "could not install pgcopydb"
    command -v bc >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y bc >/dev/null
    if [[ -n ${COPYBENCH_PG_BIN:-} ]]; then
        ZDM_PG_BIN=$COPYBENCH_PG_BIN
    else
        zdm_build_install
    fi
    BENCH_TMP=$(mktemp -d -t pg_zdm.copybench.XXXXXX)
    chown postgres:postgres "$BENCH_TMP"
    ZDM_TMP_DIRS+=("$BENCH_TMP")
    # max_locks_per_transaction: data set c has 5,000 tables, which pg_dump
    # and CREATE SUBSCRIPTION each lock in one transaction
    zdm_cluster_start src auto "max_wal_size = 4GB" "checkpoint_timeout = 30min" \
        "max_locks_per_transaction = 256"
    zdm_cluster_start tgt auto "max_wal_size = 4GB" "checkpoint_timeout = 30min" \
        "max_locks_per_transaction = 256" \
        "max_logical_replication_workers = 8" "wal_receiver_status_interval = 1s"

    local ds m r
    for ds in $DATASETS; do
        load_dataset "$ds"
        for r in $(seq "$REPEAT"); do
            for m in $METHODS; do
                run_method "$ds" "$m"
            done
        done
        sql src postgres -c "DROP DATABASE src_$ds WITH (FORCE)" >/dev/null || true
    done
    echo
    printf '%s\n' "${RESULTS[@]}"
    print_medians
    echo "BENCH_INFO command=\"DATASETS='$DATASETS' METHODS='$METHODS' REPEAT=$REPEAT WRITE_TPS=$WRITE_TPS test/bench/copy.sh\" nproc=$(nproc) postgresql=\"$(sql src postgres -c 'SHOW server_version')\" pgcopydb=\"$(pgcopydb --version 2>&1 | grep -o 'version [^ ]*' | head -1)\""
}

main "$@"
