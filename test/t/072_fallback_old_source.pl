# test/t/072_fallback_old_source.pl: a cutover with fallback and a fallback
# with an old source (issue 12): the source is then the subscriber, and
# PostgreSQL 10 and 12 subscribers lack what newer ones have (no origin
# filter, no disable_on_error, no pg_stat_subscription_stats; 10 does not
# know TRUNCATE messages).
#
# For each of the source versions in @VERSIONS that test/run-tests.sh
# fetched (ZDM_SOURCE_INSTALLS, see test/lib/ZdmSources.pm and
# t/030_source_versions.pl), with a target of this build (a source before
# 11: the cutover with fallback is refused by fallback_source_version,
# nothing created, the source writable; then a plain cutover):
#   - zdm.check_fallback: every check ok (the subscription privilege is a
#     superuser's on these versions);
#   - writers insert into the source, CALL zdm.cutover(fallback => true)
#     under that load: every write the source acknowledged on the target,
#     the source rejects writes (25006), the reverse replication streams;
#   - writers insert into the target and the test updates and deletes rows
#     the source had there: all of it reaches the source;
#   - CALL zdm.fallback() under that load: every write either server
#     acknowledged is on the source, each table has the same rows on both
#     sides (count and md5), no row twice in the keyless table, no
#     duplicate key in the source's log, the source's sequences ahead of
#     the target's keys, the target rejects writes (25006), the source
#     takes them, no reverse subscription, slot or publication left;
#     zdm.finish() forgets the migration.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmFallback;
use ZdmLoad;
use ZdmSources;
use ZdmTest;

# The old sources this test runs with (when fetched): 10, which a cutover
# with fallback refuses (fallback_source_version: a subscriber before 11
# cannot apply TRUNCATE, so a TRUNCATE made on the target would be lost at
# a fallback), 11, the oldest it accepts, and 12.  A few seconds each.
my @VERSIONS = (10, 11, 12);

my %wanted = map { $_ => 1 } @VERSIONS;
my @installs = grep { $wanted{ $_->{major} } } source_installs();
plan skip_all => 'none of the sources ' . join(', ', @VERSIONS)
  . ' is in ZDM_SOURCE_INSTALLS (test/run-tests.sh sets it)'
  unless @installs;

my @LOAD_TABLES = ('t_serial', 't_ident', '"MiXeD_Case"', 't_keyless');

my $SCHEMA = ZdmLoad::tables_sql();

# Wait until every writer of load has a record matching cond.
sub each_writer
{
	my ($load, $cond) = @_;
	return $load->wait_for(
		sub {
			!grep {
				my $id = $_->{id};
				!grep { $cond->($_) } $load->records($id)
			} $load->writers;
		});
}

