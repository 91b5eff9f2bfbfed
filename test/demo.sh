#!/usr/bin/env bash
# test/demo.sh: a pg_zdm migration between two throwaway clusters, to watch
#
# Run as root on a Debian 12 machine:
#
#     bash test/demo.sh [--pause]
#
# It installs PostgreSQL 15 if needed, builds and installs pg_zdm, then starts
# two clusters on 127.0.0.1 (free ports, temporary directories): a "source"
# with a small shop database and a "target" with the same schema and no rows.
# On the target it runs, printing each statement first, what a DBA would:
#
#     CREATE EXTENSION pg_zdm;
#     SELECT * FROM zdm.check('<source dsn>');
#     CALL zdm.init('<source dsn>');
#     SELECT * FROM zdm.status();     -- every second, until 'overall' is ok
#     SELECT * FROM zdm.tables();
#
# while it also writes on the source during the initial copy (those rows
# must arrive by streaming), then compares the row counts of both sides,
# failing if they differ.  Last, CALL zdm.cutover() runs while writers keep
# inserting (demo_cutover): it prints how long writes were blocked and fails
# if any write the source acknowledged is missing on the target.  With --pause it waits for Enter before stopping the
# clusters, so that they can be explored with the psql commands it prints.
# Everything is stopped and removed at exit, also on failure or Ctrl-C.
#
# The target reaches the source the way it would reach a real old server:
# over TCP with a password (scram-sha-256), as a role made for the migration.
# The password is shown masked in the printed statements.
#
# Optional environment:
#   ZDM_DEMO_TIMEOUT=120   seconds to wait for the 'overall' row to be ok

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DEMO_DB=shop
DEMO_ROLE=zdm_migrator
DEMO_PASSWORD="demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
DEMO_TIMEOUT=${ZDM_DEMO_TIMEOUT:-120}
DEMO_TABLES=(public.customers public.orders 'public."OrderLines"')
PAUSE=0

# A banner between the steps of the demo.
step() {
    echo
    echo "=================================================================="
    echo "  $*"
    echo "=================================================================="
}

