# test/t/071_fallback_failures.pl: the ways a fallback can be refused or
# fail, and what each must leave behind (issue 12).
#
#   A. Before the cutover: zdm.fallback() and zdm.finish() are refused
#      (55000).  zdm.check_fallback() with the DSN derived (NULL) reaches
#      the target.  A cutover with fallback => true is refused (with the
#      failing check's SQLSTATE, the check named in the detail) while
#      writers insert into the source, for each of: a migrated table without key or replica
#      identity on the target (fallback_replica_identity, which names it), a
#      target DSN nothing listens on (fallback_target_connection), the
#      target at wal_level = replica (fallback_target_wal_level), every
#      replication slot of the target taken (fallback_target_slots), the
#      source without logical replication workers (fallback_source_workers).
#      Each time: the source was never fenced and takes writes, no zdm_fence
#      there, no subscription on the source, no slot or publication on the
#      target, the migration still streaming and replicating, no write lost.
#   B. A cutover with fallback whose timeout expires after it prepared the
#      reverse replication (the forward walsender stopped, so the target
#      cannot catch up) leaves nothing of it behind, the source writable,
#      the migration streaming.  Once the causes are fixed, the cutover with
#      fallback succeeds under write load.
#   C. The fallback fails before its point of no return, under writes to
#      the target, while the source's reverse apply is held back (a source
#      session locks a table the target writes to) so that the fallback
#      cannot complete on its own: its timeout; the caller cancelled and
#      terminated while the target's writes are blocked; the source stopped
#      (immediate) while the fallback waits for it; the source down before
#      the call.  Each time: the call fails (57014 for cancel and timeout),
#      the target takes INSERT, UPDATE and DELETE again, holds no fence lock
#      and runs no pg_zdm worker any more, the reverse replication streams
#      again and delivers every write the target acknowledged, the source
#      still rejects application writes, the reverse objects are still
#      there.  Then a retried zdm.fallback() succeeds under load: every
#      acknowledged write on the source, the same rows on both sides, the
#      source's sequences ahead, the target read-only and the source
#      writable, the reverse objects gone; zdm.finish() forgets it.
#   D. A new migration, cutover with fallback (target_dsn derived from the
#      session) under writes to the source; both servers stopped in
#      immediate mode and restarted: writes on the target made before and
#      after reach the source, the same rows on both sides, no apply error
#      or conflict on the source; zdm.abort() refused (55000); zdm.finish(): no
#      subscription or replication origin left on the source, no slot or
#      publication on the target, the source still read-only, the target
#      writable, zdm.migration empty, zdm.status() says no migration,
#      zdm.fallback() and zdm.check_fallback() refused.
#   E. A new migration and a plain cutover: zdm.fallback() and
#      zdm.check_fallback() refused; zdm.finish() forgets the migration.
#   F. A new migration, a cutover with fallback, writes on the target, and
#      a fallback whose worker is terminated after its point of no return
#      (held there by a source session holding the fence's trigger
#      function): the call fails, the target rejects writes for good, the
#      source still too, zdm.status() is not ok; once the source session
#      ends, zdm.fallback() again finishes it: every acknowledged write on
#      the source, the same rows, the source writable, nothing left.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmFallback;
use ZdmFault;
use ZdmTest;

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\n");
my $target = start_fallback_target('target', "log_statement = ddl\n");
# t and w of ZdmFault; nk has a key on the source only (see A)
same_schema_on_both($source, $target, ZdmFault::TABLES_SQL);
$source->safe_psql('app', q{
CREATE TABLE nk (id integer PRIMARY KEY, note text);
INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i;
INSERT INTO nk SELECT i, 'initial' FROM generate_series(1, 10) i;
});
$target->safe_psql('app', 'CREATE TABLE nk (id integer NOT NULL, note text)');
init_migration($source, $target);

my $tdsn = target_dsn($target);
my $name = fallback_name($target);
my $with_fallback = "fallback => true, target_dsn => '$tdsn'";
my $reverse_set_up =
  "source: subscription $name (enabled); target: publication zdm_pub; target: slot $name";

