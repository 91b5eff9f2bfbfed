# test/lib/common.sh: shared bash helpers for the pg_zdm test runner and demo
#
# Sourced (not executed) by test/run-tests.sh and test/demo.sh.  They run as
# root on a Debian 12 machine; these helpers install PostgreSQL 15, build and
# install the extension, make a postgres-owned copy of the tree (initdb refuses
# to run as root) and start throwaway clusters on free loopback ports.
#
# Everything these helpers create -- clusters, temporary directories -- is
# stopped and removed when the sourcing script exits, also on failure or
# Ctrl-C.  Scripts must therefore not set their own EXIT/INT/TERM traps; they
# register extra work with zdm_before_cleanup / zdm_after_cleanup instead.
#
# The Debian package may create and start a cluster "15/main" on port 5432.
# Nothing here uses it, depends on it or touches it.
#
# Environment knobs:
#   ZDM_KEEP_TMP=1   keep the temporary directories (clusters are still stopped)
#                    so their data directories and logs can be inspected
#
# The caller is expected to run with `set -euo pipefail`.

# The target PostgreSQL the helpers build for and run: Debian's 15 unless
# zdm_use_target chose another.
ZDM_PG_VERSION=15
ZDM_PG_BIN=/usr/lib/postgresql/${ZDM_PG_VERSION}/bin
ZDM_PG_CONFIG=${ZDM_PG_BIN}/pg_config
ZDM_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Packages the build and the tests need (libipc-run-perl: the TAP framework).
# libkrb5-dev is deliberately absent: the extension links only libpq (not the
# -lgssapi_krb5 of `pg_config --libs`, which PGXS uses for programs only) and
# includes no server header that pulls in gssapi.h (libpq/libpq-be.h would),
# so the build does not need it; zdm_build_install says so if that changes.
ZDM_PACKAGES=("postgresql-$ZDM_PG_VERSION" "postgresql-server-dev-$ZDM_PG_VERSION"
              libipc-run-perl make gcc)

# State shared by the functions below.
ZDM_TMP_ROOT=""                 # postgres-owned directory holding the clusters
ZDM_WORKDIR=""                  # postgres-owned copy of the repository
ZDM_TMP_DIRS=()                 # directories (and files) removed at exit
ZDM_CLUSTERS=()                 # running clusters, in start order
declare -A ZDM_CLUSTER_DIR=()   # cluster name -> its directory
declare -A ZDM_CLUSTER_PORT=()  # cluster name -> its port
ZDM_PORTS_TAKEN=" "             # ports handed out by zdm_free_port
ZDM_BEFORE_HOOKS=()             # commands run at exit before the cleanup
ZDM_AFTER_HOOKS=()              # commands run at exit after the cleanup
ZDM_CHILD_PID=""                # the command zdm_run_logged is waiting for

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

# Progress for whoever watches the run; stdout, so it stays in order with the
# output of the commands run in between.
zdm_log() {
    printf '==> %s\n' "$*"
}

# A problem worth seeing even when stdout is filtered.
zdm_warn() {
    printf 'WARNING: %s\n' "$*" >&2
}

# Stop the script with a message saying what went wrong; the EXIT trap then
# cleans up.
zdm_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Everything here needs root: apt-get, make install, runuser.
zdm_require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        zdm_die "$(basename "$0") must run as root: it installs packages and pg_zdm, and runs PostgreSQL as the postgres OS user"
    fi
}

# ---------------------------------------------------------------------------
# Packages, build, install
# ---------------------------------------------------------------------------

# True when the Debian package $1 is installed.
zdm_package_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == "install ok installed" ]]
}

