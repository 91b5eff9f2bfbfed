#!/usr/bin/env bash
# test/run-tests.sh: the test command of pg_zdm (README quick start, CI)
#
# Run as root on a Debian 12 machine, from anywhere:
#
#     bash test/run-tests.sh
#
# For each target PostgreSQL (15, Debian's package, and 18, built once from
# Debian's source package and cached under /var/cache/pg_zdm) it installs
# what is missing, builds and installs the extension, copies the tree to a
# postgres-owned temporary directory and runs `make installcheck` there as
# the postgres OS user, in two passes so that a failing pg_regress test does
# not hide the TAP results:
#
#   1. the pg_regress suite (REGRESS), on its own throwaway server
#      (REGRESS_OPTS --temp-instance), with the TAP tests switched off;
#   2. the TAP tests (test/t/*.pl, separate source and target clusters), with
#      REGRESS emptied.  The cross-version tests get source servers of every
#      major version 10 to 18 (test/lib/servers.sh).
#
# After the passes of target 15 it runs test/demo.sh (about 30 s), which
# fails on a lost write or a source still writable after the cutover: one
# test, passed or failed.
#
# A pass that runs no test fails: pg_regress reporting no test, prove
# reporting no test (TAP switched off in the Makefile or in the installed
# PostgreSQL build, no test file found) count as one failure each, so that
# "N passed, 0 failed" always means every pass ran.
#
# On failure it prints regression.diffs and the TAP logs.  Either way the
# outputs are copied to test/output/<target version>/ in the repository
# (replacing the previous run's).  The last line printed is always
# `N passed, N failed` (pg_regress tests plus TAP assertions of every
# target), and the exit status is non-zero when anything failed -- CI
# judges by those two.
#
# Optional environment:
#   ZDM_TARGETS="15"           test only these target versions (default "15 18")
#   ZDM_REGRESS="a b"          run only these pg_regress tests ("none": skip
#                              the pass)
#   ZDM_PROVE_TESTS="test/t/010_x.pl"   run only these TAP files ("none":
#                              skip the pass)
#   ZDM_DEMO=0                 skip the demo
#   ZDM_KEEP_TMP=1             keep the temporary copy (see test/lib/common.sh)
#   ZDM_SOURCE_INSTALLS="10=DIR ..."   migrate from these source servers
#                              (DIR holds bin/ with initdb, pg_ctl, postgres)
#                              instead of the cached 10 to 18
#
# Before the TAP pass it fetches (once; cached under /var/cache/pg_zdm) real
# server binaries of every source major version 10 to 18 and hands their
# directories to the tests in ZDM_SOURCE_INSTALLS (test/lib/servers.sh,
# test/lib/ZdmSources.pm); test/t/030_source_versions.pl migrates from each.

set -euo pipefail

# shellcheck source=test/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

OUTPUT_DIR=$ZDM_REPO_ROOT/test/output
TARGETS=${ZDM_TARGETS:-15 18}
PASSED=0
FAILED=0

# Print the summary line CI reads.  Runs after all cleanup so that it is the
# last line of output.  A run that failed before or outside the tests (a build
# error, a crash of pg_regress) counts as at least one failure, so the line
# never reads "0 failed" next to a failing exit status.
print_summary() {
    if [[ $ZDM_EXIT_STATUS -ne 0 && $FAILED -eq 0 ]]; then
        FAILED=1
    fi
    echo
    echo "$PASSED passed, $FAILED failed"
}

# Count pg_regress results in the make output $1.  PostgreSQL 15's
# pg_regress prints one line per test, "test NAME ... ok" (or "     NAME ...
# ok" inside a parallel group), with FAILED instead of ok for a failure;
# from 16 it prints TAP, "ok N - NAME  12 ms" ("+" instead of "-" inside a
# parallel group) or "not ok N - NAME".  Ignored failures count as neither.
# Prints "PASSED FAILED".
count_pg_regress() {
    awk '
        /^(test +| +)[^ ]+ +\.\.\. +ok( |$)/    { ok++ }
        /^(test +| +)[^ ]+ +\.\.\. +FAILED( |$)/ { bad++ }
        /^ok +[0-9]+ +[-+] /                   { ok++ }
        /^not ok +[0-9]+ +[-+] /               { bad++ }
        END { printf "%d %d\n", ok, bad }
    ' "$1"
}

