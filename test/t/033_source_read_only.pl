# test/t/033_source_read_only.pl: what the read-only source still accepts
# after a cutover.
#
# Logical replication does not carry unlogged tables, and a table created on
# the source after the fence is in no publication: writes to either would
# silently stay on the old server.  After a successful cutover the source
# must reject them too (SQLSTATE 25006), also with session_replication_role
# = replica, while temporary tables keep working for read-only clients.  An
# unlogged table that a transaction holds at fence time is skipped, with a
# WARNING in the source's log, rather than holding up the cutover.  DROP
# SCHEMA zdm_fence CASCADE still makes the source writable again.

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
$source->safe_psql('app', q{
INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;
CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v text);
CREATE UNLOGGED TABLE "Busy cache" (k text);
INSERT INTO cache VALUES ('a', 'b');});
init_migration($source, $target);

# a transaction holds the unlogged table "Busy cache" across the fence
my $busy = $source->background_psql('app');
$busy->query_safe(q{BEGIN; INSERT INTO "Busy cache" VALUES ('held')});

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '1 min')");
is($ret, 0, 'the cutover succeeds although an unlogged table is busy')
  or diag $stderr;
$busy->query_safe('COMMIT');
$busy->quit;

ok( $source->log_contains(
		qr/pg_zdm: unlogged table public\."Busy cache" keeps accepting writes/),
	'the source log names the busy unlogged table that was skipped');

# Run sql on the source; returns its SQLSTATE ('' when it succeeded).
sub on_source
{
	my ($sql) = @_;
	my ($r, $out, $err) = psql_verbose($source, 'app', $sql);
	return sqlstate_of($err);
}

is(on_source("INSERT INTO accounts VALUES (11, 1)"),
	'25006', 'the source rejects writes to a published table');
is(on_source("INSERT INTO cache VALUES ('c', 'd')"),
	'25006', 'the source rejects writes to an unlogged table');
is(on_source("UPDATE cache SET v = 'x'"),
	'25006', '... updates');
is(on_source("TRUNCATE cache"), '25006', '... and TRUNCATE');
is( on_source(
		"SET session_replication_role = replica; INSERT INTO cache VALUES ('e', 'f')"),
	'25006', '... also with session_replication_role = replica');
is(on_source("CREATE TABLE created_after (id int)"),
	'25006', 'the source rejects a new table');
is(on_source("CREATE UNLOGGED TABLE created_after (id int)"),
	'25006', '... a new unlogged table');
is(on_source("CREATE TABLE created_after AS SELECT 1 AS id"),
	'25006', '... and CREATE TABLE AS');
is( on_source(
		"SET session_replication_role = replica; CREATE TABLE created_after (id int)"),
	'25006', '... also with session_replication_role = replica');
is( $source->safe_psql('app', q{
CREATE TEMP TABLE scratch (id int);
INSERT INTO scratch VALUES (1);
SELECT count(*) FROM scratch;}),
	'1', 'temporary tables still work on the source');
is(on_source(q{INSERT INTO "Busy cache" VALUES ('later')}),
	'', 'the skipped unlogged table still takes writes (as the WARNING says)');

# making the source writable again by hand, as the README says
$source->safe_psql('app', 'DROP SCHEMA zdm_fence CASCADE');
is(on_source("INSERT INTO cache VALUES ('g', 'h')"),
	'', 'after DROP SCHEMA zdm_fence CASCADE the unlogged table takes writes');
is(on_source("CREATE TABLE created_after (id int)"),
	'', '... and tables can be created');
is($source->safe_psql('app', 'SELECT count(*) FROM pg_event_trigger'),
	'0', '... the event trigger is gone with the schema');

done_testing();