# Writes to the source, checked on the target (forward), and writes to the
# target, checked on the source (reverse): ZdmFault benches in each
# direction, with ids and writer ids of their own.
my $fwd = ZdmFault->new($source, $target);
my $rev = ZdmFault->new($target, $source, first_id => 100000, first_writer => 50);

# The output of a statement on the target, errors verbose: (exit code,
# stderr).
sub on_target
{
	my ($sql) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', $sql);
	return ($ret, $stderr);
}

# A new migration on the same clusters: the target made writable again by
# hand (its fence), the extension created anew, the target tables emptied
# for the initial copy; the source made writable too if it is not.
sub new_migration
{
	$source->safe_psql('app', 'DROP SCHEMA IF EXISTS zdm_fence CASCADE');
	$target->safe_psql('app', 'DROP SCHEMA IF EXISTS zdm_fence CASCADE');
	$target->safe_psql('app',
		'DROP EXTENSION pg_zdm; CREATE EXTENSION pg_zdm; TRUNCATE t, w, nk');
	init_migration($source, $target);
	return;
}

# --- A. before the cutover ---------------------------------------------------------

{
	my ($ret, $stderr) = on_target('CALL zdm.fallback()');
	is(sqlstate_of($stderr), '55000', 'zdm.fallback() before any cutover is refused (55000)')
	  or diag $stderr;
	($ret, $stderr) = on_target('CALL zdm.finish()');
	is(sqlstate_of($stderr), '55000', 'zdm.finish() before the cutover is refused (55000)')
	  or diag $stderr;
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', '... and the migration goes on');
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.check_fallback(NULL) WHERE name = 'fallback_target_connection'"),
		't', 'zdm.check_fallback(NULL): the derived DSN reaches the target');
}

# The SQLSTATE each check refuses with (README, "The way back": the
# check's own, as zdm.init's checks do).
my %CHECK_SQLSTATE = (
	fallback_target_connection => '08006',
	fallback_subscription_privilege => '42501',
	fallback_source_workers => '53400',
	fallback_target_wal_level => '55000',
	fallback_target_slots => '53400',
	fallback_target_wal_senders => '53400',
	fallback_replica_identity => '55000');

# A cutover with fallback that a failing check must refuse; see the file
# header for what must hold afterwards.  Fill slots of the slots case are
# not ours: left out of what is compared.
sub refused_cleanly
{
	my ($label, $check, $dsn) = @_;
	my $fault = $fwd->begin_fault($label);
	my $load = $fwd->start_writers;

	my $rows = fallback_check_rows($target, "'$dsn'");
	like($rows, qr/^\Q$check\E\|false\|true$/m,
		"$label: zdm.check_fallback says $check fails, blocking");
	my ($ret, $stderr) =
	  on_target("CALL zdm.cutover(fallback => true, target_dsn => '$dsn')");
	isnt($ret, 0, "$label: the cutover with fallback is refused");
	if ($ret == 0)
	{
		# It cut over: what follows would test nothing.  Forget this
		# migration and start a new one, so that the next cases run.
		diag "$label: the cutover completed; finishing it and starting a new migration";
		$fwd->stop_writers($load);
		on_target('CALL zdm.finish()');
		new_migration();
		$fwd->end_fault($fault);
		return;
	}
	is(sqlstate_of($stderr), $CHECK_SQLSTATE{$check},
		"$label: with the check's SQLSTATE $CHECK_SQLSTATE{$check}") or diag $stderr;
	like($stderr, qr/DETAIL:[^\n]*\Q$check\E/, "$label: the detail names $check")
	  or diag $stderr;
	unlike($stderr, qr/writes blocked on the source/, "$label: the source was never fenced");

	is(join('; ', grep { !/slot fill_/ } split /; /, reverse_objects($source, $target)),
		'', "$label: no subscription on the source, no slot or publication on the target");
	($ret, $stderr) = $fwd->source_write("$label: after", '10s');
	is($ret, 0, "$label: the source takes writes at once") or diag $stderr;
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: no zdm_fence schema on the source");
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is still streaming");
	$fwd->stop_writers($load);
	$fwd->no_write_lost($label, 1);
	$fwd->end_fault($fault);
	return;
}

