# test/t/023_fault_cutover_outage.pl: faults past the cutover's point of no
# return, and the target crashing or going silent mid-cutover.
#
# Two writers (test/lib/ZdmFault.pm) insert into the source during every
# fault; each commit the source acknowledged must end up on the target.
#
# Detaching: a target session holds a lock on subscription zdm_sub
# (BEGIN; ALTER SUBSCRIPTION ...), so the cutover worker waits in DROP
# SUBSCRIPTION, after the fence committed (the point of no return; without
# the lock this step takes milliseconds).  The calling session is then
# cancelled, or terminated: the source is read-only at once, zdm.status()
# says the detach is in progress, and once the lock is released the worker
# completes the migration without its caller, with every acknowledged write
# on the target.  When the cutover worker itself is terminated there,
# zdm.status() says the cutover was interrupted after the fence,
# zdm.abort() refuses, and the next CALL zdm.cutover() finishes the detach.
#
# The target goes silent while the cutover waits (apply stalled): its
# postmaster and the cutover worker are stopped with SIGSTOP.  The source
# must unlock itself zdm.fence_idle_timeout (3 s here) after the fence
# session's last word: not sooner, and well before the default 10 s
# (measured on the source's clock); once the processes continue, the
# cutover fails cleanly and a retry completes.
#
# The target stops in immediate mode while the cutover waits: the source is
# writable at once (the fence's connection closes), and after the restart
# zdm.status() reports the interrupted cutover, replication resumes and a
# new CALL zdm.cutover() completes.
#
# Each of these ends in a completed migration; the next starts a new one
# on the same clusters.  The last note gives the figures: faults injected,
# survived, writes lost.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmFault qw(start_cutover_with);
use ZdmTest;

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\nmax_connections = 40\n");
my $target = start_target('target');
same_schema_on_both($source, $target, ZdmFault::TABLES_SQL);
$source->safe_psql('app',
	"INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i");

my $bench = ZdmFault->new($source, $target);
my $fence_held_sql = ZdmFault::fence_held_sql();

# --- detaching: past the point of no return ---------------------------------------

# Start a cutover that stops in DROP SUBSCRIPTION, after the fence
# committed; returns (call, the session holding the lock).
sub cutover_stuck_detaching
{
	my ($label) = @_;
	my $sublock = $target->background_psql('app');
	$sublock->query_safe('BEGIN; ALTER SUBSCRIPTION zdm_sub SET (binary = false)');
	my $call = start_cutover_with($target, '', "timeout => '10 min'");
	ok( $target->poll_query_until('app',
			ZdmFault::worker_waits_sql("l.locktype = 'object' AND l.classid = 'pg_subscription'::regclass")),
		"$label: the worker waits to drop the subscription, after the fence committed");
	my ($ret, $stdout, $stderr) =
	  psql_verbose($source, 'app', "INSERT INTO t VALUES (-1, '$label')");
	is(sqlstate_of($stderr), '25006',
		"$label: the source is read-only from the point of no return on");
	return ($call, $sublock);
}

foreach my $how ('cancel', 'terminate')
{
	my $label = "$how while detaching";
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my ($call, $sublock) = cutover_stuck_detaching($label);

	is(status_of($target, 'migration', 'phase'),
		'detaching in progress||true', "$label: zdm.status() says the detach is in progress");
	$bench->stop_caller($label, $call, $how);
	is(status_of($target, 'migration', 'phase'),
		'detaching in progress||true',
		"$label: after the caller is gone, zdm.status() still says the detach is in progress");

	$sublock->query_safe('ROLLBACK');
	$sublock->quit;
	ok( $target->poll_query_until('app',
			"SELECT phase = 'completed' FROM zdm.migration"),
		"$label: the worker completes the cutover without its caller");
	$bench->check_completed($label, $load);
	$bench->end_fault($fault);
}

# --- the worker itself is terminated while detaching -----------------------

