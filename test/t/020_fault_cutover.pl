# test/t/020_fault_cutover.pl: the session that called CALL zdm.cutover()
# is cancelled, or terminated, in each phase before the point of no return,
# and the cutover's timeout expires.  (Past the point of no return, and
# crashes and silence of the target: 023_fault_cutover_outage.pl.)
#
# Two writers (test/lib/ZdmFault.pm) insert into the source during every
# fault; each commit the source acknowledged must end up on the target.
# The phases, and how the test holds the cutover in each long enough to
# hit it with a signal:
#   fencing    an open write transaction on the source keeps the fence from
#              being granted (SET zdm.lock_grace_period = '30s' in the calling
#              session: the worker takes the caller's zdm.* settings);
#   waiting    the target cannot catch up: a target session locks t and the
#              source writes to t, so the apply worker waits;
#   sequences  a target session holds a lock on the sequence of w
#              (BEGIN; ALTER SEQUENCE ...), so the worker waits inside the
#              sequence sync, after the fence was taken; the fence session
#              then idles, and the source ends it after
#              zdm.fence_idle_timeout (3 s here).
# Without such a hold the sequence sync takes milliseconds and cannot be
# hit deterministically by a signal.
#
# Every fault must end with: the call fails (57014 for cancel and timeout,
# the session gone for terminate), the source writable with no zdm_fence
# schema and no fence lock, replication going on, zdm.status() ready again
# and phase streaming, the event log saying why, and no write lost.  When
# the fence was still waiting for a lock, it must be gone from the source
# at once, while the transaction it waited for is still open (that
# transaction is left alone and commits afterwards).  The next case's
# cutover is the retry; after the sequence cases CALL zdm.abort() and a new
# init show that abort works too.
#
# The timeout expires while the target cannot catch up; while a prepared
# transaction (which the fence cannot terminate) keeps the fence waiting;
# and again while, in addition, the source stops answering the worker's
# control session (its backend stopped with SIGSTOP), so that the timeout
# strikes inside a round trip.
#
# The last note gives the figures: faults injected, survived, writes lost.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmFault qw(start_cutover_with);
use ZdmTest;

# log_statement = all would log every INSERT of the writers
my $source = start_source('source',
	"log_statement = ddl\nmax_connections = 40\nmax_prepared_transactions = 5\n");
my $target = start_target('target');
same_schema_on_both($source, $target, ZdmFault::TABLES_SQL);
$source->safe_psql('app',
	"INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i");
init_migration($source, $target);

my $bench = ZdmFault->new($source, $target);
my $fence_held_sql = ZdmFault::fence_held_sql();

# --- fencing: an open write transaction keeps the fence waiting -------------

my $open_seq = 0;
foreach my $how ('cancel', 'terminate')
{
	my $label = "$how while fencing";
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;

	my $open = $source->background_psql('app');
	$open_seq++;
	$open->query_safe("BEGIN; INSERT INTO w (client, seq) VALUES (9000, $open_seq)");
	my $call = start_cutover_with($target, "SET zdm.lock_grace_period = '30s';",
		"timeout => '10 min'");
	ok($source->poll_query_until('app', ZdmFault::FENCE_WAITS_SQL),
		"$label: the fence waits for the open write transaction");
	ok( $source->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks
WHERE relation = 'w'::regclass AND mode = 'RowExclusiveLock' AND NOT granted}),
		"$label: the writers queue behind the waiting fence");
	is(status_of($target, 'migration', 'phase'),
		'cutover in progress||true', "$label: zdm.status() says a cutover is in progress");

	$bench->stop_caller($label, $call, $how);
	$bench->fence_gone($label);
	is(scalar $open->query('COMMIT'), '', "$label: the open transaction commits");
	is($open->{stderr}, '', "$label: ... untouched by the cutover");
	$bench->ack("w 9000 $open_seq") if $open->{stderr} eq '';
	$open->quit;

	my $detail = $bench->check_recovered($label, $load, undef, $before);
	like($detail, qr/cancelled while taking the fence/,
		"$label: the event log says the cutover was stopped while fencing");
	$bench->end_fault($fault);
}

