# test/t/040_verify.pl: zdm.verify() compares the rows of source and target,
# while the application writes and after the cutover, and names the keys
# that differ.
#
# The source and the target run with different TimeZone, DateStyle,
# IntervalStyle, extra_float_digits and bytea_output, so that only the
# canonical text forms zdm.verify pins can make them compare equal.
#   - under write load (inserts from test/lib/ZdmLoad.pm, and a session
#     updating a few hot rows over and over): every table ok, repeatedly;
#   - a single-row UPDATE, DELETE and INSERT made on the target behind
#     replication's back (session_replication_role = replica): each found,
#     its key named, the other tables still ok;
#   - a keyless table (REPLICA IDENTITY FULL) is compared whole and says so;
#   - quoted mixed-case names; a table list as argument;
#   - a verify cancelled while its source scan waits leaves no session of it
#     on the source;
#   - after the cutover: the same differences, at once;
#   - refusals: no migration (55000), a non-superuser (42501); the password
#     appears in no output.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmLoad;
use ZdmTest;

my @load_tables = qw(load_ident load_serial);

my $source = start_source('source', q{
log_statement = ddl
timezone = 'Asia/Tokyo'
datestyle = 'SQL, DMY'
intervalstyle = 'sql_standard'
extra_float_digits = 1
bytea_output = 'escape'
});
my $target = start_target('target', q{
timezone = 'America/New_York'
datestyle = 'German'
intervalstyle = 'iso_8601'
extra_float_digits = 3
});