# The statement $2 as shown to the watcher: prefixed with the cluster name
# $1, the source password masked.
show_sql() {
    local text=${2//"$DEMO_PASSWORD"/********}
    printf '\n%s=# %s\n' "$1" "$text"
}

# sql CLUSTER STATEMENT: print the statement, then run it on database shop of
# CLUSTER with psql (stop on error, aligned output, command tags such as
# "INSERT 0 100" shown).
sql() {
    show_sql "$1" "$2"
    zdm_psql "$1" -d "$DEMO_DB" -v QUIET=off -c "$2"
}

# sql_value CLUSTER QUERY: run QUERY quietly and print its bare result, for
# the script's own use (not shown to the watcher).
sql_value() {
    zdm_psql "$1" -d "$DEMO_DB" -At -c "$2"
}

# Start the two clusters.  The source asks for scram-sha-256 on every TCP
# connection (the first matching pg_hba.conf line wins, so ours goes before
# initdb's trust lines); the local socket, used by this script as the postgres
# superuser, stays trust.
start_clusters() {
    step "Starting two throwaway clusters on 127.0.0.1"
    zdm_cluster_start source auto "password_encryption = 'scram-sha-256'"
    zdm_cluster_hba_prepend source "host all all 127.0.0.1/32 scram-sha-256"
    zdm_cluster_start target auto
    echo
    echo "source: 127.0.0.1:$(zdm_cluster_port source)   target: 127.0.0.1:$(zdm_cluster_port target)"
}

# The source database: three tables -- one with an identity column, one with
# a serial, one whose name and columns are mixed case and need quoting -- and
# some thousands of rows.  Plus the role the target will connect as.
create_source() {
    step "Creating the demo database on the source"
    show_sql source "CREATE DATABASE $DEMO_DB;"
    zdm_psql source -c "CREATE DATABASE $DEMO_DB"
    # psql -e prints every statement before its result.
    zdm_psql source -d "$DEMO_DB" -v QUIET=off -e <<'SQL'
CREATE TABLE public.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.orders (
    id           bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES public.customers,
    amount       numeric(10,2) NOT NULL,
    placed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public."OrderLines" (
    "OrderId"  bigint NOT NULL REFERENCES public.orders,
    "LineNo"   integer NOT NULL,
    "Sku"      text NOT NULL,
    "Qty"      integer NOT NULL,
    PRIMARY KEY ("OrderId", "LineNo")
);
INSERT INTO public.customers (name, email)
    SELECT 'customer ' || g, 'customer' || g || '@example.com'
    FROM generate_series(1, 2000) AS g;
INSERT INTO public.orders (customer_id, amount, placed_at)
    SELECT 1 + g % 2000, round((g % 50000) / 100.0, 2), now() - g * interval '1 minute'
    FROM generate_series(1, 10000) AS g;
INSERT INTO public."OrderLines"
    SELECT o, l, 'SKU-' || (o * 7 + l) % 997, 1 + (o + l) % 5
    FROM generate_series(1, 10000) AS o, generate_series(1, 3) AS l;
SQL
    # The migration role.  CREATE PUBLICATION ... FOR ALL TABLES needs a
    # superuser in PostgreSQL 15, so for the demo the role is one; without
    # that it would have to own every published table.
    show_sql source "CREATE ROLE $DEMO_ROLE SUPERUSER REPLICATION LOGIN PASSWORD '$DEMO_PASSWORD';"
    zdm_psql source -c "CREATE ROLE $DEMO_ROLE SUPERUSER REPLICATION LOGIN PASSWORD '$DEMO_PASSWORD'"
}

# The target database with the source's schema and no rows, the way a DBA
# prepares it: pg_dump --schema-only piped into psql.
create_target() {
    step "Copying the schema to the target (pg_dump --schema-only | psql)"
    show_sql target "CREATE DATABASE $DEMO_DB;"
    zdm_psql target -c "CREATE DATABASE $DEMO_DB"
    printf '\n$ pg_dump --schema-only <source>/%s | psql <target>/%s\n' "$DEMO_DB" "$DEMO_DB"
    zdm_as_postgres pg_dump --schema-only --no-owner \
        -h "$(zdm_cluster_sockdir source)" -p "$(zdm_cluster_port source)" \
        -U postgres "$DEMO_DB" |
        zdm_psql target -d "$DEMO_DB" >/dev/null
    sql target '\dt'
}

# The source connection string, as the target's backend will use it.
source_dsn() {
    echo "host=127.0.0.1 port=$(zdm_cluster_port source) dbname=$DEMO_DB user=$DEMO_ROLE password=$DEMO_PASSWORD"
}

# Install pg_zdm on the target, run the preflight checks, start the migration.
start_migration() {
    local dsn
    dsn=$(source_dsn)
    step "Starting the migration on the target"
    sql target "CREATE EXTENSION pg_zdm;"
    sql target "SELECT * FROM zdm.check('$dsn');"
    sql target "CALL zdm.init('$dsn');"
}

# Write on the source while the initial copy runs: these rows must reach the
# target through streaming replication, not through the copy.
write_during_copy() {
    step "Writing on the source while the initial copy runs"
    sql source "INSERT INTO public.customers (name, email) SELECT 'late customer ' || g, 'late' || g || '@example.com' FROM generate_series(1, 100) AS g;"
    sql source "UPDATE public.orders SET amount = amount + 1 WHERE id % 100 = 0;"
    sql source "DELETE FROM public.\"OrderLines\" WHERE \"OrderId\" <= 10;"
}

# Poll zdm.status() once a second until its 'overall' row is ok, showing the
# progress; give up loudly after DEMO_TIMEOUT seconds, with the full status
# and the tables' copy states on screen.
wait_until_ready() {
    local start now elapsed overall tables
    step "Waiting until zdm.status() says ready (at most $DEMO_TIMEOUT s)"
    show_sql target "SELECT * FROM zdm.status();   -- every second, until component 'overall' is ok"
    start=$(date +%s)
    while :; do
        overall=$(sql_value target "SELECT coalesce(ok, false) || ' ' || coalesce(value, '') FROM zdm.status() WHERE component = 'overall'")
        tables=$(sql_value target "SELECT string_agg(state || '=' || n, ' ' ORDER BY state) FROM (SELECT state, count(*) AS n FROM zdm.tables() GROUP BY state) AS s")
        now=$(date +%s)
        elapsed=$((now - start))
        printf '  [%3ds] overall: %s | tables: %s\n' "$elapsed" "${overall#* }" "${tables:-none}"
        [[ ${overall%% *} == true ]] && break
        if ((elapsed >= DEMO_TIMEOUT)); then
            sql target "SELECT * FROM zdm.status();" || true
            sql target "SELECT * FROM zdm.tables();" || true
            zdm_die "the migration was not ready after $DEMO_TIMEOUT s (see zdm.status() above; ZDM_DEMO_TIMEOUT sets the limit)"
        fi
        sleep 1
    done
    echo "  ready for cutover after ${elapsed}s"
}

# What the DBA looks at before deciding to cut over.
show_progress() {
    step "Replication status"
    sql target "SELECT * FROM zdm.status();"
    sql target "SELECT * FROM zdm.tables();"
}

# Row counts of every demo table on both sides.  Once the 'overall' row is ok
# the target has applied everything the source wrote, so they must match; a
# difference fails the demo.
compare_counts() {
    local t src tgt bad=0
    step "Row counts on both sides"
    printf '\n  %-24s %10s %10s\n' table source target
    for t in "${DEMO_TABLES[@]}"; do
        src=$(sql_value source "SELECT count(*) FROM $t")
        tgt=$(sql_value target "SELECT count(*) FROM $t")
        printf '  %-24s %10s %10s%s\n' "$t" "$src" "$tgt" "$([[ $src == "$tgt" ]] || echo '   <-- differs')"
        [[ $src == "$tgt" ]] || bad=1
    done
    [[ $bad -eq 0 ]] || zdm_die "the target's row counts differ from the source's although zdm.status() said ready"
    echo
    echo "  all tables match"
}

# ---------------------------------------------------------------------------
# demo_cutover: CALL zdm.cutover() while writers keep inserting on the
# source; each writer moves to the target once the source rejects it as
# read-only.  Then show that every write the source acknowledged is on the
# target, how long writes were unavailable, that the source refuses writes,
# that the sequences moved ahead and that nothing of the migration is left.
# ---------------------------------------------------------------------------
DEMO_WRITERS=3

# writer N DIR: insert customers demo-wN-I@example.com one transaction per
# connection, on the source until it answers "read-only", then on the target;
# log "S|T key epoch-seconds" for every acknowledged commit; stop when DIR/stop
# exists.
writer() {
    local n=$1 dir=$2 i=0 side=source out
    while [[ ! -e $dir/stop ]]; do
        i=$((i + 1))
        if out=$(zdm_psql "$side" -d "$DEMO_DB" -At -c \
            "INSERT INTO public.customers (name, email) VALUES ('writer $n', 'demo-w$n-$i@example.com') RETURNING email" 2>&1); then
            echo "${side:0:1} $out $(date +%s.%N)" >>"$dir/acks.$n"
        elif [[ $side == source && $out == *read-only* ]]; then
            side=target
        fi
    done
}

demo_cutover() {
    local dir n dsn notices blocked window lost acked src_seq tgt_seq
    step "Cutover under write load"
    zdm__mktemp_postgres demo
    dir=$ZDM__LAST_TMP
    for ((n = 1; n <= DEMO_WRITERS; n++)); do
        writer "$n" "$dir" &
    done
    sleep 2
    echo "  $DEMO_WRITERS writers insert on the source, one transaction per connection"
    show_sql target "CALL zdm.cutover();"
    notices=$(zdm_psql target -d "$DEMO_DB" -c "CALL zdm.cutover();" 2>&1) ||
        { echo "$notices"; zdm_die "the cutover failed"; }
    echo "$notices"
    # let the writers reach the target, then stop them
    sleep 2
    touch "$dir/stop"
    wait

    step "Did we lose anything?"
    cat "$dir"/acks.* >"$dir/all"
    acked=$(grep -c '^s ' "$dir/all" || true)
    lost=0
    while read -r _ key _; do
        [[ $(sql_value target "SELECT count(*) FROM public.customers WHERE email = '$key'") == 1 ]] ||
            { echo "  LOST: $key was acknowledged by the source but is not on the target"; lost=$((lost + 1)); }
    done < <(grep '^s ' "$dir/all")
    echo "  writes acknowledged by the source: $acked, missing on the target: $lost"
    echo "  writes acknowledged by the target after the switch: $(grep -c '^t ' "$dir/all" || true)"
    [[ $lost -eq 0 ]] || zdm_die "$lost acknowledged writes were lost"

    blocked=$(sed -n 's/.*writes were blocked on the source for \([0-9.]*\) ms.*/\1/p' <<<"$notices")
    # per writer: first commit on the target minus last commit on the source
    window=$(for ((n = 1; n <= DEMO_WRITERS; n++)); do
        awk '$1 == "s" { s = $3 } $1 == "t" && !t { t = $3 } END { if (s && t) printf "%.0f\n", (t - s) * 1000 }' "$dir/acks.$n"
    done | sort -n | tail -1)
    echo "  writes blocked on the source (fence taken to target detached): ${blocked} ms"
    echo "  longest gap a writer saw between its last commit on the source and its first on the target: ${window} ms"
    echo "  (that gap includes each writer's own reconnects: one psql process per transaction)"

    step "After the cutover"
    show_sql source "INSERT INTO public.customers (name, email) VALUES ('too late', 'late@example.com');"
    if zdm_psql source -d "$DEMO_DB" -c "INSERT INTO public.customers (name, email) VALUES ('too late', 'late@example.com')"; then
        zdm_die "the source accepted a write after the cutover"
    fi
    src_seq=$(sql_value source "SELECT last_value FROM public.customers_id_seq")
    tgt_seq=$(sql_value target "SELECT last_value FROM public.customers_id_seq")
    echo "  customers_id_seq: source $src_seq, target $tgt_seq (ahead by the sequence_buffer of 5000)"
    sql target "SELECT * FROM zdm.status();"
    sql target "SELECT event, detail FROM zdm.event_log ORDER BY id;"
    sql source "SELECT count(*) AS zdm_slots FROM pg_replication_slots; SELECT count(*) AS publications FROM pg_publication;"
    echo
    echo "  The source stays read-only; DROP SCHEMA zdm_fence CASCADE on it would make it writable again."
}

# With --pause: show how to reach both clusters and wait for Enter.
pause_for_exploring() {
    [[ $PAUSE -eq 1 ]] || return 0
    step "Clusters left running for you"
    echo "  source: runuser -u postgres -- $ZDM_PG_BIN/psql -h $(zdm_cluster_sockdir source) -p $(zdm_cluster_port source) $DEMO_DB"
    echo "  target: runuser -u postgres -- $ZDM_PG_BIN/psql -h $(zdm_cluster_sockdir target) -p $(zdm_cluster_port target) $DEMO_DB"
    echo
    read -r -p "  Press Enter to stop and remove both clusters. " _ || true
}

# On failure, the end of both server logs: what went wrong is usually there.
show_logs_on_failure() {
    local name
    [[ $ZDM_EXIT_STATUS -ne 0 ]] || return 0
    for name in "${ZDM_CLUSTERS[@]}"; do
        echo
        echo "======== last lines of the $name server log ========"
        tail -n 40 "$(zdm_cluster_log "$name")" 2>/dev/null
    done
    return 0
}

usage() {
    echo "usage: $0 [--pause]" >&2
    exit 2
}

main() {
    case ${1:-} in
        "") ;;
        --pause) PAUSE=1 ;;
        *) usage ;;
    esac
    zdm_require_root
    zdm_before_cleanup show_logs_on_failure
    zdm_install_packages
    zdm_build_install
    start_clusters
    create_source
    create_target
    start_migration
    write_during_copy
    wait_until_ready
    show_progress
    compare_counts
    demo_cutover
    pause_for_exploring
    step "Demo finished; stopping the clusters"
}

main "$@"
