# test/t/001_init_across_clusters.pl: the happy path between two clusters.
#
# zdm.check, CALL zdm.init, zdm.status, zdm.tables, the event log and
# CALL zdm.abort, with a source and a target that are separate clusters:
# rows copied (count and checksum) and later changes replicated, for a table
# with an identity column and for one whose schema and name need quoting
# (mixed case, spaces, a double quote).  Abort leaves nothing behind on
# either side and is harmless the second time.
#
# Throughout, the source password (and a wrong one tried first) must appear
# in no psql output of this test and in neither server's log.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $WRONG_PASSWORD = 'zdm-Wr0ng-pw';

my $source = start_source('source');
my $target = start_target('target');
my $dsn = source_dsn($source);
(my $wrong_dsn = $dsn) =~ s/\Q$ZdmTest::PASSWORD\E/$WRONG_PASSWORD/;

# Everything psql printed in this test, searched for the passwords at the end.
my $all_output = '';

# Run sql on a node (verbose errors), remember what psql printed, return
# (exit code, stdout, stderr).
sub run_sql
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($node, 'app', $sql);
	$all_output .= "$stdout\n$stderr\n";
	return ($ret, $stdout, $stderr);
}

# Run sql that must succeed; returns its stdout.
sub sql_ok
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) = run_sql($node, $sql);
	die "query failed on " . $node->name . ": $stderr\nquery: $sql" if $ret;
	return $stdout;
}

# Same rows on both sides? "count|md5 of every row in key order".
sub table_digest
{
	my ($node, $table) = @_;
	return sql_ok($node,
		"SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM $table t"
	);
}

# --- schema on both sides, rows on the source ------------------------------

my $items = 'public.items';
my $odd = q{"Odd ""Schema"" X"."Order ""Lines"" Tbl"};
same_schema_on_both($source, $target, qq{
CREATE TABLE $items (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2)
);
CREATE SCHEMA "Odd ""Schema"" X";
CREATE TABLE $odd (
    id bigint PRIMARY KEY,
    "Item Qty" integer,
    "Note ""quoted""" text
);
});
$source->safe_psql('app', qq{
INSERT INTO $items (name, price)
  SELECT 'item ' || i, i * 1.25 FROM generate_series(1, 1000) i;
INSERT INTO $odd
  SELECT i, i % 7, 'line "' || i || '"' FROM generate_series(1, 200) i;
});

# --- a wrong password first: refused, nothing made -------------------------

my ($ret, $stdout, $stderr) =
  run_sql($target, "SELECT ok FROM zdm.check('$wrong_dsn') WHERE name = 'connection';");
is($stdout, 'f', 'zdm.check with a wrong password: connection row not ok');

($ret, $stdout, $stderr) = run_sql($target, "CALL zdm.init('$wrong_dsn');");
isnt($ret, 0, 'zdm.init with a wrong password fails');
is(sqlstate_of($stderr), '08001', 'wrong password: SQLSTATE 08001');
like($stderr, qr/password authentication failed/,
	"wrong password: libpq's reason is shown");
is(migration_leftovers($target, $source), '',
	'wrong password: nothing created on either side');

# --- check, then init -------------------------------------------------------

$stdout = sql_ok($target,
	"SELECT count(*) || '|' || count(*) FILTER (WHERE NOT ok) || '|' || coalesce(string_agg(name, ',') FILTER (WHERE NOT ok), '') FROM zdm.check('$dsn');");
my ($nchecks, $nfailed, $failed) = split /\|/, $stdout, 3;
cmp_ok($nchecks, '>=', 15, "zdm.check returns every check ($nchecks rows)");
is($nfailed, 0, "zdm.check: every check ok (failed: $failed)");
is(sql_ok($target, "SELECT count(*) FROM zdm.check('$dsn') WHERE name = 'connection' AND detail LIKE '%********%';"),
	'1', 'zdm.check: connection detail shows the DSN with the password masked');
is(migration_leftovers($target, $source), '', 'zdm.check created nothing');

($ret, $stdout, $stderr) = run_sql($target, "CALL zdm.init('$dsn');");
is($ret, 0, 'CALL zdm.init succeeds') or diag($stderr);
like($stderr, qr/NOTICE:  00000: migration started/, 'zdm.init says the migration started');

wait_until_ready($target);

# --- rows copied, then changes replicated -----------------------------------

is(table_digest($target, $items), table_digest($source, $items),
	'identity table copied: same count and checksum');
is(table_digest($target, $odd), table_digest($source, $odd),
	'quoted table copied: same count and checksum');
is(sql_ok($target, "SELECT count(*) FROM $items"), '1000', '1000 rows copied');

$source->safe_psql('app', qq{
INSERT INTO $items (name, price) SELECT 'new ' || i, i FROM generate_series(1, 50) i;
UPDATE $items SET price = price * 2 WHERE id % 10 = 0;
DELETE FROM $items WHERE id BETWEEN 100 AND 149;
INSERT INTO $odd VALUES (1000, 1, 'new "line"');
UPDATE $odd SET "Item Qty" = -1 WHERE id <= 10;
DELETE FROM $odd WHERE id BETWEEN 20 AND 29;
});
my $want_items = table_digest($source, $items);
my $want_odd = table_digest($source, $odd);
ok( $target->poll_query_until('app',
		"SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM $items t",
		$want_items),
	'inserts, updates and deletes on the identity table replicated');
ok( $target->poll_query_until('app',
		"SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '') FROM $odd t",
		$want_odd),
	'inserts, updates and deletes on the quoted table replicated');
is(sql_ok($target, "SELECT count(*) FROM $items"), '1000',
	'identity table: 1000 + 50 - 50 rows');

# --- status, tables, event log ----------------------------------------------

