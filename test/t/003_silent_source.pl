# test/t/003_silent_source.pl: a source that never answers, and one that
# refuses connections.
#
# The silent source is a TCP listener that lets the kernel complete the
# handshake and then never sends a byte, as a hung server or a black-holing
# firewall would.  Its DSNs give connect_timeout=60, so that only what is
# under test can end a call in time:
#   (a) statement_timeout ends zdm.check and CALL zdm.init (57014);
#   (b) pg_cancel_backend from another session ends CALL zdm.init (57014);
#   (c) pg_terminate_backend ends it (57P01), and the server carries on;
#   the DSN's connect_timeout, or 10 s when it sets none, ends a call too.
# (a) and (b) run in one long-lived session, which must afterwards hold no
# connection to the source (the listener sees each one closed) and no lock.
# A port where nothing listens gives 08001 at once.  Nothing is left on the
# target, and the password is in no output and not in the server log.

use strict;
use warnings;

use lib 'test/lib';
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ZdmTest;

# Upper bound for "ended promptly": far below connect_timeout=60, far above
# what a noisy machine needs for a 1 s statement_timeout or a cancel.
my $PROMPTLY = 30;

my $target = start_target('target');

# The silent source: listening, never answering.  It stays open until the
# test ends; silent_connections() accepts what it received, to look at.
my $silent = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp',
	Listen => 64)
  or die "cannot listen on 127.0.0.1: $!";
$silent->blocking(0);
my $silent_dsn = 'host=127.0.0.1 port=' . $silent->sockport
  . " dbname=app user=migrator password=$ZdmTest::PASSWORD";

# A port where nothing listens: bound once to find it free, then closed.
my $closed = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp',
	Listen => 1)
  or die "cannot listen on 127.0.0.1: $!";
my $refused_dsn = 'host=127.0.0.1 port=' . $closed->sockport
  . " dbname=app user=migrator password=$ZdmTest::PASSWORD connect_timeout=60";
$closed->close;

my $all_output = '';

# The connections the silent source received since the last call, as
# (total, closed by the target): each is accepted, what the client sent (its
# SSL or startup request) is read, then end-of-file means the client closed it.
sub silent_connections
{
	my ($total, $closed_by_client) = (0, 0);

	while (my $conn = $silent->accept)
	{
		$total++;
		$conn->blocking(0);
		for (;;)
		{
			my $n = sysread($conn, my $buf, 65536);
			next if $n;
			$closed_by_client++ unless !defined $n && ($!{EAGAIN} || $!{EWOULDBLOCK});
			last;
		}
		$conn->close;
	}
	return ($total, $closed_by_client);
}

# The long-lived session of (a) and (b), and its backend.
my $session = $target->background_psql('app', on_error_stop => 0);
my $session_pid = $session->query_safe('SELECT pg_backend_pid()');

# Run sql in the session; returns (seconds, SQLSTATE, error message or '').
sub in_session
{
	my ($sql) = @_;
	my $start = time;
	my $out = $session->query("$sql\n\\echo :SQLSTATE '|' :LAST_ERROR_MESSAGE");
	my $secs = time - $start;

	$all_output .= "$out\n";
	my ($state, $message) = $out =~ /^(\w{5}) \| (.*)\z/m
	  or die "no SQLSTATE line in: $out";
	return ($secs, $state, $state eq '00000' ? '' : $message);
}

# The session let go of everything: every connection it opened to the
# silent source is closed, it holds no lock but its own virtual xid's, and
# nothing of a migration exists.
sub session_clean
{
	my ($case) = @_;
	my ($total, $closed_by_client) = silent_connections();
	cmp_ok($total, '>', 0, "$case: the silent source was connected to");
	is($closed_by_client, $total,
		"$case: every connection to the silent source is closed ($closed_by_client/$total)");
	is( $target->safe_psql('app',
			"SELECT count(*) FROM pg_locks WHERE pid = $session_pid AND locktype <> 'virtualxid'"),
		'0', "$case: the session holds no lock");
	is(migration_leftovers($target), '', "$case: nothing created on the target");
	return;
}

# --- (a) statement_timeout --------------------------------------------------

in_session("SET statement_timeout = '1s';");
my ($secs, $state, $message) =
  in_session("SELECT * FROM zdm.check('$silent_dsn connect_timeout=60');");
is($state, '57014', 'statement_timeout ends zdm.check: 57014');
like($message, qr/canceling statement due to statement timeout/,
	'zdm.check: cancelled by the statement timeout');
cmp_ok($secs, '<', $PROMPTLY, sprintf('zdm.check ended promptly (%.1f s)', $secs));

($secs, $state, $message) =
  in_session("CALL zdm.init('$silent_dsn connect_timeout=60');");
is($state, '57014', 'statement_timeout ends CALL zdm.init: 57014');
like($message, qr/canceling statement due to statement timeout/,
	'zdm.init: cancelled by the statement timeout');
cmp_ok($secs, '<', $PROMPTLY, sprintf('zdm.init ended promptly (%.1f s)', $secs));
session_clean('statement_timeout');
in_session('RESET statement_timeout;');

# --- (b) pg_cancel_backend, in the same session ------------------------------

