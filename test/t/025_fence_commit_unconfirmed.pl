# test/t/025_fence_commit_unconfirmed.pl: the fence's COMMIT whose outcome
# the worker cannot see, both ways, and the target going silent while the
# fence's LOCK still waits.
#
# Two writers (test/lib/ZdmFault.pm) insert into the source during every
# fault; each commit the source acknowledged must end up on the target.
#
# Committed, unconfirmed: once the final position is taken, the source gets
# synchronous_standby_names naming a standby that does not exist, so the
# fence's COMMIT (synchronous_commit = on) is written locally and then
# waits.  The test terminates that backend: the transaction stays committed
# (PostgreSQL warns "The transaction has already committed locally") and
# the worker sees its connection break during COMMIT.  It must find out that
# the fence committed (schema zdm_fence exists once the session is gone)
# and finish the cutover: the call succeeds, the source is read-only, no
# write is lost.
#
# Rolled back, unconfirmed: a source session holds a lock on publication
# zdm_pub (COMMENT ON PUBLICATION in an open transaction), so the fence's
# "DROP PUBLICATION; COMMIT" waits; the test terminates the fence session,
# which rolls the fence back.  The worker must find out that it did not
# commit: the call fails saying so, the source is writable, the migration
# streams again and a retry completes.
#
# Target silent while the fence's LOCK waits: an open write transaction on
# the source keeps the fence's LOCK waiting (zdm.lock_grace_period is set
# long, so the worker would not terminate it yet), and writers queue behind
# the waiting LOCK.  The target's postmaster and the cutover worker are
# stopped with SIGSTOP: a waiting LOCK does not read its socket, and the
# socket stays open, so only the fence session's lock_timeout (the
# cutover's remaining time, plus a second) ends the wait on the source.
# The source must take writes again then -- not before, not long after --
# with the open transaction untouched.
#
# Target stopped (immediate) while the fence's LOCK waits: the connection
# closes with the target's processes, and the fence session's
# client_connection_check_interval (1 s) must end the wait on the source at
# once, long before lock_timeout (here 10 minutes); after the restart
# zdm.status() reports the interrupted cutover and a retry completes.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmFault qw(start_cutover_with postmaster_pid);
use ZdmTest;

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\nmax_connections = 40\n");
my $target = start_target('target');
same_schema_on_both($source, $target, ZdmFault::TABLES_SQL);
$source->safe_psql('app',
	"INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i");
init_migration($source, $target);

my $bench = ZdmFault->new($source, $target);

# The pid of the source session of pg_zdm that matches cond (on pg_locks l
# and pg_stat_activity a), once there is exactly one.
sub zdm_session_where
{
	my ($label, $cond) = @_;
	my $sql = qq{
SELECT DISTINCT a.pid FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid
WHERE a.application_name = 'pg_zdm' AND $cond};
	ok($source->poll_query_until('app', "SELECT count(*) = 1 FROM ($sql) s"),
		$label);
	return $source->safe_psql('app', $sql);
}

