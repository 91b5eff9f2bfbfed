# test/t/004_init_interrupted.pl: an init that fails or is stopped midway
# leaves nothing behind, on either side.
#
#   - a failure on the target after publication and slot exist on the source
#     (an injected error while the migration row is written): the error
#     comes through, and slot and publication are dropped again;
#   - an init stuck while the source creates the slot, because a transaction
#     holding an xid is open on the source (slot creation waits for every
#     such transaction of the source cluster), then ended by
#     pg_cancel_backend, by statement_timeout and by pg_terminate_backend:
#     the call ends promptly, the source backend creating the slot is gone,
#     and no slot appears later when the open transaction commits.
# Finally init succeeds on the same clusters, to show that the setup was
# sound, and the password is in no output and in neither server log.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmTest;

# Upper bound for "ended promptly" (machines are noisy).
my $PROMPTLY = 30;

my $source = start_source('source');
my $target = start_target('target');
my $dsn = source_dsn($source);
same_schema_on_both($source, $target,
	'CREATE TABLE public.accounts (id bigint PRIMARY KEY, balance numeric NOT NULL);');
$source->safe_psql('app',
	'INSERT INTO public.accounts SELECT i, 100 FROM generate_series(1, 100) i');

my $all_output = '';

# No session of pg_zdm left on the source (so no slot creation still under
# way), and nothing of a migration on either side.
sub nothing_left
{
	my ($case) = @_;
	ok( $source->poll_query_until('app',
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_zdm'",
			'0'),
		"$case: no pg_zdm session left on the source");
	is(migration_leftovers($target, $source), '',
		"$case: no slot, publication, subscription or migration row");
	return;
}

# --- a failure on the target after the slot was created -----------------------

$target->safe_psql('app', q{
CREATE FUNCTION public.fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected failure' USING ERRCODE = 'XX123';
END $$;
CREATE TRIGGER fail_insert BEFORE INSERT ON zdm.migration
    FOR EACH ROW EXECUTE FUNCTION public.fail_insert();
});
my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.init('$dsn');");
$all_output .= "$stdout\n$stderr\n";
is(sqlstate_of($stderr), 'XX123', 'failure after the slot: the error comes through');
like($stderr, qr/injected failure/, 'failure after the slot: its message too');
unlike($stderr, qr/WARNING/, 'failure after the slot: no warning about leftovers');
nothing_left('failure after the slot');
$target->safe_psql('app', 'DROP TRIGGER fail_insert ON zdm.migration');

# --- init stuck in slot creation on the source --------------------------------

# Open a transaction holding an xid on the source, start CALL zdm.init
# (with set_up, e.g. a statement_timeout, before it) and wait until the
# source backend creating the slot waits for that transaction.  Returns the
# open transaction's session and the background init.
sub start_stuck_init
{
	my ($set_up) = @_;
	my $blocker = $source->background_psql('app');
	$blocker->query_safe('BEGIN; INSERT INTO public.accounts VALUES (-1, 0);');

	my $bg = background_sql($target, 'app', ($set_up // ()),
		"CALL zdm.init('$dsn')");
	ok( $source->poll_query_until('app', q{
SELECT count(*) FROM pg_stat_activity
 WHERE query LIKE '%pg_create_logical_replication_slot%'
   AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'}, '1'),
		'the slot creation on the source waits for the open transaction');
	is( $target->safe_psql('app', q{
SELECT wait_event_type FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()}),
		'Extension', 'zdm.init waits on the source');
	return ($blocker, $bg);
}

# Wait for the background init to end; returns (seconds since start, stderr).
# Then commit the open transaction on the source: a slot creation still
# alive would complete now.
sub end_stuck_init
{
	my ($blocker, $bg, $start) = @_;
	my ($ret, $stdout, $stderr) = finish_background_sql($bg);
	my $secs = time - $start;

	$all_output .= "$stdout\n$stderr\n";
	$blocker->query_safe('COMMIT; DELETE FROM public.accounts WHERE id = -1;');
	$blocker->quit;
	return ($secs, $stderr);
}

foreach my $function ('pg_cancel_backend', 'pg_terminate_backend')
{
	my ($blocker, $bg) = start_stuck_init();
	my $start = time;
	is( $target->safe_psql('app', qq{
SELECT $function(pid) FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()}),
		't', "$function signalled zdm.init");
	my ($secs, $stderr) = end_stuck_init($blocker, $bg, $start);
	my ($code, $message) =
	  $function eq 'pg_cancel_backend'
	  ? ('57014', qr/canceling statement due to user request/)
	  : ('57P01', qr/terminating connection due to administrator command/);
	is(sqlstate_of($stderr), $code, "$function during slot creation: $code");
	like($stderr, $message, "$function during slot creation: its message");
	unlike($stderr, qr/WARNING/,
		"$function during slot creation: no warning about leftovers");
	cmp_ok($secs, '<', $PROMPTLY,
		sprintf('%s took effect promptly (%.1f s)', $function, $secs));
	nothing_left("$function during slot creation");
}

{
	my $start = time;
	my ($blocker, $bg) = start_stuck_init("SET statement_timeout = '3s'");
	my ($secs, $stderr) = end_stuck_init($blocker, $bg, $start);
	is(sqlstate_of($stderr), '57014', 'statement_timeout during slot creation: 57014');
	like($stderr, qr/canceling statement due to statement timeout/,
		'statement_timeout during slot creation: its message');
	cmp_ok($secs, '<', $PROMPTLY,
		sprintf('statement_timeout took effect promptly (%.1f s)', $secs));
	nothing_left('statement_timeout during slot creation');
}

is($target->safe_psql('app', 'SELECT 1'), '1', 'the target server carries on');

# --- and init works on these clusters --------------------------------------------

($ret, $stdout, $stderr) = psql_verbose($target, 'app', "CALL zdm.init('$dsn');");
$all_output .= "$stdout\n$stderr\n";
is($ret, 0, 'init succeeds once nothing stands in its way') or diag($stderr);
wait_until_ready($target);
is($target->safe_psql('app', 'SELECT count(*) FROM public.accounts'), '100',
	'rows copied');
($ret, $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.abort();');
$all_output .= "$stdout\n$stderr\n";
is($ret, 0, 'abort succeeds');
nothing_left('after abort');

# --- the password, nowhere ---------------------------------------------------------

is(lines_with_secret($all_output, $ZdmTest::PASSWORD), '',
	'no password in any psql output');
is(lines_with_secret(slurp_file($target->logfile), $ZdmTest::PASSWORD), '',
	"no password in the target's server log");
is(lines_with_secret(slurp_file($source->logfile), $ZdmTest::PASSWORD), '',
	"no password in the source's server log");

done_testing();
