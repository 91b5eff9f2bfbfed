# test/t/011_cutover_failures.pl: cutovers that cannot complete never leave
# the source locked.
#
# Cases:
#   - a cutover before the initial copy finished is refused (the copy is
#     held back by a lock on the target table) and touches nothing;
#   - the timeout expires while the target cannot catch up;
#   - the calling session is cancelled (pg_cancel_backend) while the source
#     is fenced;
#   - the calling session is terminated (pg_terminate_backend) likewise;
#   - a second cutover while one is running gets a clear error, and the
#     first one is then cancelled;
#   - last, a cutover that must not fail: an open transaction on the source
#     deadlocks with the fence; the fence prevails and the cutover completes.
# To keep the target from catching up, a session on the target holds a lock
# on a table while the source writes a row to it: the apply worker waits.
# After every failure: the source takes writes again, has no zdm_fence
# schema, replication goes on (a new source row arrives, zdm.status() is
# ready again), the migration is back in phase streaming, no cutover worker
# is left and zdm.event_log has a 'cutover_failed' entry saying why.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target');

same_schema_on_both($source, $target, q{
CREATE TABLE t (id integer PRIMARY KEY, note text);
CREATE TABLE t2 (id integer PRIMARY KEY, note text);
CREATE TABLE big (id integer PRIMARY KEY, payload text);
});
$source->safe_psql('app', q{
INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i;
INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 10000) i;
});

# Ids of the rows the test writes to t on the source.
my $next_id = 1000;

# A target session holding a lock on table that keeps the apply worker (or
# the initial copy) from writing to it; reads still work.  Returns the
# session; release_stall ends it.
sub stall
{
	my ($table) = @_;
	my $session = $target->background_psql('app');
	$session->query_safe("BEGIN; LOCK TABLE $table IN EXCLUSIVE MODE");
	return $session;
}

sub release_stall
{
	my ($session) = @_;
	$session->query_safe('COMMIT');
	$session->quit;
	return;
}

# Stall the apply: lock t on the target, then write a row to t on the
# source, and wait until the apply worker waits for the lock.
sub stall_apply
{
	my ($label) = @_;
	my $session = stall('t');
	my $id = $next_id++;

	$source->safe_psql('app', "INSERT INTO t VALUES ($id, '$label: stuck')");
	ok( $target->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks
WHERE relation = 't'::regclass AND NOT granted}),
		"$label: the apply worker waits for the lock on the target");
	return $session;
}

# How many cutover_failed entries the event log has.
sub failures_logged
{
	return $target->safe_psql('app',
		"SELECT count(*) FROM zdm.event_log WHERE event = 'cutover_failed'");
}

# Does a session of pg_zdm hold the fence on t on the source?
my $fence_held_sql = fence_held_query('t');

