# test/t/050_managed_source.pl: a source reached with a role that is not a
# superuser, as on managed services (issue 13).
#
# Role "mgr" has REPLICATION, CREATE on database app and schema public, is a
# member of pg_signal_backend and owns the tables; role "writer" is an
# application role with INSERT on them.
#   1. The privilege checks: a bare role (REPLICATION only) fails each of
#      them, with the exact statements in the hints; init refuses (42501)
#      and creates nothing; running the hints' statements makes every
#      blocking check pass.
#   2. zdm.init with default arguments publishes the list of tables (not FOR
#      ALL TABLES); a table created on the source later shows in the
#      tables_match row of zdm.status() with the statements that add it.
#   3. A session the role may not terminate holds a write lock when the
#      fence comes -- a superuser's, then writer's while mgr is not in
#      pg_signal_backend: the cutover gives up after zdm.lock_grace_period
#      with 55P03 naming the session, the fence is gone, the source is
#      writable, and that session was left alone.
#   4. A cutover under write load from sessions of mgr and of writer, with
#      an open write transaction of each: every acknowledged commit is on the
#      target, the source is read-only afterwards for both roles, slot and
#      publication are gone.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use ZdmLoad;
use ZdmTest;

my @tables = qw(load_ident load_serial);

# log_statement = all would log every INSERT of the writers
# Six writers, their open transactions, the walsender, the cutover's control
# and fence sessions and the test's own: more than the framework's 10.
my $source = start_source('source', "log_statement = ddl\nmax_connections = 30\n");
my $target = start_target('target');

my $mgr_dsn = managed_role($source, 'mgr');
$source->safe_psql('app', q{
CREATE ROLE writer LOGIN;
CREATE ROLE bare LOGIN REPLICATION;
});