{
	my $label = 'worker terminated while detaching';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my ($call, $sublock) = cutover_stuck_detaching($label);

	is( $target->safe_psql('app', q{
SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity
WHERE backend_type = 'pg_zdm cutover'}),
		't', "$label: the cutover worker is terminated");
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call fails");
	unlike($stderr, qr/cutover complete/, "$label: ... without claiming success");
	note "$label: the caller saw:\n$stderr";

	my ($value, $bytes, $ok) = split /\|/, status_of($target, 'migration', 'phase');
	is($ok, 'false', "$label: zdm.status() phase row is not ok");
	like($value, qr/interrupted after the source was fenced for good.*CALL zdm\.cutover\(\)/,
		"$label: zdm.status() says the cutover was interrupted and to finish it");
	my ($r, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is(sqlstate_of($err), '55000', "$label: zdm.abort() refuses (55000)");
	like($err, qr/being detached/, "$label: ... saying the migration is being detached");

	$sublock->query_safe('ROLLBACK');
	$sublock->quit;
	($r, $out, $err) = psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
	is($r, 0, "$label: the next CALL zdm.cutover() succeeds") or diag $err;
	like($err, qr/finishing the detach of an interrupted cutover/,
		"$label: ... finishing the detach");
	$bench->check_completed($label, $load);
	$bench->end_fault($fault);
}

# --- the target goes silent: its postmaster and the worker are stopped ---------

# Processes stopped with SIGSTOP, continued if the test dies meanwhile.
my @stopped;
END { kill 'CONT', @stopped if @stopped; }

{
	my $label = 'target silent (SIGSTOP)';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my $idle_timeout_s = 3;
	my $call = start_cutover_with($target,
		"SET zdm.fence_idle_timeout = '${idle_timeout_s}s';", "timeout => '10 min'");
	ok($source->poll_query_until('app', $fence_held_sql),
		"$label: the cutover fences the source");
	my $worker = $target->safe_psql('app',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_zdm cutover'");
	@stopped = (ZdmFault::postmaster_pid($target), $worker);
	is(kill('STOP', @stopped), 2, "$label: the target's postmaster and the cutover worker are stopped");
	is($source->safe_psql('app', $fence_held_sql), 't',
		"$label: the fence still holds right after the stop");

	# The source must unlock itself: its fence session ends
	# zdm.fence_idle_timeout after the worker's last word.  Writers wait
	# until then; so does this INSERT.  Both times are the source's clock:
	# when the fence session went idle (its last ping) and when the INSERT
	# got its lock.  The unlock must come no sooner than the 3 s set here
	# (it is the timeout that ends the fence, nothing else) and well before
	# the default 10 s (the worker used the caller's setting).
	my $idle_since = $bench->fence_idle_since;
	my ($ret, $stderr, $id, $unlocked_at) =
	  $bench->finish_source_write(
		$bench->start_source_write("$label: unlocked", '120s'));
	is($ret, 0, "$label: the source takes writes while the target is silent")
	  or diag $stderr;
	my $secs = $unlocked_at - $idle_since;
	cmp_ok($secs, '>=', $idle_timeout_s - 0.1,
		sprintf("$label: the source stayed locked until zdm.fence_idle_timeout (%d s) had passed (%.2f s)",
			$idle_timeout_s, $secs));
	cmp_ok($secs, '<', $idle_timeout_s + 4,
		sprintf("$label: the source unlocked itself within zdm.fence_idle_timeout (%d s) + 4 s, before the default 10 s (%.2f s)",
			$idle_timeout_s, $secs));
	is($source->safe_psql('app', $fence_held_sql), 'f',
		"$label: no fence lock left on the source");
	like( $source->safe_psql('app', 'SELECT 1'), qr/^1$/,
		"$label: the source answers");

	is(kill('CONT', @stopped), 2, "$label: the target's processes continue");
	@stopped = ();
	($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the cutover fails once the worker notices");
	like($stderr, qr/ERROR:  \w{5}: .*(idle-in-transaction|fence|connection)/,
		"$label: the error says the fence session is gone") or diag $stderr;
	unlike($stderr, qr/cutover complete/, "$label: ... and never claims success");
	my $detail = $bench->check_recovered($label, $load, $stall, $before);
	like($detail, qr/idle-in-transaction|fence|connection/,
		"$label: the event log says what ended the cutover");

	# the retry
	my $retry_load = $bench->start_writers;
	my ($r, $out, $err) = psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
	is($r, 0, "$label: the next CALL zdm.cutover() completes") or diag $err;
	$bench->check_completed("$label, retry", $retry_load);
	$bench->end_fault($fault);
}

# --- the target stops in immediate mode mid-cutover ---------------------------

{
	my $label = 'target stops (immediate)';
	$bench->new_migration;
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my $call = start_cutover_with($target, '', "timeout => '10 min'");
	ok($source->poll_query_until('app', $fence_held_sql),
		"$label: the cutover fences the source");
	my $start = time();
	$target->stop('immediate');
	# the connections of the fence close with the target's processes
	my ($ret, $stderr) = $bench->source_write("$label: target down", '120s');
	my $secs = time() - $start;
	is($ret, 0, "$label: the source takes writes while the target is down")
	  or diag $stderr;
	cmp_ok($secs, '<', 30,
		"$label: the source is writable within 30 s of the stop (took "
		  . sprintf('%.1f', $secs) . ' s)');
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0',
		"$label: no zdm_fence schema on the source");
	($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call ends with the server");
	$bench->release_stall($stall);

	$target->start;
	my ($value, $bytes, $ok) = split /\|/, status_of($target, 'migration', 'phase');
	is($ok, 'false', "$label: after the restart zdm.status() phase row is not ok");
	like($value, qr/cutover interrupted .*source unlocked itself.*CALL zdm\.cutover\(\) again/,
		"$label: zdm.status() reports the interrupted cutover and what to do");
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		'f', "$label: zdm.status() is not ready for cutover");

	my $id;
	($ret, $stderr, $id) = $bench->source_write("$label: after restart");
	ok($target->poll_query_until('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: replication resumes: a new source row arrives");
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
