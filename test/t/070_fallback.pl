# test/t/070_fallback.pl: CALL zdm.cutover(fallback => true) under write
# load, the application writing to the target afterwards, then
# CALL zdm.fallback() under write load, and what must hold after each
# (issue 12).
#
#   1. zdm.check_fallback(target_dsn): every fallback_* check ok.
#   2. Writers insert into the source (ZdmLoad: persistent, reconnecting,
#      BEGIN READ WRITE); the forward replication is held back (its
#      walsender stopped) so that the target is behind when the fence comes
#      and the forward apply writes rows here after the reverse slot was
#      made: those rows must not go back to the source.  The cutover with
#      fallback => true completes; before it fenced, the target already had
#      publication zdm_pub and the slot zdm_fallback_<sysid>_<dboid>, the
#      source the disabled subscription of that name.
#   3. After it: every write the source acknowledged is on the target; the
#      source rejects application writes (25006), also from a session that
#      sets session_replication_role = replica or takes the reverse
#      subscription's name as application_name; the forward subscription,
#      slot and publication are gone; the reverse subscription is enabled
#      and streams (zdm.status(): fallback/state, fallback/lag, overall ok).
#   4. Writers insert into the target (persistent, reconnecting, an open
#      transaction, BEGIN READ WRITE); the test updates, deletes and
#      truncates rows the source had, and moves rows of a partitioned table
#      to another partition: every change reaches the source while it stays
#      read-only for applications, with no apply error there.
#   5. CALL zdm.fallback() under that load, while a source session holds
#      the reverse apply back (EXCLUSIVE lock on a table) until the target's
#      writes are blocked: the target is behind when they are, and the
#      fallback must wait for the source to catch up.
#   6. After it: every write either server acknowledged is on the source;
#      every table has the same rows (count and md5 of all rows) on both
#      sides, no row twice in the keyless table (REPLICA IDENTITY FULL: a
#      row sent back would be there twice), no conflict or apply error in
#      the source's log; the open transaction was ended, not committed; the
#      source's sequences are ahead of the target's (value + 5000; an INSERT
#      gets a key above every key of the target); the target rejects
#      INSERT/UPDATE/DELETE/TRUNCATE with 25006 (writers included, none
#      acknowledged after being refused; through the partitioned table and
#      into a partition directly), the source takes them; no zdm_fence on
#      the source, no reverse subscription, slot or publication left.
#   7. zdm.fallback() again and zdm.abort() are refused (55000);
#      zdm.finish() forgets the migration: zdm.migration empty, zdm.status()
#      says there is no migration.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmFallback;
use ZdmLoad;
use ZdmTest;

# Tables the writers insert into (client, seq), as SQL names them (t_part
# through its parent: writers 1-3 fill t_part_low, 11-14 t_part_high),
# every table compared, and the tables a fence must lock on either side
# (the leaves).
my @LOAD_TABLES = ('t_serial', 't_ident', '"MiXeD_Case"', 't_keyless', 't_part');
my @TABLES = (@LOAD_TABLES, 't_trunc');
my @FENCED = ('t_serial', 't_ident', '"MiXeD_Case"', 't_keyless', 't_trunc',
	't_part_low', 't_part_high');

# log_statement = all would log every INSERT of the writers
my $source = start_source('source', "log_statement = ddl\n");
my $target = start_fallback_target('target', "log_statement = ddl\n");

same_schema_on_both($source, $target, ZdmLoad::tables_sql() . q{
CREATE TABLE t_trunc (id integer PRIMARY KEY);
CREATE TABLE t_part (client integer NOT NULL, seq integer NOT NULL, note text,
    PRIMARY KEY (client, seq)) PARTITION BY RANGE (client);
CREATE TABLE t_part_low PARTITION OF t_part FOR VALUES FROM (MINVALUE) TO (10);
CREATE TABLE t_part_high PARTITION OF t_part FOR VALUES FROM (10) TO (MAXVALUE);
});
# rows for the initial copy, under writer id 0
$source->safe_psql('app', q{
INSERT INTO t_serial (client, seq, note) SELECT 0, i, 'row ' || i FROM generate_series(1, 2000) i;
INSERT INTO t_ident (client, seq) SELECT 0, i FROM generate_series(1, 2000) i;
INSERT INTO "MiXeD_Case" (client, seq) SELECT 0, i FROM generate_series(1, 2000) i;
INSERT INTO t_keyless (client, seq, note) SELECT 0, i, 'row ' || i FROM generate_series(1, 500) i;
INSERT INTO t_trunc SELECT generate_series(1, 5);
INSERT INTO t_part (client, seq) SELECT 0, i FROM generate_series(1, 500) i;
});
init_migration($source, $target);