# Everything that must hold after a failed cutover; see the file header.
# stall is the session holding back the apply, if any (released here, after
# the source was checked), failures_before the count of failures_logged
# before.  Returns the detail of the last cutover_failed entry.
sub check_recovered
{
	my ($label, $stall, $failures_before) = @_;
	my $id = $next_id++;

	# a fence still held would make the INSERT wait: give up after a while
	my ($ret, $stdout, $stderr) = psql_verbose($source, 'app',
		"SET lock_timeout = '60s'; INSERT INTO t VALUES ($id, '$label: after')");
	is($ret, 0, "$label: the source takes writes") or diag $stderr;
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0',
		"$label: no zdm_fence schema on the source");
	is($source->safe_psql('app', $fence_held_sql), 'f',
		"$label: no fence lock left on the source");

	release_stall($stall) if $stall;
	ok( $target->poll_query_until('app',
			"SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: replication goes on: the new source row arrives");
	ok( $target->poll_query_until('app', q{
SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE backend_type = 'pg_zdm cutover')}),
		"$label: the cutover worker is gone");
	ok( $target->poll_query_until('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		"$label: zdm.status() is ready for cutover again");
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is streaming again");
	ok( $target->poll_query_until('app',
			"SELECT count(*) > $failures_before FROM zdm.event_log WHERE event = 'cutover_failed'"),
		"$label: the event log has cutover_failed");
	return $target->safe_psql('app', q{
SELECT detail FROM zdm.event_log WHERE event = 'cutover_failed'
ORDER BY id DESC LIMIT 1});
}

# Wait until the cutover call has fenced the source.
sub wait_for_fence
{
	my ($label) = @_;
	ok($source->poll_query_until('app', $fence_held_sql),
		"$label: the cutover fences the source");
	return;
}

# --- before the initial copy finished ----------------------------------------

{
	my $label = 'copy not finished';
	my $copy_stall = stall('big');
	$target->safe_psql('app', "CALL zdm.init('" . source_dsn($source) . "')");
	# The stall works: the table-sync worker of big has started and waits
	# for the lock on big, and has copied nothing.
	ok( $target->poll_query_until('app', q{
SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_subscription s ON s.pid = l.pid
               WHERE s.relid = 'big'::regclass
                 AND l.relation = 'big'::regclass AND NOT l.granted)}),
		"$label: the copy of big waits for the lock on the target");
	is( $target->safe_psql('app',
			"SELECT state || '|' || (SELECT count(*) FROM big) FROM zdm.tables() WHERE table_name = 'big'"),
		'copying|0',
		"$label: the copy of big is held back (copying, no row yet)");

	my ($ret, $stdout, $stderr) =
	  psql_verbose($target, 'app', 'CALL zdm.cutover()');
	isnt($ret, 0, "$label: cutover fails");
	like($stderr, qr/initial copy has not finished/,
		"$label: the error says the copy has not finished");
	is(sqlstate_of($stderr), '55000', "$label: SQLSTATE 55000");

	my $id = $next_id++;
	($ret, $stdout, $stderr) = psql_verbose($source, 'app',
		"SET lock_timeout = '60s'; INSERT INTO t VALUES ($id, '$label')");
	is($ret, 0, "$label: the source takes writes") or diag $stderr;
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0',
		"$label: no zdm_fence schema on the source");
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is still streaming");
	is( $target->safe_psql('app',
			"SELECT state || '|' || (SELECT count(*) FROM big) FROM zdm.tables() WHERE table_name = 'big'"),
		'copying|0',
		"$label: the copy of big was still held back after the refused cutover");

	release_stall($copy_stall);
	wait_until_ready($target);
	is($target->safe_psql('app', 'SELECT count(*) FROM big'),
		'10000', "$label: the copy finishes once the lock is gone");
	ok($target->poll_query_until('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: the row written meanwhile arrives");
}

# --- the timeout ---------------------------------------------------------------

{
	my $label = 'timeout';
	my $before = failures_logged();
	my $stall = stall_apply($label);
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app',
		"CALL zdm.cutover(timeout => '3 s')");
	isnt($ret, 0, "$label: cutover fails");
	like($stderr, qr/writes blocked on the source/,
		"$label: the source was fenced before the timeout");
	like($stderr, qr/ERROR:  57014: .*timed out/, "$label: the error says it timed out (57014)");
	my $detail = check_recovered($label, $stall, $before);
	like($detail, qr/timed out/, "$label: the event log says it timed out");
}

# --- the caller is cancelled -----------------------------------------------

{
	my $label = 'cancel';
	my $before = failures_logged();
	my $stall = stall_apply($label);
	my $call = start_cutover($target, "timeout => '10 min'");
	wait_for_fence($label);
	is($target->safe_psql('app', "SELECT pg_cancel_backend($call->{pid})"),
		't', "$label: the calling session is cancelled");
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call fails");
	is(sqlstate_of($stderr), '57014', "$label: the call ends with SQLSTATE 57014")
	  or diag $stderr;
	my $detail = check_recovered($label, $stall, $before);
	like($detail, qr/cancel/, "$label: the event log says it was cancelled");
}

# --- the caller is terminated ----------------------------------------------