# --- waiting: the target cannot catch up -------------------------------------

foreach my $how ('cancel', 'terminate')
{
	my $label = "$how while waiting for the target";
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my $call = start_cutover_with($target, '', "timeout => '10 min'");
	ok($source->poll_query_until('app', $fence_held_sql),
		"$label: the cutover fences the source");
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		'f', "$label: zdm.status() is not ready while the cutover runs");

	$bench->stop_caller($label, $call, $how);
	my $detail = $bench->check_recovered($label, $load, $stall, $before);
	like($detail, qr/cancelled while waiting for the target to catch up/,
		"$label: the event log says the cutover was stopped while waiting");
	$bench->end_fault($fault);
}

# --- sequences: the worker waits for a lock on a target sequence ------------

foreach my $how ('cancel', 'terminate')
{
	my $label = "$how while syncing sequences";
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;

	my $seqlock = $target->background_psql('app');
	$seqlock->query_safe('BEGIN; ALTER SEQUENCE w_id_seq INCREMENT BY 1');
	my $call = start_cutover_with($target, "SET zdm.fence_idle_timeout = '3s';",
		"timeout => '10 min'");
	ok( $target->poll_query_until('app',
			ZdmFault::worker_waits_sql("l.relation = 'w_id_seq'::regclass")),
		"$label: the worker waits for the sequence, inside the sequence sync");

	# The worker is stuck on a lock here: nothing talks to the fence session
	# any more.  A write queues behind the fence from now on.
	my $idle_since = $bench->fence_idle_since;
	my $write = $bench->start_source_write("$label: while the worker is stuck");
	$bench->stop_caller($label, $call, $how);
	# The worker does not see that its caller went away; the fence session
	# idles, and the source ends it zdm.fence_idle_timeout (3 s, set by the
	# caller) after it went idle: not sooner, and well before the default
	# 10 s.  Both times are the source's clock.
	my ($ret, $stderr, $id, $unlocked_at) = $bench->finish_source_write($write);
	is($ret, 0, "$label: the source takes writes while the worker is still stuck")
	  or diag $stderr;
	my $secs = $unlocked_at - $idle_since;
	cmp_ok($secs, '>=', 3 - 0.1,
		sprintf("$label: the source stayed locked until zdm.fence_idle_timeout (3 s) had passed (%.2f s)", $secs));
	cmp_ok($secs, '<', 3 + 4,
		sprintf("$label: the source unlocked itself within zdm.fence_idle_timeout (3 s) + 4 s, before the default 10 s (%.2f s)", $secs));
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'cutover', "$label: the migration row still says cutover");
	like(status_of($target, 'migration', 'phase'), qr/^cutover in progress/,
		"$label: zdm.status() says a cutover is in progress (the worker runs)");

	$seqlock->query_safe('ROLLBACK');
	$seqlock->quit;
	my $detail = $bench->check_recovered($label, $load, undef, $before);
	like($detail, qr/cancelled/, "$label: the event log says the cutover was cancelled");
	$bench->end_fault($fault);
}

# --- abort works after these failures -----------------------------------------

{
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is($ret, 0, 'abort after the failed cutovers succeeds') or diag $stderr;
	is(migration_leftovers($target, $source), '', 'abort leaves nothing behind');
	($ret, $stderr) = $bench->source_write('after abort');
	is($ret, 0, 'the source takes writes after abort');
	$target->safe_psql('app', 'TRUNCATE t, w');
	init_migration($source, $target);
	$bench->no_write_lost('a new migration after abort', 1);
}

# --- the timeout expires while the target cannot catch up ----------------------