refused_cleanly('no key on the target', 'fallback_replica_identity', $tdsn);
like( $target->safe_psql('app',
		"SELECT array_to_string(objects, ' ') FROM zdm.check_fallback('$tdsn') WHERE name = 'fallback_replica_identity'"),
	qr/public\.nk/, 'fallback_replica_identity names the table without key');
$target->safe_psql('app', 'ALTER TABLE nk ADD PRIMARY KEY (id)');

{
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	refused_cleanly('a target DSN nothing listens on', 'fallback_target_connection',
		"host=127.0.0.1 port=$port dbname=app user=nobody connect_timeout=5");
}

$target->safe_psql('app', 'ALTER SYSTEM SET wal_level = replica');
$target->restart;
refused_cleanly('target at wal_level = replica', 'fallback_target_wal_level', $tdsn);
$target->safe_psql('app', 'ALTER SYSTEM RESET wal_level');
$target->restart;

$target->safe_psql('app', q{
SELECT count(pg_create_physical_replication_slot('fill_' || i))
FROM generate_series(1, current_setting('max_replication_slots')::int
                        - (SELECT count(*) FROM pg_replication_slots)) i});
refused_cleanly('no free replication slot on the target', 'fallback_target_slots', $tdsn);
$target->safe_psql('app',
	"SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name LIKE 'fill\\_%'");

$source->safe_psql('app', 'ALTER SYSTEM SET max_logical_replication_workers = 0');
$source->restart;
refused_cleanly('no logical replication worker on the source', 'fallback_source_workers', $tdsn);
$source->safe_psql('app', 'ALTER SYSTEM RESET max_logical_replication_workers');
$source->restart;
wait_until_ready($target);

# --- B. the cutover with fallback -------------------------------------------------

# A cutover with fallback that fails after it prepared the reverse
# replication: the forward replication held back (stop_walsender), the
# timeout expires while the target catches up.  Nothing of the reverse
# replication may be left, the source is writable, the migration goes on.
my @stopped;
END { kill 'CONT', @stopped if @stopped; }
{
	my $label = 'cutover with fallback timing out';
	my $fault = $fwd->begin_fault($label);
	my $load = $fwd->start_writers;
	@stopped = (stop_walsender($source));
	my ($ret, $stderr) = on_target("CALL zdm.cutover(timeout => '5 s', $with_fallback)");
	kill 'CONT', @stopped;
	@stopped = ();
	isnt($ret, 0, "$label: the cutover fails");
	is(sqlstate_of($stderr), '57014', "$label: with SQLSTATE 57014") or diag $stderr;
	like($stderr, qr/writes blocked on the source/, "$label: the source was fenced before");
	is(wait_no_reverse_objects($source, $target), '',
		"$label: no subscription on the source, no slot or publication on the target");
	($ret, $stderr) = $fwd->source_write("$label: after", '10s');
	is($ret, 0, "$label: the source takes writes") or diag $stderr;
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: no zdm_fence schema on the source");
	ok( $target->poll_query_until('app', 'SELECT phase FROM zdm.migration', 'streaming'),
		"$label: the migration is streaming again");
	$fwd->stop_writers($load);
	$fwd->no_write_lost($label, 1);
	wait_until_ready($target);
	$fwd->end_fault($fault);
}

{
	my $label = 'cutover with fallback';
	is( $target->safe_psql('app',
			"SELECT string_agg(name, ', ') FROM zdm.check_fallback('$tdsn') WHERE NOT ok"),
		'', "$label: every fallback check passes now");
	my $load = $fwd->start_writers;
	my ($ret, $stderr) = on_target("CALL zdm.cutover($with_fallback)");
	is($ret, 0, "$label: succeeds under write load") or diag $stderr;
	if ($ret != 0)
	{
		$fwd->stop_writers($load);
		stop_unless(0, $label);
	}
	my ($r, $e) = $fwd->source_write("$label: after", '10s');
	is(sqlstate_of($e), '25006', "$label: the source rejects writes afterwards");
	$fwd->stop_writers($load);
	$fwd->no_write_lost($label, 0);
	wait_reverse_streaming($target, $label);
	is(reverse_objects($source, $target), $reverse_set_up,
		"$label: the reverse subscription, slot and publication are there");
	# from now on everything the source acknowledged must stay there
	$rev->ack($fwd->acked);
}

