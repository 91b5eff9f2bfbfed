# test/t/021_fault_replication.pl: faults while the migration replicates,
# before any cutover, and sources and targets too small to start one.
#
#   (a) the source stops and starts again during the initial copy (the copy
#       of table big is held midway by a trigger on the target waiting for an
#       advisory lock), and again during streaming (immediate mode): while
#       it is down zdm.status() says the source cannot be reached; then the
#       copy restarts and completes with every row, replication resumes,
#       zdm.status() is ready again;
#   (b) the walsender serving the subscription is terminated on the source
#       during streaming, and during a cutover's wait (apply stalled): the
#       apply worker reconnects, and the cutover completes;
#   (e) tables are dropped and altered on the source while streaming: a
#       dropped table breaks nothing; a column retyped (int to text, then a
#       value that is no integer), a column dropped that is NOT NULL on the
#       target, and a column added on the source only each break the apply
#       worker: zdm.status() must report apply errors and never say
#       ready_for_cutover while it is broken; once the target's schema is
#       fixed replication resumes and zdm.status() is ready again;
#   (c) a source whose replication slots, then wal senders, are all but used
#       up: zdm.check shows the check failed, zdm.init fails with 53400 and
#       leaves nothing behind;
#   (d) a target with too few worker slots: max_logical_replication_workers
#       = 1, then max_worker_processes = 2: zdm.check row target_workers
#       false, zdm.init refused with 53400, nothing left behind; and with
#       max_worker_processes = 3, where another subscription takes the last
#       slot after init, CALL zdm.cutover() fails with 53400 without
#       touching the source, and succeeds once the slot is free.
# Writers (test/lib/ZdmFault.pm) insert into the source throughout (a), (b)
# and (e); no acknowledged write may be lost.  The last note gives the
# figures: faults injected, survived, writes lost.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use ZdmFault qw(start_cutover_with);
use ZdmTest;

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\nmax_connections = 40\n");
my $target = start_target('target');

my $BIG_ROWS = 50000;
same_schema_on_both($source, $target, ZdmFault::TABLES_SQL . q{
CREATE TABLE big (id integer PRIMARY KEY, payload text);
CREATE TABLE r_drop (id integer PRIMARY KEY);
CREATE TABLE r_retype (id integer PRIMARY KEY, v integer);
CREATE TABLE r_dropcol (id integer PRIMARY KEY, c integer NOT NULL, note text);
CREATE TABLE r_addcol (id integer PRIMARY KEY);
});
$source->safe_psql('app', qq{
INSERT INTO t SELECT i, 'initial' FROM generate_series(1, 10) i;
INSERT INTO big SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, $BIG_ROWS) i;
INSERT INTO r_drop VALUES (1);
});

my $bench = ZdmFault->new($source, $target);

# count and checksum of a table, to compare both sides
sub digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY id)), '') FROM $table x");
}

# zdm.status() as a hash: "component.metric" => { value, bytes, ok }, ok
# being 't' or 'f'
sub status_rows
{
	my %rows;
	foreach my $line (split /\n/, $target->safe_psql('app',
		"SELECT component || '.' || metric, translate(value, E'\\n\\t|', '  /'), coalesce(bytes::text, ''), ok FROM zdm.status()"))
	{
		my ($key, $value, $bytes, $ok) = split /\|/, $line;
		$rows{$key} = { value => $value, bytes => $bytes, ok => $ok };
	}
	return \%rows;
}

# --- (a) the source restarts during the initial copy ---------------------------