# Count TAP results in the prove output $1.  prove ends with
# "Files=F, Tests=T, ..." and, when something failed, a "Test Summary Report"
# with one "FILE (Wstat: W [(exited N)] Tests: T Failed: K)" line per failing
# file.  Every
# failed assertion counts as a failure; a file that failed without a failed
# assertion (it died, had a bad plan, exited non-zero) counts as one more.
# Everything else that ran passed.  Prints "PASSED FAILED".
count_prove() {
    awk '
        /^Files=[0-9]+, Tests=[0-9]+/ {
            sub(/^Files=[0-9]+, Tests=/, ""); total = $0 + 0
        }
        /\(Wstat: [0-9]+.* Tests: [0-9]+ Failed: [0-9]+\)/ {
            s = $0; sub(/.*Failed: /, "", s); k = s + 0
            if (k > 0) bad += k; else dead++
        }
        END { printf "%d %d\n", total - bad, bad + dead }
    ' "$1"
}

# The TAP files that failed, from the Test Summary Report of prove output $1.
failed_tap_files() {
    sed -n 's/^\(.*\.pl\) *(Wstat: .*/\1/p' "$1"
}

# Print the value of make variable $1 as the Makefile sets it, so that this
# script follows the Makefile instead of repeating it.
make_var() {
    local rule
    rule=$'zdm-print-var:\n\t@echo \'$('"$1"$')\'\n'
    printf '%s' "$rule" |
        zdm_as_postgres_in "$ZDM_WORKDIR" make -s --no-print-directory \
            PG_CONFIG="$ZDM_PG_CONFIG" -f Makefile -f - zdm-print-var ||
        zdm_die "could not read variable $1 from the Makefile"
}

# Print the files in the work directory that the space-separated glob
# patterns $1 match, one per line (nothing for a pattern that matches none).
expand_globs() {
    local pattern patterns
    read -r -a patterns <<<"$1"     # split on spaces, no globbing here
    for pattern in "${patterns[@]}"; do
        (cd "$ZDM_WORKDIR" && compgen -G "$pattern") || true
    done | sort
}

# Run one `make installcheck` pass as postgres in the work directory, logging
# to $1, with the make variable overrides that follow.  Returns make's status.
# ZDM_SOURCE_INSTALLS passes through the cleaned environment to the TAP tests.
run_installcheck() {
    local log=$1
    shift
    zdm_run_logged "$log" zdm_as_postgres_in "$ZDM_WORKDIR" \
        env ZDM_SOURCE_INSTALLS="${ZDM_SOURCE_INSTALLS:-}" \
        make PG_CONFIG="$ZDM_PG_CONFIG" installcheck "$@"
}

# Make sure the source servers of every version the cross-version tests
# migrate from are cached (test/lib/servers.sh), and export their
# installation directories as ZDM_SOURCE_INSTALLS ("MAJOR=DIR ..."), unless
# the caller set it (other servers, or fewer of them).
source_installs() {
    local major dir installs=()
    if [[ -n ${ZDM_SOURCE_INSTALLS:-} ]]; then
        export ZDM_SOURCE_INSTALLS
        zdm_log "source servers for the cross-version tests (as given): $ZDM_SOURCE_INSTALLS"
        return 0
    fi
    zdm_embedded_servers_all
    for major in $ZDM_SOURCE_MAJORS; do
        dir=$(zdm_embedded_server "$major")
        installs+=("$major=$dir")
    done
    export ZDM_SOURCE_INSTALLS="${installs[*]}"
    zdm_log "source servers for the cross-version tests: $ZDM_SOURCE_INSTALLS"
}

# Show a file under a banner, so it can be found in a long CI log.
show_file() {
    echo
    echo "======== $1 ========"
    cat "$1"
}

