# test/t/010_cutover_under_load.pl: CALL zdm.cutover() while clients keep
# writing to the source, and what must hold after it.
#
# Writers (test/lib/ZdmLoad.pm) insert rows with unique keys into two tables
# (one with an identity column, one with a serial) for the whole cutover and
# record every commit the source acknowledged:
#   - two persistent sessions with autocommit INSERTs,
#   - two clients that reconnect for every transaction,
#   - a client holding an open write transaction when the fence comes,
#   - a client that sets default_transaction_read_only = off and writes in
#     BEGIN READ WRITE transactions.
# So that the target is surely behind when writes are fenced, a target
# session holds a lock that keeps the apply worker waiting from before the
# cutover until the fence holds: the cutover must then wait for the target
# to catch up before it detaches.
# After the cutover: no acknowledged row is missing on the target, row
# counts match, the open transaction never committed, every writer is
# refused with SQLSTATE 25006 from then on, every sequence on the target is
# ahead of the source and usable, the source rejects INSERT, UPDATE, DELETE
# and TRUNCATE on every table (reads still work), the target is detached
# (no subscription, slot or publication), zdm.status() and zdm.event_log
# say completed, and a second cutover says it is already complete.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmLoad;
use ZdmTest;

my @tables = qw(load_ident load_serial);

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\n");
my $target = start_target('target');

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
});
# rows for the initial copy, under writer id 0
$source->safe_psql('app', q{
INSERT INTO load_ident (client, seq) SELECT 0, i FROM generate_series(1, 500) i;
INSERT INTO load_serial (client, seq) SELECT 0, i FROM generate_series(1, 500) i;
});
init_migration($source, $target);

# --- writers ---------------------------------------------------------------

my $load = ZdmLoad->new($source, 'app', tables => \@tables);
my %mode_of = (
	1 => 'session',
	2 => 'session',
	3 => 'reconnect',
	4 => 'reconnect',
	5 => 'open_tx',
	6 => 'read_write');
$load->start_writer($mode_of{$_}, $_) foreach sort keys %mode_of;

# how many records of a kind writer id has
sub count_of
{
	my ($id, $kind) = @_;
	return scalar grep { $_->{kind} eq $kind } $load->records($id);
}

ok( $load->wait_for(
		sub {
			count_of(5, 'open') == 1
			  && !grep { $_ != 5 && count_of($_, 'ok') < 20 } keys %mode_of;
		}),
	'every writer has commits acknowledged, and one transaction is open');

# --- the cutover -----------------------------------------------------------

# The rows the target has from the writers, as "table id seq" keys.
sub rows_on_target
{
	return map { $_ => 1 } split /\n/,
	  $target->safe_psql('app', join(' UNION ALL ',
		map { "SELECT '$_ ' || client || ' ' || seq FROM $_ WHERE client > 0" } @tables));
}

# The acknowledged commits, as "table id seq" keys.
sub acked
{
	return map { "$_->{table} $_->{id} $_->{seq}" }
	  grep { $_->{kind} eq 'ok' } $load->records;
}

# Hold the target back, so that it is surely behind when the fence comes:
# a target session locks load_ident and the apply worker waits for it
# while the writers go on.  It is released once the source is fenced.
my $stall = $target->background_psql('app');
$stall->query_safe('BEGIN; LOCK TABLE load_ident IN EXCLUSIVE MODE');
ok( $target->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks
WHERE relation = 'load_ident'::regclass AND NOT granted}),
	'the apply worker waits for a lock on the target');
my $acked_at_stall = scalar(acked());
ok($load->wait_for(sub { acked() >= $acked_at_stall + 50 }),
	'the writers go on while the target is held back');

my $call = start_cutover($target, "timeout => '2 min'");
ok(wait_for_cutover_output($call, qr/NOTICE:  00000: final source position/),
	'the cutover reports writes blocked and the final source position');
is($source->safe_psql('app', fence_held_query(@tables)),
	't', 'a session of pg_zdm holds the fence on every table of the source');
my %on_target = rows_on_target();
my $behind = grep { !$on_target{$_} } acked();
cmp_ok($behind, '>', 0,
	"when the fence holds, $behind acknowledged commits are not on the target yet");
$stall->query_safe('COMMIT');
$stall->quit;

my ($ret, $stderr) = finish_cutover($call);
is($ret, 0, 'cutover succeeds under write load');
note "cutover output:\n$stderr";
like(
	$stderr,
	qr/cutover complete: writes were blocked on the source for/,
	'the last NOTICE says the cutover is complete');

# The writers go on until each one has been refused by the read-only source
# (not worth waiting for if the cutover failed).
ok( $ret == 0 && $load->wait_for(
		sub {
			!grep {
				my $id = $_;
				!grep { $_->{kind} eq 'err' && $_->{sqlstate} eq '25006' }
				  $load->records($id)
			} keys %mode_of;
		}),
	'every writer is refused with SQLSTATE 25006 after the cutover');
is($load->stop, 0, 'every writer stops when asked');

# --- nothing acknowledged is lost ------------------------------------------

my @records = $load->records;
%on_target = rows_on_target();
my @acked = acked();
my @missing = grep { !$on_target{$_} } @acked;
my $found = @acked - @missing;
is(scalar(@missing), 0,
	scalar(@acked) . " acknowledged commits, $found of them on the target: none lost");
diag 'missing on the target: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ])
  if @missing;
note sprintf('writer %d (%s): %d ok, %d err, %d lost', $_, $mode_of{$_},
	count_of($_, 'ok'), count_of($_, 'err'), count_of($_, 'lost'))
  foreach sort keys %mode_of;

