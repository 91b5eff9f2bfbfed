# test/t/032_apply_errors.pl: a cutover while the target cannot apply a
# change of the source.
#
# The target gets a CHECK constraint the source lacks after init (before it,
# zdm.init refuses: target_constraints); a source UPDATE that
# violates it stops the apply worker, which PostgreSQL restarts every
# wal_retrieve_retry_interval and which fails again.  Fencing the source
# then can only end with the timeout (5 minutes by default) while the
# application cannot write.
#
# 1. The failing change is queued before the cutover: the cutover refuses
#    (55000) before fencing, saying the apply worker is failing; the source
#    stays writable.
# 2. The failing change is committed by a transaction the fence waits for,
#    so the error arrives while writes are fenced: the cutover stops within
#    seconds (not at its timeout), says so, and the source is writable again.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target', "wal_retrieve_retry_interval = 1s\n");

same_schema_on_both($source, $target,
	'CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL);');
$source->safe_psql('app',
	'INSERT INTO acc SELECT g, g FROM generate_series(1, 10) g');
# Added once the copy is done, as a DBA might during the migration: before
# init the target_constraints check would refuse it (a constraint the
# source lacks).
init_migration($source, $target);
$target->safe_psql('app',
	'ALTER TABLE acc ADD CONSTRAINT small CHECK (v < 1000)');

my $errors_sql = q{
SELECT coalesce(sum(apply_error_count + sync_error_count), 0)
FROM pg_stat_subscription_stats WHERE subname = 'zdm_sub'};

# Everything that must hold after a refused or failed cutover.
sub source_writable
{
	my ($label, $id) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($source, 'app',
		"SET lock_timeout = '30s'; INSERT INTO acc VALUES ($id, 1)");
	is($ret, 0, "$label: the source takes writes") or diag $stderr;
	is( $source->safe_psql('app',
			"SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: the source was not made read-only");
	is($source->safe_psql('app', fence_held_query('acc')),
		'f', "$label: no fence lock is left on the source");
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is streaming again");
	return;
}

# --- 1. the failing change is queued before the cutover ----------------------

$source->safe_psql('app', 'UPDATE acc SET v = 5000 WHERE id = 1');
ok($target->poll_query_until('app', "SELECT ($errors_sql) > 0"),
	'queued: the apply worker fails on the UPDATE');

my $started = time();
my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.cutover(timeout => '2 min')");
my $took = time() - $started;
isnt($ret, 0, 'queued: the cutover fails');
is(sqlstate_of($stderr), '55000', 'queued: SQLSTATE 55000');
like($stderr, qr/apply worker of subscription zdm_sub is failing/,
	'queued: the error says the apply worker is failing');
like($stderr, qr/source was not locked/,
	'queued: ... and that the source was not locked');
like($stderr, qr/HINT:  Find the error of the logical replication worker/,
	'queued: the hint says where to look');
unlike($stderr, qr/writes blocked on the source/,
	'queued: the source was never fenced');
cmp_ok($took, '<', 30, 'queued: the refusal comes at once, not at the timeout');
source_writable('queued', 100);

# the fix: the target's constraint goes; replication catches up
$target->safe_psql('app', 'ALTER TABLE acc DROP CONSTRAINT small');
ok( $target->poll_query_until('app',
		'SELECT v = 5000 FROM acc WHERE id = 1'),
	'queued: once the constraint is gone the UPDATE is applied');
wait_until_ready($target);

# --- 2. the failing change arrives while writes are fenced -------------------

$target->safe_psql('app',
	'ALTER TABLE acc ADD CONSTRAINT small CHECK (v < 1000) NOT VALID');
my $errors_before = $target->safe_psql('app', $errors_sql);

my $writer = $source->background_psql('app');
$writer->query_safe('BEGIN; UPDATE acc SET v = 7000 WHERE id = 2');

$started = time();
my $call = start_cutover($target, "timeout => '2 min'",
	"SET zdm.lock_grace_period = '60s'");
ok( $source->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = 'pg_zdm' AND NOT l.granted
  AND l.relation = 'acc'::regclass}),
	'fenced: the fence waits for the open transaction');
$writer->query_safe('COMMIT');
$writer->quit;

($ret, $stderr) = finish_cutover($call);
$took = time() - $started;
isnt($ret, 0, 'fenced: the cutover fails');
is(sqlstate_of($stderr), '55000', 'fenced: SQLSTATE 55000');
like($stderr, qr/writes blocked on the source/,
	'fenced: the source had been fenced');
like($stderr,
	qr/replication failed while writes were fenced: the target cannot apply a change of the source/,
	'fenced: the error says replication failed while fenced');
like($stderr, qr/the fence is released and the source is writable again/,
	'fenced: ... and that the source is writable again');
cmp_ok($took, '<', 60, 'fenced: the cutover stops long before its timeout');
cmp_ok($target->safe_psql('app', $errors_sql), '>', $errors_before,
	'fenced: the apply worker did report an error');
source_writable('fenced', 101);
is($source->safe_psql('app', 'SELECT v FROM acc WHERE id = 2'),
	'7000', 'fenced: the transaction the fence waited for committed');

done_testing();
