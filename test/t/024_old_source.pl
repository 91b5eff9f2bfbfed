# test/t/024_old_source.pl: a source older than the oldest release pg_zdm
# supports (PostgreSQL 10) is refused before any of its catalogs is queried.
#
# Debian 12 ships no server older than 15, so the old source is a small fake
# speaking just enough of the protocol: it accepts any login, announces
# server_version 9.6.24, and answers every simple query with "SET".
# zdm.check must show a failing server_version row and zdm.init fail with
# 0A000, creating nothing on the target.

use strict;
use warnings;

use lib 'test/lib';
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $target = start_target('target');

my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Listen => 5,
	ReuseAddr => 1) or die "cannot listen: $!";
my $port = $listener->sockport;

# One backend message: type, then length and body.
sub message
{
	my ($type, $body) = @_;
	return $type . pack('N', length($body) + 4) . $body;
}

# Serve one connection the way a 9.6 server would, as far as libpq and the
# session setup of pg_zdm go.
sub serve_old_server
{
	my ($client) = @_;
	for (;;)
	{
		my $header;
		return unless read($client, $header, 8) == 8;
		my ($length, $code) = unpack('NN', $header);
		my $rest = '';
		read($client, $rest, $length - 8) if $length > 8;
		if ($code == 80877103)    # SSLRequest: no SSL here
		{
			print $client 'N';
			next;
		}
		last;                     # the StartupMessage
	}
	print $client message('R', pack('N', 0));
	print $client message('S', "server_version\x009.6.24\x00");
	print $client message('S', "client_encoding\x00UTF8\x00");
	print $client message('K', pack('NN', 4242, 1));
	print $client message('Z', 'I');
	for (;;)
	{
		my $type;
		return unless read($client, $type, 1) == 1;
		my $length;
		read($client, $length, 4);
		my $body = '';
		read($client, $body, unpack('N', $length) - 4);
		return if $type eq 'X';
		if ($type eq 'Q')
		{
			my $statements = () = $body =~ /;/g;
			print $client message('C', "SET\x00") for (0 .. $statements);
			print $client message('Z', 'I');
		}
	}
}

my $pid = fork();
die "fork failed: $!" unless defined $pid;
if ($pid == 0)
{
	while (my $client = $listener->accept)
	{
		$client->autoflush(1);
		serve_old_server($client);
		close $client;
	}
	exit 0;
}

my $dsn = "host=127.0.0.1 port=$port dbname=app user=old sslmode=disable gssencmode=disable";

is( $target->safe_psql('app',
		"SELECT ok || '|' || blocking || '|' || detail FROM zdm.check('$dsn') "
		  . "WHERE name = 'server_version'"),
	'false|true|The source runs PostgreSQL 9.6.24; pg_zdm needs 10 or later.',
	'zdm.check shows the source version as a failing, blocking check');

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', "CALL zdm.init('$dsn')");
isnt($ret, 0, 'zdm.init refuses an old source');
is(sqlstate_of($stderr), '0A000', '... with SQLSTATE 0A000');
like($stderr, qr/check "server_version" failed/, '... naming the check');
like($stderr, qr/HINT:  Upgrade the source/, '... with a hint');
is($target->safe_psql('app',
		'SELECT (SELECT count(*) FROM pg_subscription) + (SELECT count(*) FROM zdm.migration)'),
	'0', 'nothing was created on the target');

kill 'TERM', $pid;
waitpid($pid, 0);
done_testing();
