# test/t/002_source_refusals.pl: sources zdm.init must refuse.
#
# For each source that cannot be migrated from, zdm.check shows the matching
# check as failed (and blocking), and CALL zdm.init fails with that check's
# SQLSTATE and a hint, having created nothing on either side: no slot, no
# publication, no subscription, no zdm.migration row.
#   - wal_level = replica on the source          55000  wal_level
#   - a role without REPLICATION or SUPERUSER     42501  replication_privilege
#   - a physical standby used as the source       55000  primary
#   - max_replication_slots used up on the source 53400  replication_slots

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $target = start_target('target');
my $schema = 'CREATE TABLE public.accounts (id bigint PRIMARY KEY, balance numeric NOT NULL);';
$target->safe_psql('app', $schema);

# A source with the table (and a row) the target expects.
sub source_with_table
{
	my ($name, $extra_conf) = @_;
	my $node = start_source($name, $extra_conf);
	$node->safe_psql('app', $schema . ' INSERT INTO public.accounts VALUES (1, 100);');
	return $node;
}

# "ok|blocking|detail" of one row of zdm.check.
sub check_row
{
	my ($dsn, $check) = @_;
	return $target->safe_psql('app',
		"SELECT ok || '|' || blocking || '|' || detail FROM zdm.check('$dsn') WHERE name = '$check'"
	);
}

# zdm.check shows check failed with a detail matching detail_re; zdm.init
# fails with sqlstate naming the check, and leaves nothing on the target or
# on any of the sources.
sub refused
{
	my ($case, $dsn, $check, $sqlstate, $detail_re, @sources) = @_;

	like(check_row($dsn, $check), qr/^false\|true\|.*$detail_re/,
		"$case: zdm.check shows \"$check\" failed and blocking");

	my ($ret, $stdout, $stderr) =
	  psql_verbose($target, 'app', "CALL zdm.init('$dsn');");
	isnt($ret, 0, "$case: zdm.init fails");
	is(sqlstate_of($stderr), $sqlstate, "$case: SQLSTATE $sqlstate");
	like($stderr, qr/source is not ready for migration: check "$check" failed/,
		"$case: the error names the check");
	like($stderr, qr/DETAIL:  [^\n]*$detail_re/, "$case: the detail says why");
	like($stderr, qr/HINT:  \S/, "$case: a hint says what to do");
	is(migration_leftovers($target, @sources), '',
		"$case: nothing created on either side");
	return;
}

# --- wal_level = replica ----------------------------------------------------

my $replica_level = source_with_table('replica_level', "wal_level = replica\n");
refused('wal_level replica', source_dsn($replica_level), 'wal_level', '55000',
	qr/wal_level is replica on the source/, $replica_level);
$replica_level->stop;

# --- the remaining cases share one source cluster ---------------------------

my $source = source_with_table('source');

# A role with neither REPLICATION nor SUPERUSER (pg_hba trusts it over TCP).
$source->safe_psql('app',
	'CREATE ROLE plain LOGIN NOSUPERUSER NOREPLICATION; GRANT SELECT ON public.accounts TO plain;');
my $plain_dsn = 'host=127.0.0.1 port=' . $source->port . ' dbname=app user=plain';
refused('role without REPLICATION', $plain_dsn, 'replication_privilege',
	'42501', qr/neither REPLICATION nor SUPERUSER/, $source);

# The check looks at the role: with REPLICATION it passes.
$source->safe_psql('app', 'ALTER ROLE plain REPLICATION');
like(check_row($plain_dsn, 'replication_privilege'), qr/^true\|/,
	'role with REPLICATION: replication_privilege ok');

# --- a physical standby as the source ---------------------------------------

$source->backup('for_standby');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($source, 'for_standby', has_streaming => 1);
$standby->start;
$source->wait_for_catchup($standby);
is($standby->safe_psql('app', 'SELECT pg_is_in_recovery()'), 't',
	'the standby is in recovery');
refused('physical standby', source_dsn($standby), 'primary', '55000',
	qr/standby in recovery/, $source, $standby);
$standby->stop;

# --- max_replication_slots used up ------------------------------------------

# Fill every free slot with physical slots, which count just the same.
$source->safe_psql('app', q{
SELECT pg_create_physical_replication_slot('filler_' || i)
  FROM generate_series(1, current_setting('max_replication_slots')::int
                          - (SELECT count(*) FROM pg_replication_slots)) i;
});
my ($ret, $stdout, $stderr) = psql_verbose($source, 'app',
	"SELECT pg_create_physical_replication_slot('one_too_many');");
is(sqlstate_of($stderr), '53400', 'the source has no replication slot left');

my $dsn = source_dsn($source);
refused('no free replication slot', $dsn, 'replication_slots', '53400',
	qr/0 of max_replication_slots = 10 are free/, $source);

# One free slot is not enough either: the initial copy needs a second one.
$source->safe_psql('app', "SELECT pg_drop_replication_slot('filler_1')");
refused('one free replication slot', $dsn, 'replication_slots', '53400',
	qr/1 of max_replication_slots = 10 are free/, $source);

$source->safe_psql('app',
	"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'filler%'");
like(check_row($dsn, 'replication_slots'), qr/^true\|/,
	'with the slots freed: replication_slots ok');
# Every check passes: rows are there, none failed, and the checks this file
# makes fail are among them, ok now (an empty result must not pass).
is( $target->safe_psql('app', qq{
SELECT count(*) > 0,
       coalesce(string_agg(name, ',' ORDER BY name) FILTER (WHERE NOT ok), ''),
       string_agg(name, ',' ORDER BY name) FILTER (WHERE ok AND name IN
           ('primary', 'replication_privilege', 'replication_slots', 'wal_level'))
  FROM zdm.check('$dsn')}),
	't||primary,replication_privilege,replication_slots,wal_level',
	'with the slots freed: zdm.check returns its rows and every check passes on this source');

done_testing();