# Find the backend running CALL zdm.init and signal it with function.
sub signal_init
{
	my ($function) = @_;
	ok( $target->poll_query_until('app', q{
SELECT count(*) FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()
   AND state = 'active' AND wait_event_type = 'Extension'}, '1'),
		"$function: CALL zdm.init waits on the silent source");
	is( $target->safe_psql('app', qq{
SELECT $function(pid) FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()}),
		't', "$function signalled the backend running zdm.init");
	return;
}

$session->query_until(qr/init started/,
	"\\echo init started\nCALL zdm.init('$silent_dsn connect_timeout=60');\n");
signal_init('pg_cancel_backend');
my $start = time;
my $out = $session->query("\\echo :SQLSTATE '|' :LAST_ERROR_MESSAGE");
$secs = time - $start;
$all_output .= "$out\n";
like($out, qr/^57014 \| canceling statement due to user request$/m,
	'pg_cancel_backend ends CALL zdm.init: 57014, cancelled by the user');
cmp_ok($secs, '<', $PROMPTLY, sprintf('the cancel took effect promptly (%.1f s)', $secs));
session_clean('pg_cancel_backend');
is(scalar $session->query('SELECT 1'), '1', 'the session is still usable');
$session->quit;

# --- (c) pg_terminate_backend --------------------------------------------------

my $bg = background_sql($target, 'app',
	"CALL zdm.init('$silent_dsn connect_timeout=60')");
signal_init('pg_terminate_backend');
$start = time;
my ($ret, $stdout, $stderr) = finish_background_sql($bg);
$secs = time - $start;
$all_output .= "$stdout\n$stderr\n";
is(sqlstate_of($stderr), '57P01', 'pg_terminate_backend ends CALL zdm.init: 57P01');
like($stderr, qr/terminating connection due to administrator command/,
	'zdm.init: terminated by the administrator');
cmp_ok($secs, '<', $PROMPTLY,
	sprintf('the termination took effect promptly (%.1f s)', $secs));
ok( $target->poll_query_until('app', q{
SELECT count(*) FROM pg_stat_activity
 WHERE query LIKE '%zdm.init%' AND pid <> pg_backend_pid()}, '0'),
	'the terminated backend is gone');
is($target->safe_psql('app', 'SELECT 1'), '1', 'the target server carries on');
is(migration_leftovers($target), '', 'pg_terminate_backend: nothing created on the target');
silent_connections();

# --- connect_timeout -------------------------------------------------------------

# Run sql on the target in a psql of its own; returns (seconds, exit code,
# stdout, stderr).
sub timed_sql
{
	my ($sql) = @_;
	my $start = time;
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', $sql);
	$all_output .= "$stdout\n$stderr\n";
	return (time - $start, $ret, $stdout, $stderr);
}

($secs, $ret, $stdout, $stderr) = timed_sql(
	"SELECT ok || '|' || detail FROM zdm.check('$silent_dsn connect_timeout=2') WHERE name = 'connection';"
);
like($stdout, qr/^false\|.*within 2 seconds/,
	"zdm.check honours the DSN's connect_timeout: connection row not ok");
cmp_ok($secs, '<', $PROMPTLY, sprintf('zdm.check gave up promptly (%.1f s)', $secs));

($secs, $ret, $stdout, $stderr) = timed_sql("CALL zdm.init('$silent_dsn');");
is(sqlstate_of($stderr), '08001',
	'without connect_timeout in the DSN, zdm.init gives up by itself: 08001');
like($stderr, qr/within 10 seconds/, 'the default connect_timeout is 10 s');
# Both sides: not before the 10 s (the call measured here includes them all),
# and not long after (a timer, not the machine's speed, ends it).
cmp_ok($secs, '>=', 9.5,
	sprintf('zdm.init waited the default connect_timeout before giving up (%.1f s >= 9.5 s)', $secs));
cmp_ok($secs, '<', 10 + 8,
	sprintf('zdm.init gave up soon after the default connect_timeout (%.1f s < 18 s)', $secs));
is(migration_leftovers($target), '', 'connect timeout: nothing created on the target');

# --- connection refused ------------------------------------------------------------

($secs, $ret, $stdout, $stderr) = timed_sql("CALL zdm.init('$refused_dsn');");
is(sqlstate_of($stderr), '08001', 'connection refused: 08001');
like($stderr, qr/Connection refused/, "connection refused: libpq's reason shown");
cmp_ok($secs, '<', $PROMPTLY, sprintf('connection refused: failed at once (%.1f s)', $secs));
is(migration_leftovers($target), '', 'connection refused: nothing created on the target');

($secs, $ret, $stdout, $stderr) = timed_sql(
	"SELECT ok || '|' || detail FROM zdm.check('$refused_dsn') WHERE name = 'connection';");
like($stdout, qr/^false\|.*Connection refused/,
	'connection refused: zdm.check shows the connection row not ok');

# --- the password, nowhere ------------------------------------------------------------

is(lines_with_secret($all_output, $ZdmTest::PASSWORD), '',
	'no password in any psql output');
is(lines_with_secret(slurp_file($target->logfile), $ZdmTest::PASSWORD), '',
	"no password in the target's server log");

$silent->close;
done_testing();