# --- C. the fallback fails before its point of no return ---------------------------

# hold_reverse_apply(label): a source session locks t, the target writes a
# row to t; wait until the reverse apply worker waits for the lock.
# Returns the session (ZdmFault's release_stall ends it).
sub hold_reverse_apply
{
	my ($label) = @_;
	my $hold = $rev->stall('t');
	$rev->source_write("$label: held back");
	ok( $source->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks WHERE relation = 't'::regclass AND NOT granted}),
		"$label: the reverse apply worker waits for a lock on the source");
	return $hold;
}

# The fallback's fence on the target holds t and w.
my $target_fenced = target_fenced_query('t', 'w');

# fallback_recovered(label, load, hold): what must hold after a fallback
# failed before its point of no return (see the file header); hold is the
# session holding the reverse apply back (released here), load the writers
# on the target (stopped here).
sub fallback_recovered
{
	my ($label, $load, $hold) = @_;

	my ($ret, $stderr) = $rev->source_write("$label: after");
	is($ret, 0, "$label: the target takes INSERT") or diag $stderr;
	($ret, $stderr) = on_target(
		"SET lock_timeout = '10s'; UPDATE w SET seq = seq WHERE client = 1; DELETE FROM t WHERE id = -1");
	is($ret, 0, "$label: the target takes UPDATE and DELETE") or diag $stderr;
	is($target->safe_psql('app', $target_fenced), 'f',
		"$label: no fence lock left on the target");
	ok( $target->poll_query_until('app',
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type LIKE 'pg_zdm%'"),
		"$label: no pg_zdm worker left on the target");

	$rev->release_stall($hold);
	my ($acked, $failed, $lost) = $rev->stop_writers($load);
	note "$label: writers on the target: $acked acknowledged, $failed failed, $lost lost connection";
	wait_reverse_streaming($target, $label);
	$rev->no_write_lost($label, 1);
	my ($r, $out, $err) = psql_verbose($source, 'app',
		"SET lock_timeout = '10s'; INSERT INTO w (client, seq) VALUES (-1, 1)");
	is(sqlstate_of($err), '25006', "$label: the source still rejects application writes")
	  or diag $err;
	is(reverse_objects($source, $target), $reverse_set_up,
		"$label: the reverse subscription, slot and publication are still there");
	return;
}

# stop_fallback_caller(label, call, how): pg_cancel_backend or
# pg_terminate_backend of the session running zdm.fallback(); checks how the
# call ended.
sub stop_fallback_caller
{
	my ($label, $call, $how) = @_;
	my $function = $how eq 'cancel' ? 'pg_cancel_backend' : 'pg_terminate_backend';
	is($target->safe_psql('app', "SELECT $function($call->{pid})"),
		't', "$label: $function on the calling session");
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call fails");
	if ($how eq 'cancel')
	{
		is(sqlstate_of($stderr), '57014', "$label: with SQLSTATE 57014") or diag $stderr;
	}
	else
	{
		like($stderr, qr/57P01|terminating connection|server closed the connection/,
			"$label: the session is gone") or diag $stderr;
	}
	return;
}

{
	my $label = 'fallback timeout';
	my $fault = $rev->begin_fault($label);
	my $load = $rev->start_writers;
	my $hold = hold_reverse_apply($label);
	my ($ret, $stderr) = on_target("CALL zdm.fallback(timeout => '3 s')");
	isnt($ret, 0, "$label: the fallback fails");
	is(sqlstate_of($stderr), '57014', "$label: with SQLSTATE 57014") or diag $stderr;
	note "$label: the caller saw: $stderr";
	fallback_recovered($label, $load, $hold);
	$rev->end_fault($fault);
}

foreach my $how ('cancel', 'terminate')
{
	my $label = "fallback caller ${how}ed while the target is fenced";
	my $fault = $rev->begin_fault($label);
	my $load = $rev->start_writers;
	my $hold = hold_reverse_apply($label);
	my $call = start_statement($target, "CALL zdm.fallback(timeout => '10 min')");
	ok(poll_while_running($target, $target_fenced, $call),
		"$label: the fallback blocks writes on the target");
	ok( $target->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks
WHERE relation = 'w'::regclass AND mode = 'RowExclusiveLock' AND NOT granted}),
		"$label: the writers on the target queue behind it");
	stop_fallback_caller($label, $call, $how);
	fallback_recovered($label, $load, $hold);
	$rev->end_fault($fault);
}