{
	my $label = 'source restarts during the initial copy';
	my $fault = $bench->begin_fault($label);

	# The copy of big inserts its rows through this trigger; at row 20000 it
	# waits for an advisory lock that a target session holds.
	$target->safe_psql('app', q{
CREATE FUNCTION hold_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 20000 THEN
        PERFORM pg_advisory_xact_lock_shared(4242);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_copy BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION hold_copy();
ALTER TABLE big ENABLE ALWAYS TRIGGER hold_copy;
});
	my $holder = $target->background_psql('app');
	$holder->query_safe('SELECT pg_advisory_lock(4242)');

	$target->safe_psql('app', "CALL zdm.init('" . source_dsn($source) . "')");
	my $load = $bench->start_writers;
	ok( $target->poll_query_until('app',
			"SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"),
		"$label: the copy of big is held midway");
	like( $target->safe_psql('app',
			"SELECT state || ' ' || (copied_bytes > 0) FROM zdm.tables() WHERE table_name = 'big'"),
		qr/^copying true$/,
		"$label: zdm.tables() shows big being copied, with bytes copied");

	$source->stop('fast');
	my $status = status_rows();
	is($status->{'source.connection'}{ok}, 'f',
		"$label: while the source is down, zdm.status() says it cannot be reached");
	like($status->{'source.connection'}{value}, qr/127\.0\.0\.1.*(refused|failed)/i,
		"$label: ... with libpq's reason");
	is($status->{'overall.ready_for_cutover'}{ok}, 'f',
		"$label: ... and is not ready for cutover");
	is($status->{'copy.tables_ready'}{ok}, 'f',
		"$label: ... nor are the tables ready");
	$source->start;

	$holder->query_safe('SELECT pg_advisory_unlock(4242)');
	$holder->quit;
	wait_until_ready($target);
	is( $target->safe_psql('app',
			"SELECT string_agg(DISTINCT state, ',') FROM zdm.tables()"),
		'ready', "$label: every table is ready");
	is(digest($target, 'big'), digest($source, 'big'),
		"$label: big has the same $BIG_ROWS rows on both sides");
	is(digest($target, 'r_drop'), digest($source, 'r_drop'),
		"$label: the small tables were copied too");
	$target->safe_psql('app', 'DROP TRIGGER hold_copy ON big');

	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost($label, 1);
	$bench->end_fault($fault);
}

# --- (a) the source restarts during streaming (immediate mode) ------------------