# Install PostgreSQL 15, its server headers and the TAP prerequisites.  Does
# nothing (and does not touch the network) when all are already installed, so
# reruns are fast.
zdm_install_packages() {
    local pkg missing=()

    for pkg in "${ZDM_PACKAGES[@]}"; do
        zdm_package_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        zdm_log "packages already installed: ${ZDM_PACKAGES[*]}"
    else
        zdm_log "installing packages (missing: ${missing[*]})"
        apt-get update ||
            zdm_die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${ZDM_PACKAGES[@]}" ||
            zdm_die "apt-get install failed"
    fi
    [[ -x $ZDM_PG_CONFIG ]] ||
        zdm_die "$ZDM_PG_CONFIG not found after installing ${ZDM_PACKAGES[*]}"
    getent passwd postgres >/dev/null ||
        zdm_die "the postgres OS user does not exist (it comes with the postgresql-common package)"
}

# Hold the install lock of the current target until this script exits (or
# takes the lock of another target).  `make install` puts pg_zdm into the
# one installation of that PostgreSQL on the machine, so two runs from two
# checkouts (a test run and a demo, say) would load each other's builds; the
# second one waits here for the first to end.  A script started by one that
# holds the lock (run-tests.sh runs demo.sh) inherits its descriptor 8 and
# with it the lock: flock on that same open file succeeds at once, where
# opening the file anew would wait for the parent for ever.
zdm_lock_install() {
    local lock=/var/lock/pg_zdm-install.lock
    [[ $ZDM_PG_VERSION == 15 ]] || lock=/var/lock/pg_zdm-install-$ZDM_PG_VERSION.lock
    if [[ /proc/self/fd/8 -ef $lock ]] && flock -n 8; then
        zdm_log "holding the install lock of the calling script ($lock)"
        return 0
    fi
    exec 8>"$lock"
    if ! flock -n 8; then
        zdm_log "waiting for another pg_zdm run on this machine to end ($lock)"
        flock 8
    fi
}

# zdm_use_target VERSION: build for and run the target PostgreSQL VERSION
# from now on: 15 is Debian's package, 18 the build test/lib/servers.sh
# makes (and caches) from Debian's source package.
zdm_use_target() {
    case $1 in
        15) ZDM_PG_BIN=/usr/lib/postgresql/15/bin ;;
        18) zdm_pg18_target
            ZDM_PG_BIN=$ZDM_PG18_PREFIX/bin ;;
        *) zdm_die "no PostgreSQL $1 target: the tests build and run targets 15 and 18" ;;
    esac
    ZDM_PG_VERSION=$1
    ZDM_PG_CONFIG=$ZDM_PG_BIN/pg_config
}

# Build the extension for the current target in a fresh copy of the tree
# (so that objects built for another PostgreSQL, by hand or by an earlier
# run, are never linked in) and install it there.
zdm_build_install() {
    local buildlog builddir
    zdm_lock_install
    buildlog=$(mktemp -t pg_zdm.build.XXXXXX)
    builddir=$(mktemp -d -t pg_zdm.build.XXXXXX)
    ZDM_TMP_DIRS+=("$buildlog" "$builddir")
    zdm__copy_tree "$builddir"
    zdm_log "building pg_zdm for PostgreSQL $ZDM_PG_VERSION in $builddir"
    if ! make -C "$builddir" -j"$(nproc)" PG_CONFIG="$ZDM_PG_CONFIG" 2>&1 |
            tee "$buildlog"; then
        if grep -q 'gssapi' "$buildlog" && ! zdm_package_installed libkrb5-dev; then
            zdm_die "make failed: a source file now includes a server header that needs gssapi.h; add libkrb5-dev to ZDM_PACKAGES in test/lib/common.sh"
        fi
        zdm_die "make failed (see the compiler output above)"
    fi
    zdm_log "installing pg_zdm into PostgreSQL $ZDM_PG_VERSION"
    make -C "$builddir" PG_CONFIG="$ZDM_PG_CONFIG" install ||
        zdm_die "make install failed"
}

# ---------------------------------------------------------------------------
# Running things as the postgres OS user
# ---------------------------------------------------------------------------

