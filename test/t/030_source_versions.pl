# test/t/030_source_versions.pl: a migration from a source of every major
# version (10 to 18) to the target of this build, under write load.
#
# The sources are real servers of each version (test/lib/ZdmSources.pm;
# test/run-tests.sh fetches them and sets ZDM_SOURCE_INSTALLS); the target
# is whatever installation the run's pg_config names, so this file runs
# unchanged against any target version.  One source at a time, each with a
# target of its own, both stopped after use.  For each source version:
#
#   - the same schema on both sides: a serial and an identity column, a
#     mixed-case quoted table and column, a keyless table with REPLICA
#     IDENTITY FULL, a partitioned table (10 has no primary key on the
#     parent: keys on the partitions), a table that is truncated while
#     streaming, and from 12 a stored generated column;
#   - zdm.check: every blocking check ok, server_version ok;
#   - two writers (test/lib/ZdmLoad.pm) insert from before init until the
#     source refuses them after the cutover, so the initial copy and the
#     streaming run under writes; zdm.status() (retained_wal and the overall
#     row) and zdm.tables() (every table ready) while streaming;
#   - CALL zdm.cutover(); then every acknowledged write is on the target,
#     every table has the same count and checksum on both sides (and
#     zdm.verify() says so, across the two releases' text forms), every
#     sequence is ahead on the target and usable there, the source refuses
#     INSERT with 25006, slot and publication are gone from the source;
#   - TRUNCATE while streaming: replicated from 11; a 10 source does not
#     send it (zdm.check warns, the README's version matrix says so), so
#     the target keeps the rows;
#   - sources that lack features pg_zdm uses elsewhere: an init cancelled
#     and one terminated while the slot is being created (12, 13: no
#     pg_terminate_backend with timeout) and CALL zdm.abort() after init
#     (10, 12) leave no publication and no slot, and the source writable.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmLoad;
use ZdmSources;
use ZdmTest;

my @installs = source_installs();
plan skip_all => 'ZDM_SOURCE_INSTALLS is not set (test/run-tests.sh sets it '
  . 'to the servers of every source version it fetched)'
  unless @installs;

# Which versions also run the abort path and the interrupted inits.
my %ABORT_ON = map { $_ => 1 } (10, 12);
my %INTERRUPT_ON = map { $_ => 1 } (12, 13);

# Tables the writers insert into (client, seq), as SQL names them.
my @LOAD_TABLES = ('t_serial', 't_ident', '"MiXeD_Case"', 't_keyless', 't_part');

# The schema, the same on both sides; stored generated columns from 12.
sub schema_sql
{
	my ($major) = @_;
	my $sql = ZdmLoad::tables_sql() . q{
CREATE TABLE t_part (client integer NOT NULL, seq integer NOT NULL)
    PARTITION BY RANGE (client);
CREATE TABLE t_part_low PARTITION OF t_part FOR VALUES FROM (MINVALUE) TO (2);
CREATE TABLE t_part_high PARTITION OF t_part FOR VALUES FROM (2) TO (MAXVALUE);
ALTER TABLE t_part_low ADD PRIMARY KEY (client, seq);
ALTER TABLE t_part_high ADD PRIMARY KEY (client, seq);
CREATE TABLE t_trunc (id integer PRIMARY KEY);
};
	$sql .= q{
CREATE TABLE t_gen (
    id integer PRIMARY KEY,
    a integer NOT NULL,
    doubled integer GENERATED ALWAYS AS (a * 2) STORED
);
} if $major >= 12;
	return $sql;
}

# The tables compared after the cutover, and the ones zdm.tables() lists
# (leaf partitions, not their parent).
sub compared_tables
{
	my ($major) = @_;
	return (@LOAD_TABLES, 't_trunc', ($major >= 12 ? ('t_gen') : ()));
}

sub published_tables
{
	my ($major) = @_;
	return sort('t_serial', 't_ident', 'MiXeD_Case', 't_keyless',
		't_part_high', 't_part_low', 't_trunc', ($major >= 12 ? ('t_gen') : ()));
}

# "count|md5 of every row" of a table.
sub digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SELECT count(*) || '|' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM $table t"
	);
}

# A fresh database app on the target with the extension and the schema.
sub fresh_target_database
{
	my ($target, $major) = @_;
	$target->safe_psql('postgres', 'DROP DATABASE IF EXISTS app');
	$target->safe_psql('postgres', 'CREATE DATABASE app');
	$target->safe_psql('app', 'CREATE EXTENSION pg_zdm;' . schema_sql($major));
	return;
}

