# test/t/005_source_unreachable.pl: status and abort while the source is down.
#
# With a migration streaming and the source stopped, zdm.status still
# answers (the source rows say it cannot be reached, overall is not ok) and
# CALL zdm.abort drops what it can on the target and warns about the slot
# and publication it had to leave on the source.  Once the source is back,
# those leftovers are where the warning said, the 'leftovers' check refuses
# a new init because of them, and after they are dropped by hand a new
# migration starts and aborts cleanly.  The password is in no output and in
# neither server log.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target');
my $dsn = source_dsn($source);
same_schema_on_both($source, $target,
	'CREATE TABLE public.events (id bigint PRIMARY KEY, payload text);');
$source->safe_psql('app',
	"INSERT INTO public.events SELECT i, 'event ' || i FROM generate_series(1, 500) i");

my $all_output = '';

# Run sql on the target (verbose errors); returns (exit code, stdout, stderr).
sub run_sql
{
	my ($sql) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', $sql);
	$all_output .= "$stdout\n$stderr\n";
	return ($ret, $stdout, $stderr);
}

my ($ret, $stdout, $stderr) = run_sql("CALL zdm.init('$dsn');");
is($ret, 0, 'init succeeds') or diag($stderr);
wait_until_ready($target);
my $slot = $target->safe_psql('app', 'SELECT slot_name FROM zdm.migration');

# --- the source goes away --------------------------------------------------------

$source->stop('fast');

my $start = time;
($ret, $stdout, $stderr) = run_sql(
	"SELECT component || '|' || metric || '|' || ok || '|' || coalesce(value, '') FROM zdm.status();");
my $secs = time - $start;
is($ret, 0, 'zdm.status answers while the source is down') or diag($stderr);
like($stdout, qr/^source\|connection\|false\|.*Connection refused/m,
	'status: the source connection row says it cannot be reached');
like($stdout, qr/^target\|subscription\|/m, 'status: the target rows are still there');
like($stdout, qr/^overall\|ready_for_cutover\|false\|[^\n]*\z/m,
	'status: overall is not ok, and comes last');
cmp_ok($secs, '<', 30, sprintf('status did not hang (%.1f s)', $secs));

($ret, $stdout, $stderr) = run_sql('CALL zdm.abort();');
is($ret, 0, 'zdm.abort succeeds while the source is down') or diag($stderr);
like($stderr,
	qr/WARNING:  01000: the migration was aborted, but the source still has its replication slot and publication/,
	'abort warns about what it left on the source');
like($stderr, qr/HINT:  [^\n]*\Q$slot\E/, 'the hint names the slot to drop');
is(migration_leftovers($target), '',
	'after abort: no subscription and no migration row on the target');
is($target->safe_psql('app', "SELECT ok || '|' || (value LIKE 'no migration%') FROM zdm.status()"),
	'false|true', 'after abort: status says there is no migration');
like($target->safe_psql('app', "SELECT detail FROM zdm.event_log WHERE event = 'abort'"),
	qr/left on the source/, 'the event log says what was left on the source');

# --- the source comes back ----------------------------------------------------------

$source->start;
is(migration_leftovers($target, $source),
	"source: publication zdm_pub; source: slot $slot",
	'the slot and publication the warning named are on the source');

($ret, $stdout, $stderr) =
  run_sql("SELECT ok || '|' || detail FROM zdm.check('$dsn') WHERE name = 'leftovers';");
like($stdout, qr/^false\|.*publication zdm_pub.*\Q$slot\E/,
	'zdm.check: the leftovers check names them');
($ret, $stdout, $stderr) = run_sql("CALL zdm.init('$dsn');");
is(sqlstate_of($stderr), '42710', 'init refused because of the leftovers: 42710');
like($stderr, qr/check "leftovers" failed/, 'the error names the leftovers check');
is(migration_leftovers($target, $source),
	"source: publication zdm_pub; source: slot $slot",
	'the refused init neither created nor dropped anything');

# Drop them by hand, and empty the target table the first migration filled.
$source->safe_psql('app',
	"SELECT pg_drop_replication_slot('$slot'); DROP PUBLICATION zdm_pub;");
$target->safe_psql('app', 'TRUNCATE public.events');
($ret, $stdout, $stderr) = run_sql("CALL zdm.init('$dsn');");
is($ret, 0, 'with the leftovers dropped by hand, init succeeds') or diag($stderr);
wait_until_ready($target);
is($target->safe_psql('app', 'SELECT count(*) FROM public.events'), '500', 'rows copied');
($ret, $stdout, $stderr) = run_sql('CALL zdm.abort();');
is($ret, 0, 'abort succeeds');
unlike($stderr, qr/WARNING/, 'abort left nothing on the source this time');
is(migration_leftovers($target, $source), '', 'nothing left on either side');

# --- the password, nowhere --------------------------------------------------------------

is(lines_with_secret($all_output, $ZdmTest::PASSWORD), '',
	'no password in any psql output');
is(lines_with_secret(slurp_file($target->logfile), $ZdmTest::PASSWORD), '',
	"no password in the target's server log");
is(lines_with_secret(slurp_file($source->logfile), $ZdmTest::PASSWORD), '',
	"no password in the source's server log");

done_testing();