# Run a command as postgres with the PostgreSQL 15 binaries first in PATH, in
# directory $1.  The environment is cleaned of libpq variables (PGHOST and
# friends would redirect psql and the tests to some other server) and of
# locale settings that may name a locale this machine has not generated:
# everything runs in C.UTF-8, which Debian always has.
zdm_as_postgres_in() {
    local dir=$1
    shift
    (
        cd "$dir" &&
        exec runuser -u postgres -- env \
            -u PGHOST -u PGHOSTADDR -u PGPORT -u PGDATABASE -u PGUSER \
            -u PGPASSWORD -u PGPASSFILE -u PGSERVICE -u PGSERVICEFILE \
            -u PGDATA -u PGOPTIONS -u PGSSLMODE -u PGTZ -u PGCLIENTENCODING \
            -u LC_ALL -u LANGUAGE -u LC_CTYPE -u LC_COLLATE -u LC_MESSAGES \
            HOME="$(getent passwd postgres | cut -d: -f6)" \
            USER=postgres LOGNAME=postgres \
            LANG=C.UTF-8 \
            PATH="$ZDM_PG_BIN:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
            "$@"
    )
}

# Run a command as postgres (see zdm_as_postgres_in) in /, a directory the
# postgres user can always enter, unlike root's current directory.
zdm_as_postgres() {
    zdm_as_postgres_in / "$@"
}

# Make a fresh directory owned by postgres and mode 0700, to be removed at
# exit, and put its path in ZDM__LAST_TMP (not printed: a $(...) subshell
# could not record it for removal).  $1 goes into the name.
zdm__mktemp_postgres() {
    local dir
    dir=$(mktemp -d -t "pg_zdm.${1:-tmp}.XXXXXX") ||
        zdm_die "mktemp failed"
    ZDM_TMP_DIRS+=("$dir")
    chown postgres:postgres "$dir"
    chmod 0700 "$dir"
    ZDM__LAST_TMP=$dir
}

# zdm__copy_tree DIR: copy the repository into DIR, without .git and without
# build or test output.
zdm__copy_tree() {
    tar -C "$ZDM_REPO_ROOT" -cf - \
        --exclude=./.git --exclude=./test/output --exclude=./results \
        --exclude='./tmp_check*' --exclude='./regression.*' --exclude=./log \
        --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
        . | tar -C "$1" -xf - ||
        zdm_die "could not copy $ZDM_REPO_ROOT to $1"
}

# Copy the repository (without .git and without build or test output) into a
# fresh postgres-owned directory, so that `make installcheck` can run as
# postgres: pg_regress and the TAP tests run initdb, which refuses root.
# Sets ZDM_WORKDIR.
zdm_workdir() {
    zdm__mktemp_postgres work
    ZDM_WORKDIR=$ZDM__LAST_TMP
    zdm_log "copying the tree to $ZDM_WORKDIR"
    zdm__copy_tree "$ZDM_WORKDIR"
    chown -R postgres:postgres "$ZDM_WORKDIR"
}

# The postgres-owned directory under which clusters live; made on first use.
zdm__tmp_root() {
    if [[ -z $ZDM_TMP_ROOT ]]; then
        zdm__mktemp_postgres clusters
        ZDM_TMP_ROOT=$ZDM__LAST_TMP
    fi
}

# ---------------------------------------------------------------------------
# Throwaway clusters
# ---------------------------------------------------------------------------

# True when something listens on TCP port $1 of the loopback interface.  Uses
# ss when present; a minimal Debian image lacks iproute2, so otherwise it tries
# to connect.
zdm__port_busy() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && return 0
    else
        timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    fi
    return 1
}

# Print a TCP port that nothing listens on and that this script has not handed
# out before.  Ports come from 20000-29999, away from 5432, from the range
# pg_regress and the TAP framework pick from (above 49152) and from Linux's
# ephemeral range (32768 and up).  Sets ZDM__LAST_PORT as well, because a
# $(...) caller cannot record the port as taken.
zdm_free_port() {
    local port tries
    for ((tries = 0; tries < 200; tries++)); do
        port=$((20000 + RANDOM % 10000))
        [[ $ZDM_PORTS_TAKEN == *" $port "* ]] && continue
        zdm__port_busy "$port" && continue
        ZDM_PORTS_TAKEN+="$port "
        ZDM__LAST_PORT=$port
        echo "$port"
        return 0
    done
    zdm_die "found no free TCP port in 20000-29999"
}