my $tdsn = target_dsn($target);
my $name = fallback_name($target);
like($name, qr/^zdm_fallback_\d+_\d+$/, "the reverse replication's name is $name");

# --- 1. the checks -------------------------------------------------------------

{
	my @rows = split /\n/, fallback_check_rows($target, "'$tdsn'");
	my %by_name = map { my ($n) = split /\|/; ($n => $_) } @rows;
	foreach my $check (qw(fallback_target_connection fallback_subscription_privilege
		fallback_source_workers fallback_target_wal_level fallback_target_slots
		fallback_target_wal_senders fallback_replica_identity))
	{
		like($by_name{$check} // 'missing', qr/^\Q$check\E\|true\|/,
			"zdm.check_fallback: $check is there and ok");
	}
	is(join(', ', grep { !/^fallback_/ } map { (split /\|/)[0] } @rows),
		'', 'zdm.check_fallback: every check is named fallback_*');
	is(join(', ', grep { !/\|true\|/ } @rows), '', 'zdm.check_fallback: every check is ok')
	  or diag explain \@rows;
	is(wait_no_reverse_objects($source, $target), '',
		'zdm.check_fallback created nothing on either side');
}

# --- 2. the cutover with fallback under load ----------------------------------

my $fwd = ZdmLoad->new($source, 'app', tables => \@LOAD_TABLES);
my %fwd_mode = (1 => 'session', 2 => 'reconnect', 3 => 'read_write');
$fwd->start_writer($fwd_mode{$_}, $_) foreach sort keys %fwd_mode;

# how many records of a kind writer id of load has
sub count_of
{
	my ($load, $id, $kind) = @_;
	return scalar grep { $_->{kind} eq $kind } $load->records($id);
}

ok( $fwd->wait_for(
		sub { !grep { count_of($fwd, $_, 'ok') < 20 } keys %fwd_mode }),
	'every writer on the source has commits acknowledged');

# Hold the forward replication back (see the file header; stop_walsender)
# until the source is fenced.  Writes go on meanwhile: the cutover comes
# close on the slot's lag, which stays far below 1 MB.
my @stopped;
END { kill 'CONT', @stopped if @stopped; }
@stopped = (stop_walsender($source));
my $acked_at_stall = scalar(acked_keys($fwd));
ok($fwd->wait_for(sub { acked_keys($fwd) >= $acked_at_stall + 40 }),
	'the writers go on while the target is held back');

my $log_offset = log_position($source);
my $call = start_cutover($target,
	"timeout => '2 min', fallback => true, target_dsn => '$tdsn'");
ok(poll_while_running($source, fence_held_query(@FENCED), $call, $target),
	'the cutover fences every table of the source');
is( reverse_objects($source, $target),
	"source: subscription $name (disabled); target: publication zdm_pub; target: slot $name",
	'when the source is fenced, the reverse subscription exists disabled on the source, slot and publication on the target'
);
{
	my %on_target = keys_on($target, @LOAD_TABLES);
	my $behind = grep { !$on_target{$_} } acked_keys($fwd);
	cmp_ok($behind, '>', 0,
		"when the fence holds, $behind acknowledged commits are not on the target yet");
}
kill 'CONT', @stopped;
@stopped = ();

my ($ret, $stderr) = finish_cutover($call);
is($ret, 0, 'the cutover with fallback succeeds under write load') or diag $stderr;
note "cutover output:\n$stderr";
like($stderr, qr/cutover complete/, 'the cutover says it is complete');
stop_unless($ret == 0, 'the cutover with fallback');

# --- 3. after the cutover ------------------------------------------------------

ok( $ret == 0 && $fwd->wait_for(
		sub {
			!grep {
				my $id = $_;
				!grep { $_->{kind} eq 'err' && $_->{sqlstate} eq '25006' }
				  $fwd->records($id)
			} keys %fwd_mode;
		}),
	'every writer on the source is refused with SQLSTATE 25006 after the cutover');
