# test/lib/ZdmTest.pm: the source and target clusters every TAP test of
# pg_zdm starts, and the few steps every test repeats on them.
package ZdmTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(start_source start_target source_dsn init_migration
  wait_until_ready status_of same_schema_on_both);

# Password of the role the target uses to reach the source.  Tests grep
# every output and the logs for it.
our $PASSWORD = 'zdm-S3cret-pw';

# start_source(name, extra_conf, install_path => dir): a source cluster
# with wal_level = logical, listening on 127.0.0.1 too, with role
# "migrator" (superuser, password $PASSWORD, scram over TCP) and database
# "app".  install_path runs the servers of another installation (see
# ZdmSources.pm), without the settings it does not know; up to PostgreSQL
# 11 wal senders count against max_connections, which must exceed them and
# the reserved connections.
sub start_source
{
	my ($name, $extra, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name, %params);
	$node->init(allows_streaming => 'logical');
	if ($params{install_path})
	{
		require ZdmSources;
		ZdmSources::forget_unknown_settings($node);
	}
	$node->append_conf('postgresql.conf', qq{
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
max_replication_slots = 10
max_wal_senders = 10
} . ($node->pg_version < 12 ? "max_connections = 20\n" : '')
	  . ($extra // ''));
	# scram for TCP connections of the migrator, as a real source would ask
	my $hba = $node->data_dir . '/pg_hba.conf';
	my $old = PostgreSQL::Test::Utils::slurp_file($hba);
	open my $fh, '>', $hba or die "cannot write $hba: $!";
	print $fh "host all migrator 127.0.0.1/32 scram-sha-256\n";
	print $fh "host all all 127.0.0.1/32 trust\n";
	print $fh $old;
	close $fh;
	$node->start;
	$node->safe_psql('postgres', qq{
CREATE ROLE migrator LOGIN SUPERUSER REPLICATION PASSWORD '$PASSWORD';
CREATE DATABASE app OWNER migrator;
});
	return $node;
}

# managed_role(source, role): a role on the source as managed services give
# it (REPLICATION, CREATE on database app and schema public, member of
# pg_signal_backend, not a superuser; trusted over TCP, see start_source),
# and its DSN.  The test makes it the owner of the tables.
sub managed_role
{
	my ($node, $role) = @_;
	$node->safe_psql('app', qq{
CREATE ROLE "$role" LOGIN NOSUPERUSER REPLICATION;
GRANT CREATE ON DATABASE app TO "$role";
GRANT CREATE ON SCHEMA public TO "$role";
GRANT pg_signal_backend TO "$role";
});
	return "host=127.0.0.1 port=" . $node->port . " dbname=app user=$role";
}
push @EXPORT, 'managed_role';

# start_target(name, extra_conf): a target cluster with database "app" and
# the extension installed in it.
sub start_target
{
	my ($name, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
max_logical_replication_workers = 8
wal_receiver_status_interval = 1s
} . ($extra // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE app');
	$node->safe_psql('app', 'CREATE EXTENSION pg_zdm');
	return $node;
}

# source_dsn(node, dbname, extra): the DSN of the source over TCP as migrator.
sub source_dsn
{
	my ($node, $dbname, $extra) = @_;
	$dbname //= 'app';
	return "host=127.0.0.1 port=" . $node->port
	  . " dbname=$dbname user=migrator password=$PASSWORD"
	  . ($extra ? " $extra" : '');
}

# same_schema_on_both(source, target, sql): run DDL on both sides, as
# pg_dump --schema-only would before a migration.
sub same_schema_on_both
{
	my ($source, $target, $sql) = @_;
	$source->safe_psql('app', $sql);
	$target->safe_psql('app', $sql);
	return;
}

# init_migration(source, target, options): CALL zdm.init and wait until the
# overall status row is ok.
sub init_migration
{
	my ($source, $target, $options) = @_;
	my $dsn = source_dsn($source);
	$options = $options ? ", $options" : '';
	$target->safe_psql('app', "CALL zdm.init('$dsn'$options)");
	wait_until_ready($target);
	return;
}

# wait_until_ready(target): poll zdm.status() until its overall row is ok.
sub wait_until_ready
{
	my ($target) = @_;
	ok( $target->poll_query_until('app',
			"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
		'migration reaches ready_for_cutover');
	return;
}

# status_of(target, component, metric): "value|bytes|ok" of one status row.
sub status_of
{
	my ($target, $component, $metric) = @_;
	return $target->safe_psql('app',
		"SELECT value || '|' || coalesce(bytes::text, '') || '|' || ok FROM zdm.status() "
		  . "WHERE component = '$component' AND metric = '$metric'");
}

# --- Helpers of the init tests (00x): errors, leftovers, secrets ---------

push @EXPORT, qw(psql_verbose sqlstate_of migration_leftovers
  lines_with_secret);

# psql_verbose(node, dbname, sql, psql_params): run sql in psql with
# VERBOSITY verbose, so that every ERROR line shows its SQLSTATE, and
# ON_ERROR_STOP.  Returns (exit code, stdout, stderr) and never dies on an
# SQL error.  Extra psql parameters (timeout, connstr...) pass through.
sub psql_verbose
{
	my ($node, $dbname, $sql, %params) = @_;
	my ($ret, $stdout, $stderr) =
	  $node->psql($dbname, "\\set VERBOSITY verbose\n$sql", %params);
	return ($ret, $stdout, $stderr);
}

# sqlstate_of(stderr): the SQLSTATE of the first ERROR or FATAL in psql's
# verbose output, or '' when there is none.
sub sqlstate_of
{
	my ($stderr) = @_;
	return ($stderr // '') =~ /(?:ERROR|FATAL):  ([0-9A-Z]{5}):/ ? $1 : '';
}

# migration_leftovers(target, sources...): what a migration has made, as one
# line, '' when nothing: slots named like ours or like the table-sync slots
# of a subscription and publication zdm_pub in database app of each source,
# subscriptions and zdm.migration rows on the target.
sub migration_leftovers
{
	my ($target, @sources) = @_;
	my @found;

	foreach my $source (@sources)
	{
		my $name = $source->name;
		push @found, map { "$name: $_" } grep { $_ ne '' } split /\n/,
		  $source->safe_psql('app', q{
SELECT 'slot ' || slot_name FROM pg_catalog.pg_replication_slots
 WHERE slot_name LIKE 'zdm\_%' OR slot_name LIKE 'pg\_%\_sync\_%'
UNION ALL
SELECT 'publication ' || pubname FROM pg_catalog.pg_publication
 WHERE pubname = 'zdm_pub'
ORDER BY 1});
	}
	push @found, map { "target: $_" } grep { $_ ne '' } split /\n/,
	  $target->safe_psql('app', q{
SELECT 'subscription ' || subname FROM pg_catalog.pg_subscription
UNION ALL
SELECT 'zdm.migration row from ' || source_display FROM zdm.migration
ORDER BY 1});
	return join('; ', @found);
}

# lines_with_secret(text, secrets...): the lines of text that contain one of
# the secrets, '' when none does.  Lines written by log_statement = all
# (which PostgreSQL::Test::Cluster sets) are left out: they are the client's
# statement text, logged by the server before any extension code runs, and
# would show a password in CREATE SUBSCRIPTION or ALTER ROLE just the same.
# Statements that carry a secret must therefore be written on one line.
sub lines_with_secret
{
	my ($text, @secrets) = @_;
	my @lines;

	foreach my $line (split /\n/, $text // '')
	{
		next if $line =~ /\bLOG:  statement: /;
		push @lines, $line if grep { index($line, $_) >= 0 } @secrets;
	}
	return join("\n", @lines);
}

push @EXPORT, qw(background_sql finish_background_sql);

# background_sql(node, dbname, sql...): start psql -c sql (verbose errors,
# stop at the first error) on the node and return at once a handle for
# finish_background_sql.  Each sql is sent as a query string of its own (one
# string with several statements would run them in one transaction).
sub background_sql
{
	my ($node, $dbname, @sql) = @_;
	my $bg = { stdout => '', stderr => '' };

	$bg->{harness} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-XAtq',
			'-v', 'VERBOSITY=verbose', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr($dbname),
			map { ('-c', $_) } @sql
		],
		'<', \undef, '>', \$bg->{stdout}, '2>', \$bg->{stderr},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return $bg;
}

# finish_background_sql(handle): wait until that psql exits; returns (exit
# code, stdout, stderr).
sub finish_background_sql
{
	my ($bg) = @_;

	$bg->{harness}->finish;
	return ($bg->{harness}->result(0), $bg->{stdout}, $bg->{stderr});
}

# --- Helpers of the cutover tests (01x) ------------------------------------

push @EXPORT, qw(start_statement start_cutover wait_for_cutover_output
  finish_cutover fence_held_query);

# start_statement(target, sql, setup): start sql in a psql of its own on
# database app of the target (verbose errors, stop at the first error),
# after the SQL setup if given (e.g. SET zdm.*), and return, without waiting
# for it, a handle for finish_cutover whose pid is the backend running it
# (for pg_cancel_backend and pg_terminate_backend).
sub start_statement
{
	my ($target, $sql, $setup) = @_;
	my $call = {
		stdin => ($setup ? "$setup;\n" : '')
		  . "SELECT pg_backend_pid();\n"
		  . "$sql;\n",
		stdout => '',
		stderr => '',
		timer => IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default),
	};

	$call->{harness} = IPC::Run::start(
		[
			$target->installed_command('psql'), '-XAtq',
			'-v', 'VERBOSITY=verbose', '-v', 'ON_ERROR_STOP=1',
			'-d', $target->connstr('app')
		],
		'<', \$call->{stdin}, '>', \$call->{stdout}, '2>', \$call->{stderr},
		$call->{timer});
	pump_until($call->{harness}, $call->{timer}, \$call->{stdout}, qr/^\d+\n/)
	  or die "could not start $sql: $call->{stderr}";
	($call->{pid}) = $call->{stdout} =~ /^(\d+)\n/;
	return $call;
}

# start_cutover(target, arguments, setup): start_statement of
# CALL zdm.cutover(arguments).
sub start_cutover
{
	my ($target, $arguments, $setup) = @_;
	return start_statement($target, 'CALL zdm.cutover(' . ($arguments // '') . ')',
		$setup);
}

# wait_for_cutover_output(handle, regex): wait until the NOTICEs (or the
# error) of the CALL started by start_cutover match regex, as they arrive.
# Returns false if the CALL ended first or the TAP timeout expired.
sub wait_for_cutover_output
{
	my ($call, $regex) = @_;

	return pump_until($call->{harness}, $call->{timer}, \$call->{stderr},
		$regex);
}

# finish_cutover(handle): wait until the psql of start_cutover exits;
# returns (exit code, stderr: its NOTICEs and the error).
sub finish_cutover
{
	my ($call) = @_;

	$call->{harness}->finish;
	return ($call->{harness}->result(0), $call->{stderr});
}

# fence_held_query(tables...): SQL for the source database app, true when a
# session of pg_zdm holds the write fence (EXCLUSIVE, granted) on every one
# of the tables (names as SQL writes them).
sub fence_held_query
{
	my (@tables) = @_;
	my $list = join(', ',
		map { my $t = $_; $t =~ s/'/''/g; "'$t'::regclass" } @tables);
	return qq{
SELECT count(DISTINCT l.relation) = } . scalar(@tables) . qq{
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = 'pg_zdm' AND l.mode = 'ExclusiveLock' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation IN ($list)};
}

1;
