# test/t/030_schema_checks.pl: preflight checks that need their own clusters.
#
#   - fence_locks: a source whose lock table is too small for the cutover's
#     fence (max_locks_per_transaction 10, max_connections 10: 100 locks) is
#     refused with 53400 and the exact setting to use; with that setting the
#     check passes.
#   - a table partitioned only on the target: the checks pass, init copies
#     the source's rows into the target's partitions and streams new ones,
#     and target_tables_empty sees rows in a partition.
#   - a partition of the source whose parent is partitioned differently on
#     the target: refused (partitions, 55000), also with ignore_missing.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $source = start_source('source', qq{
max_connections = 10
max_locks_per_transaction = 10
max_prepared_transactions = 0
max_wal_senders = 5
max_replication_slots = 5
});
my $target = start_target('target');
my $dsn = source_dsn($source);

# "ok|blocking|detail|hint" of one check.
sub check_row
{
	my ($check, $options) = @_;
	$options = $options ? ", $options" : '';
	return $target->safe_psql('app',
		"SELECT ok || '|' || blocking || '|' || detail || '|' || coalesce(hint, '') "
		  . "FROM zdm.check('$dsn'$options) WHERE name = '$check'");
}

# --- fence_locks ----------------------------------------------------------

same_schema_on_both($source, $target, q{
DO $$ BEGIN FOR i IN 1 .. 60 LOOP
  EXECUTE format('CREATE TABLE public.lk_%s (id int PRIMARY KEY)', i);
END LOOP; END $$;
});

like(check_row('fence_locks'),
	qr/^false\|true\|The cutover locks 60 published tables .* = 10 \* 10 = 100 locks.*\|Set max_locks_per_transaction = 12 \(or more\) on the source/,
	'fence_locks: 60 tables against 100 locks fails, asks for 12');

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.init('$dsn');");
is(sqlstate_of($stderr), '53400', 'init refused with 53400');
like($stderr, qr/check "fence_locks" failed/, 'the error names fence_locks');
is(migration_leftovers($target, $source), '', 'nothing created');

# the setting the hint asks for is enough
my ($setting) = check_row('fence_locks') =~ /Set (max_locks_per_transaction = \d+)/;
$source->append_conf('postgresql.conf', "$setting\n");
$source->restart;
like(check_row('fence_locks'),
	qr/^true\|true\|The cutover locks 60 published tables .* = 12 \* 10 = 120 locks/,
	"fence_locks: 60 tables fit with the hinted $setting");

same_schema_on_both($source, $target, q{
DO $$ BEGIN FOR i IN 1 .. 60 LOOP
  EXECUTE format('DROP TABLE public.lk_%s', i);
END LOOP; END $$;
});

# --- a table partitioned on the target only ----------------------------------

$source->safe_psql('app', q{
CREATE TABLE public.events (id int PRIMARY KEY, v text);
INSERT INTO public.events SELECT g, 'v' || g FROM generate_series(1, 150) g;
});
$target->safe_psql('app', q{
CREATE TABLE public.events (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE public.events_low PARTITION OF public.events FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE public.events_high PARTITION OF public.events FOR VALUES FROM (100) TO (MAXVALUE);
INSERT INTO public.events VALUES (500, 'stale');
});

like(check_row('target_tables_empty'),
	qr/^false\|true\|Tables that already hold rows on the target: public\.events \(rows in partition public\.events_high\)/,
	'target_tables_empty sees rows in a partition');
$target->safe_psql('app', 'TRUNCATE public.events');

is($target->safe_psql('app',
		"SELECT string_agg(name, ',') FROM zdm.check('$dsn') WHERE NOT ok"),
	'', 'every check passes for a table partitioned only here');

init_migration($source, $target);
is($target->safe_psql('app',
		"SELECT count(*) FILTER (WHERE tableoid = 'public.events_low'::regclass) || '|' || "
		  . "count(*) FILTER (WHERE tableoid = 'public.events_high'::regclass) FROM public.events"),
	'99|51', 'the copy routed the rows into the target partitions');
$source->safe_psql('app', "INSERT INTO public.events VALUES (1000, 'new'); UPDATE public.events SET v = 'changed' WHERE id = 5;");
ok($target->poll_query_until('app',
		"SELECT count(*) = 1 FROM public.events_high WHERE id = 1000 AND v = 'new' "
		  . "AND EXISTS (SELECT 1 FROM public.events_low WHERE id = 5 AND v = 'changed')"),
	'streamed changes reach the target partitions');
$target->safe_psql('app', 'CALL zdm.abort()');
is(migration_leftovers($target, $source), '', 'abort removed everything');

# --- a source partition the target's partitioning lacks --------------------

$source->safe_psql('app', q{
CREATE TABLE public.metrics (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE public.metrics_1 PARTITION OF public.metrics FOR VALUES FROM (0) TO (1000);
});
$target->safe_psql('app', q{
CREATE TABLE public.metrics (id int PRIMARY KEY) PARTITION BY HASH (id);
CREATE TABLE public.metrics_h0 PARTITION OF public.metrics FOR VALUES WITH (MODULUS 1, REMAINDER 0);
});
like(check_row('partitions', 'ignore_missing => true'),
	qr/^false\|true\|Source partitions whose table here is missing or partitioned differently: public\.metrics_1\./,
	'partitions: a source partition missing under a parent partitioned differently');
($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.init('$dsn', ignore_missing => true);");
is(sqlstate_of($stderr), '55000', 'init refused with 55000, also with ignore_missing');
like($stderr, qr/check "partitions" failed/, 'the error names partitions');
is(migration_leftovers($target, $source), '', 'nothing created');

done_testing();