# Directory, data directory, socket directory, port and log of a cluster.
zdm_cluster_dir()     { echo "${ZDM_CLUSTER_DIR[$1]:?no cluster named $1}"; }
zdm_cluster_datadir() { echo "$(zdm_cluster_dir "$1")/data"; }
zdm_cluster_sockdir() { zdm_cluster_dir "$1"; }
zdm_cluster_port()    { echo "${ZDM_CLUSTER_PORT[$1]:?no cluster named $1}"; }
zdm_cluster_log()     { echo "$(zdm_cluster_dir "$1")/server.log"; }

# zdm_cluster_start NAME PORT [CONF_LINE...]
#
# initdb a new cluster NAME under the temporary directory and start it as
# postgres, listening on 127.0.0.1:PORT and on a Unix socket in its own
# directory (never /var/run/postgresql, so a Debian cluster cannot interfere).
# It is set up for logical replication.  Each CONF_LINE is appended to
# postgresql.conf after our settings, so it can override them.  PORT "auto"
# (or empty) picks a free port, and picks another one if the server finds the
# port taken after all.  The cluster is stopped at exit.  Afterwards
# zdm_cluster_port / zdm_cluster_sockdir / zdm_psql NAME reach it.
zdm_cluster_start() {
    local name=${1:?zdm_cluster_start NAME PORT [CONF_LINE...]}
    local port=${2:-auto}
    shift 2 || shift $#
    local dir data log line _attempt

    [[ -z ${ZDM_CLUSTER_DIR[$name]:-} ]] || zdm_die "cluster $name already exists"
    zdm__tmp_root
    dir=$ZDM_TMP_ROOT/$name
    data=$dir/data
    log=$dir/server.log
    install -d -o postgres -g postgres -m 0700 "$dir"
    ZDM_CLUSTER_DIR[$name]=$dir

    zdm_log "initdb cluster '$name' in $data"
    zdm_as_postgres initdb -D "$data" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 -N >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        zdm_die "initdb of cluster $name failed"
    }

    for _attempt in 1 2 3 4 5; do
        if [[ $port == auto ]]; then
            zdm_free_port >/dev/null
            ZDM_CLUSTER_PORT[$name]=$ZDM__LAST_PORT
        else
            ZDM_CLUSTER_PORT[$name]=$port
        fi
        {
            echo
            echo "# added by test/lib/common.sh for the throwaway cluster '$name'"
            echo "listen_addresses = '127.0.0.1'"
            echo "port = ${ZDM_CLUSTER_PORT[$name]}"
            echo "unix_socket_directories = '$dir'"
            echo "wal_level = logical"
            echo "max_replication_slots = 10"
            echo "max_wal_senders = 10"
            echo "max_worker_processes = 16"
            echo "log_line_prefix = '%m [%p] %q%a '"
            echo "cluster_name = 'zdm_$name'"
            for line in "$@"; do
                echo "$line"
            done
        } >"$dir/zdm.conf"
        chown postgres:postgres "$dir/zdm.conf"
        # Rewrite the include each attempt rather than appending again.
        sed -i '/^include .*zdm\.conf/d' "$data/postgresql.conf"
        echo "include '$dir/zdm.conf'" >>"$data/postgresql.conf"

        zdm_log "starting cluster '$name' on 127.0.0.1:${ZDM_CLUSTER_PORT[$name]}"
        if zdm_as_postgres pg_ctl -D "$data" -l "$log" -w -t 60 start >/dev/null; then
            ZDM_CLUSTERS+=("$name")
            return 0
        fi
        if [[ $port == auto ]] && grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
            zdm_warn "port ${ZDM_CLUSTER_PORT[$name]} was taken after all; trying another"
            continue
        fi
        break
    done
    # Stop it in case it came up after pg_ctl gave up waiting.
    zdm_as_postgres pg_ctl -D "$data" -m immediate stop >/dev/null 2>&1 || true
    echo "---- last lines of $log ----" >&2
    tail -n 30 "$log" >&2 2>/dev/null || true
    zdm_die "cluster $name did not start"
}