# Nothing of a migration left: no session of pg_zdm on the source (so no
# slot creation still under way), no slot or publication there, no
# subscription or migration row on the target; and the source writable.
sub nothing_left
{
	my ($v, $case, $source, $target) = @_;
	ok( $source->poll_query_until('app',
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_zdm'",
			'0'),
		"$v $case: no pg_zdm session left on the source");
	is(migration_leftovers($target, $source), '',
		"$v $case: no slot, publication, subscription or migration row");
	my ($ret, $out, $err) = psql_verbose($source, 'app',
		"INSERT INTO t_serial (client, seq) VALUES (-9, nextval('t_serial_id_seq')::int)");
	is($ret, 0, "$v $case: the source is writable") or diag $err;
	return;
}

# An init stuck while the source creates the slot (an open transaction
# holding an xid makes slot creation wait for it), ended by $function on
# the target: the call fails promptly and leaves nothing behind.
sub interrupted_init
{
	my ($v, $function, $source, $target) = @_;
	my $dsn = source_dsn($source);
	my $blocker = $source->background_psql('app');
	$blocker->query_safe('BEGIN; INSERT INTO t_trunc VALUES (-1);');

	my $bg = background_sql($target, 'app', "CALL zdm.init('$dsn')");
	ok( $source->poll_query_until('app', q{
SELECT count(*) FROM pg_stat_activity
 WHERE query LIKE '%pg_create_logical_replication_slot%'
   AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'}, '1'),
		"$v $function: slot creation waits for the open transaction");
	my $start = time;
	is( $target->safe_psql('app', qq{
SELECT $function(pid) FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()}),
		't', "$v $function signalled zdm.init");
	my ($ret, $stdout, $stderr) = finish_background_sql($bg);
	my $secs = time - $start;
	$blocker->query_safe('ROLLBACK');
	$blocker->quit;

	is(sqlstate_of($stderr),
		$function eq 'pg_cancel_backend' ? '57014' : '57P01',
		"$v $function during slot creation: its SQLSTATE");
	unlike($stderr, qr/WARNING/,
		"$v $function during slot creation: no warning about leftovers")
	  or diag $stderr;
	cmp_ok($secs, '<', 30,
		sprintf('%s %s took effect promptly (%.1f s)', $v, $function, $secs));
	nothing_left($v, "after $function during init", $source, $target);
	return;
}

# init, then CALL zdm.abort(): nothing left, source writable.
sub init_then_abort
{
	my ($v, $source, $target) = @_;
	init_migration($source, $target);
	$source->safe_psql('app',
		"INSERT INTO t_serial (client, seq) VALUES (-8, 1)");
	ok( $target->poll_query_until('app',
			'SELECT count(*) FROM t_serial WHERE client = -8', '1'),
		"$v abort path: rows stream before the abort");
	my ($ret, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is($ret, 0, "$v abort succeeds") or diag $err;
	unlike($err, qr/WARNING/, "$v abort: no warning about leftovers")
	  or diag $err;
	nothing_left($v, 'after abort', $source, $target);
	return;
}

# The whole migration from one source version; see the file header.
sub migrate_from
{
	my ($install, $source, $target) = @_;
	my $major = $install->{major};
	my $v = "PG$install->{version}";
	my $dsn = source_dsn($source);

	is($source->safe_psql('app', 'SHOW server_version'),
		$install->{version}, "$v: the source runs $install->{version}");
	$source->safe_psql('app', schema_sql($major));
	fresh_target_database($target, $major);

	# --- check ---------------------------------------------------------------
	is( $target->safe_psql('app',
			"SELECT string_agg(name || ': ' || detail, '; ') FROM zdm.check('$dsn') WHERE blocking AND NOT ok"),
		'', "$v: every blocking check is ok");
	is( $target->safe_psql('app',
			"SELECT ok FROM zdm.check('$dsn') WHERE name = 'server_version'"),
		't', "$v: the server_version check is ok");
	is( $target->safe_psql('app',
			"SELECT ok::text || ' ' || blocking::text FROM zdm.check('$dsn') WHERE name = 'truncate_replication'"),
		$major < 11 ? 'false false' : '',
		$major < 11
		? "$v: zdm.check warns (not blocking) that TRUNCATE is not replicated"
		: "$v: no truncate_replication warning");

	# --- failure paths first, while the source is still writable -------------
	if ($INTERRUPT_ON{$major})
	{
		interrupted_init($v, $_, $source, $target)
		  foreach ('pg_cancel_backend', 'pg_terminate_backend');
	}
	if ($ABORT_ON{$major})
	{
		init_then_abort($v, $source, $target);
		# the abort left the copied rows on the target
		fresh_target_database($target, $major);
	}

	# --- rows for the initial copy, writers, init ----------------------------
	$source->safe_psql('app', q{
INSERT INTO t_serial (client, seq, note) SELECT 0, i, 'row ' || i FROM generate_series(1, 2000) i;
INSERT INTO t_ident (client, seq) SELECT 0, i FROM generate_series(1, 2000) i;
INSERT INTO "MiXeD_Case" (client, seq) SELECT 0, i FROM generate_series(1, 2000) i;
INSERT INTO t_keyless (client, seq, note) SELECT 0, i % 100, 'dup' FROM generate_series(1, 500) i;
INSERT INTO t_part (client, seq) SELECT 0, i FROM generate_series(1, 1000) i;
INSERT INTO t_part (client, seq) SELECT 5, i FROM generate_series(1, 1000) i;
INSERT INTO t_trunc SELECT generate_series(1, 5);
});
	$source->safe_psql('app',
		'INSERT INTO t_gen (id, a) SELECT i, i FROM generate_series(1, 100) i')
	  if $major >= 12;

	my $load = ZdmLoad->new($source, 'app', tables => \@LOAD_TABLES);
	$load->start_writer('session', $_) foreach (1, 2);
	my $acked = sub {
		return map { "$_->{table} $_->{id} $_->{seq}" }
		  grep { $_->{kind} eq 'ok' } $load->records;
	};
	ok($load->wait_for(sub { $acked->() >= 20 }),
		"$v: the writers have commits acknowledged before init");

	my ($ret, $out, $err) =
	  psql_verbose($target, 'app', "CALL zdm.init('$dsn')");
	is($ret, 0, "$v: init succeeds") or diag $err;
	wait_until_ready($target);

	is( $target->safe_psql('app',
			"SELECT string_agg(table_name || ' ' || state, ', ' ORDER BY table_name COLLATE \"C\") FROM zdm.tables()"),
		join(', ', map { "$_ ready" } sort { $a cmp $b } published_tables($major)),
		"$v: zdm.tables() lists every table (leaf partitions) as ready");
	like(status_of($target, 'source', 'retained_wal'),
		qr/^.+\|\d+\|true$/, "$v: zdm.status() has a retained_wal row with bytes, ok");
	like(status_of($target, 'source', 'slot_lag'),
		qr/^.+\|\d+\|true$/, "$v: zdm.status() has a slot_lag row with bytes, ok");

	# --- changes while streaming: TRUNCATE, an UPDATE of a generated column --
	$source->safe_psql('app', 'TRUNCATE t_trunc');
	$source->safe_psql('app', 'UPDATE t_gen SET a = a + 1000 WHERE id <= 10')
	  if $major >= 12;
	$source->safe_psql('app',
		"INSERT INTO t_serial (client, seq) VALUES (-7, 1)");
	ok( $target->poll_query_until('app',
			'SELECT count(*) FROM t_serial WHERE client = -7', '1'),
		"$v: a row written after the TRUNCATE reached the target");
	if ($major >= 11)
	{
		is($target->safe_psql('app', 'SELECT count(*) FROM t_trunc'),
			'0', "$v: TRUNCATE is replicated");
	}
	else
	{
		is($target->safe_psql('app', 'SELECT count(*) FROM t_trunc'),
			'5', "$v: TRUNCATE is not replicated from 10 (documented): the target keeps its rows");
	}
	is( $target->safe_psql('app',
			'SELECT count(*) FROM t_gen WHERE doubled = 2 * a AND a > 1000'),
		'10', "$v: updated rows have their generated column computed on the target")
	  if $major >= 12;
	my $before = scalar($acked->());
	ok($load->wait_for(sub { $acked->() >= $before + 20 }),
		"$v: the writers go on while streaming");

	# --- cutover ---------------------------------------------------------------
	($ret, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.cutover()');
	is($ret, 0, "$v: cutover succeeds under write load") or diag $err;
	like($err, qr/cutover complete/, "$v: the cutover says it is complete");

	ok( $ret == 0 && $load->wait_for(
			sub {
				!grep {
					my $id = $_;
					!grep { $_->{kind} eq 'err' && $_->{sqlstate} eq '25006' }
					  $load->records($id)
				} (1, 2);
			}),
		"$v: every writer is refused with SQLSTATE 25006 after the cutover");
	is($load->stop, 0, "$v: the writers stop when asked");

	# --- what must hold after it -----------------------------------------------
	my %on_target = map { $_ => 1 } split /\n/,
	  $target->safe_psql('app', join(' UNION ALL ',
		map { "SELECT '$_ ' || client || ' ' || seq FROM $_ WHERE client > 0" }
		  @LOAD_TABLES));
	my @acked = $acked->();
	my @missing = grep { !$on_target{$_} } @acked;
	is(scalar(@missing), 0,
		"$v: all " . scalar(@acked) . ' acknowledged writes are on the target')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);

	foreach my $table (compared_tables($major))
	{
		if ($table eq 't_trunc' && $major < 11)
		{
			is(digest($source, $table) . ' / ' . digest($target, $table),
				digest($source, "(SELECT 1 AS id WHERE false)") . ' / '
				  . digest($target, "(SELECT generate_series(1, 5) AS id)"),
				"$v: $table is empty on the source and keeps its 5 rows on the target (TRUNCATE not replicated from 10)");
			next;
		}
		is(digest($target, $table), digest($source, $table),
			"$v: $table has the same rows on both sides");
	}

	# zdm.verify() between this source release and the target: every table
	# equal (t_trunc on 10 differs by design: TRUNCATE is not replicated)
	my $verify = $target->safe_psql('app',
		"SELECT string_agg(table_name || ': ' || detail, '; ' ORDER BY table_name) "
		  . "FROM zdm.verify() WHERE NOT ok");
	is($verify, $major >= 11 ? '' : $verify =~ /^t_trunc: [^;]*$/ ? $verify : 'only t_trunc',
		"$v: zdm.verify() finds every table equal" . ($major >= 11 ? '' : ' but t_trunc'));
	like($verify, qr/^t_trunc: .*5/, "$v: zdm.verify() names the 5 rows TRUNCATE left on the target")
	  if $major < 11;

	my $sequences_sql = q{
SELECT schemaname || '.' || sequencename || ' ' || coalesce(last_value::text, 'unused')
FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1};
	my %source_seq = map { split / / } split /\n/,
	  $source->safe_psql('app', $sequences_sql);
	my %target_seq = map { split / / } split /\n/,
	  $target->safe_psql('app', $sequences_sql);
	is(join(' ', sort keys %target_seq), join(' ', sort keys %source_seq),
		"$v: the same sequences on both sides");
	foreach my $seq (sort keys %source_seq)
	{
		cmp_ok($target_seq{$seq} // 0, '>=', $source_seq{$seq} + 5000,
			"$v: sequence $seq is ahead on the target ($target_seq{$seq}, source $source_seq{$seq})");
	}
	foreach my $t ([ 't_serial', 'id' ], [ 't_ident', 'id' ], [ '"MiXeD_Case"', '"Id"' ])
	{
		my ($table, $column) = @$t;
		my $max = $source->safe_psql('app', "SELECT max($column) FROM $table");
		my ($r, $new_id, $e) = psql_verbose($target, 'app',
			"INSERT INTO $table (client, seq) VALUES (-1, 1) RETURNING $column");
		is($r, 0, "$v: $table: an INSERT using its sequence works on the target")
		  or diag $e;
		cmp_ok($new_id || 0, '>', $max,
			"$v: $table: the new key is above every key of the source ($max)");
	}

	foreach my $table (compared_tables($major))
	{
		my $insert =
		  $table eq 't_trunc' ? 'INSERT INTO t_trunc VALUES (-2)'
		  : $table eq 't_gen' ? 'INSERT INTO t_gen (id, a) VALUES (-2, 1)'
		  : "INSERT INTO $table (client, seq) VALUES (-2, 1)";
		my ($r, $o, $e) = psql_verbose($source, 'app', $insert);
		is(sqlstate_of($e), '25006', "$v: the source refuses INSERT into $table");
	}
	# through the partitioned table, whose partitions are the published ones
	foreach my $sql ('UPDATE t_part SET seq = seq WHERE client = 1',
		'DELETE FROM t_part WHERE client = 2', 'TRUNCATE t_part')
	{
		my ($r, $o, $e) = psql_verbose($source, 'app', $sql);
		is(sqlstate_of($e), '25006', "$v: the source refuses $sql");
	}

	ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)},
			'0'),
		"$v: slot and publication are gone from the source");
	is($target->safe_psql('app', 'SELECT count(*) FROM pg_subscription'),
		'0', "$v: the subscription is gone from the target");
	is( $target->safe_psql('app',
			"SELECT metric || '|' || ok FROM zdm.status() WHERE component = 'overall'"),
		'completed|true', "$v: zdm.status() says completed");
	return;
}

my @summary;
foreach my $install (@installs)
{
	push @summary,
	  with_source_and_target($install, "log_statement = ddl\nmax_connections = 30\n",
		sub { migrate_from($install, @_) });
	note $summary[-1];
}
diag join("\n", 'per source version:', @summary);

done_testing();
