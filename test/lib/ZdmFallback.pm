# test/lib/ZdmFallback.pm: what the fallback tests (test/t/07x) share: a
# target that can publish back to the source, the DSN the source reaches it
# with, the names of the reverse replication's objects, and the checks that
# follow a cutover with fallback and a fallback.
#
# In a fallback the roles swap: the target is where the application writes
# and the source receives those writes through a subscription of its own
# (zdm_fallback_<target system id>_<target database oid>) on a publication
# zdm_pub and a slot of the same name on the target.  The helpers below
# always say "source" and "target" as pg_zdm does: the source is the old
# server, the target the new one.
package ZdmFallback;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

our @EXPORT = qw(start_fallback_target target_dsn fallback_name
  reverse_objects wait_reverse_streaming target_fenced_query
  table_digest keys_on acked_keys missing_keys log_position
  apply_trouble_since reverse_apply_errors fallback_check_rows
  poll_while_running wait_no_reverse_objects stop_unless
  stop_walsender);

# start_fallback_target(name, extra_conf): like ZdmTest's start_target, a
# cluster with database "app" and the extension, but able to publish:
# wal_level = logical with wal senders and slots (PostgreSQL::Test::Cluster's
# allows_streaming => 'logical'), listening on 127.0.0.1 too, every TCP
# connection from there trusted (the source's reverse subscription connects
# as the target's bootstrap superuser).
sub start_fallback_target
{
	my ($name, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', qq{
listen_addresses = '127.0.0.1'
max_worker_processes = 16
max_logical_replication_workers = 8
max_replication_slots = 10
max_wal_senders = 10
wal_receiver_status_interval = 1s
} . ($extra // ''));
	my $hba = $node->data_dir . '/pg_hba.conf';
	my $old = PostgreSQL::Test::Utils::slurp_file($hba);
	open my $fh, '>', $hba or die "cannot write $hba: $!";
	print $fh "host all all 127.0.0.1/32 trust\n";
	print $fh $old;
	close $fh;
	$node->start;
	$node->safe_psql('postgres', 'CREATE DATABASE app');
	$node->safe_psql('app', 'CREATE EXTENSION pg_zdm');
	return $node;
}

# target_dsn(target): how the source reaches database app of the target:
# over TCP, as the target's bootstrap superuser (trusted, see above).
sub target_dsn
{
	my ($target) = @_;
	my $user = $target->safe_psql('app', 'SELECT current_user');
	return "host=127.0.0.1 port=" . $target->port . " dbname=app user=$user";
}

# fallback_name(target): zdm_fallback_<system id>_<oid of database app>, the
# name of the reverse subscription on the source and of its slot here.
sub fallback_name
{
	my ($target) = @_;
	return $target->safe_psql('app', q{
SELECT 'zdm_fallback_' || (SELECT system_identifier FROM pg_catalog.pg_control_system())
    || '_' || (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())});
}

# reverse_objects(source, target): the objects of a reverse replication, as
# one line, '' when there are none: every subscription of the source (with
# enabled or disabled), every replication slot and the publication zdm_pub
# of the target.
sub reverse_objects
{
	my ($source, $target) = @_;
	my @found;

	push @found, map { "source: $_" } grep { $_ ne '' } split /\n/,
	  $source->safe_psql('app', q{
SELECT 'subscription ' || subname || CASE WHEN subenabled THEN ' (enabled)' ELSE ' (disabled)' END
FROM pg_catalog.pg_subscription ORDER BY 1});
	push @found, map { "target: $_" } grep { $_ ne '' } split /\n/,
	  $target->safe_psql('app', q{
SELECT 'slot ' || slot_name FROM pg_catalog.pg_replication_slots
UNION ALL
SELECT 'publication ' || pubname FROM pg_catalog.pg_publication WHERE pubname = 'zdm_pub'
ORDER BY 1});
	return join('; ', @found);
}

# stop_unless(ok, what): when a step that the rest of the test depends on
# failed (a cutover or a fallback that should have succeeded), end the test
# here, with what failed so far, instead of waiting through the timeouts of
# every check after it.
sub stop_unless
{
	my ($ok, $what) = @_;
	return if $ok;
	diag "stopping here: $what failed, and everything after it depends on it";
	done_testing();
	exit 0;
}

# stop_walsender(source): stop (SIGSTOP) the source's walsender of the
# forward slot, holding the forward replication back without a lock on the
# target (a lock there would also hold back the cutover's CREATE
# PUBLICATION, and a transaction with an xid the creation of its slot).
# Returns its pid, for kill 'CONT'.  The test must also send CONT from an
# END block, should it die in between.
sub stop_walsender
{
	my ($source) = @_;
	my $pid = $source->safe_psql('app', q{
SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE 'zdm\_%' AND active});
	die "no active walsender of the forward slot on the source" unless $pid =~ /^\d+$/;
	kill('STOP', $pid) == 1 or die "could not stop the walsender $pid: $!";
	return $pid;
}

# wait_no_reverse_objects(source, target): wait (up to the TAP timeout) until
# reverse_objects is '' -- the fallback and zdm.finish() may remove them
# after the call returned, as the cutover drops its slot -- and return what
# is left then.
sub wait_no_reverse_objects
{
	my ($source, $target) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	my $left;

	while (($left = reverse_objects($source, $target)) ne '' && time() < $deadline)
	{
		select(undef, undef, undef, 0.2);
	}
	return $left;
}

# wait_reverse_streaming(target, label): wait until zdm.status() says that
# the source's reverse apply worker streams (component fallback, metric
# state: a value starting with "streaming", ok).
sub wait_reverse_streaming
{
	my ($target, $label) = @_;
	return ok(
		$target->poll_query_until('app', q{
SELECT coalesce(bool_and(value LIKE 'streaming%' AND ok), false) FROM zdm.status()
WHERE component = 'fallback' AND metric = 'state'}),
		"$label: zdm.status() says the reverse replication streams")
	  || diag('zdm.status(): '
		  . $target->safe_psql('app',
			  "SELECT string_agg(component || '/' || metric || ': ' || coalesce(value, '') || ' ' || ok, '; ') FROM zdm.status()"));
}

# poll_while_running(node, sql, call, call_node): like poll_query_until on
# database app of node, but gives up as soon as the statement started by
# start_statement (call) on call_node (default: node) no longer runs (its
# backend is not active any more): a call that ended early need not be
# waited for until the TAP timeout.  Returns whether sql returned 't'.
sub poll_while_running
{
	my ($node, $sql, $call, $call_node) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	$call_node //= $node;

	while (time() < $deadline)
	{
		return 1 if $node->safe_psql('app', $sql) eq 't';
		return $node->safe_psql('app', $sql) eq 't'
		  if $call_node->safe_psql('app',
			"SELECT count(*) FROM pg_stat_activity WHERE pid = $call->{pid} AND state = 'active'")
		  eq '0';
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

# target_fenced_query(tables...): SQL for the target, true when a session
# that is not one of the ZdmLoad writers holds, granted, a lock that
# conflicts with the ROW EXCLUSIVE of writes on every one of the tables
# (names as SQL writes them): the fallback's fence.
sub target_fenced_query
{
	my (@tables) = @_;
	my $list = join(', ',
		map { my $t = $_; $t =~ s/'/''/g; "'$t'::regclass" } @tables);
	return qq{
SELECT count(DISTINCT l.relation) = } . scalar(@tables) . qq{
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name IS DISTINCT FROM 'zdm_load_writer' AND l.granted
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation IN ($list)};
}

# table_digest(node, table): "count|md5 of every row in text order" of a
# table, to compare both sides.
sub table_digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SELECT count(*) || '|' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM $table t"
	);
}

# keys_on(node, tables...): the "table client seq" keys of the rows of the
# ZdmLoad writers (client > 0) on the node, as a hash.
sub keys_on
{
	my ($node, @tables) = @_;
	return map { $_ => 1 } split /\n/,
	  $node->safe_psql('app', join(' UNION ALL ',
		map { "SELECT '$_ ' || client || ' ' || seq FROM $_ WHERE client > 0" } @tables));
}

# acked_keys(load): the "table client seq" keys of the commits the writers
# of a ZdmLoad had acknowledged.
sub acked_keys
{
	my ($load) = @_;
	return map { "$_->{table} $_->{id} $_->{seq}" }
	  grep { $_->{kind} eq 'ok' } $load->records;
}

# missing_keys(node, tables, keys...): the keys not on the node.
sub missing_keys
{
	my ($node, $tables, @keys) = @_;
	my %on = keys_on($node, @$tables);
	return grep { !$on{$_} } @keys;
}

# log_position(node): where the node's server log ends now, for
# apply_trouble_since.
sub log_position
{
	my ($node) = @_;
	return -s $node->logfile // 0;
}

# apply_trouble_since(node, offset): the lines of the node's server log
# after offset that say a replicated change clashed with what the node had:
# a duplicate key, a conflict (logged from PostgreSQL 18), an error while
# applying a change (its CONTEXT line: "processing remote data").  '' when
# there is none.  On the source after a cutover with fallback such a line
# means that the reverse replication sent it a change it already had, lost
# one, or had its change refused.
sub apply_trouble_since
{
	my ($node, $offset) = @_;
	my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset);
	return join("\n",
		grep { /duplicate key value|conflict detected|could not find row|processing remote data/i }
		  split /\n/, $log);
}

# reverse_apply_errors(source, name): apply and sync errors the source's
# statistics count for subscription name (pg_stat_subscription_stats, from
# PostgreSQL 15), or undef on an older source.
sub reverse_apply_errors
{
	my ($source, $name) = @_;
	return undef if $source->safe_psql('app', 'SHOW server_version_num') < 150000;
	return $source->safe_psql('app', qq{
SELECT coalesce(sum(apply_error_count + sync_error_count), 0) FROM pg_stat_subscription_stats
WHERE subname = '$name'});
}

# fallback_check_rows(target, dsn_sql): "name|ok|blocking" of every row of
# zdm.check_fallback(dsn_sql) (an SQL expression, e.g. a quoted literal or
# NULL), one per line, ordered by name.
sub fallback_check_rows
{
	my ($target, $dsn_sql) = @_;
	return $target->safe_psql('app',
		"SELECT name || '|' || ok || '|' || blocking FROM zdm.check_fallback($dsn_sql) ORDER BY name"
	);
}

1;