# Stop cluster NAME (fast shutdown: open sessions are disconnected, like the
# walsender of a subscription).  Falls back to an immediate shutdown so that a
# hung cluster cannot keep the script from finishing.
zdm_cluster_stop() {
    local name=${1:?zdm_cluster_stop NAME}
    local data keep=() c
    data=$(zdm_cluster_datadir "$name")
    zdm_log "stopping cluster '$name'"
    if ! zdm_as_postgres pg_ctl -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1; then
        zdm_warn "cluster $name did not stop within 30 s; stopping it immediately"
        zdm_as_postgres pg_ctl -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
            zdm_warn "could not stop cluster $name (data directory $data)"
    fi
    for c in "${ZDM_CLUSTERS[@]}"; do
        [[ $c == "$name" ]] || keep+=("$c")
    done
    ZDM_CLUSTERS=("${keep[@]}")
}

# Put pg_hba.conf lines of cluster NAME before the ones initdb wrote (the
# first matching line wins), then reload the configuration.
zdm_cluster_hba_prepend() {
    local name=${1:?zdm_cluster_hba_prepend NAME LINE...}
    shift
    local hba
    hba=$(zdm_cluster_datadir "$name")/pg_hba.conf
    {
        echo "# added by test/lib/common.sh"
        printf '%s\n' "$@"
        cat "$hba"
    } >"$hba.new"
    chown postgres:postgres "$hba.new"
    chmod 0600 "$hba.new"
    mv "$hba.new" "$hba"
    zdm_as_postgres pg_ctl -D "$(zdm_cluster_datadir "$name")" reload >/dev/null ||
        zdm_die "reloading the configuration of cluster $name failed"
}

# zdm_psql NAME [PSQL_ARG...]: psql as the postgres superuser into cluster
# NAME over its Unix socket, without ~/.psqlrc, stopping at the first error.
# The database is "postgres" unless the arguments name another (-d).
zdm_psql() {
    local name=${1:?zdm_psql NAME [PSQL_ARG...]}
    shift
    zdm_as_postgres psql -X -q -v ON_ERROR_STOP=1 \
        -h "$(zdm_cluster_sockdir "$name")" -p "$(zdm_cluster_port "$name")" \
        -U postgres "$@"
}

# ---------------------------------------------------------------------------
# Long-running commands
# ---------------------------------------------------------------------------

# zdm_run_logged LOG CMD...: run CMD with its stdout and stderr shown and
# copied to LOG, and return its status.  It runs in the background while this
# shell waits for it, because bash defers a trap until a foreground command
# ends: this way a SIGTERM (a CI timeout) or Ctrl-C stops a test run of
# several minutes at once, and the EXIT trap ends CMD's whole process tree.
zdm_run_logged() {
    local log=$1 rc=0
    shift
    ( "$@" 2>&1 | tee "$log" ) &
    ZDM_CHILD_PID=$!
    wait "$ZDM_CHILD_PID" || rc=$?
    ZDM_CHILD_PID=""
    return "$rc"
}