is($fwd->stop, 0, 'the writers on the source stop when asked');

my @fwd_acked = acked_keys($fwd);
{
	my @missing = missing_keys($target, \@LOAD_TABLES, @fwd_acked);
	is(scalar(@missing), 0,
		scalar(@fwd_acked) . ' commits acknowledged by the source, all on the target')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
}
foreach my $table (@TABLES)
{
	is(table_digest($target, $table), table_digest($source, $table),
		"$table: the same rows on both sides after the cutover");
}

# The source rejects application writes, however the session is set up.
foreach my $table (@LOAD_TABLES)
{
	my ($r, $out, $err) = psql_verbose($source, 'app',
		"INSERT INTO $table (client, seq) VALUES (-2, 1)");
	is(sqlstate_of($err), '25006', "the source rejects INSERT into $table (25006)");
}
foreach my $setup ('SET session_replication_role = replica',
	"SET application_name = '$name'")
{
	my ($r, $out, $err) = psql_verbose($source, 'app',
		"$setup; INSERT INTO t_serial (client, seq) VALUES (-2, 2)");
	is(sqlstate_of($err), '25006',
		"the source rejects an INSERT after $setup (25006)");
}

ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, '
    || (SELECT count(*) FROM pg_publication) || ' publications'},
		'0 slots, 0 publications'),
	'the forward slot and publication are gone from the source');
is( $target->safe_psql('app',
		"SELECT count(*) FROM pg_subscription WHERE subname = 'zdm_sub'"),
	'0', 'the forward subscription is gone from the target');
is( reverse_objects($source, $target),
	"source: subscription $name (enabled); target: publication zdm_pub; target: slot $name",
	'the reverse subscription is enabled on the source; slot and publication on the target'
);
is( $target->safe_psql('app', q{
SELECT string_agg(schemaname || '.' || tablename, ', ' ORDER BY tablename COLLATE "C")
FROM pg_publication_tables WHERE pubname = 'zdm_pub' AND tablename NOT LIKE 't\_part%'}),
	'public.MiXeD_Case, public.t_ident, public.t_keyless, public.t_serial, public.t_trunc',
	'the target publishes every migrated table');
like( $target->safe_psql('app', q{
SELECT string_agg(tablename, ', ' ORDER BY tablename COLLATE "C")
FROM pg_publication_tables WHERE pubname = 'zdm_pub' AND tablename LIKE 't\_part%'}),
	qr/^(t_part|t_part_high, t_part_low)$/,
	'... and the partitioned table (as itself or as its partitions)');
wait_reverse_streaming($target, 'after the cutover');
ok( $source->poll_query_until('app',
		"SELECT count(*) = 1 FROM pg_stat_subscription WHERE subname = '$name' AND pid IS NOT NULL"),
	'the source runs the reverse apply worker');
like(status_of($target, 'fallback', 'lag'), qr/^.*\|\d+\|(true|false)$/,
	'zdm.status() has a fallback lag row with bytes');