{
	my $label = 'source stopped while the fallback waits for it';
	my $fault = $rev->begin_fault($label);
	my $load = $rev->start_writers;
	my $hold = hold_reverse_apply($label);
	my $call = start_statement($target, "CALL zdm.fallback(timeout => '15 s')");
	ok(poll_while_running($target, $target_fenced, $call),
		"$label: the fallback blocks writes on the target");
	$source->stop('immediate');
	my ($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the fallback fails");
	note "$label: the caller saw: $stderr";
	($ret, $stderr) = $rev->source_write("$label: source down");
	is($ret, 0, "$label: the target takes writes while the source is down") or diag $stderr;
	$source->start;
	fallback_recovered($label, $load, $hold);
	$rev->end_fault($fault);
}

{
	my $label = 'source down when the fallback starts';
	my $fault = $rev->begin_fault($label);
	my $load = $rev->start_writers;
	$source->stop('fast');
	my ($ret, $stderr) = on_target("CALL zdm.fallback(timeout => '15 s')");
	isnt($ret, 0, "$label: the fallback fails");
	note "$label: the caller saw: $stderr";
	($ret, $stderr) = $rev->source_write("$label: source down");
	is($ret, 0, "$label: the target takes writes while the source is down") or diag $stderr;
	$source->start;
	fallback_recovered($label, $load, undef);
	$rev->end_fault($fault);
}

{
	my $label = 'retried fallback';
	my $fault = $rev->begin_fault($label);
	my $load = $rev->start_writers;
	my ($ret, $stderr) = on_target("CALL zdm.fallback(timeout => '1 min')");
	is($ret, 0, "$label: succeeds under write load") or diag $stderr;
	if ($ret != 0)
	{
		$rev->stop_writers($load);
		stop_unless(0, $label);
	}
	note "$label: output: $stderr";
	my ($r, $e) = $rev->source_write("$label: after", '10s');
	is(sqlstate_of($e), '25006', "$label: the target rejects writes afterwards");
	$rev->stop_writers($load);
	$rev->no_write_lost("$label: every write either server acknowledged is on the source", 0);
	foreach my $table ('t', 'w', 'nk')
	{
		is(table_digest($source, $table), table_digest($target, $table),
			"$label: $table has the same rows on both sides");
	}
	my $target_max = $target->safe_psql('app', 'SELECT max(id) FROM w');
	my ($rr, $new_id, $ee) = psql_verbose($source, 'app',
		'INSERT INTO w (client, seq) VALUES (-1, 2) RETURNING id');
	is($rr, 0, "$label: the source takes writes") or diag $ee;
	cmp_ok($new_id || 0, '>', $target_max,
		"$label: the source's identity hands out a key above every key of the target ($target_max)");
	is($source->safe_psql('app', "SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: no zdm_fence left on the source");
	is(wait_no_reverse_objects($source, $target), '',
		"$label: no reverse subscription, slot or publication left");
	($ret, $stderr) = on_target('CALL zdm.finish()');
	is($ret, 0, "$label: zdm.finish() afterwards succeeds") or diag $stderr;
	is($target->safe_psql('app', 'SELECT count(*) FROM zdm.migration'),
		'0', "$label: zdm.migration is empty after zdm.finish()");
	$rev->end_fault($fault);
}

# --- D. finish after a cutover with fallback -----------------------------------------

{
	my $label = 'finish after a cutover with fallback';
	new_migration();
	my $log_offset = log_position($source);
	my $load = $fwd->start_writers;
	# target_dsn left out: derived from this session (psql came through the
	# target's unix socket, which the source, on this machine, reaches too)
	my ($ret, $stderr) = on_target('CALL zdm.cutover(fallback => true)');
	is($ret, 0, "$label: the cutover with fallback, target_dsn derived, succeeds under write load")
	  or diag $stderr;
	$fwd->stop_writers($load);
	stop_unless($ret == 0, "$label: the cutover");
	$fwd->no_write_lost($label, 0);
	wait_reverse_streaming($target, $label);

	# Both servers stopped in immediate mode and started again: the reverse
	# replication resumes where it was, and sends the source nothing it had
	# (the forward writes applied here just before the cutover) nor loses
	# what the target wrote.
	$target->safe_psql('app', "INSERT INTO t VALUES (900000, 'written on the target before the crashes')");
	$target->stop('immediate');
	$target->start;
	$source->stop('immediate');
	$source->start;
	wait_reverse_streaming($target, "$label, after both servers crashed");
	$target->safe_psql('app', "INSERT INTO t VALUES (900001, 'written on the target')");
	ok( $source->poll_query_until('app',
			'SELECT count(*) = 2 FROM t WHERE id IN (900000, 900001)'),
		"$label: writes on the target before and after the crashes reach the source");
	foreach my $table ('t', 'w', 'nk')
	{
		is(table_digest($source, $table), table_digest($target, $table),
			"$label: $table has the same rows on both sides");
	}
	is(reverse_apply_errors($source, $name) // '0', '0',
		"$label: no apply error of the reverse subscription on the source");
	is(apply_trouble_since($source, $log_offset), '',
		"$label: no conflict or duplicate key in the source's log");

	($ret, $stderr) = on_target('CALL zdm.abort()');
	is(sqlstate_of($stderr), '55000', "$label: zdm.abort() after the cutover is refused (55000)")
	  or diag $stderr;
	is(reverse_objects($source, $target), $reverse_set_up,
		"$label: ... and changes nothing");

	($ret, $stderr) = on_target('CALL zdm.finish()');
	is($ret, 0, "$label: zdm.finish() succeeds") or diag $stderr;
	is(wait_no_reverse_objects($source, $target), '',
		"$label: no subscription on the source, no slot or publication on the target");
	is($source->safe_psql('app', 'SELECT count(*) FROM pg_replication_origin'),
		'0', "$label: no replication origin left on the source");
	my ($r, $out, $err) = psql_verbose($source, 'app', "INSERT INTO t VALUES (900002, 'x')");
	is(sqlstate_of($err), '25006', "$label: the source stays read-only");
	($ret, $stderr) = on_target("INSERT INTO t VALUES (900003, 'after finish')");
	is($ret, 0, "$label: the target takes writes") or diag $stderr;
	is($target->safe_psql('app', 'SELECT count(*) FROM zdm.migration'),
		'0', "$label: zdm.migration is empty");
	is( $target->safe_psql('app',
			"SELECT string_agg(component || '|' || ok::text || '|' || value, '; ') FROM zdm.status()"),
		'overall|false|no migration: start one with CALL zdm.init(source_dsn)',
		"$label: zdm.status() says there is no migration");
	($ret, $stderr) = on_target('CALL zdm.fallback()');
	is(sqlstate_of($stderr), '55000', "$label: zdm.fallback() afterwards is refused (55000)")
	  or diag $stderr;
	($ret, $stderr) = on_target("SELECT * FROM zdm.check_fallback('$tdsn')");
	isnt($ret, 0, "$label: zdm.check_fallback() without a migration is refused");
	note "$label: zdm.check_fallback() said: $stderr";
}

# --- E. a plain cutover ----------------------------------------------------------------

{
	my $label = 'plain cutover';
	new_migration();
	my ($ret, $stderr) = on_target('CALL zdm.cutover()');
	is($ret, 0, "$label: succeeds") or diag $stderr;
	is(wait_no_reverse_objects($source, $target), '', "$label: sets up no reverse replication");
	($ret, $stderr) = on_target('CALL zdm.fallback()');
	is(sqlstate_of($stderr), '55000',
		"$label: zdm.fallback() is refused (55000): no cutover with fallback happened")
	  or diag $stderr;
	($ret, $stderr) = on_target("SELECT * FROM zdm.check_fallback('$tdsn')");
	isnt($ret, 0, "$label: zdm.check_fallback() after the cutover is refused");
	($ret, $stderr) = on_target('CALL zdm.finish()');
	is($ret, 0, "$label: zdm.finish() succeeds") or diag $stderr;
	is($target->safe_psql('app', 'SELECT count(*) FROM zdm.migration'),
		'0', "$label: zdm.migration is empty");
	my ($r, $out, $err) = psql_verbose($source, 'app', "INSERT INTO t VALUES (900004, 'x')");
	is(sqlstate_of($err), '25006', "$label: the source stays read-only");
}

# --- F. the fallback interrupted after its point of no return -------------------

# A source session holds the row of the fence's trigger function (an open
# ALTER FUNCTION), so the fallback, past its point of no return (this
# target read-only for good), waits to make the source writable; its worker
# is terminated there.  The next zdm.fallback() finishes it.
{
	my $label = 'fallback interrupted after its point of no return';
	my $fault = $rev->begin_fault($label);
	new_migration();
	my ($ret, $stderr) = on_target("CALL zdm.cutover($with_fallback)");
	is($ret, 0, "$label: the cutover with fallback succeeds") or diag $stderr;
	stop_unless($ret == 0, "$label: the cutover");
	wait_reverse_streaming($target, $label);
	my $load = $rev->start_writers;

	my $block = $source->background_psql('app');
	$block->query_safe('BEGIN; ALTER FUNCTION zdm_fence.reject_write() COST 101');
	my $call = start_statement($target, "CALL zdm.fallback(timeout => '1 min')");
	ok( poll_while_running($source, q{
SELECT count(*) > 0 FROM pg_stat_activity
WHERE application_name = 'pg_zdm' AND wait_event_type = 'Lock'}, $call, $target),
		"$label: the fallback waits on the source, past its point of no return");
	my ($r, $e) = $rev->source_write("$label: past the point of no return", '5s');
	is(sqlstate_of($e), '25006', "$label: the target rejects writes for good");
	is( $target->safe_psql('app',
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type LIKE 'pg_zdm%'"),
		'1', "$label: the fallback worker is terminated");
	($ret, $stderr) = finish_cutover($call);
	isnt($ret, 0, "$label: the call fails");
	note "$label: the caller saw: $stderr";
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		'f', "$label: zdm.status() says something is left to do");
	($r, my $out, $e) = psql_verbose($source, 'app', "INSERT INTO t VALUES (900005, 'x')");
	is(sqlstate_of($e), '25006', "$label: the source still rejects writes");
	$rev->release_stall($block);
	$rev->stop_writers($load);

	($ret, $stderr) = on_target("CALL zdm.fallback(timeout => '1 min')");
	is($ret, 0, "$label: CALL zdm.fallback() again finishes it") or diag $stderr;
	$rev->no_write_lost("$label: every write either server acknowledged is on the source", 0);
	foreach my $table ('t', 'w', 'nk')
	{
		is(table_digest($source, $table), table_digest($target, $table),
			"$label: $table has the same rows on both sides");
	}
	($r, $out, $e) = psql_verbose($source, 'app', "INSERT INTO t VALUES (900006, 'x')");
	is($r, 0, "$label: the source takes writes") or diag $e;
	($r, $e) = $rev->source_write("$label: at the end", '5s');
	is(sqlstate_of($e), '25006', "$label: the target rejects writes");
	is(wait_no_reverse_objects($source, $target), '',
		"$label: no reverse subscription, slot or publication left");
	($ret, $stderr) = on_target('CALL zdm.finish()');
	is($ret, 0, "$label: zdm.finish() afterwards succeeds") or diag $stderr;
	$rev->end_fault($fault);
}

$fwd->summary;
$rev->summary;
done_testing();