{
	my $label = 'timeout';
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app',
		"CALL zdm.cutover(timeout => '3 s')");
	isnt($ret, 0, "$label: the cutover fails");
	like($stderr, qr/writes blocked on the source/,
		"$label: the source was fenced before the timeout");
	like($stderr, qr/ERROR:  57014: cutover timed out while waiting for the target to catch up/,
		"$label: the error says it timed out waiting (57014)");
	like($stderr, qr/HINT:  .*longer timeout/, "$label: the hint says what to do");
	my $detail = $bench->check_recovered($label, $load, $stall, $before);
	like($detail, qr/timed out/, "$label: the event log says it timed out");
	$bench->end_fault($fault);
}

# --- a prepared transaction keeps the fence waiting until the timeout -----------

# A prepared transaction holding a lock on w cannot be terminated: the fence
# waits for it until the timeout, then must let go (README: "the fence then
# times out and the source is unlocked").  Writers queue behind the waiting
# fence meanwhile.  Returns the gid.
my $prepared = 0;
sub prepare_blocker
{
	$prepared++;
	$source->safe_psql('app', "BEGIN; INSERT INTO w (client, seq) VALUES (9001, $prepared); "
		  . "PREPARE TRANSACTION 'blocker_$prepared'");
	return "blocker_$prepared";
}

sub commit_blocker
{
	my ($label, $gid) = @_;
	my ($ret, $stdout, $stderr) =
	  psql_verbose($source, 'app', "SET lock_timeout = '60s'; COMMIT PREPARED '$gid'");
	is($ret, 0, "$label: the prepared transaction commits") or diag $stderr;
	$bench->ack("w 9001 $prepared") if $ret == 0;
	return;
}

{
	my $label = 'prepared transaction blocks the fence';
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;
	my $gid = prepare_blocker();

	my $call = start_cutover_with($target, '', "timeout => '4 s'");
	ok($source->poll_query_until('app', ZdmFault::FENCE_WAITS_SQL),
		"$label: the fence waits for the prepared transaction");
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the cutover fails");
	like($stderr, qr/ERROR:  57014: cutover timed out while taking the fence/,
		"$label: it timed out while taking the fence") or diag $stderr;
	$bench->fence_gone($label);
	commit_blocker($label, $gid);
	my $detail = $bench->check_recovered($label, $load, undef, $before);
	like($detail, qr/timed out/, "$label: the event log says it timed out");
	$bench->end_fault($fault);
}

# The same, but the source stops answering the worker's control session
# (its backend is stopped with SIGSTOP) while the fence waits: the timeout
# expires inside a round trip on that session.  The fence must still end.
my @stopped_on_source;
END { kill 'CONT', @stopped_on_source if @stopped_on_source; }

{
	my $label = 'timeout while the source stalls the control session';
	my $fault = $bench->begin_fault($label);
	my $before = $bench->failures_logged;
	my $load = $bench->start_writers;
	my $gid = prepare_blocker();

	my $call = start_cutover_with($target, "SET zdm.lock_grace_period = 0;",
		"timeout => '6 s'");
	ok($source->poll_query_until('app', ZdmFault::FENCE_WAITS_SQL),
		"$label: the fence waits for the prepared transaction");
	my $control = $source->safe_psql('app', q{
SELECT pid FROM pg_stat_activity
WHERE application_name = 'pg_zdm' AND backend_type = 'client backend'
  AND wait_event_type IS DISTINCT FROM 'Lock'});
	like($control, qr/^\d+$/, "$label: the worker's control session found");
	@stopped_on_source = ($control);
	is(kill('STOP', $control), 1, "$label: the control session's backend is stopped");

	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the cutover fails");
	is(sqlstate_of($stderr), '57014', "$label: with 57014") or diag $stderr;
	note "$label: the caller saw: $stderr";

	$bench->fence_gone($label);
	kill 'CONT', @stopped_on_source;
	@stopped_on_source = ();
	commit_blocker($label, $gid);
	my $detail = $bench->check_recovered($label, $load, undef, $before);
	like($detail, qr/timed out/, "$label: the event log says it timed out");
	$bench->end_fault($fault);
}

$bench->summary;
done_testing();