ok( $target->poll_query_until('app',
		"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
	'the overall row of zdm.status() is ok after the cutover with fallback');

# --- 4. the application writes to the target -----------------------------------

my $bwd = ZdmLoad->new($target, 'app', tables => \@LOAD_TABLES);
my %bwd_mode = (11 => 'session', 12 => 'reconnect', 13 => 'open_tx', 14 => 'read_write');
$bwd->start_writer($bwd_mode{$_}, $_) foreach sort keys %bwd_mode;
ok( $bwd->wait_for(
		sub {
			count_of($bwd, 13, 'open') == 1
			  && !grep { $_ != 13 && count_of($bwd, $_, 'ok') < 20 } keys %bwd_mode;
		}),
	'every writer on the target has commits acknowledged, and one transaction is open');

# Changes to rows the source had, and a TRUNCATE.
$target->safe_psql('app', q{
UPDATE t_serial SET note = 'updated on the target' WHERE client = 0 AND seq <= 100;
DELETE FROM t_serial WHERE client = 0 AND seq > 1900;
UPDATE t_keyless SET note = 'updated on the target' WHERE client = 0 AND seq <= 50;
DELETE FROM t_keyless WHERE client = 0 AND seq > 450;
DELETE FROM "MiXeD_Case" WHERE client = 0 AND seq <= 10;
TRUNCATE t_trunc;
INSERT INTO t_trunc VALUES (100), (101);
UPDATE t_part SET note = 'updated on the target' WHERE client = 0 AND seq <= 20;
UPDATE t_part SET client = 30 WHERE client = 0 AND seq BETWEEN 21 AND 30;
DELETE FROM t_part WHERE client = 0 AND seq > 490;
});
ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM t_serial WHERE note = 'updated on the target')
    || ' ' || (SELECT count(*) FROM t_serial WHERE client = 0)
    || ' ' || (SELECT count(*) FROM t_keyless WHERE note = 'updated on the target')
    || ' ' || (SELECT count(*) FROM t_keyless WHERE client = 0)
    || ' ' || (SELECT count(*) FROM "MiXeD_Case" WHERE client = 0)
    || ' ' || (SELECT string_agg(id::text, ',' ORDER BY id) FROM t_trunc)
    || ' ' || (SELECT count(*) FROM t_part WHERE note = 'updated on the target')
    || ' ' || (SELECT count(*) FROM t_part_high WHERE client = 30)
    || ' ' || (SELECT count(*) FROM t_part WHERE client = 0)},
		'100 1900 50 450 1990 100,101 20 10 480'),
	'updates (one moving rows to another partition), deletes and a TRUNCATE on the target reach the source');
{
	my $acked_now = scalar(acked_keys($bwd));
	ok($bwd->wait_for(sub { acked_keys($bwd) >= $acked_now + 40 }),
		'the writers on the target go on');
	my @keys = acked_keys($bwd);
	ok( $source->poll_query_until('app',
			'SELECT count(*) >= ' . scalar(@keys) . ' FROM ('
			  . join(' UNION ALL ',
				map { "SELECT 1 FROM $_ WHERE client > 10" } @LOAD_TABLES)
			  . ') s'),
		'the writes acknowledged by the target stream to the source');
	my @missing = missing_keys($source, \@LOAD_TABLES, @keys);
	is(scalar(@missing), 0, scalar(@keys) . ' commits acknowledged by the target are on the source')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
}
{
	my ($r, $out, $err) = psql_verbose($source, 'app',
		'INSERT INTO t_ident (client, seq) VALUES (-2, 3)');
	is(sqlstate_of($err), '25006',
		'while the reverse replication applies, the source still rejects application writes');
}
is(reverse_apply_errors($source, $name) // '0', '0',
	'no apply error of the reverse subscription on the source');
like(status_of($target, 'fallback', 'state'), qr/^streaming.*\|true$/,
	'zdm.status() still says the reverse replication streams');

# --- 5. the fallback under load --------------------------------------------

# Hold the reverse apply back: a source session locks t_ident, the writers
# on the target keep writing to it.  Reads of it still work.
my $hold = $source->background_psql('app');
$hold->query_safe('BEGIN; LOCK TABLE t_ident IN EXCLUSIVE MODE');
ok( $source->poll_query_until('app', q{
SELECT count(*) > 0 FROM pg_locks
WHERE relation = 't_ident'::regclass AND NOT granted}),
	'the reverse apply worker waits for a lock on the source');
$acked_at_stall = scalar(acked_keys($bwd));
ok($bwd->wait_for(sub { acked_keys($bwd) >= $acked_at_stall + 40 }),
	'the writers on the target go on while the source is held back');