# A source before 11: the cutover with fallback is refused by
# fallback_source_version, before any lock, nothing created, the source
# writable, the migration streaming; a plain cutover still works.
sub refused_from
{
	my ($v, $source, $target, $tdsn) = @_;
	is( $target->safe_psql('app',
			"SELECT string_agg(name || ' ' || ok || ' ' || blocking, '; ') FROM zdm.check_fallback('$tdsn') WHERE NOT ok"),
		'fallback_source_version false true',
		"$v: fallback_source_version is the one fallback check that fails, blocking");
	my ($ret, $out, $err) = psql_verbose($target, 'app',
		"CALL zdm.cutover(fallback => true, target_dsn => '$tdsn')");
	isnt($ret, 0, "$v: the cutover with fallback is refused");
	like($err, qr/DETAIL:[^\n]*fallback_source_version/, "$v: the detail names fallback_source_version")
	  or diag $err;
	unlike($err, qr/writes blocked on the source/, "$v: the source was never fenced");
	is(wait_no_reverse_objects($source, $target), '', "$v: nothing created on either side");
	($ret, $out, $err) = psql_verbose($source, 'app',
		"SET lock_timeout = '10s'; INSERT INTO t_serial (client, seq) VALUES (-4, 1)");
	is($ret, 0, "$v: the source takes writes") or diag $err;
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$v: the migration is still streaming");
	($ret, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.cutover()');
	is($ret, 0, "$v: a cutover without fallback completes") or diag $err;
	return;
}

sub fallback_from
{
	my ($install, $source, $target) = @_;
	my $v = "PG$install->{version}";
	my $dsn = source_dsn($source);
	my $tdsn = target_dsn($target);
	my $name = fallback_name($target);

	is($source->safe_psql('app', 'SHOW server_version'),
		$install->{version}, "$v: the source runs $install->{version}");
	same_schema_on_both($source, $target, $SCHEMA);
	$source->safe_psql('app', q{
INSERT INTO t_serial (client, seq, note) SELECT 0, i, 'row ' || i FROM generate_series(1, 1000) i;
INSERT INTO t_ident (client, seq) SELECT 0, i FROM generate_series(1, 1000) i;
INSERT INTO "MiXeD_Case" (client, seq) SELECT 0, i FROM generate_series(1, 1000) i;
INSERT INTO t_keyless (client, seq, note) SELECT 0, i, 'row ' || i FROM generate_series(1, 300) i;
});
	my ($ret, $out, $err) = psql_verbose($target, 'app', "CALL zdm.init('$dsn')");
	is($ret, 0, "$v: init succeeds") or diag $err;
	wait_until_ready($target);

	if ($install->{major} < 11)
	{
		refused_from($v, $source, $target, $tdsn);
		return;
	}
	is( $target->safe_psql('app',
			"SELECT string_agg(name || ': ' || detail, '; ') FROM zdm.check_fallback('$tdsn') WHERE NOT ok"),
		'', "$v: every fallback check is ok");

	# --- the cutover with fallback under load ----------------------------------
	my $fwd = ZdmLoad->new($source, 'app', tables => \@LOAD_TABLES);
	$fwd->start_writer('session', $_) foreach (1, 2);
	ok(each_writer($fwd, sub { $_[0]->{kind} eq 'ok' }),
		"$v: the writers on the source have commits acknowledged");
	my $log_offset = log_position($source);
	($ret, $out, $err) = psql_verbose($target, 'app',
		"CALL zdm.cutover(fallback => true, target_dsn => '$tdsn')");
	is($ret, 0, "$v: the cutover with fallback succeeds under write load") or diag $err;
	if ($ret != 0)
	{
		$fwd->stop;
		die "the cutover with fallback failed: the rest depends on it\n";
	}
	ok( $ret == 0
		  && each_writer($fwd, sub { $_[0]->{kind} eq 'err' && $_[0]->{sqlstate} eq '25006' }),
		"$v: every writer on the source is refused with 25006 after the cutover");
	$fwd->stop;
	my @fwd_acked = acked_keys($fwd);
	my @missing = missing_keys($target, \@LOAD_TABLES, @fwd_acked);
	is(scalar(@missing), 0,
		"$v: all " . scalar(@fwd_acked) . ' writes the source acknowledged are on the target')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
	wait_reverse_streaming($target, $v);
	is( reverse_objects($source, $target),
		"source: subscription $name (enabled); target: publication zdm_pub; target: slot $name",
		"$v: the reverse subscription, slot and publication are there");

	# --- writes on the target ----------------------------------------------------
	my $bwd = ZdmLoad->new($target, 'app', tables => \@LOAD_TABLES);
	$bwd->start_writer('session', 11);
	$bwd->start_writer('reconnect', 12);
	ok($bwd->wait_for(sub { acked_keys($bwd) >= 40 }),
		"$v: the writers on the target have commits acknowledged");
	$target->safe_psql('app', q{
UPDATE t_serial SET note = 'updated on the target' WHERE client = 0 AND seq <= 100;
DELETE FROM t_serial WHERE client = 0 AND seq > 900;
UPDATE t_keyless SET note = 'updated on the target' WHERE client = 0 AND seq <= 50;
DELETE FROM t_keyless WHERE client = 0 AND seq > 250;
});
	ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM t_serial WHERE note = 'updated on the target')
    || ' ' || (SELECT count(*) FROM t_serial WHERE client = 0)
    || ' ' || (SELECT count(*) FROM t_keyless WHERE note = 'updated on the target')
    || ' ' || (SELECT count(*) FROM t_keyless WHERE client = 0)},
			'100 900 50 250'),
		"$v: updates and deletes on the target reach the source");
	($ret, $out, $err) = psql_verbose($source, 'app',
		'INSERT INTO t_serial (client, seq) VALUES (-2, 1)');
	is(sqlstate_of($err), '25006', "$v: the source still rejects application writes");

	# --- the fallback under load -------------------------------------------------
	($ret, $out, $err) = psql_verbose($target, 'app', "CALL zdm.fallback(timeout => '1 min')");
	is($ret, 0, "$v: the fallback succeeds under write load") or diag $err;
	if ($ret != 0)
	{
		$bwd->stop;
		die "the fallback failed: the rest depends on it\n";
	}
	ok( $ret == 0
		  && each_writer($bwd, sub { $_[0]->{kind} eq 'err' && $_[0]->{sqlstate} eq '25006' }),
		"$v: every writer on the target is refused with 25006 after the fallback");
	$bwd->stop;
	my @acked = (@fwd_acked, acked_keys($bwd));
	@missing = missing_keys($source, \@LOAD_TABLES, @acked);
	is(scalar(@missing), 0,
		"$v: all " . scalar(@acked) . ' writes either server acknowledged are on the source')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
	foreach my $table (@LOAD_TABLES)
	{
		is(table_digest($source, $table), table_digest($target, $table),
			"$v: $table has the same rows on both sides");
	}
	is( $source->safe_psql('app', q{
SELECT count(*) FROM (SELECT client, seq FROM t_keyless GROUP BY 1, 2 HAVING count(*) > 1) d}),
		'0', "$v: no row twice in t_keyless on the source");
	is(apply_trouble_since($source, $log_offset), '',
		"$v: no duplicate key or conflict in the source's log");

	foreach my $t (['t_serial', 'id'], ['t_ident', 'id'], ['"MiXeD_Case"', '"Id"'])
	{
		my ($table, $column) = @$t;
		my $max = $target->safe_psql('app', "SELECT max($column) FROM $table");
		my ($r, $new_id, $e) = psql_verbose($source, 'app',
			"INSERT INTO $table (client, seq) VALUES (-1, 1) RETURNING $column");
		is($r, 0, "$v: $table: the source takes an INSERT using its sequence") or diag $e;
		cmp_ok($new_id || 0, '>', $max,
			"$v: $table: the new key is above every key of the target ($max)");
	}
	foreach my $table (@LOAD_TABLES)
	{
		($ret, $out, $err) = psql_verbose($target, 'app',
			"INSERT INTO $table (client, seq) VALUES (-3, 1)");
		is(sqlstate_of($err), '25006', "$v: the target rejects INSERT into $table");
	}
	is(wait_no_reverse_objects($source, $target), '',
		"$v: no reverse subscription, slot or publication left");
	($ret, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.finish()');
	is($ret, 0, "$v: zdm.finish() succeeds") or diag $err;
	is($target->safe_psql('app', 'SELECT count(*) FROM zdm.migration'),
		'0', "$v: zdm.migration is empty afterwards");
	return;
}

my @summary;
foreach my $install (@installs)
{
	push @summary,
	  with_source_and_target($install, "log_statement = ddl\nmax_connections = 30\n",
		sub { fallback_from($install, @_) },
		sub { start_fallback_target($_[0], "log_statement = ddl\n") });
	note $summary[-1];
}
diag join("\n", 'per source version:', @summary);

done_testing();
