# test/t/060_parallel_copy.pl: zdm.init(copy_method => 'parallel').
#
# 1. Writes go on on the source (pgbench: updates that add to a counter,
#    inserts, deletes) before, during and after the copy.  The table "big"
#    is split into TID ranges, its secondary index and one of a table with a
#    quoted name are set aside and rebuilt; CALL zdm.wait_ready() prints
#    progress and returns when ready.  Once the writes stop and the target
#    has caught up, every row of every table is the same on both sides:
#    nothing lost, nothing applied twice (a counter applied twice or missed
#    would differ).
# 2. A copy that fails (a target CHECK constraint rejects a source row) is
#    reported by zdm.status() and zdm.wait_ready(); zdm.abort() leaves
#    nothing on either side: no slot, publication, subscription, state, the
#    tables empty again, the index set aside rebuilt.
# 3. zdm.abort() while the copy workers are copying: they are stopped, and
#    again nothing is left.
# 4. The target restarts in the middle of the copy: zdm.status() and
#    zdm.wait_ready() say it was interrupted; zdm.abort() leaves nothing.
# 5. CALL zdm.init cancelled while the source creates the slot (waiting for
#    a write transaction): nothing is left on either side.
# 6. A session here has read a table in a transaction still open: init
#    cannot set its indexes aside, gives up after lock_timeout with 55P03
#    naming the table, and leaves nothing (the indexes all there).
# There is no resume: after a failure or an interruption, abort and init.

use strict;
use warnings;

use lib 'test/lib';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target');
my $dsn = source_dsn($source);

my $schema = q{
CREATE TABLE big (id int PRIMARY KEY, v bigint NOT NULL, pad text);
CREATE INDEX big_v ON big (v);
CREATE TABLE ins (id bigserial PRIMARY KEY, x int NOT NULL, at timestamptz DEFAULT now());
CREATE TABLE del (id int PRIMARY KEY, note text);
CREATE TABLE logtab (id int NOT NULL, msg text);
ALTER TABLE logtab REPLICA IDENTITY FULL;
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed ""Name""" (id int PRIMARY KEY, "Val ue" text);
CREATE INDEX "Odd ""idx""" ON "Odd Schema"."Mixed ""Name""" ("Val ue");
};
same_schema_on_both($source, $target, $schema);
# a column of another type here: copied as text, the others in binary
$source->safe_psql('app', 'CREATE TABLE conv (id int PRIMARY KEY, n int)');
$target->safe_psql('app', 'CREATE TABLE conv (id int PRIMARY KEY, n bigint)');
$source->safe_psql('app', q{
INSERT INTO big SELECT g, 0, repeat('x', 200) FROM generate_series(1, 60000) g;
INSERT INTO del SELECT g, 'n' || g FROM generate_series(1, 20000) g;
INSERT INTO conv SELECT g, g * 7 FROM generate_series(1, 3000) g;
INSERT INTO logtab SELECT g, repeat('m', 300) || g FROM generate_series(1, 5000) g;
INSERT INTO "Odd Schema"."Mixed ""Name""" SELECT g, 'v' || g FROM generate_series(1, 1000) g;
VACUUM ANALYZE;
});

# Every row of a table, as "count|md5" in key order.
sub digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM $table t");
}
my @tables = ('big', 'ins', 'del', 'conv', 'logtab', q{"Odd Schema"."Mixed ""Name"""});

# How many of the seven indexes and primary keys that the copy sets aside
# are on the target.
sub indexes_present
{
	return $target->safe_psql('app', q{
SELECT count(*) FROM pg_class
WHERE relname IN ('big_v', 'Odd "idx"', 'big_pkey', 'del_pkey', 'ins_pkey', 'conv_pkey', 'Mixed "Name"_pkey')
  AND relkind = 'i'});
}