$call = start_statement($target, "CALL zdm.fallback(timeout => '2 min')");
ok(poll_while_running($target, target_fenced_query(@FENCED), $call),
	'the fallback blocks writes to every table of the target');
{
	my %on_source = keys_on($source, @LOAD_TABLES);
	my $behind = grep { !$on_source{$_} } acked_keys($bwd);
	cmp_ok($behind, '>', 0,
		"when the target's writes are blocked, $behind commits it acknowledged are not on the source yet");
}
is($source->safe_psql('app', "SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
	'1', 'while the fallback waits for the source, the source is still fenced');
$hold->query_safe('COMMIT');
$hold->quit;

($ret, $stderr) = finish_cutover($call);
is($ret, 0, 'the fallback succeeds under write load') or diag $stderr;
note "fallback output:\n$stderr";
stop_unless($ret == 0, 'the fallback');

# --- 6. after the fallback ---------------------------------------------------

ok( $ret == 0 && $bwd->wait_for(
		sub {
			!grep {
				my $id = $_;
				!grep { $_->{kind} eq 'err' && $_->{sqlstate} eq '25006' }
				  $bwd->records($id)
			} keys %bwd_mode;
		}),
	'every writer on the target is refused with SQLSTATE 25006 after the fallback');
is($bwd->stop, 0, 'the writers on the target stop when asked');

my @bwd_acked = acked_keys($bwd);
{
	my @acked = (@fwd_acked, @bwd_acked);
	my @missing = missing_keys($source, \@LOAD_TABLES, @acked);
	is(scalar(@missing), 0,
		scalar(@acked) . ' commits acknowledged by either server ('
		  . scalar(@bwd_acked) . ' by the target), all on the source')
	  or diag 'missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
}
note sprintf('writer %d (%s): %d ok, %d err, %d lost', $_, $bwd_mode{$_},
	count_of($bwd, $_, 'ok'), count_of($bwd, $_, 'err'), count_of($bwd, $_, 'lost'))
  foreach sort keys %bwd_mode;

foreach my $table (@TABLES)
{
	is(table_digest($source, $table), table_digest($target, $table),
		"$table: the same rows (count and md5 of every row) on both sides after the fallback");
}
is( $source->safe_psql('app', q{
SELECT count(*) FROM (SELECT client, seq FROM t_keyless GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 't_keyless: no row twice on the source (nothing sent back to it)');
is(apply_trouble_since($source, $log_offset), '',
	'no conflict, duplicate key or apply worker failure in the source log since the cutover');

# The transaction open when the fallback blocked the target was ended, not
# committed, and is on neither side.
{
	my @records = $bwd->records;
	my ($open) = grep { $_->{kind} eq 'open' } @records;
	my ($end) =
	  grep { $_->{kind} ne 'open' && $_->{id} == 13 && $_->{seq} == $open->{seq} } @records;
	$end //= { kind => 'none: still open when the writers stopped', sqlstate => '' };
	ok($end->{kind} eq 'lost' || ($end->{kind} eq 'err' && $end->{sqlstate} eq '57P01'),
		'the open transaction on the target was ended by the fallback (its session terminated)')
	  or diag "its outcome: $end->{kind} $end->{sqlstate}";
	my $where = "client = 13 AND seq = $open->{seq}";
	is( $source->safe_psql('app', "SELECT count(*) FROM $open->{table} WHERE $where") . '|'
		  . $target->safe_psql('app', "SELECT count(*) FROM $open->{table} WHERE $where"),
		'0|0', 'the row of the open transaction is on neither side');
}

# Once refused, a writer on the target never gets a commit through again.
{
	my @late;
	foreach my $id (keys %bwd_mode)
	{
		my $refused = 0;
		foreach my $r ($bwd->records($id))
		{
			$refused = 1 if $r->{kind} eq 'err' && $r->{sqlstate} eq '25006';
			push @late, "$r->{table} $r->{id} $r->{seq}" if $refused && $r->{kind} eq 'ok';
		}
	}
	is(join(', ', @late), '', 'no write is acknowledged by the target after a writer was refused');
}

# Sequences: the source's are ahead of the target's.
my $sequences_sql = q{
SELECT c.relname || ' ' || coalesce(pg_sequence_last_value(c.oid)::text, 'unused')
FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace
ORDER BY 1};
{
	my %src_seq = map { split / / } split /\n/, $source->safe_psql('app', $sequences_sql);
	my %tgt_seq = map { split / / } split /\n/, $target->safe_psql('app', $sequences_sql);
	is(join(' ', sort keys %tgt_seq), 'MiXeD_Case_Id_seq t_ident_id_seq t_serial_id_seq',
		'the target has the three sequences');
	foreach my $seq (sort keys %tgt_seq)
	{
		cmp_ok($src_seq{$seq} // 0, '>=', $tgt_seq{$seq} + 5000,
			"sequence $seq: " . ($src_seq{$seq} // 'none')
			  . " on the source, the target's $tgt_seq{$seq} + 5000");
	}
	foreach my $t (['t_serial', 'id'], ['t_ident', 'id'], ['"MiXeD_Case"', '"Id"'])
	{
		my ($table, $column) = @$t;
		my $max = $target->safe_psql('app', "SELECT max($column) FROM $table");
		my ($r, $new_id, $e) = psql_verbose($source, 'app',
			"INSERT INTO $table (client, seq) VALUES (-1, 1) RETURNING $column");
		is($r, 0, "$table: an INSERT using its sequence works on the source") or diag $e;
		cmp_ok($new_id || 0, '>', $max,
			"$table: the new key is above every key used on the target ($max)");
	}
}

# The target is read-only for good, the source writable.
foreach my $table (@LOAD_TABLES)
{
	foreach my $sql (
		"INSERT INTO $table (client, seq) VALUES (-3, 1)",
		"UPDATE $table SET seq = seq WHERE client = 0",
		"DELETE FROM $table WHERE client = 0",
		"TRUNCATE $table",
		"SET default_transaction_read_only = off; SET session_replication_role = replica; "
		  . "BEGIN READ WRITE; INSERT INTO $table (client, seq) VALUES (-3, 2); COMMIT")
	{
		my ($r, $out, $err) = psql_verbose($target, 'app', $sql);
		is(sqlstate_of($err), '25006', "the target rejects: $sql");
	}
}
{
	my ($r, $out, $err) = psql_verbose($target, 'app',
		'INSERT INTO t_part_high (client, seq) VALUES (40, 1)');
	is(sqlstate_of($err), '25006', 'the target rejects an INSERT into a partition directly');
}
foreach my $sql (
	'UPDATE t_serial SET note = note WHERE client = 0 AND seq = 1',
	'DELETE FROM t_keyless WHERE client = 0 AND seq = 1',
	"INSERT INTO t_keyless (client, seq) VALUES (-1, 1)",
	'TRUNCATE t_trunc',
	'INSERT INTO t_part (client, seq) VALUES (40, 1)',
	'UPDATE t_part SET client = 41 WHERE client = 40')
{
	my ($r, $out, $err) = psql_verbose($source, 'app', $sql);
	is($r, 0, "the source takes: $sql") or diag $err;
}
is($source->safe_psql('app', "SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
	'0', 'no zdm_fence schema left on the source');
is(wait_no_reverse_objects($source, $target), '',
	'no reverse subscription on the source, no slot or publication on the target');

note 'zdm.status() after the fallback: '
  . $target->safe_psql('app',
	"SELECT string_agg(component || '/' || metric || ': ' || coalesce(value, '') || ' ' || ok, '; ') FROM zdm.status()");

# --- 7. afterwards: refusals, finish -----------------------------------------------

{
	my ($r, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.fallback()');
	is(sqlstate_of($err), '55000', 'a second zdm.fallback() is refused (55000)') or diag $err;
	($r, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.abort()');
	is(sqlstate_of($err), '55000', 'zdm.abort() after the fallback is refused (55000)') or diag $err;
	($r, $out, $err) = psql_verbose($target, 'app', 'CALL zdm.finish()');
	is($r, 0, 'zdm.finish() after the fallback succeeds') or diag $err;
	is($target->safe_psql('app', 'SELECT count(*) FROM zdm.migration'),
		'0', 'zdm.migration is empty after zdm.finish()');
	is( $target->safe_psql('app',
			"SELECT string_agg(component || '|' || ok::text || '|' || value, '; ') FROM zdm.status()"),
		'overall|false|no migration: start one with CALL zdm.init(source_dsn)',
		'zdm.status() says there is no migration');
	is(wait_no_reverse_objects($source, $target), '', 'zdm.finish() leaves nothing behind');
	is($source->safe_psql('app', "SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', 'no zdm_fence schema on the source after zdm.finish()');
	($r, $out, $err) = psql_verbose($target, 'app', 'INSERT INTO t_trunc VALUES (-5)');
	is(sqlstate_of($err), '25006', 'the target stays read-only after zdm.finish()');
	($r, $out, $err) = psql_verbose($source, 'app', 'INSERT INTO t_trunc VALUES (-5)');
	is($r, 0, 'the source stays writable after zdm.finish()') or diag $err;
}

done_testing();
