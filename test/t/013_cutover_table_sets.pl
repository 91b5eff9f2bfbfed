# test/t/013_cutover_table_sets.pl: a cutover refuses when the publication
# and the subscription do not cover the same tables.
#
# With FOR ALL TABLES, a table created on the source after zdm.init is
# published but not subscribed: the apply worker would drop its changes, so
# a cutover that went on would lose them.  The cutover must refuse (55000)
# before locking anything, leave the source writable and replication
# running, and succeed once ALTER SUBSCRIPTION ... REFRESH PUBLICATION has
# brought the table in, with every row of it on the target.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target');

same_schema_on_both($source, $target,
	'CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);');
$source->safe_psql('app',
	'INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 100) g');
init_migration($source, $target);

# A table created on both sides after init; rows written on the source.
same_schema_on_both($source, $target,
	'CREATE TABLE late_table (id int PRIMARY KEY, note text);');
$source->safe_psql('app',
	"INSERT INTO late_table SELECT g, 'late' FROM generate_series(1, 50) g");

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
isnt($ret, 0, 'cutover with a table published but not subscribed fails');
is(sqlstate_of($stderr), '55000', '... with SQLSTATE 55000');
like($stderr, qr/do not cover the same tables/, '... saying why');
like($stderr, qr/late_table \(published, not subscribed\)/,
	'... naming the table');
like($stderr, qr/REFRESH PUBLICATION/, '... with the fix in the hint');

is( $source->safe_psql('app',
		"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
	'0', 'the source was not made read-only');
$source->safe_psql('app', 'INSERT INTO accounts VALUES (101, 1)');
ok( $target->poll_query_until('app',
		'SELECT count(*) = 101 FROM accounts'),
	'the source is writable and replication goes on');
is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
	'streaming', 'the migration is streaming again');

# Bring the table into the subscription; then the cutover goes through.
$target->safe_psql('app', 'ALTER SUBSCRIPTION zdm_sub REFRESH PUBLICATION');
wait_until_ready($target);
($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
is($ret, 0, 'cutover succeeds once the table is subscribed') or diag $stderr;
is($target->safe_psql('app', 'SELECT count(*) FROM late_table'),
	'50', 'every row of the late table is on the target');
is($target->safe_psql('app', 'SELECT count(*) FROM accounts'),
	'101', 'every row of the other table too');
($ret, $stdout, $stderr) =
  psql_verbose($source, 'app', 'INSERT INTO late_table VALUES (51, 1)');
is(sqlstate_of($stderr), '25006', 'the source rejects writes to the late table');

done_testing();