# Copy tasks and copy workers left on the target, as one count.
sub copy_leftovers
{
	return $target->safe_psql('app', q{
SELECT (SELECT count(*) FROM zdm.copy_task)
     + (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_zdm copy')});
}

# A session here that runs $sql (which takes $mode on $relation) in a
# transaction and then sleeps in it; returned once the lock is granted.
sub hold_lock
{
	my ($sql, $relation, $mode, $label) = @_;
	my $bg = background_sql($target, 'app',
		"BEGIN; $sql; SELECT pg_sleep(600); COMMIT;");
	ok($target->poll_query_until('app',
			"SELECT count(*) > 0 FROM pg_locks WHERE relation = '$relation'::regclass AND mode = '$mode' AND granted"),
		$label);
	return $bg;
}

# End the sleeping session of $node (hold_lock's, or one like it) and
# collect it.
sub release
{
	my ($node, $bg) = @_;
	$node->safe_psql('app',
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()");
	return finish_background_sql($bg);
}

# pgbench on the source for $secs seconds: each transaction adds 1 to a
# counter of big, inserts a row and deletes one.
sub start_writes
{
	my ($secs) = @_;
	my $script = PostgreSQL::Test::Utils::tempdir() . '/writes.sql';
	open my $fh, '>', $script or die;
	print $fh q{\set id random(1, 60000)
\set d random(1, 20000)
BEGIN;
UPDATE big SET v = v + 1 WHERE id = :id;
INSERT INTO ins (x) VALUES (:id);
DELETE FROM del WHERE id = :d;
COMMIT;
};
	close $fh;
	# output to files: nobody pumps the harness while psql calls run
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $h = IPC::Run::start(
		[
			$source->installed_command('pgbench'), '-n', '-c', '2', '-T',
			$secs, '-R', '200', '-f', $script, '-d', $source->connstr('app')
		],
		'>', "$dir/out", '2>', "$dir/err");
	return { harness => $h, dir => $dir };
}

# --- 1. the happy path under writes ----------------------------------------
my $writes = start_writes(12);
sleep 2;

my ($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET zdm.copy_range_size = '2MB'; SET zdm.copy_index_set_aside_size = 0;\n"
	  . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
is($ret, 0, 'init with the parallel copy succeeds') or diag $stderr;
like($stderr, qr/parallel initial copy runs in 2 background workers/,
	'init says the copy runs in the background');

cmp_ok($target->safe_psql('app',
		"SELECT count(*) FROM zdm.copy_task WHERE kind = 'data' AND relid = 'big'::regclass"),
	'>', 1, 'big is split into ranges');
is($target->safe_psql('app',
		"SELECT string_agg(index_name, ',' ORDER BY index_name) FROM zdm.copy_task WHERE kind = 'index'"),
	q{"Odd Schema"."Mixed ""Name""_pkey","Odd Schema"."Odd ""idx""",public.big_pkey,public.big_v,public.conv_pkey,public.del_pkey,public.ins_pkey},
	'secondary indexes and primary keys are set aside');
# (the workers may have rebuilt some already: an index is rebuilt and its
# task marked done in one transaction, and only once its table's data is in)
is($target->safe_psql('app', q{
SELECT count(*) FROM zdm.copy_task t
WHERE t.kind = 'index'
  AND (EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE quote_ident(n.nspname) || '.' || quote_ident(c.relname) = t.index_name)
       <> (t.state = 'done')
       OR (t.state = 'done' AND EXISTS (SELECT 1 FROM zdm.copy_task d
             WHERE d.kind = 'data' AND d.relid = t.relid AND d.state <> 'done')))}),
	'0', 'an index set aside is there exactly when rebuilt, and only after its table\'s data');
# the tables with the most index building to do after their data are
# copied first: big (the largest, two indexes set aside) first, logtab
# (the second largest, but nothing to rebuild) last
is($source->safe_psql('app', q{
SELECT string_agg(relname, ',' ORDER BY pg_relation_size(oid) DESC)
FROM pg_class WHERE relname IN ('big', 'ins', 'del', 'conv', 'logtab', 'Mixed "Name"')}) =~ s/^(\w+,\w+),.*/$1/r,
	'big,logtab', 'big and logtab are the largest tables on the source');
is($target->safe_psql('app', q{
SELECT (SELECT relid FROM zdm.copy_task WHERE kind = 'data' ORDER BY id LIMIT 1)::text || ' ... ' ||
       (SELECT relid FROM zdm.copy_task WHERE kind = 'data' ORDER BY id DESC LIMIT 1)::text}),
	'big ... logtab', 'big is copied first, logtab last');
like($target->safe_psql('app',
		"SELECT source_query FROM zdm.copy_task WHERE relid = 'big'::regclass AND part = 2"),
	qr/ctid >= '\(\d+,0\)'::tid AND ctid < '\(\d+,0\)'::tid/,
	'a middle range of big is a TID range');
is($target->safe_psql('app',
		"SELECT string_agg(DISTINCT relid::text || ' ' || copy_format, ',') FROM zdm.copy_task WHERE relid IN ('big'::regclass, 'conv'::regclass)"),
	'big binary,conv text',
	'binary COPY where the types match, text where they differ');

($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"CALL zdm.wait_ready('3 min', '1 s');");
is($ret, 0, 'wait_ready returns') or diag $stderr;
like($stderr, qr/NOTICE:  (?:\w+: )?ready for cutover/, 'wait_ready says ready');

is($target->safe_psql('app',
		"SELECT state || ' ' || count(*) FROM zdm.copy_task GROUP BY state"),
	'done ' . $target->safe_psql('app', 'SELECT count(*) FROM zdm.copy_task'),
	'every copy task is done');
like(status_of($target, 'copy', 'parallel_copy'), qr/^done in .*\|true$/,
	'status reports the copy done');
is($target->safe_psql('app', q{
SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname IN ('big_v', 'Odd "idx"') AND i.indisvalid}), '2',
	'both indexes set aside are rebuilt and valid');
is($target->safe_psql('app', q{
SELECT count(*) FROM pg_constraint k JOIN pg_index i ON i.indexrelid = k.conindid
WHERE k.contype = 'p' AND i.indisvalid
  AND k.conrelid IN ('big'::regclass, 'ins'::regclass, 'del'::regclass, 'conv'::regclass,
                     '"Odd Schema"."Mixed ""Name"""'::regclass)}), '5',
	'every primary key is back');
is($target->safe_psql('app',
		"SELECT string_agg(DISTINCT state, ',') FROM zdm.tables()"),
	'ready', 'zdm.tables() shows every table ready');

# let the writes end, then compare every row once the target caught up
$writes->{harness}->finish;
like(slurp_file("$writes->{dir}/out"),
	qr/number of transactions actually processed: [1-9]/,
	'pgbench wrote to the source all through the copy')
  or diag slurp_file("$writes->{dir}/err");
cmp_ok($source->safe_psql('app', 'SELECT sum(v) FROM big'), '>', 0,
	'counters moved on the source');
foreach my $table (@tables)
{
	my $want = digest($source, $table);
	ok($target->poll_query_until('app',
			"SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM $table t",
			$want),
		"$table: every row the same on both sides");
}
ok(grep({ /copy_done/ } split /\n/, $target->safe_psql('app',
			'SELECT event FROM zdm.event_log')),
	'the event log has copy_done');

$target->safe_psql('app', 'CALL zdm.abort()');
is(migration_leftovers($target, $source), '', 'abort after the copy leaves nothing');
is($target->safe_psql('app', 'SELECT count(*) FROM zdm.copy_task'), '0',
	'abort forgets the copy');

# back to empty tables for the next rounds
$target->safe_psql('app',
	'TRUNCATE big, ins, del, conv, logtab, "Odd Schema"."Mixed ""Name"""');
$source->safe_psql('app', 'TRUNCATE ins');

# --- 2. a copy that fails --------------------------------------------------
# A trigger here, enabled ALWAYS, that rejects some of the source's rows:
# zdm.check only warns about it (target_triggers), where a CHECK constraint
# the source lacks would be refused before init (target_constraints).
$target->safe_psql('app', q{
CREATE FUNCTION del_small() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'del_small: row % is too large for this target', NEW.id; END $$;
CREATE TRIGGER del_small BEFORE INSERT ON del FOR EACH ROW
  WHEN (NEW.id >= 15000) EXECUTE FUNCTION del_small();
ALTER TABLE del ENABLE ALWAYS TRIGGER del_small;
});
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET zdm.copy_index_set_aside_size = 0;\n" . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
is($ret, 0, 'init starts a copy that will fail') or diag $stderr;
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"CALL zdm.wait_ready('2 min', '1 s');");
isnt($ret, 0, 'wait_ready fails');
like($stderr, qr/ERROR:  55000: the initial copy failed or was interrupted/, 'with the copy failure');
like($stderr, qr/del_small/, 'naming the constraint');
like(status_of($target, 'copy', 'parallel_copy'), qr/^failed after .*del_small.*\|false$/,
	'status says the copy failed and why');
($ret, $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.abort()');
is($ret, 0, 'abort after the failure') or diag $stderr;
is(migration_leftovers($target, $source), '', 'nothing left on either side');
is($target->safe_psql('app',
		'SELECT (SELECT count(*) FROM big) + (SELECT count(*) FROM del) + (SELECT count(*) FROM ins)'),
	'0', 'the tables are empty again');
is(indexes_present(),
	'7', 'the indexes and primary keys set aside are back');
$target->safe_psql('app', 'DROP TRIGGER del_small ON del; DROP FUNCTION del_small()');

# --- 3. abort in the middle of the copy ------------------------------------
# A session here holds a lock on logtab (which has no index to set aside)
# that lets readers (init) through but not writers: the worker copying
# logtab waits for it.
my $locker = hold_lock('LOCK logtab IN SHARE MODE', 'logtab', 'ShareLock',
	'a session locks logtab here');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET zdm.copy_index_set_aside_size = 0;\n" . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
is($ret, 0, 'init starts the copy') or diag $stderr;
ok($target->poll_query_until('app',
		"SELECT count(*) > 0 FROM zdm.copy_task WHERE state = 'running' AND relid = 'logtab'::regclass"),
	'a worker is copying logtab');
like(status_of($target, 'copy', 'parallel_copy'), qr/^copying: .*ETA .*\|false$/,
	'status shows the copy in progress with an ETA');
# abort stops the workers, then waits for the lock to empty logtab
my $abort = background_sql($target, 'app', 'CALL zdm.abort()');
ok($target->poll_query_until('app',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_zdm copy'}),
	'abort stops the copy workers');
release($target, $locker);
($ret, $stdout, $stderr) = finish_background_sql($abort);
is($ret, 0, 'abort during the copy') or diag $stderr;
is($target->safe_psql('app',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_zdm copy'}),
	'0', 'no copy worker is left');
is(migration_leftovers($target, $source), '', 'nothing left on either side');
is($target->safe_psql('app',
		'SELECT (SELECT count(*) FROM big) + (SELECT count(*) FROM del) + (SELECT count(*) FROM logtab) + (SELECT count(*) FROM "Odd Schema"."Mixed ""Name""")'),
	'0', 'the tables are empty again');
is(indexes_present(),
	'7', 'the indexes and primary keys set aside are back');

# --- 4. a restart of the target in the middle of the copy ------------------
$locker = hold_lock('LOCK logtab IN SHARE MODE', 'logtab', 'ShareLock',
	'a session locks logtab here again');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET zdm.copy_index_set_aside_size = 0;\n"
	  . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
is($ret, 0, 'init starts the copy once more') or diag $stderr;
ok($target->poll_query_until('app',
		"SELECT count(*) > 0 FROM zdm.copy_task WHERE state = 'running' AND relid = 'logtab'::regclass"),
	'a worker is copying logtab again');
$target->stop('immediate');
finish_background_sql($locker);
$target->start;
like(status_of($target, 'copy', 'parallel_copy'), qr/^interrupted: .*\|false$/,
	'after the restart, status says the copy was interrupted');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"CALL zdm.wait_ready('1 min', '1 s');");
like($stderr, qr/ERROR:  55000: the initial copy failed or was interrupted/,
	'wait_ready stops at once on the interrupted copy');
($ret, $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.abort()');
is($ret, 0, 'abort after the restart') or diag $stderr;
is(migration_leftovers($target, $source), '', 'nothing left on either side after the restart');
is($target->safe_psql('app',
		'SELECT (SELECT count(*) FROM big) + (SELECT count(*) FROM del) + (SELECT count(*) FROM logtab) + (SELECT count(*) FROM conv)'),
	'0', 'the tables are empty again after the restart');
is(indexes_present(),
	'7', 'the indexes and primary keys set aside are back after the restart');

# --- 5. init cancelled while the source creates the slot --------------------
# A write transaction open on the source: creating the slot waits for it.
my $holder = background_sql($source, 'app',
	'BEGIN; INSERT INTO ins (x) VALUES (-1); SELECT pg_sleep(600); COMMIT;');
ok($source->poll_query_until('app',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(600)%'"),
	'a transaction holds an xid on the source');
my $init = background_sql($target, 'app',
	"CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
ok($source->poll_query_until('app',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'CREATE_REPLICATION_SLOT%' AND state = 'active'"),
	'init waits for the slot');
$target->safe_psql('app',
	"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL zdm.init%' AND pid <> pg_backend_pid()");
($ret, $stdout, $stderr) = finish_background_sql($init);
like($stderr, qr/ERROR:  57014/, 'init is cancelled');
release($source, $holder);
is(migration_leftovers($target, $source), '', 'a cancelled init leaves nothing on either side');
is(copy_leftovers(),
	'0', 'no copy task and no copy worker');

# --- 6. a target table in use: init says which, and leaves nothing ---------
my $reader = hold_lock('SELECT count(*) FROM del', 'del', 'AccessShareLock',
	'a session here has read del in an open transaction');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET zdm.copy_index_set_aside_size = 0; SET lock_timeout = '1s';\n"
	  . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
is(sqlstate_of($stderr), '55P03', 'init fails with 55P03');
like($stderr, qr/ERROR:  55P03: table public\.del is locked by another session on this target/,
	'naming the table');
like($stderr, qr/HINT:  .*copy_method => 'native'/, 'with a hint');
release($target, $reader);
is(migration_leftovers($target, $source), '', 'nothing left on either side after the lock timeout');
is(copy_leftovers(),
	'0', 'no copy task and no copy worker after the lock timeout');
is(indexes_present(),
	'7', 'no index was set aside');

done_testing();