ok( $target->poll_query_until('app',
		"SELECT bytes FROM zdm.status() WHERE component = 'source' AND metric = 'slot_lag'",
		'0'),
	'status: slot_lag reaches 0 bytes');
wait_until_ready($target);

my ($value, $bytes, $okflag) = split /\|/, status_of($target, 'target', 'apply_lag');
is($bytes, '0', 'status: apply_lag 0 bytes');
is($okflag, 'true', 'status: apply_lag ok');
($value, $bytes, $okflag) = split /\|/, status_of($target, 'copy', 'tables_ready');
like($value, qr{^2/2\b}, "status: tables_ready 2/2 ($value)");
is($okflag, 'true', 'status: tables_ready ok');
($value, $bytes, $okflag) = split /\|/, status_of($target, 'target', 'last_applied_at');
is($okflag, 'true', "status: a latest applied transaction time ($value)");
($value, $bytes, $okflag) = split /\|/, status_of($target, 'overall', 'ready_for_cutover');
is($okflag, 'true', "status: overall ok ($value)");
is(sql_ok($target, "SELECT component FROM zdm.status() OFFSET (SELECT count(*) - 1 FROM zdm.status())"),
	'overall', 'status: the overall row comes last');
sql_ok($target, "SELECT * FROM zdm.status()");    # searched for passwords

is(sql_ok($target, "SELECT string_agg(schema_name || '.' || table_name || '=' || state, ',' ORDER BY 1, 2) FROM zdm.tables()"),
	'Odd "Schema" X.Order "Lines" Tbl=ready,public.items=ready',
	'zdm.tables: both tables, names intact, ready');
is(sql_ok($target, "SELECT count(*) FROM zdm.tables() WHERE size_bytes > 0"),
	'2', 'zdm.tables: sizes shown');

is(sql_ok($target, "SELECT count(*) FROM zdm.event_log WHERE event = 'init'"),
	'1', 'event log: one init');
sql_ok($target, "SELECT * FROM zdm.event_log");    # searched for passwords
like(sql_ok($target, "SELECT source_display FROM zdm.migration"),
	qr/password=\*{8}/, 'zdm.migration shows the DSN with the password masked');

# Non-superusers cannot read the state, which holds the password, even
# when they may use schema zdm.
sql_ok($target, "CREATE ROLE monitor LOGIN; GRANT USAGE ON SCHEMA zdm TO monitor;");
($ret, $stdout, $stderr) =
  run_sql($target, "SET ROLE monitor; SELECT source_conninfo FROM zdm.migration;");
is(sqlstate_of($stderr), '42501', 'a non-superuser cannot read zdm.migration');
like($stderr, qr/permission denied for table migration/,
	'zdm.migration: permission denied for the table itself');

# --- on the source: publication and slot ------------------------------------

my $slot = sql_ok($target, "SELECT slot_name FROM zdm.migration");
like($slot, qr/^zdm_\d+_\d+$/, "slot name $slot");
is(sql_ok($source, "SELECT pubname || '|' || puballtables FROM pg_publication"),
	'zdm_pub|true', 'source: publication zdm_pub for all tables');
is(sql_ok($source, "SELECT slot_type || '|' || plugin || '|' || database FROM pg_replication_slots WHERE slot_name = '$slot'"),
	'logical|pgoutput|app', 'source: the logical slot of the migration');
ok( $source->poll_query_until('app',
		"SELECT string_agg(slot_name, ',') FROM pg_replication_slots", $slot),
	'source: the table-sync slots are gone once the copy is done');
is(sql_ok($target, "SELECT subname || '|' || subenabled FROM pg_subscription"),
	'zdm_sub|true', 'target: subscription zdm_sub enabled');

# --- abort -------------------------------------------------------------------

($ret, $stdout, $stderr) = run_sql($target, "CALL zdm.abort();");
is($ret, 0, 'CALL zdm.abort succeeds') or diag($stderr);
like($stderr, qr/NOTICE:  00000: migration aborted/, 'zdm.abort says so');
unlike($stderr, qr/WARNING/, 'zdm.abort left nothing behind on the source');
is(migration_leftovers($target, $source), '',
	'after abort: no subscription, slot, publication or migration row');
is(sql_ok($source, "SELECT count(*) FROM pg_replication_slots"), '0',
	'after abort: no slot at all on the source');
is(sql_ok($target, "SELECT count(*) FROM pg_stat_subscription"), '0',
	'after abort: no replication worker on the target');
is(sql_ok($target, "SELECT component || '|' || metric || '|' || ok || '|' || (value LIKE 'no migration%') FROM zdm.status()"),
	'overall|ready_for_cutover|false|true', 'after abort: status is the single "no migration" row');
is(sql_ok($target, "SELECT count(*) FROM zdm.event_log WHERE event = 'abort'"),
	'1', 'event log: one abort');
is($source->safe_psql('app', "INSERT INTO $items (name) VALUES ('after abort') RETURNING name"),
	'after abort', 'the source is writable after abort');

($ret, $stdout, $stderr) = run_sql($target, "CALL zdm.abort();");
is($ret, 0, 'a second abort is not an error');
like($stderr, qr/NOTICE:  00000: there is no migration to abort/,
	'a second abort says there is nothing to abort');
unlike($stderr, qr/ERROR|WARNING/, 'a second abort raises no error or warning');

# --- the passwords, nowhere --------------------------------------------------

my @secrets = ($ZdmTest::PASSWORD, $WRONG_PASSWORD);
is(lines_with_secret($all_output, @secrets), '',
	'no password in any psql output');
is(lines_with_secret(slurp_file($target->logfile), @secrets), '',
	"no password in the target's server log");
is(lines_with_secret(slurp_file($source->logfile), @secrets), '',
	"no password in the source's server log");

done_testing();