foreach my $table (@tables)
{
	my $acked_here = grep { /^\Q$table\E / } @acked;
	my $target_count =
	  $target->safe_psql('app', "SELECT count(*) FROM $table WHERE client > 0");
	my $source_count =
	  $source->safe_psql('app', "SELECT count(*) FROM $table WHERE client > 0");
	cmp_ok($target_count, '>=', $acked_here,
		"$table: $target_count rows of writers on the target, $acked_here acknowledged");
	is( $target->safe_psql('app', "SELECT count(*) FROM $table"),
		$source->safe_psql('app', "SELECT count(*) FROM $table"),
		"$table: same row count on source and target");
	is($target_count, $source_count,
		"$table: same rows of writers on source and target");
}

# The transaction that was open when the fence came was ended, not committed.
my ($open) = grep { $_->{kind} eq 'open' } @records;
my ($open_end) =
  grep { $_->{kind} ne 'open' && $_->{id} == 5 && $_->{seq} == $open->{seq} }
  @records;
# (psql either loses the connection at once or first reports the 57P01)
$open_end //= { kind => 'none: still open when the writers stopped', sqlstate => '' };
ok( $open_end->{kind} eq 'lost'
	  || ($open_end->{kind} eq 'err' && $open_end->{sqlstate} eq '57P01'),
	'the open transaction was ended by the fence (its session terminated)')
  or diag "its outcome: $open_end->{kind} $open_end->{sqlstate}";
my $open_key = "client = 5 AND seq = $open->{seq}";
is( $source->safe_psql('app', "SELECT count(*) FROM $open->{table} WHERE $open_key")
	  . '|'
	  . $target->safe_psql('app', "SELECT count(*) FROM $open->{table} WHERE $open_key"),
	'0|0',
	'the row of the open transaction is on neither side');

# Once refused, a writer never gets a commit through again.
my @late_acks;
foreach my $id (keys %mode_of)
{
	my $refused = 0;
	foreach my $r ($load->records($id))
	{
		$refused = 1 if $r->{kind} eq 'err' && $r->{sqlstate} eq '25006';
		push @late_acks, "$r->{table} $r->{id} $r->{seq}"
		  if $refused && $r->{kind} eq 'ok';
	}
}
is(join(', ', @late_acks), '', 'no write is acknowledged after a writer was refused');

# --- sequences ---------------------------------------------------------------

my $sequences_sql = q{
SELECT c.relname || ' ' || coalesce(pg_sequence_last_value(c.oid)::text, 'unused')
FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace
ORDER BY 1};
my %source_seq = map { split / / } split /\n/, $source->safe_psql('app', $sequences_sql);
my %target_seq = map { split / / } split /\n/, $target->safe_psql('app', $sequences_sql);
is(scalar(keys %source_seq), 2, 'the source has the identity and the serial sequence');
foreach my $seq (sort keys %source_seq)
{
	cmp_ok($target_seq{$seq}, '>=', $source_seq{$seq} + 5000,
		"sequence $seq: $target_seq{$seq} on the target, $source_seq{$seq} + 5000 on the source");
}
foreach my $table (@tables)
{
	my $max_source_id = $source->safe_psql('app', "SELECT max(id) FROM $table");
	my ($r, $new_id, $err) = psql_verbose($target, 'app',
		"INSERT INTO $table (client, seq) VALUES (-1, 1) RETURNING id");
	is($r, 0, "$table: an INSERT using the sequence succeeds on the target");
	cmp_ok($new_id || 0, '>', $max_source_id,
		"$table: its id $new_id is above every id of the source ($max_source_id)");
}

# --- the source stays read-only --------------------------------------------

foreach my $table (@tables)
{
	foreach my $sql (
		"INSERT INTO $table (client, seq) VALUES (-2, 1)",
		"UPDATE $table SET seq = seq WHERE client = 1",
		"DELETE FROM $table WHERE client = 1",
		"TRUNCATE $table",
		"SET default_transaction_read_only = off; BEGIN READ WRITE; "
		  . "INSERT INTO $table (client, seq) VALUES (-2, 2); COMMIT")
	{
		my ($r, $out, $err) = psql_verbose($source, 'app', $sql);
		is(sqlstate_of($err), '25006', "source rejects: $sql");
	}
}
like(
	$source->safe_psql('app', 'SELECT count(*) FROM load_ident'),
	qr/^\d+$/,
	'the source still answers reads');

# --- detached, completed -----------------------------------------------------

# The publication goes with the fence commit; the worker drops the slot
# after the call returned, once its walsender has let go: wait for it.
ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, '
    || (SELECT count(*) FROM pg_publication) || ' publications'},
		'0 slots, 0 publications'),
	'slot and publication are gone from the source');
is($target->safe_psql('app', 'SELECT count(*) FROM pg_subscription'),
	'0', 'the subscription is gone from the target');
is( $target->safe_psql('app',
		"SELECT metric || '|' || ok FROM zdm.status() WHERE component = 'overall'"),
	'completed|true',
	'zdm.status() says the migration is completed');
is( $target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
	'completed', 'the migration row says completed');
is( $target->safe_psql('app',
		"SELECT count(*) FROM zdm.event_log WHERE event = 'completed'"),
	'1', 'the event log has the completion');

($ret, my $stdout, $stderr) = psql_verbose($target, 'app', 'CALL zdm.cutover()');
isnt($ret, 0, 'a second cutover fails');
like($stderr, qr/already complete/, 'a second cutover says the migration is already complete');

done_testing();
