# test/t/061_parallel_copy_old_sources.pl: the parallel copy from sources
# older than PostgreSQL 14, which cannot scan TID ranges: large tables are
# split into ranges of a single-column integer primary key instead.
#
# For the oldest and the newest of those releases (10 and 13: the key-range
# path is the same code for all four, 12 adds generated columns) of the
# real servers test/run-tests.sh fetched (ZDM_SOURCE_INSTALLS; see
# test/lib/ZdmSources.pm), one source and one target each:
#
#   - zdm.check(copy_method => 'parallel') warns (copy_ranges, not
#     blocking) that only integer keys split a table;
#   - the plan: an int4 and an int8 key split into key ranges (the int8 one
#     spans the whole bigint range, from its minimum to its maximum), a
#     table with a text key and a keyless one copied in one piece each;
#   - pgbench writes to the source before, during and after the copy
#     (counters incremented, rows inserted above the keys the ranges were
#     planned from, rows deleted); once it stopped and the target caught
#     up, every row of every table is the same on both sides: nothing lost,
#     nothing applied twice;
#   - CALL zdm.abort() then leaves nothing on either side.
#
# The whole file takes about half a minute.

use strict;
use warnings;

use lib 'test/lib';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmSources;
use ZdmTest;

my @installs = grep { $_->{major} == 10 || $_->{major} == 13 } source_installs();
plan skip_all => 'ZDM_SOURCE_INSTALLS names no 10 or 13 server (test/run-tests.sh '
  . 'sets it to the servers of every source version it fetched)'
  unless @installs;

# The schema, the same on both sides; a stored generated column from 12.
sub schema_sql
{
	my ($major) = @_;
	return q{
CREATE TABLE big (id int PRIMARY KEY, v bigint NOT NULL, pad text);
CREATE INDEX big_v ON big (v);
CREATE TABLE wide (id bigint PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE textkey (k text PRIMARY KEY, v int NOT NULL);
CREATE TABLE keyless (id int NOT NULL, msg text);
ALTER TABLE keyless REPLICA IDENTITY FULL;
CREATE TABLE ins (id bigserial PRIMARY KEY, x int NOT NULL,
                  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE SEQUENCE big_more START 40001;
CREATE TABLE del (id int PRIMARY KEY, note text);
} . ($major >= 12 ? q{
CREATE TABLE gen (id int PRIMARY KEY, a int NOT NULL,
                  doubled int GENERATED ALWAYS AS (a * 2) STORED);
} : '');
}

sub tables
{
	my ($major) = @_;
	return ('big', 'wide', 'textkey', 'keyless', 'ins', 'del',
		($major >= 12 ? ('gen') : ()));
}

# Every row of a table as "count|md5", in an order that both releases agree on.
sub digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SELECT count(*) || '|' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text COLLATE \"C\"), '')) FROM $table t"
	);
}

# pgbench of the target's installation (the source installations have only
# their server) on the source for $secs seconds: each transaction adds 1 to
# a counter of big and of wide, inserts a row into big above the keys of
# the plan (from big_more) and one into ins, and deletes one of del.
sub start_writes
{
	my ($source, $target, $secs) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	open my $fh, '>', "$dir/writes.sql" or die;
	print $fh q{\set id random(1, 40000)
\set w random(-40000, 40000)
\set d random(1, 20000)
BEGIN;
UPDATE big SET v = v + 1 WHERE id = :id;
UPDATE wide SET v = v + 1 WHERE id = :w * 200000000000000;
INSERT INTO big (id, v) VALUES (nextval('big_more'), -1);
INSERT INTO ins (x) VALUES (:id);
DELETE FROM del WHERE id = :d;
COMMIT;
};
	close $fh;
	my $h = IPC::Run::start(
		[
			$target->installed_command('pgbench'), '-n', '-c', '2', '-T',
			$secs, '-R', '150', '-f', "$dir/writes.sql", '-d',
			$source->connstr('app')
		],
		'>', "$dir/out", '2>', "$dir/err");
	return { harness => $h, dir => $dir };
}