# Print the process ids of every descendant of process $1, read from /proc
# (procps may be missing on a minimal image).
zdm__descendants() {
    local f stat pid ppid rest
    local -A kids=()
    for f in /proc/[0-9]*/stat; do
        stat=$(<"$f") 2>/dev/null || continue
        pid=${f#/proc/}
        pid=${pid%/stat}
        # The fields after "(comm) " are: state ppid ...
        read -r _ ppid rest <<<"${stat##*) }"
        kids[$ppid]+=" $pid"
    done
    local queue=("$1") next
    while [[ ${#queue[@]} -gt 0 ]]; do
        next=${queue[0]}
        queue=("${queue[@]:1}")
        for pid in ${kids[$next]:-}; do
            echo "$pid"
            queue+=("$pid")
        done
    done
}

# End the process $1 started by zdm_run_logged and everything it started.
zdm__kill_tree() {
    local pids
    pids=$(zdm__descendants "$1")
    # shellcheck disable=SC2086
    kill -TERM "$1" $pids 2>/dev/null
    wait "$1" 2>/dev/null
}

# Stop every server whose data directory lies under directory $1: servers of
# pg_regress or the TAP framework that an interrupted test run left behind.
# They run in a session of their own, out of reach of zdm__kill_tree.
zdm__stop_servers_under() {
    local pidfile
    while IFS= read -r pidfile; do
        zdm_log "stopping the server left running in ${pidfile%/postmaster.pid}"
        zdm_as_postgres pg_ctl -D "${pidfile%/postmaster.pid}" -m immediate \
            -w -t 30 stop >/dev/null 2>&1
    done < <(find "$1" -name postmaster.pid -type f 2>/dev/null)
}

# ---------------------------------------------------------------------------
# Cleanup at exit
# ---------------------------------------------------------------------------

# Register a command (one string, eval'd) to run at exit before the clusters
# are stopped, e.g. to copy logs out of a temporary directory.
zdm_before_cleanup() {
    ZDM_BEFORE_HOOKS+=("$1")
}

# Register a command to run at exit after everything has been cleaned up,
# e.g. a summary line that must be the last thing printed.  The exit status of
# the script is in $ZDM_EXIT_STATUS while it runs.
zdm_after_cleanup() {
    ZDM_AFTER_HOOKS+=("$1")
}

# The EXIT trap: end the command zdm_run_logged runs, if any; run the hooks;
# stop every cluster still running (newest first, so a subscriber goes before
# its publisher) and any other server under our temporary directories; remove
# those directories; run the late hooks; exit with the script's status.
# Failures here are reported but never stop the cleanup.
zdm__cleanup() {
    ZDM_EXIT_STATUS=$?
    set +e
    trap - EXIT
    trap "" INT TERM HUP     # finish the cleanup even if signalled again
    local hook i dir

    if [[ -n $ZDM_CHILD_PID ]]; then
        zdm_log "stopping the running command (pid $ZDM_CHILD_PID)"
        zdm__kill_tree "$ZDM_CHILD_PID"
    fi
    for hook in "${ZDM_BEFORE_HOOKS[@]}"; do
        eval "$hook" || zdm_warn "cleanup step failed: $hook"
    done
    for ((i = ${#ZDM_CLUSTERS[@]} - 1; i >= 0; i--)); do
        zdm_cluster_stop "${ZDM_CLUSTERS[i]}"
    done
    for dir in "${ZDM_TMP_DIRS[@]}"; do
        zdm__stop_servers_under "$dir"
    done
    for dir in "${ZDM_TMP_DIRS[@]}"; do
        if [[ ${ZDM_KEEP_TMP:-0} == 1 ]]; then
            zdm_log "keeping $dir (ZDM_KEEP_TMP=1)"
        else
            rm -rf -- "$dir"
        fi
    done
    for hook in "${ZDM_AFTER_HOOKS[@]}"; do
        eval "$hook" || zdm_warn "cleanup step failed: $hook"
    done
    exit "$ZDM_EXIT_STATUS"
}

# On a signal, exit with the conventional status (128 + signal number); the
# EXIT trap then does the cleanup.
zdm__on_signal() {
    printf '\nInterrupted by SIG%s; cleaning up\n' "$1" >&2
    case $1 in
        INT) exit 130 ;;
        HUP) exit 129 ;;
        *) exit 143 ;;
    esac
}

trap zdm__cleanup EXIT
trap 'zdm__on_signal INT' INT
trap 'zdm__on_signal TERM' TERM
trap 'zdm__on_signal HUP' HUP

# shellcheck source=test/lib/servers.sh
source "$ZDM_REPO_ROOT/test/lib/servers.sh"