# After a failed pg_regress pass: the diffs, and the end of the logs of
# initdb and of the temporary server (pg_regress writes them to log/ in the
# output directory), which say why when it could not even run the tests.
report_regress_failure() {
    local f
    if [[ -s $ZDM_WORKDIR/regression.diffs ]]; then
        show_file "$ZDM_WORKDIR/regression.diffs"
    fi
    for f in "$ZDM_WORKDIR"/log/*.log; do
        [[ -f $f ]] || continue
        echo
        echo "======== last lines of $f ========"
        tail -n 60 "$f"
    done
}

# After a failed TAP pass: the full log of every failed test file and the end
# of the server logs it produced (all test logs when the failed files are not
# known, e.g. when prove bailed out).
report_tap_failure() {
    local log=$1 file base f known=0
    local logdir=$ZDM_WORKDIR/tmp_check/log
    [[ -d $logdir ]] || return 0
    while IFS= read -r file; do
        known=1
        base=$(basename "$file" .pl)
        if [[ -f $logdir/regress_log_$base ]]; then
            show_file "$logdir/regress_log_$base"
        fi
        for f in "$logdir/${base}"_*.log; do
            [[ -f $f ]] || continue
            echo
            echo "======== last lines of $f ========"
            tail -n 80 "$f"
        done
    done < <(failed_tap_files "$log")
    if [[ $known -eq 0 ]]; then
        for f in "$logdir"/regress_log_*; do
            [[ -f $f ]] && show_file "$f"
        done
    fi
    return 0
}

# Copy the outputs of the current target's work directory to
# test/output/<target version>/ in the repository, replacing the previous
# run's.  Called when a target is done, and at exit, so an interrupted run
# keeps what it produced.
copy_outputs() {
    [[ -n $ZDM_WORKDIR && -d $ZDM_WORKDIR ]] || return 0
    local w=$ZDM_WORKDIR out=$OUTPUT_DIR/$ZDM_PG_VERSION
    rm -rf "$out"
    mkdir -p "$out/regress" "$out/tap"
    cp "$w"/installcheck-*.log "$w"/demo.log "$out/" 2>/dev/null || true
    cp "$w"/regression.diffs "$w"/regression.out "$out/regress/" 2>/dev/null || true
    [[ -d $w/results ]] && cp -r "$w/results" "$out/regress/"
    [[ -d $w/log ]] && cp -r "$w/log" "$out/regress/"
    [[ -d $w/tmp_check/log ]] && cp -r "$w/tmp_check/log/." "$out/tap/"
    zdm_log "test outputs copied to $out"
}

# run_pass NAME LOG COUNTER REPORTER MAKE_ARGS...: one `make installcheck`
# pass with MAKE_ARGS, its output in LOG; COUNTER LOG prints "passed failed",
# REPORTER LOG shows what failed.  Adds to PASSED and FAILED (a failing pass
# with no failed test counts as one failure, and so does a pass that reports
# no test at all) and returns make's status, or 1 when no test ran.
run_pass() {
    local name=$1 log=$2 counter=$3 reporter=$4 rc=0 p f
    shift 4
    run_installcheck "$log" "$@" || rc=$?
    read -r p f < <("$counter" "$log")
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [[ $rc -eq 0 && $((p + f)) -eq 0 ]]; then
        no_tests_ran "$name pass: make succeeded but no test was reported (see $log)"
        return 1
    fi
    if [[ $rc -eq 0 ]]; then
        zdm_log "$name pass: $p passed"
        return 0
    fi
    "$reporter" "$log"
    if [[ $f -eq 0 ]]; then
        FAILED=$((FAILED + 1))
        zdm_warn "$name pass failed (make exit status $rc) with no test reported as failed: counted as one failure"
    else
        zdm_warn "$name pass failed (make exit status $rc): $p passed, $f failed"
    fi
    return "$rc"
}

# A pass that should have run tests and ran none: one failure.
no_tests_ran() {
    FAILED=$((FAILED + 1))
    zdm_warn "$1: counted as one failure"
}

# The demo, as its README quick start runs it, its output in demo.log of the
# work directory.  It inherits this script's install lock of target 15
# (test/lib/common.sh), so it does not wait for it.  One test: passed when it
# exits 0.
run_demo() {
    local log=$ZDM_WORKDIR/demo.log rc=0
    zdm_log "the demo (test/demo.sh)"
    zdm_run_logged "$log" bash "$ZDM_REPO_ROOT/test/demo.sh" || rc=$?
    if [[ $rc -eq 0 ]]; then
        PASSED=$((PASSED + 1))
        zdm_log "demo: passed"
    else
        FAILED=$((FAILED + 1))
        zdm_warn "demo: test/demo.sh failed (exit status $rc; its output is above and in $log)"
    fi
    return "$rc"
}

# test_target VERSION: build, install and run both passes on target
# PostgreSQL VERSION.  Returns non-zero when anything failed.
test_target() {
    local status=0 rc regress tap_tests prove_tests
    local extra_regress=() extra_tap=()

    zdm_use_target "$1"
    zdm_log "==== target PostgreSQL $ZDM_PG_VERSION ($ZDM_PG_CONFIG) ===="
    zdm_build_install
    zdm_workdir

    # Pass 1: pg_regress.
    regress=${ZDM_REGRESS:-$(make_var REGRESS)}
    [[ -n ${ZDM_REGRESS:-} ]] && extra_regress=(REGRESS="$ZDM_REGRESS")
    if [[ $regress == none ]]; then
        zdm_log "pass 1 on $ZDM_PG_VERSION: pg_regress skipped (ZDM_REGRESS=none)"
    elif [[ -z $regress ]]; then
        no_tests_ran "no pg_regress tests in the Makefile"
        status=1
    else
        zdm_log "pass 1 on $ZDM_PG_VERSION: pg_regress ($regress)"
        run_pass "pg_regress on $ZDM_PG_VERSION" "$ZDM_WORKDIR/installcheck-regress.log" \
            count_pg_regress report_regress_failure \
            TAP_TESTS= "${extra_regress[@]}" || status=$?
    fi

    # Pass 2: TAP.  Expand the Makefile's PROVE_TESTS glob first: prove fails
    # on a pattern that matches nothing.
    tap_tests=$(make_var TAP_TESTS)
    prove_tests=${ZDM_PROVE_TESTS:-$(make_var PROVE_TESTS)}
    [[ -n ${ZDM_PROVE_TESTS:-} ]] && extra_tap=(PROVE_TESTS="$ZDM_PROVE_TESTS")
    if [[ $prove_tests == none ]]; then
        zdm_log "pass 2 on $ZDM_PG_VERSION: TAP tests skipped (ZDM_PROVE_TESTS=none)"
    elif [[ -z $tap_tests ]]; then
        no_tests_ran "TAP tests are switched off in the Makefile"
        status=1
    elif [[ -z $(expand_globs "${prove_tests:-t/*.pl}") ]]; then
        no_tests_ran "no TAP test files match '${prove_tests:-t/*.pl}'"
        status=1
    else
        prove_tests=$(expand_globs "${prove_tests:-t/*.pl}")
        source_installs
        zdm_log "pass 2 on $ZDM_PG_VERSION: TAP tests (${prove_tests//$'\n'/ })"
        rc=0
        run_pass "TAP on $ZDM_PG_VERSION" "$ZDM_WORKDIR/installcheck-tap.log" \
            count_prove report_tap_failure \
            REGRESS= "${extra_tap[@]}" || rc=$?
        [[ $status -eq 0 ]] && status=$rc
    fi

    # The demo runs its own clusters of target 15.
    if [[ $ZDM_PG_VERSION == 15 && ${ZDM_DEMO:-1} != 0 ]]; then
        rc=0
        run_demo || rc=$?
        [[ $status -eq 0 ]] && status=$rc
    fi
    copy_outputs
    return "$status"
}

main() {
    local status=0 rc target

    zdm_after_cleanup print_summary
    zdm_require_root
    zdm_install_packages
    zdm_before_cleanup copy_outputs
    rm -rf "$OUTPUT_DIR"

    for target in $TARGETS; do
        rc=0
        test_target "$target" || rc=$?
        [[ $status -eq 0 ]] && status=$rc
    done

    if [[ $status -eq 0 && $PASSED -eq 0 ]]; then
        zdm_warn "no tests ran"
    fi
    return "$status"
}

main "$@"