{
	my $label = 'terminate';
	my $before = failures_logged();
	my $stall = stall_apply($label);
	my $call = start_cutover($target, "timeout => '10 min'");
	wait_for_fence($label);
	is( $target->safe_psql('app',
			"SELECT pg_terminate_backend($call->{pid}, 60000)"),
		't', "$label: the calling session is terminated");
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call fails");
	like($stderr, qr/57P01|terminating connection/,
		"$label: the call ends with the session");
	my $detail = check_recovered($label, $stall, $before);
	like($detail, qr/cancel|terminat/,
		"$label: the event log says the caller went away");
}

# --- two cutovers at once ----------------------------------------------------

{
	my $label = 'two at once';
	my $before = failures_logged();
	my $stall = stall_apply($label);
	my $first = start_cutover($target, "timeout => '10 min'");
	wait_for_fence($label);

	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app',
		"CALL zdm.cutover(timeout => '1 min')");
	isnt($ret, 0, "$label: the second cutover fails");
	is(sqlstate_of($stderr), '55006', "$label: with SQLSTATE 55006");
	like($stderr, qr/already running/, "$label: saying a cutover is already running");
	is($source->safe_psql('app', $fence_held_sql), 't',
		"$label: the first cutover still holds the fence");

	# abort from another session during the cutover: refused, nothing changed
	($ret, $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is(sqlstate_of($stderr), '55006', "$label: zdm.abort() during the cutover fails with 55006");
	is($target->safe_psql('app', "SELECT count(*) FROM pg_subscription WHERE subname = 'zdm_sub'"),
		'1', "$label: ... and leaves the subscription");
	is($source->safe_psql('app', $fence_held_sql), 't',
		"$label: ... and the first cutover's fence");

	$target->safe_psql('app', "SELECT pg_cancel_backend($first->{pid})");
	($ret, $stderr) = finish_cutover($first);
	is(sqlstate_of($stderr), '57014', "$label: the first one ends when cancelled")
	  or diag $stderr;
	check_recovered($label, $stall, $before);
}

# --- a transaction that deadlocks with the fence (last: it completes) ------
#
# An open transaction wrote to t2; once the fence holds t and waits for t2,
# it writes to t: it and the fence wait for each other.  Transactions that
# hold what the fence needs are given zdm.lock_grace_period and then
# terminated (README, "Why no write can commit on the source after the
# fence"), so the fence must prevail and the cutover complete, whatever the
# source's deadlock detector (deadlock_timeout, 1 s) does.  The grace is 3 s
# here, as a DBA who gives open transactions more time would set it.

{
	my $label = 'deadlock with the fence';
	my $writer = $source->background_psql('app');
	$writer->query_safe("BEGIN; INSERT INTO t2 VALUES (1, '$label')");

	my $before = failures_logged();
	my $call = start_cutover($target, "timeout => '1 min'",
		"SET zdm.lock_grace_period = '3s'");
	my $fence_waits_for_t2 = q{
SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = 'pg_zdm' AND NOT l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = 't2'::regclass};
	ok( $source->poll_query_until('app',
			"SELECT ($fence_held_sql) AND ($fence_waits_for_t2)"),
		"$label: the fence holds t and waits for t2");
	$writer->query_until(qr/sent/,
		"\\echo sent\nINSERT INTO t VALUES (2, '$label');\n");

	my ($ret, $stderr) = finish_cutover($call);
	is($ret, 0, "$label: the cutover completes") or diag $stderr;
	eval { $writer->quit; };
	is($source->safe_psql('app', 'SELECT count(*) FROM t2 WHERE id = 1'),
		'0', "$label: the transaction in the deadlock never committed");
	if ($ret == 0)
	{
		my ($r, $out, $err) = psql_verbose($source, 'app',
			"INSERT INTO t2 VALUES (3, '$label')");
		is(sqlstate_of($err), '25006', "$label: the source is read-only");
	}
	else
	{
		check_recovered($label, undef, $before);
	}
}

done_testing();