same_schema_on_both($source, $target, q{
CREATE TABLE load_ident (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (client, seq)
);
CREATE TABLE load_serial (
    id serial PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    UNIQUE (client, seq)
);
CREATE TABLE hot (id integer PRIMARY KEY, n bigint NOT NULL);
CREATE SCHEMA "Mixed Case";
CREATE TABLE "Mixed Case"."Odd Table" (
    "Id" integer PRIMARY KEY,
    "Value" text,
    f float8,
    r real,
    ts timestamptz,
    d date,
    iv interval,
    b bytea,
    n numeric
);
CREATE TABLE nokey (a integer, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
CREATE TABLE stop_flag (stop boolean PRIMARY KEY);
});

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', 'SELECT * FROM zdm.verify()');
is(sqlstate_of($stderr), '55000', 'verify before init: no migration (55000)');

$source->safe_psql('app', q{
INSERT INTO load_ident (client, seq) SELECT 0, i FROM generate_series(1, 3000) i;
INSERT INTO load_serial (client, seq) SELECT 0, i FROM generate_series(1, 3000) i;
INSERT INTO hot SELECT i, 0 FROM generate_series(1, 50) i;
INSERT INTO "Mixed Case"."Odd Table"
SELECT i, 'value ' || i, i / 3.0 + 0.1, i / 7.0,
       '2024-03-01 12:00:00+00'::timestamptz + i * interval '1 hour 7 min',
       date '2020-01-31' + i, i * interval '1 day 3 hours 0.5 sec',
       decode(md5(i::text), 'hex'), i / 9.0
FROM generate_series(1, 5000) i;
INSERT INTO nokey SELECT i % 10, 'row ' || (i % 10) FROM generate_series(1, 40) i;
});
init_migration($source, $target);

# --- under write load: no false alarm --------------------------------------

my $load = ZdmLoad->new($source, 'app', tables => \@load_tables);
$load->start_writer('session', $_) foreach (1, 2);
$load->start_writer('reconnect', 3);
# a session updating the hot rows over and over, one commit each
my $updater = background_sql($source, 'app', q{
DO $$
BEGIN
  FOR i IN 1 .. 1000000 LOOP
    UPDATE hot SET n = n + 1 WHERE id = i % 50 + 1;
    COMMIT;
    EXIT WHEN EXISTS (SELECT 1 FROM stop_flag);
    PERFORM pg_sleep(0.002);
  END LOOP;
END $$});
ok($load->wait_for(sub { grep({ $_->{kind} eq 'ok' } $load->records) >= 100 }),
	'the writers have commits acknowledged');

my $verify_sql = q{SELECT schema_name || '.' || table_name || '|' || coalesce(source_rows::text, '-')
  || '|' || coalesce(target_rows::text, '-') || '|' || ok || '|' || detail
FROM zdm.verify() ORDER BY schema_name, table_name};

# rows of a verify output as table => [source_rows, target_rows, ok, detail]
# (ok reads 'true' or 'false': a boolean concatenated to text)
sub parse_verify
{
	my ($out) = @_;
	my %rows;
	foreach my $line (split /\n/, $out)
	{
		my ($table, @rest) = split /\|/, $line, 5;
		$rows{$table} = \@rest;
	}
	return %rows;
}

my @all_tables = ('Mixed Case.Odd Table', 'public.hot', 'public.load_ident',
	'public.load_serial', 'public.nokey', 'public.stop_flag');
foreach my $round (1 .. 5)
{
	($ret, $stdout, $stderr) = psql_verbose($target, 'app', $verify_sql);
	is($ret, 0, "verify under load, round $round: succeeds");
	my %rows = parse_verify($stdout);
	is(join(',', sort keys %rows), join(',', sort @all_tables),
		"round $round: one row per published table");
	my @bad = grep { $rows{$_}[2] ne 'true' } sort keys %rows;
	is(join('; ', map { "$_: $rows{$_}[3]" } @bad), '',
		"round $round: every table equal while the writes go on");
	like($stderr, qr/NOTICE:  00000: verified "Mixed Case"."Odd Table" \(1 of 6\): equal/,
		"round $round: a NOTICE per table");
	is(lines_with_secret($stdout . $stderr, $ZdmTest::PASSWORD), '',
		"round $round: no password in the output");
	note "round $round:\n$stdout";
}

# --- differences made on the target behind replication's back --------------

$target->safe_psql('app', q{
SET session_replication_role = replica;
UPDATE "Mixed Case"."Odd Table" SET "Value" = 'tampered' WHERE "Id" = 4242;
DELETE FROM "Mixed Case"."Odd Table" WHERE "Id" = 77;
INSERT INTO "Mixed Case"."Odd Table" ("Id", "Value") VALUES (900001, 'extra');
INSERT INTO nokey VALUES (1, 'row 1');
});

sub check_differences
{
	my ($when) = @_;
	($ret, $stdout, $stderr) = psql_verbose($target, 'app', $verify_sql);
	is($ret, 0, "$when: verify succeeds");
	note "$when:\n$stdout";
	my %rows = parse_verify($stdout);
	my $odd = $rows{'Mixed Case.Odd Table'};
	is($odd->[2], 'false', "$when: \"Odd Table\" is not ok");
	like($odd->[3], qr/missing on the target \(1\): \("Id"\)=\(77\)/,
		"$when: the deleted row is named as missing on the target");
	like($odd->[3], qr/extra on the target \(1\): \("Id"\)=\(900001\)/,
		"$when: the inserted row is named as extra on the target");
	like($odd->[3], qr/different \(1\): \("Id"\)=\(4242\)/,
		"$when: the updated row is named as different");
	unlike($odd->[3], qr/settle/, "$when: nothing unsettled in \"Odd Table\"");
	is($odd->[0] . '|' . $odd->[1], '5000|5000', "$when: row counts of \"Odd Table\"");
	my $nokey = $rows{'public.nokey'};
	is($nokey->[2], 'false', "$when: the keyless table is not ok");
	like($nokey->[3],
		qr/^the rows differ: 40 on the source, 41 on the target; no primary key or replica identity index: compared the whole table/,
		"$when: the keyless table was compared whole and says so");
	my @bad = grep { $rows{$_}[2] ne 'true' && $_ !~ /Odd Table|nokey/ } sort keys %rows;
	is(join('; ', map { "$_: $rows{$_}[3]" } @bad), '',
		"$when: the other tables are equal");
	return;
}
check_differences('under load, after target-side changes');

($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	q{SELECT table_name, ok FROM zdm.verify(ARRAY['"Mixed Case"."Odd Table"'::regclass, 'hot'])});
is($stdout, "Odd Table|f\nhot|t", 'verify of the tables given only');

# --- a cancelled verify leaves nothing running on the source ----------------

my $locker = $source->background_psql('app');
$locker->query_safe('BEGIN; LOCK TABLE "Mixed Case"."Odd Table" IN ACCESS EXCLUSIVE MODE');
my $call = start_statement($target,
	q{SELECT * FROM zdm.verify(ARRAY['"Mixed Case"."Odd Table"'::regclass])});
my $verify_pid = $call->{pid};
my $no_verify_session = q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pg_zdm verify'};
ok( $source->poll_query_until('app', q{
SELECT count(*) = 1 FROM pg_stat_activity
WHERE application_name = 'pg_zdm verify' AND wait_event_type = 'Lock'}),
	'the source scan of the verify waits for the locked table');
$target->safe_psql('app', "SELECT pg_cancel_backend($verify_pid)");
$call->{harness}->finish;
is(sqlstate_of($call->{stderr}), '57014', 'the verify is cancelled (57014)');
ok($source->poll_query_until('app', $no_verify_session),
	'no session of the cancelled verify is left on the source');
is($source->safe_psql('app',
	q{SELECT count(*) FROM pg_locks WHERE relation = '"Mixed Case"."Odd Table"'::regclass AND NOT granted}),
	'0', 'nothing waits for the locked table any more');
$locker->query_safe('COMMIT');
$locker->quit;

# --- after the cutover -------------------------------------------------------

$source->safe_psql('app', 'INSERT INTO stop_flag VALUES (true)');
my ($uret) = finish_background_sql($updater);
is($uret, 0, 'the hot-row updater ends');
is($load->stop, 0, 'the writers stop');
$target->safe_psql('app', "CALL zdm.cutover(timeout => '2 min')");
is($target->safe_psql('app', q{SELECT phase FROM zdm.migration}), 'completed',
	'the cutover completed');
check_differences('after the cutover');

# --- refusals ----------------------------------------------------------------

$target->safe_psql('app', 'CREATE ROLE someone LOGIN');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"SET ROLE someone; SELECT * FROM zdm.verify()");
is(sqlstate_of($stderr), '42501', 'a non-superuser may not call zdm.verify (42501)');
($ret, $stdout, $stderr) = psql_verbose($target, 'app',
	"BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM zdm.verify()");
is(sqlstate_of($stderr), '25001', 'zdm.verify refuses a REPEATABLE READ transaction (25001)');

is(lines_with_secret(
		slurp_file($target->logfile) . slurp_file($source->logfile),
		$ZdmTest::PASSWORD),
	'', 'no password in either server log');

done_testing();