{
	my $label = 'source restarts during streaming';
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;

	$source->stop('immediate');
	my $status = status_rows();
	is($status->{'source.connection'}{ok}, 'f',
		"$label: while the source is down, zdm.status() says it cannot be reached");
	is($status->{'overall.ready_for_cutover'}{ok}, 'f',
		"$label: ... and is not ready for cutover");
	$source->start;

	my ($ret, $stderr, $id) = $bench->source_write("$label: after");
	is($ret, 0, "$label: the source takes writes again") or diag $stderr;
	ok($target->poll_query_until('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: replication resumes");
	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost($label, 1);
	wait_until_ready($target);
	$bench->end_fault($fault);
}

# --- (b) the walsender is terminated during streaming -------------------------

my $walsender_sql = q{
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'walsender' AND application_name = 'zdm_sub'};

{
	my $label = 'walsender terminated during streaming';
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;

	my $old = $source->safe_psql('app', $walsender_sql);
	like($old, qr/^\d+$/, "$label: one walsender serves the subscription");
	is($source->safe_psql('app', "SELECT pg_terminate_backend($old, 60000)"),
		't', "$label: it is terminated");
	ok( $source->poll_query_until('app',
			"SELECT count(*) = 1 FROM ($walsender_sql) w WHERE pid <> $old"),
		"$label: the apply worker reconnects");

	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost($label, 1);
	wait_until_ready($target);
	$bench->end_fault($fault);
}

# --- (e) tables dropped and altered on the source --------------------------------

{
	my $label = 'table dropped on the source';
	my $fault = $bench->begin_fault($label);
	$source->safe_psql('app', 'DROP TABLE r_drop');
	my ($ret, $stderr, $id) = $bench->source_write("$label: after");
	ok($target->poll_query_until('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: replication goes on");
	is($target->safe_psql('app', 'SELECT count(*) FROM r_drop'),
		'1', "$label: the target keeps its copy of the table");

	# The subscription still lists the dropped table: zdm.status() says so
	# and is not ready, and a cutover refuses until the subscription is
	# refreshed, without locking the source.
	like( $target->safe_psql('app',
			"SELECT ok || ' ' || value FROM zdm.status() WHERE metric = 'tables_match'"),
		qr/^false .*r_drop \(subscribed, no longer published\)/,
		"$label: zdm.status() says the subscription still has the table");
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		'f', "$label: ... and is not ready for cutover");
	my ($r, $out, $err) =
	  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
	is(sqlstate_of($err), '55000', "$label: a cutover refuses (55000)");
	like($err, qr/r_drop \(subscribed, no longer published\)/,
		"$label: ... naming the table");
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: ... and leaves the source writable");
	$target->safe_psql('app', 'ALTER SUBSCRIPTION zdm_sub REFRESH PUBLICATION');
	wait_until_ready($target);
	$bench->end_fault($fault);
}

# How many times to look at zdm.status() while the apply is broken, and
# how long to wait between looks: long enough to span several restarts of
# the apply worker (wal_retrieve_retry_interval is 500 ms in these tests).
my $SAMPLES = 30;
my $SAMPLE_PAUSE = 0.2;

# Break the apply with break_sql on the source, look at zdm.status()
# repeatedly, then repair the target with fix_sql and check that
# replication resumes.
sub broken_apply
{
	my ($label, $break_sql, $fix_sql) = @_;
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my $errors_before = $target->safe_psql('app', q{
SELECT coalesce(sum(apply_error_count), 0) FROM pg_stat_subscription_stats
WHERE subname = 'zdm_sub'});

	$source->safe_psql('app', $break_sql);
	my $broken = ok(
		$target->poll_query_until('app', qq{
SELECT sum(apply_error_count) > $errors_before FROM pg_stat_subscription_stats
WHERE subname = 'zdm_sub'}),
		"$label: the apply worker fails");

	my (@overall_ok, @errors_ok, @errors_bytes, @values);
	foreach my $i (1 .. $SAMPLES)
	{
		my $status = status_rows();
		push @overall_ok, $status->{'overall.ready_for_cutover'}{ok};
		push @errors_ok, $status->{'target.apply_errors'}{ok} // 'missing';
		push @errors_bytes, $status->{'target.apply_errors'}{bytes} || 0;
		push @values, $status->{'target.apply_errors'}{value} // '';
		Time::HiRes::sleep($SAMPLE_PAUSE);
	}
	note "$label: apply_errors ok in each look: @errors_ok; errors counted: @errors_bytes";
	is(scalar(grep { $_ ne 'f' } @overall_ok), 0,
		"$label: zdm.status() never says ready_for_cutover while the apply is broken ($SAMPLES looks)");
	is(scalar(grep { $_ == 0 } @errors_bytes), 0,
		"$label: the apply_errors row counts the errors in every look");
	like($values[-1], qr/\d+ apply or copy errors/,
		"$label: the apply_errors row says there were errors");
	is(scalar(grep { $_ ne 'f' } @errors_ok), 0,
		"$label: the apply_errors row is not ok in any look while the errors go on");

	# (only when the apply is really broken: else the cutover would complete)
	if ($broken)
	{
		my ($r, $out, $err) =
		  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '10 s')");
		isnt($r, 0, "$label: a cutover does not complete while the apply is broken");
		is( $source->safe_psql('app',
				"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
			'0', "$label: ... and leaves the source writable");
		note "$label: the cutover said: $err";
	}

	$target->safe_psql('app', $fix_sql);
	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost("$label, fixed", 1);
	wait_until_ready($target);
	$bench->end_fault($fault);
	return;
}

broken_apply('column retyped on the source',
	"ALTER TABLE r_retype ALTER COLUMN v TYPE text; INSERT INTO r_retype VALUES (1, 'not a number')",
	'ALTER TABLE r_retype ALTER COLUMN v TYPE text');
is($target->safe_psql('app', 'SELECT v FROM r_retype WHERE id = 1'),
	'not a number', 'column retyped: the row arrives once the target is fixed');

broken_apply('column dropped on the source',
	'ALTER TABLE r_dropcol DROP COLUMN c; INSERT INTO r_dropcol (id) VALUES (1)',
	'ALTER TABLE r_dropcol ALTER COLUMN c DROP NOT NULL');
is($target->safe_psql('app', 'SELECT count(*) FROM r_dropcol WHERE id = 1'),
	'1', 'column dropped: the row arrives once the target is fixed');

broken_apply('column added on the source',
	'ALTER TABLE r_addcol ADD COLUMN extra integer; INSERT INTO r_addcol VALUES (1, 42)',
	'ALTER TABLE r_addcol ADD COLUMN extra integer');
is($target->safe_psql('app', 'SELECT extra FROM r_addcol WHERE id = 1'),
	'42', 'column added: the row arrives once the target is fixed');

# --- (b) the walsender is terminated during the cutover's wait ---------------

{
	my $label = 'walsender terminated during the cutover';
	my $fault = $bench->begin_fault($label);
	my $load = $bench->start_writers;
	my $stall = $bench->stall_apply($label);

	my $call = start_cutover_with($target, '', "timeout => '3 min'");
	ok($source->poll_query_until('app', fence_held_query('t', 'w', 'big')),
		"$label: the cutover fences the source");
	my $old = $source->safe_psql('app', $walsender_sql);
	is($source->safe_psql('app', "SELECT pg_terminate_backend($old, 60000)"),
		't', "$label: the walsender is terminated while the cutover waits");
	$bench->release_stall($stall);

	my ($ret, $stderr) = finish_cutover($call);
	is($ret, 0, "$label: the cutover completes") or diag $stderr;
	my ($r, $out, $err) = psql_verbose($source, 'app', "INSERT INTO t VALUES (-1, 'x')");
	is(sqlstate_of($err), '25006', "$label: the source is read-only");
	my ($acked, $failed, $lost) = $bench->stop_writers($load);
	note "$label: writers: $acked acknowledged, $failed failed, $lost lost connection";
	$bench->no_write_lost($label, 0);
	is(digest($target, 'big'), digest($source, 'big'), "$label: big is the same on both sides");
	is( $target->safe_psql('app',
			"SELECT metric || '|' || ok FROM zdm.status() WHERE component = 'overall'"),
		'completed|true',
		"$label: zdm.status() says completed");
	$bench->end_fault($fault);
}

# --- (c) a source out of replication slots, then of wal senders -------------

# A small source for (c) and (d), with the tables of the target.
my $small = start_source('small', "max_replication_slots = 2\nmax_wal_senders = 2\n");
$small->safe_psql('app', ZdmFault::TABLES_SQL);
$target->safe_psql('app',
	'DROP EXTENSION pg_zdm; CREATE EXTENSION pg_zdm; TRUNCATE t, w');
my $small_dsn = source_dsn($small);

# zdm.check's row for a check, as "ok|detail".
sub check_row
{
	my ($name, $dsn, $args) = @_;
	return $target->safe_psql('app',
		"SELECT ok || '|' || detail FROM zdm.check('$dsn'"
		  . ($args ? ", $args" : '') . ") WHERE name = '$name'");
}

# init must be refused with the check's 53400, leaving nothing anywhere.
sub init_refused
{
	my ($label, $check, $detail_re, $args) = @_;
	my $fault = $bench->begin_fault($label);
	like(check_row($check, $small_dsn, $args), qr/^false\|$detail_re/,
		"$label: zdm.check shows $check failed");
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app',
		"CALL zdm.init('$small_dsn'" . ($args ? ", $args" : '') . ')');
	is(sqlstate_of($stderr), '53400', "$label: zdm.init fails with 53400") or diag $stderr;
	like($stderr, qr/check "$check" failed/, "$label: ... naming the check");
	like($stderr, qr/HINT:  .*Raise/, "$label: ... with a hint");
	is(migration_leftovers($target, $small), '', "$label: nothing left behind");
	$bench->end_fault($fault);
	return;
}

{
	# one slot free, two needed (subscription and initial copy)
	$small->safe_psql('app',
		"SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')");
	init_refused('source out of replication slots', 'replication_slots',
		qr/1 of max_replication_slots = 2 are free/);
	$small->safe_psql('app', "SELECT pg_drop_replication_slot('someone_else')");

	# one wal sender free, two needed
	my $replication = $small->background_psql('app', replication => 'database');
	ok( $small->poll_query_until('app',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'walsender'"),
		'another client holds one of the two wal senders');
	init_refused('source out of wal senders', 'wal_senders',
		qr/1 of max_wal_senders = 2 are free/);
	$replication->quit;
}

# --- (d) a target with too few worker slots -----------------------------------

# Restart the target with these settings (appended last, so they win).
sub target_with
{
	my ($conf) = @_;
	$target->append_conf('postgresql.conf', $conf);
	$target->restart;
	return;
}

target_with("max_logical_replication_workers = 1\n");
init_refused('target with one logical replication worker', 'target_workers',
	qr/This target has 1 free logical replication worker slots/);

# one replication origin, two needed (the subscription and a table
# synchronization); the setting is max_active_replication_origins from 18
my $origins_setting = $target->pg_version >= 18
  ? 'max_active_replication_origins' : 'max_replication_slots';
target_with("max_logical_replication_workers = 8\n$origins_setting = 1\n");
init_refused('target with one replication origin', 'replication_origins',
	qr/1 of $origins_setting = 1 replication origins are free/);

target_with("$origins_setting = 10\nmax_worker_processes = 2\n");
init_refused('target with two worker processes', 'target_workers',
	qr/This target has \d+ free logical replication worker slots and 1 free background worker slots/);

{
	my $label = 'no worker slot left for the cutover';
	my $fault = $bench->begin_fault($label);

	# launcher + apply worker + cutover worker; no initial copy
	target_with("max_worker_processes = 3\n");
	like(check_row('target_workers', $small_dsn, 'defer_copy => true'), qr/^true\|/,
		"$label: with defer_copy there are just enough worker slots");
	$target->safe_psql('app', "CALL zdm.init('$small_dsn', defer_copy => true)");
	wait_until_ready($target);

	# another subscription's apply worker takes the slot the cutover needs
	same_schema_on_both($small, $target, 'CREATE TABLE other (id integer PRIMARY KEY)');
	$small->safe_psql('app', 'CREATE PUBLICATION other_pub FOR TABLE other');
	$target->safe_psql('app',
		"CREATE SUBSCRIPTION other_sub CONNECTION '$small_dsn' PUBLICATION other_pub WITH (copy_data = false)");
	ok( $target->poll_query_until('app', q{
SELECT count(*) = 2 FROM pg_stat_subscription WHERE pid IS NOT NULL}),
		"$label: another subscription's apply worker runs");

	my ($ret, $stdout, $stderr) =
	  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
	is(sqlstate_of($stderr), '53400', "$label: CALL zdm.cutover() fails with 53400")
	  or diag $stderr;
	like($stderr, qr/could not start the cutover worker/, "$label: ... saying why");
	like($stderr, qr/HINT:  .*max_worker_processes/, "$label: ... with a hint");
	is( $small->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: the source was not touched");
	my $id = 1;
	($ret, $stdout, $stderr) =
	  psql_verbose($small, 'app', "SET lock_timeout = '60s'; INSERT INTO t VALUES ($id, '$label')");
	is($ret, 0, "$label: the source takes writes");
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is still streaming");
	ok($target->poll_query_until('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		"$label: replication goes on");

	# With defer_copy the publication lists its tables, and zdm.status()
	# would rightly say that table "other", created on the source since,
	# is left out of the migration: it was only there for other_sub.
	$target->safe_psql('app', 'DROP SUBSCRIPTION other_sub');
	$small->safe_psql('app', 'DROP PUBLICATION other_pub');
	same_schema_on_both($small, $target, 'DROP TABLE other');
	wait_until_ready($target);
	($ret, $stdout, $stderr) =
	  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
	is($ret, 0, "$label: once the slot is free the cutover completes") or diag $stderr;
	is($target->safe_psql('app', "SELECT count(*) = 1 FROM t WHERE id = $id"),
		't', "$label: with the row written meanwhile");
	$bench->end_fault($fault);
}

$bench->summary;
done_testing();