sub copy_from
{
	my ($install, $source, $target) = @_;
	my $major = $install->{major};
	my $v = "PG$install->{version}";
	my $dsn = source_dsn($source);

	same_schema_on_both($source, $target, schema_sql($major));
	# wide: keys from the minimum to the maximum of bigint, a counter on
	# each; the int8 range of the plan must not overflow
	$source->safe_psql('app', q{
INSERT INTO big SELECT g, 0, repeat('x', 200) FROM generate_series(1, 40000) g;
INSERT INTO wide SELECT g * 200000000000000, 0 FROM generate_series(-40000, 40000) g;
INSERT INTO wide VALUES (-9223372036854775808, 0), (9223372036854775807, 0);
INSERT INTO textkey SELECT 'k' || g, g FROM generate_series(1, 20000) g;
INSERT INTO keyless SELECT g % 1000, repeat('m', 50) FROM generate_series(1, 20000) g;
INSERT INTO del SELECT g, 'n' || g FROM generate_series(1, 20000) g;
VACUUM ANALYZE;
});
	$source->safe_psql('app',
		'INSERT INTO gen (id, a) SELECT g, g FROM generate_series(1, 5000) g')
	  if $major >= 12;

	is( $target->safe_psql('app',
			"SELECT ok::text || ' ' || blocking::text FROM zdm.check('$dsn', copy_method => 'parallel') WHERE name = 'copy_ranges'"),
		'false false',
		"$v: zdm.check warns that only integer keys split a table");
	is( $target->safe_psql('app',
			"SELECT string_agg(name, ', ') FROM zdm.check('$dsn', copy_method => 'parallel') WHERE blocking AND NOT ok"),
		'', "$v: every blocking check is ok");

	my $writes = start_writes($source, $target, 10);
	ok( $source->poll_query_until('app', 'SELECT count(*) > 0 FROM ins'),
		"$v: the writes have begun");

	my ($ret, $out, $err) = psql_verbose($target, 'app',
		"SET zdm.copy_range_size = '1MB'; SET zdm.copy_index_set_aside_size = 0;\n"
		  . "CALL zdm.init('$dsn', copy_method => 'parallel', copy_jobs => 2);");
	is($ret, 0, "$v: init with the parallel copy succeeds") or diag $err;

	my $plan = $target->safe_psql('app', q{
SELECT relid || ' ' || count(*) FILTER (WHERE kind = 'data') || ' ' ||
       count(*) FILTER (WHERE source_query ~ ' WHERE ')
FROM zdm.copy_task WHERE kind = 'data' GROUP BY relid ORDER BY relid::text});
	my %parts = map { my ($t, $n, $w) = split / /; ($t => [ $n, $w ]) } split /\n/, $plan;
	cmp_ok($parts{big}[0], '>', 1, "$v: big (int4 key) is split into $parts{big}[0] ranges");
	cmp_ok($parts{wide}[0], '>', 1, "$v: wide (int8 key) is split into $parts{wide}[0] ranges");
	is("$parts{textkey}[0] $parts{keyless}[0]", '1 1',
		"$v: the table with a text key and the keyless one are copied in one piece");
	like( $target->safe_psql('app',
			"SELECT source_query FROM zdm.copy_task WHERE relid = 'big'::regclass AND part = 2"),
		qr/WHERE id >= \d+ AND id < \d+\)/, "$v: a middle range of big is a key range");
	my ($first, $last) = split /\n/, $target->safe_psql('app', q{
SELECT source_query FROM zdm.copy_task
WHERE relid = 'wide'::regclass AND kind = 'data' AND (part = 1 OR part = parts)
ORDER BY part});
	like($first, qr/ WHERE id < -?\d+\)/, "$v: the first range of wide has no lower bound");
	like($last, qr/ WHERE id >= -?\d+\)/, "$v: the last range of wide has no upper bound");
	($ret, $out, $err) = psql_verbose($target, 'app', "CALL zdm.wait_ready('3 min', '1 s')");
	is($ret, 0, "$v: wait_ready returns") or diag $err;
	is( $target->safe_psql('app',
			"SELECT string_agg(DISTINCT state, ',') FROM zdm.copy_task"),
		'done', "$v: every copy task is done");

	$writes->{harness}->finish;
	like(slurp_file("$writes->{dir}/out"),
		qr/number of transactions actually processed: [1-9]/,
		"$v: pgbench wrote to the source") or diag slurp_file("$writes->{dir}/err");
	my ($started, $finished) = split /\|/, $target->safe_psql('app',
		'SELECT started_at, finished_at FROM zdm.copy_run');
	cmp_ok( $source->safe_psql('app',
			"SELECT count(*) FROM ins WHERE at BETWEEN '$started' AND '$finished'"),
		'>', 0, "$v: pgbench inserted rows while the copy ran");
	cmp_ok( $source->safe_psql('app', 'SELECT count(*) FROM big WHERE id > 40000'),
		'>', 0, "$v: rows were inserted above the planned keys");
	cmp_ok( $source->safe_psql('app', 'SELECT sum(v) FROM wide'),
		'>', 0, "$v: counters of wide moved on the source");

	# the target caught up with everything pgbench committed
	$source->safe_psql('app', 'INSERT INTO del VALUES (-1, \'last\')');
	ok( $target->poll_query_until('app', 'SELECT count(*) FROM del WHERE id = -1', '1'),
		"$v: the last write reached the target");
	foreach my $table (tables($major))
	{
		is(digest($target, $table), digest($source, $table),
			"$v: $table has the same rows on both sides");
	}

	($ret, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is($ret, 0, "$v: abort succeeds") or diag $err;
	is(migration_leftovers($target, $source), '', "$v: nothing left on either side");
	return;
}

foreach my $install (@installs)
{
	with_source_and_target($install, "max_connections = 30\n",
		sub { copy_from($install, @_) });
}

done_testing();