# Set or reset (undef) synchronous_standby_names on the source.
sub source_sync_standby
{
	my ($name) = @_;
	$source->safe_psql('app',
		defined $name
		? "ALTER SYSTEM SET synchronous_standby_names = '$name'"
		: 'ALTER SYSTEM RESET synchronous_standby_names');
	$source->safe_psql('app', 'SELECT pg_reload_conf()');
	$source->poll_query_until('app',
		"SELECT current_setting('synchronous_standby_names') = '" . ($name // '') . "'")
	  or die 'the source did not take the new synchronous_standby_names';
	# the checkpointer publishes "a synchronous standby is configured" to
	# every backend when it reloads, a moment after the postmaster did
	Time::HiRes::sleep(1);
	return;
}

# --- the fence's COMMIT breaks, having committed ---------------------------------

{
	my $label = 'fence COMMIT unconfirmed, committed';
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my $call = start_cutover_with($target, '', "timeout => '10 min'");
	# The final position is taken (with synchronous_commit = on, on the
	# control session) before the source waits for a standby.
	ok(wait_for_cutover_output($call, qr/final source position/),
		"$label: the cutover fenced the source and took the final position");
	source_sync_standby('zdm_no_such_standby');
	$bench->release_stall($stall);

	my $fence = zdm_session_where(
		"$label: the fence's COMMIT waits for the synchronous standby",
		"a.wait_event = 'SyncRep'");
	is($source->safe_psql('app', "SELECT pg_terminate_backend($fence, 60000)"),
		't', "$label: the fence session is terminated during its COMMIT");
	source_sync_standby(undef);

	my ($ret, $stderr) = finish_cutover($call);
	is($ret, 0, "$label: the cutover completes") or diag $stderr;
	like($stderr, qr/cutover complete/, "$label: ... and says so");
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'1', "$label: the fence committed on the source (schema zdm_fence)");
	is( $target->safe_psql('app',
			"SELECT string_agg(event, ',' ORDER BY id) FROM zdm.event_log WHERE event IN ('fence_committed', 'completed', 'cutover_failed')"),
		'fence_committed,completed',
		"$label: the event log says the fence committed and the cutover completed, no failure");
	$bench->check_completed($label, $load);
	$bench->end_fault($fault);
}

# --- the fence's COMMIT breaks, having rolled back -------------------------------

{
	my $label = 'fence COMMIT unconfirmed, rolled back';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;

	my $publock = $source->background_psql('app');
	$publock->query_safe(
		"BEGIN; COMMENT ON PUBLICATION zdm_pub IS 'held by $label'");
	my $call = start_cutover_with($target, '', "timeout => '10 min'");
	my $fence = zdm_session_where(
		"$label: the fence's DROP PUBLICATION; COMMIT waits for the publication",
		"l.locktype = 'object' AND l.classid = 'pg_publication'::regclass AND NOT l.granted");
	is($source->safe_psql('app', "SELECT pg_terminate_backend($fence, 60000)"),
		't', "$label: the fence session is terminated during its COMMIT");

	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the cutover fails");
	like($stderr, qr/the fence on the source ended before the cutover could commit it/,
		"$label: ... saying the fence ended before it committed") or diag $stderr;
	unlike($stderr, qr/cutover complete/, "$label: ... and never claims success");
	$publock->query_safe('ROLLBACK');
	$publock->quit;

	my $detail = $bench->check_recovered($label, $load, undef, $before);
	like($detail, qr/fence on the source ended/,
		"$label: the event log says the fence ended before it committed");

	# the retry
	my $retry_load = $bench->start_writers;
	my ($r, $out, $err) = psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
	is($r, 0, "$label: the next CALL zdm.cutover() completes") or diag $err;
	$bench->check_completed("$label, retry", $retry_load);
	$bench->end_fault($fault);
}

# --- the target goes silent while the fence's LOCK waits --------------------------

# Processes stopped with SIGSTOP, continued if the test dies meanwhile.
my @stopped;
END { kill 'CONT', @stopped if @stopped; }

{
	my $label = 'target silent while the fence LOCK waits';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;

	# an open write transaction on t: the fence's LOCK waits for it
	my $open_id = 500000;
	my $open = $source->background_psql('app');
	$open->query_safe("BEGIN; INSERT INTO t VALUES ($open_id, '$label: open')");

	my $timeout_s = 15;
	my $called_at = time();
	my $call = start_cutover_with($target, "SET zdm.lock_grace_period = '10min';",
		"timeout => '${timeout_s}s'");
	ok($source->poll_query_until('app', ZdmFault::FENCE_WAITS_SQL),
		"$label: the fence's LOCK waits for the open transaction");
	my $worker = $target->safe_psql('app',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_zdm cutover'");
	@stopped = (postmaster_pid($target), $worker);
	is(kill('STOP', @stopped), 2,
		"$label: the target's postmaster and the cutover worker are stopped");

	# This INSERT queues behind the waiting LOCK (its own lock_timeout, 60 s,
	# is far above the LOCK's).  The source clock says when it got its lock;
	# the clusters share this machine's clock.
	my ($ret, $stderr, $id, $unlocked_at) =
	  $bench->finish_source_write(
		$bench->start_source_write("$label: unlocked", '60s'));
	is($ret, 0, "$label: the source takes writes while the target is silent")
	  or diag $stderr;
	my $secs = $unlocked_at - $called_at;
	cmp_ok($secs, '>=', $timeout_s - 1,
		sprintf("$label: the LOCK kept waiting until the cutover's timeout (%d s) was near (%.2f s after the call)",
			$timeout_s, $secs));
	cmp_ok($secs, '<', $timeout_s + 1 + 6,
		sprintf("$label: the source ended the LOCK by itself within the cutover's timeout (%d s) + 1 s + 6 s (%.2f s after the call)",
			$timeout_s, $secs));
	is($source->safe_psql('app', ZdmFault::FENCE_WAITS_SQL), 'f',
		"$label: no fence of pg_zdm left waiting for a lock on the source");
	# the open transaction was not touched: it commits now
	$open->query_safe('COMMIT');
	$bench->ack("t $open_id");
	$open->quit;

	is(kill('CONT', @stopped), 2, "$label: the target's processes continue");
	@stopped = ();
	($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the cutover fails");
	unlike($stderr, qr/cutover complete/, "$label: ... and never claims success");
	$bench->check_recovered($label, $load, undef, $before);
	$bench->end_fault($fault);
}

# --- the target stops (immediate) while the fence's LOCK waits ------------------

{
	my $label = 'target stops while the fence LOCK waits';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;

	my $open_id = 500001;
	my $open = $source->background_psql('app');
	$open->query_safe("BEGIN; INSERT INTO t VALUES ($open_id, '$label: open')");

	my $call = start_cutover_with($target, "SET zdm.lock_grace_period = '10min';",
		"timeout => '10 min'");
	ok($source->poll_query_until('app', ZdmFault::FENCE_WAITS_SQL),
		"$label: the fence's LOCK waits for the open transaction");
	my $stopped_at = time();
	$target->stop('immediate');
	# Queued behind the LOCK; 30 s is far below the LOCK's own lock_timeout.
	my ($ret, $stderr, $id, $unlocked_at) =
	  $bench->finish_source_write(
		$bench->start_source_write("$label: target down", '30s'));
	is($ret, 0, "$label: the source takes writes while the target is down")
	  or diag $stderr;
	my $secs = $unlocked_at - $stopped_at;
	cmp_ok($secs, '<', 1 + 6,
		sprintf("$label: the source ended the waiting LOCK within client_connection_check_interval (1 s) + 6 s of the stop (%.2f s)",
			$secs));
	is($source->safe_psql('app', ZdmFault::FENCE_WAITS_SQL), 'f',
		"$label: no fence of pg_zdm left waiting for a lock on the source");
	$open->query_safe('COMMIT');
	$bench->ack("t $open_id");
	$open->quit;
	($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call ends with the server");

	$target->start;
	my ($value, $bytes, $ok) = split /\|/, status_of($target, 'migration', 'phase');
	is($ok, 'false', "$label: after the restart zdm.status() phase row is not ok");
	like($value, qr/cutover interrupted .*source unlocked itself.*CALL zdm\.cutover\(\) again/,
		"$label: zdm.status() reports the interrupted cutover and what to do");
	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost($label, 1);

	my $retry_load = $bench->start_writers;
	my ($r, $out, $err) = psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
	is($r, 0, "$label: a new CALL zdm.cutover() completes") or diag $err;
	$bench->check_completed("$label, retry", $retry_load);
	$bench->end_fault($fault);
}

$bench->summary;
done_testing();