# The application's tables, owned by mgr; the same schema on the target.
my $schema = q{
CREATE TABLE load_ident (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    UNIQUE (client, seq)
);
CREATE TABLE load_serial (
    id serial PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    UNIQUE (client, seq)
);
};
$source->safe_psql('app', "SET ROLE mgr; $schema; RESET ROLE;"
	  . 'GRANT SELECT, INSERT ON load_ident, load_serial TO writer; '
	  . 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO writer;');
$target->safe_psql('app', $schema);
$source->safe_psql('app', q{
INSERT INTO load_ident (client, seq) SELECT 0, i FROM generate_series(1, 200) i;
INSERT INTO load_serial (client, seq) SELECT 0, i FROM generate_series(1, 200) i;
});

# check_rows(dsn): name => { ok, blocking, detail, hint } of zdm.check.
sub check_rows
{
	my ($dsn) = @_;
	my %rows;
	foreach my $line (split /\n/, $target->safe_psql('app', qq{
SELECT name || E'\\x01' || CASE WHEN ok THEN 't' ELSE 'f' END
       || E'\\x01' || CASE WHEN blocking THEN 't' ELSE 'f' END || E'\\x01' || detail
       || E'\\x01' || coalesce(hint, '')
FROM zdm.check('$dsn')}))
	{
		my ($name, $ok, $blocking, $detail, $hint) = split /\x01/, $line;
		$rows{$name} = { ok => $ok, blocking => $blocking, detail => $detail,
			hint => $hint };
	}
	return %rows;
}

# --- 1. the privilege checks -------------------------------------------------

my $bare_dsn = 'host=127.0.0.1 port=' . $source->port . ' dbname=app user=bare';
# a managed service that revoked a function pg_zdm calls (its signature
# grew a fourth argument, flush, in 17)
my $emit = $source->safe_psql('app', q{
SELECT p.oid::regprocedure FROM pg_proc p
WHERE p.proname = 'pg_logical_emit_message' AND p.proargtypes[2] = 'text'::regtype});
$source->safe_psql('app', "REVOKE EXECUTE ON FUNCTION $emit FROM PUBLIC");

my %bare = check_rows($bare_dsn);
my %expected_hint = (
	database_privilege => 'GRANT CREATE ON DATABASE app TO bare;',
	publication_privilege => 'GRANT mgr TO bare;',
	table_privileges => 'GRANT SELECT, UPDATE, TRIGGER ON TABLE public.load_ident TO bare;',
	function_privileges =>
	  "GRANT EXECUTE ON FUNCTION pg_catalog.$emit TO bare;",
	sequence_privileges => 'GRANT SELECT ON SEQUENCE public.load_ident_id_seq TO bare;',
	signal_privilege => 'GRANT pg_signal_backend TO bare;',
	stats_privilege => 'GRANT pg_read_all_stats TO bare;');
my %expected_blocking = (
	database_privilege => 't',
	publication_privilege => 't',
	table_privileges => 't',
	function_privileges => 't',
	sequence_privileges => 'f',
	signal_privilege => 'f',
	stats_privilege => 'f',
	fence_deadlock_timeout => 'f');
foreach my $name (sort keys %expected_blocking)
{
	ok(exists $bare{$name}, "zdm.check has a row $name");
	is(($bare{$name}{ok} // '') . '|' . ($bare{$name}{blocking} // ''),
		"f|$expected_blocking{$name}",
		"bare role: $name fails ("
		  . ($expected_blocking{$name} eq 't' ? 'blocking' : 'a warning') . ')');
	next unless $expected_hint{$name};
	like($bare{$name}{hint} // '', qr/\Q$expected_hint{$name}\E/,
		"bare role: the hint of $name says $expected_hint{$name}");
}
like($bare{publication_privilege}{hint}, qr/ALTER TABLE public\.load_ident OWNER TO bare;/,
	'publication_privilege also offers ALTER TABLE ... OWNER TO');
like($bare{publication_privilege}{detail}, qr/does not own 2 of the tables/,
	'publication_privilege names the tables it does not own');
like($bare{fence_deadlock_timeout}{hint}, qr/SET zdm\.lock_grace_period = '500ms'/,
	'fence_deadlock_timeout suggests a grace period below deadlock_timeout');

my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', "CALL zdm.init('$bare_dsn')");
is(sqlstate_of($stderr), '42501', 'init with the bare role is refused with 42501');
like($stderr, qr/check "database_privilege" failed/, 'by the database_privilege check');
like($stderr, qr/HINT:  .*GRANT CREATE ON DATABASE app TO bare;/,
	'its hint has the GRANT statement');
is(migration_leftovers($target, $source), '', 'nothing was created on either side');

# Run every statement the hints give, as the superuser: the checks pass.
my @statements;
foreach my $name (sort keys %expected_hint)
{
	push @statements, $bare{$name}{hint} =~ /((?:GRANT|ALTER TABLE) [^;]+;)/g;
}
@statements = grep { !/OWNER TO/ } @statements;   # membership in mgr instead
$source->safe_psql('app', join("\n", @statements));
my %granted = check_rows($bare_dsn);
is( join(', ', map { "$_: $granted{$_}{detail}" }
		grep { $granted{$_}{ok} ne 't' && $_ ne 'fence_deadlock_timeout' }
		  sort keys %granted),
	'',
	'after the statements of the hints, every check passes for the bare role '
	  . '(but fence_deadlock_timeout: the default grace is not below deadlock_timeout)');
$source->safe_psql('app', "GRANT EXECUTE ON FUNCTION $emit TO PUBLIC");

# --- 2. default init with the managed role ----------------------------------

my %mgr = check_rows($mgr_dsn);
is( join(', ', grep { $mgr{$_}{ok} ne 't' && $mgr{$_}{blocking} eq 't' } sort keys %mgr),
	'', 'managed role: every blocking check passes');
like($mgr{publication_privilege}{detail},
	qr/not a superuser, so zdm\.init will publish the 2 tables as a list/,
	'publication_privilege says the tables are published as a list');
is($mgr{stats_privilege}{ok}, 'f', 'managed role: stats_privilege warns');

$target->safe_psql('app', "CALL zdm.init('$mgr_dsn')");
wait_until_ready($target);
is( $source->safe_psql('app', q{
SELECT p.puballtables || ' ' || pg_get_userbyid(p.pubowner) || ' '
       || (SELECT string_agg(tablename, ',' ORDER BY tablename)
           FROM pg_publication_tables WHERE pubname = p.pubname)
FROM pg_publication p WHERE p.pubname = 'zdm_pub'}),
	'false mgr load_ident,load_serial',
	'init publishes the list of tables, as the managed role');

# A table created on the source later is not published: tables_match says so.
$source->safe_psql('app', 'SET ROLE mgr; CREATE TABLE late_table (id int PRIMARY KEY);');
my $tables_match = status_of($target, 'copy', 'tables_match');
like($tables_match, qr/publication zdm_pub does not list .*public\.late_table/,
	'tables_match names the table created on the source after init');
like($tables_match, qr/ALTER PUBLICATION zdm_pub ADD TABLE public\.late_table/,
	'and says how to publish it');
like($tables_match, qr/\|false$/, 'tables_match is not ok then');
is( $target->safe_psql('app',
		"SELECT ok FROM zdm.status() WHERE component = 'overall'"),
	'f', 'and the migration is not ready for cutover');
# The cutover refuses too: the rows of late_table would be left behind.
$source->safe_psql('app', 'INSERT INTO late_table VALUES (1)');
my ($late_ret, $late_out, $late_err) = psql_verbose($target, 'app',
	"CALL zdm.cutover(timeout => '30 s')");
is(sqlstate_of($late_err), '55000', 'cutover refuses while a source table is not published');
like($late_err, qr/publication zdm_pub does not list 1 table of the source .*public\.late_table/s,
	'and names it');
is( $source->safe_psql('app', q{
SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'}),
	'0', 'the source was not fenced');
$source->safe_psql('app', 'INSERT INTO late_table VALUES (2)');
pass('the source stays writable');
$source->safe_psql('app', 'DROP TABLE late_table');
like(status_of($target, 'copy', 'tables_match'), qr/\|true$/,
	'once it is dropped, tables_match is ok again');

# --- 3. a session the role may not terminate --------------------------------

# holder(role, seq): a source session of role (the test's superuser when
# undef) that inserts into load_ident and keeps its transaction open;
# returns (session, pid).  The role must be the session's own: SET ROLE
# does not change whose session it is for pg_terminate_backend.
sub holder
{
	my ($role, $seq) = @_;
	my $session = $source->background_psql('app',
		extra_params => $role ? [ '-U', $role ] : []);
	$session->query_safe('SET application_name = zdm_test_holder');
	my $pid = $session->query_safe('SELECT pg_backend_pid()');
	$session->query_safe('BEGIN');
	$session->query_safe(
		"INSERT INTO load_ident (client, seq) VALUES (99, $seq)");
	return ($session, $pid);
}

# cutover_refused(case, pid, user, hint): the cutover fails fast with 55P03
# naming session pid of user; nothing is left locked; the session lives.
sub cutover_refused
{
	my ($case, $pid, $user, $hint, $session) = @_;
	my $started = Time::HiRes::time();
	my ($r, $out, $err) = psql_verbose($target, 'app',
		"SET zdm.lock_grace_period = '300ms';\nCALL zdm.cutover(timeout => '2 min')");
	my $elapsed = Time::HiRes::time() - $started;
	isnt($r, 0, "$case: the cutover fails");
	is(sqlstate_of($err), '55P03', "$case: with SQLSTATE 55P03");
	like($err, qr/could not fence writes: source session $pid of (?:superuser|role) $user/,
		"$case: the error names session $pid and its user");
	like($err, qr/DETAIL:  Session $pid \(user $user, application_name 'zdm_test_holder', transaction started/,
		"$case: the detail names its application_name and start");
	like($err, qr/the source is writable/, "$case: and says the source is writable");
	like($err, qr/HINT:  .*\Q$hint\E/, "$case: the hint says: $hint");
	cmp_ok($elapsed, '<', 60, "$case: it gave up without waiting for the timeout ("
		  . sprintf('%.1f', $elapsed) . ' s)');
	is($source->safe_psql('app', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = 'pg_zdm'
  AND l.relation IN ('load_ident'::regclass, 'load_serial'::regclass)}),
		'0', "$case: no session of pg_zdm holds or awaits a lock on the tables");
	my ($w) = psql_verbose($source, 'app',
		"SET ROLE mgr; INSERT INTO load_serial (client, seq) VALUES (98, "
		  . int(rand(1e6)) . ')');
	is($w, 0, "$case: the source accepts writes");
	is($session->query_safe('SELECT 1'), '1', "$case: the session was left alone");
	is( $target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$case: the migration is streaming again");
	return;
}

my $superuser = $source->safe_psql('app', 'SELECT current_user');
my ($super_session, $super_pid) = holder(undef, 1);
cutover_refused('superuser session', $super_pid, $superuser,
	"SELECT pg_terminate_backend($super_pid);", $super_session);
$super_session->query_safe('COMMIT');
$super_session->quit;

$source->safe_psql('app', 'REVOKE pg_signal_backend FROM mgr');
my ($writer_session, $writer_pid) = holder('writer', 2);
cutover_refused('writer session, no pg_signal_backend', $writer_pid, 'writer',
	'GRANT pg_signal_backend TO mgr;', $writer_session);
$writer_session->query_safe('COMMIT');
$writer_session->quit;
$source->safe_psql('app', 'GRANT pg_signal_backend TO mgr');
wait_until_ready($target);

# --- 4. the cutover under load from two roles --------------------------------

my $mgr_load = ZdmLoad->new($source, 'app', tables => \@tables, user => 'mgr');
my $writer_load = ZdmLoad->new($source, 'app', tables => \@tables, user => 'writer');
my %mode_of = (1 => 'session', 2 => 'reconnect', 3 => 'open_tx');
my %writer_mode_of = (4 => 'session', 5 => 'reconnect', 6 => 'open_tx');
$mgr_load->start_writer($mode_of{$_}, $_) foreach sort keys %mode_of;
$writer_load->start_writer($writer_mode_of{$_}, $_) foreach sort keys %writer_mode_of;

sub all_records { return ($mgr_load->records, $writer_load->records); }

sub count_of
{
	my ($id, $kind) = @_;
	return scalar grep { $_->{id} == $id && $_->{kind} eq $kind } all_records();
}

ok( $mgr_load->wait_for(
		sub {
			count_of(3, 'open') == 1 && count_of(6, 'open') == 1
			  && !grep { count_of($_, 'ok') < 30 } (1, 2, 4, 5);
		}),
	'writers of both roles have commits acknowledged, each role has an open transaction');

my $call = start_cutover($target, "timeout => '2 min'");
($ret, $stderr) = finish_cutover($call);
is($ret, 0, 'the cutover succeeds under write load with the managed role');
note "cutover output:\n$stderr";
my ($terminated) = $stderr =~ /terminated (\d+) source sessions? whose open write/;
cmp_ok($terminated // 0, '>=', 2,
	'the fence ended the open transactions of both roles');
foreach my $id (3, 6)
{
	my ($open) = grep { $_->{id} == $id && $_->{kind} eq 'open' } all_records();
	my ($end) = grep { $_->{id} == $id && $_->{kind} ne 'open' && $_->{seq} == $open->{seq} }
	  all_records();
	ok( $end && ($end->{kind} eq 'lost'
			|| ($end->{kind} eq 'err' && $end->{sqlstate} eq '57P01')),
		"writer $id: its open transaction was ended by the fence");
}

ok( $mgr_load->wait_for(
		sub {
			!grep {
				my $id = $_;
				!grep { $_->{id} == $id && $_->{kind} eq 'err' && $_->{sqlstate} eq '25006' }
				  all_records()
			} (1, 2, 4, 5);
		}),
	'every writer of both roles is refused with 25006 after the cutover');
$mgr_load->stop;
$writer_load->stop;

# nothing acknowledged is lost
my %on_target = map { $_ => 1 } split /\n/, $target->safe_psql('app', join(' UNION ALL ',
	map { "SELECT '$_ ' || client || ' ' || seq FROM $_ WHERE client > 0" } @tables));
my @acked = map { "$_->{table} $_->{id} $_->{seq}" } grep { $_->{kind} eq 'ok' } all_records();
my @missing = grep { !$on_target{$_} } @acked;
is(scalar(@missing), 0, scalar(@acked) . ' acknowledged commits of both roles: none lost');
diag 'missing on the target: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ])
  if @missing;
foreach my $table (@tables)
{
	is( $target->safe_psql('app', "SELECT count(*) FROM $table"),
		$source->safe_psql('app', "SELECT count(*) FROM $table"),
		"$table: same row count on source and target");
}
is( $target->safe_psql('app', 'SELECT count(*) FROM load_ident WHERE client = 99'),
	'2', 'the rows of the sessions the fence gave up on, committed later, are on the target');

# the source is read-only for every role
foreach my $role ('mgr', 'writer', $superuser)
{
	my ($r, $out, $err) = psql_verbose($source, 'app',
		"SET ROLE $role; INSERT INTO load_serial (client, seq) VALUES (-1, 1)");
	is(sqlstate_of($err), '25006', "the source rejects an INSERT of $role");
}
is( $source->safe_psql('app', q{
SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, '
    || (SELECT count(*) FROM pg_publication) || ' publications'}),
	'0 slots, 0 publications',
	'slot and publication are gone from the source');
is( $target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
	'completed', 'the migration is completed');

done_testing();
