# test/t/034_scale.pl: check, init, status, tables, abort and cutover with
# 5,000 published tables.
#
# With this many tables the cutover worker used to die with signal 11 (its
# list of subscribed tables lived in memory that SPI_finish had freed), and
# the postmaster restarted the whole target.  The test runs every command of
# the API at that scale with defer_copy and PostgreSQL's default settings:
# no server may restart, init then abort leave nothing behind, and a second
# init and the cutover complete with every streamed row on the target and a
# write-rejecting trigger, enabled ALWAYS, on every table of the source.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $ntables = 5000;

# PostgreSQL::Test::Cluster runs max_connections = 10: a lock table of about
# 640 entries by default, which the fence (a lock per table on the source)
# and CREATE PUBLICATION / CREATE SUBSCRIPTION (the same on each side)
# exceed with 5,000 tables.  Raised as the fence_locks check asks: the fence
# may use half of max_locks_per_transaction * max_connections, so 2 * 5,000
# locks need 1,000 per connection.
my $locks = "max_locks_per_transaction = 1024\n";
my $source = start_source('source', $locks);
my $target = start_target('target', $locks);

# t1 .. t5000 on both sides, committed every 500 tables so that creating
# them fits in the default lock table
my $create = qq{
DO \$\$
BEGIN
    FOR i IN 1..$ntables LOOP
        EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, v int)', i);
        IF i % 500 = 0 THEN COMMIT; END IF;
    END LOOP;
END
\$\$;};
$source->safe_psql('app', $create);
$target->safe_psql('app', $create);

my $started = $target->safe_psql('app', 'SELECT pg_postmaster_start_time()');
my $dsn = source_dsn($source);

my $failed_checks = $target->safe_psql('app',
	"SELECT string_agg(name, ', ') FROM zdm.check('$dsn', defer_copy => true) WHERE NOT ok AND blocking");
is($failed_checks, '', "zdm.check: no blocking check fails with $ntables tables");

# --- init, then abort ------------------------------------------------------

init_migration($source, $target, 'defer_copy => true');
is($target->safe_psql('app', 'SELECT count(*) FROM zdm.tables()'),
	$ntables, "zdm.tables() lists the $ntables tables");
is(status_of($target, 'copy', 'tables_match'),
	'the subscription covers every published table||true',
	'zdm.status(): publication and subscription match');
$target->safe_psql('app', 'CALL zdm.abort()');
is(migration_leftovers($target, $source), '', 'abort leaves nothing behind');

# --- init again, stream, cut over ------------------------------------------

init_migration($source, $target, 'defer_copy => true');
$source->safe_psql('app', qq{
INSERT INTO t1 (v) SELECT g FROM generate_series(1, 10) g;
INSERT INTO t2500 (v) VALUES (1);
INSERT INTO t$ntables (v) SELECT g FROM generate_series(1, 3) g;});

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
is($ret, 0, "cutover of $ntables tables succeeds") or diag $stderr;
like($stderr, qr/writes blocked on the source: $ntables tables fenced/,
	'... fencing every table');
is( $target->safe_psql('app', 'SELECT pg_postmaster_start_time()'),
	$started, 'the target server never restarted');

is( $target->safe_psql('app',
		"SELECT (SELECT count(*) FROM t1) || ' ' || (SELECT count(*) FROM t2500) || ' ' || (SELECT count(*) FROM t$ntables)"),
	'10 1 3', 'the rows written after init are on the target');
is( $target->safe_psql('app', "INSERT INTO t$ntables (v) VALUES (4) RETURNING id"),
	'5004', 'the serial default goes on past the source (3 + the buffer of 5000)');

is( $source->safe_psql('app', q{
SELECT count(*) FROM pg_trigger
WHERE tgname = 'zdm_reject_write' AND tgenabled = 'A'}),
	$ntables, 'every source table has the write-rejecting trigger, enabled ALWAYS');
foreach my $table ('t1', "t$ntables")
{
	($ret, $stdout, $stderr) =
	  psql_verbose($source, 'app', "INSERT INTO $table (v) VALUES (0)");
	is(sqlstate_of($stderr), '25006', "the source rejects writes to $table");
}
is( $source->safe_psql('app', q{
SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, '
    || (SELECT count(*) FROM pg_publication) || ' publications'}),
	'0 slots, 0 publications',
	'slot and publication are gone from the source');
is($target->safe_psql('app', 'SELECT count(*) FROM pg_subscription'),
	'0', 'the target is detached');

done_testing();
