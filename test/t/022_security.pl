# test/t/022_security.pl: privileges, the source password, hostile names,
# a hostile search_path, and a source that is not PostgreSQL.
#
#   privileges  every function and procedure of schema zdm is revoked from
#               PUBLIC (pg_proc.proacl), so a fresh non-superuser role has no
#               EXECUTE on any of them and gets 42501 calling each, with or
#               without USAGE on the schema; zdm.migration and zdm.event_log
#               are unreadable to it (42501).  A monitoring role granted
#               EXECUTE on zdm.status() and zdm.tables() and SELECT on
#               zdm.event_log (as the README says) can use them, but not
#               zdm.migration nor pg_subscription.subconninfo.
#   not PostgreSQL  a TCP listener that answers with HTTP and garbage bytes,
#               and one that closes at once: zdm.check says so in its
#               connection row, zdm.init fails with 08001 and libpq's words,
#               nothing is created.
#   names       tables and schemas whose names hold double and single quotes,
#               semicolons, spaces, a backslash, "%s", mixed case and
#               non-ASCII letters, with identity, serial and standalone
#               sequences, and a source-only table left out by
#               ignore_missing: they are copied, streamed, fenced (a failed
#               cutover), aborted, migrated again and cut over: same rows,
#               sequences ahead, source read-only on each of them.
#   password    the source password (and a wrong one tried) appear in no
#               output: zdm.check / status / tables / event_log as superuser
#               and as the monitoring role, the NOTICEs and ERRORs of init, a
#               failed init, a failed cutover, abort and a cutover; nor in
#               any line of either server's log, STATEMENT lines included.
#               Both clusters run with log_statement = 'none', a real
#               server's default (PostgreSQL::Test::Cluster sets 'all').
#   search_path a non-superuser (mallory) with CREATE on schema public, on
#               the target and on the source, creates functions, operators
#               and aggregates there that shadow pg_catalog's (same
#               signature, found first with search_path = 'public,
#               pg_catalog') or beat them by a more exact argument type (found
#               with any search_path that includes public).  Each records
#               its call (a sequence, a table, a WARNING).  The superuser,
#               with search_path = 'public, pg_catalog' (set in the session
#               and as the databases' default, which the cutover worker
#               inherits), runs CREATE EXTENSION, zdm.check, zdm.init,
#               zdm.status, zdm.tables and zdm.cutover: none of mallory's
#               objects may be called.

use strict;
use warnings;

use lib 'test/lib';
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $WRONG_PASSWORD = 'zdm-Wr0ng-pw';
my @SECRETS = ($ZdmTest::PASSWORD, $WRONG_PASSWORD);

# a real server logs no statements by default; failed ones still get a
# STATEMENT line (log_min_error_statement = error)
my $source = start_source('source', "log_statement = 'none'\n");
my $target = start_target('target', "log_statement = 'none'\n");
my $dsn = source_dsn($source);
(my $wrong_dsn = $dsn) =~ s/\Q$ZdmTest::PASSWORD\E/$WRONG_PASSWORD/;
my $uri_dsn = 'postgresql://migrator:' . $ZdmTest::PASSWORD . '@127.0.0.1:'
  . $source->port . '/app';

# Everything psql printed in this test, searched for the passwords at the end.
my $all_output = '';

# Run sql on the target (as role, if given), verbose; collect the output.
sub on_target
{
	my ($sql, $role) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', $sql,
		$role ? (connstr => $target->connstr('app') . " user=$role") : ());
	$all_output .= "$stdout\n$stderr\n";
	return ($ret, $stdout, $stderr);
}

# Lines of text that hold a secret, '' when none does (every line counts).
sub secret_lines
{
	my ($text) = @_;
	return join "\n", grep {
		my $line = $_;
		grep { index($line, $_) >= 0 } @SECRETS
	} split /\n/, $text // '';
}

# --- privileges -------------------------------------------------------------

$target->safe_psql('app', q{
CREATE ROLE fresh LOGIN;
CREATE ROLE fresh_usage LOGIN;
GRANT USAGE ON SCHEMA zdm TO fresh_usage;
CREATE ROLE monitor LOGIN;
GRANT USAGE ON SCHEMA zdm TO monitor;
GRANT EXECUTE ON FUNCTION zdm.status(), zdm.tables() TO monitor;
GRANT SELECT ON zdm.event_log TO monitor;
});

# every routine of schema zdm: name, signature, a call with NULL arguments
my @routines = map { [ split /\|/ ] } split /\n/, $target->safe_psql('app', q{
SELECT p.oid::regprocedure,
       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE a.grantee = 0),
       CASE p.prokind WHEN 'p' THEN 'CALL ' ELSE 'SELECT * FROM ' END
       || p.oid::regproc::text || '('
       || coalesce((SELECT string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY o)
                    FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, o)), '')
       || ')'
FROM pg_proc p WHERE p.pronamespace = 'zdm'::regnamespace ORDER BY 1});
cmp_ok(scalar(@routines), '>=', 6, scalar(@routines) . ' routines in schema zdm');
foreach my $r (@routines)
{
	my ($signature, $public, $call) = @$r;
	is($public, 'f', "$signature: not executable by PUBLIC");
	foreach my $role ('fresh', 'fresh_usage')
	{
		is( $target->safe_psql('app',
				"SELECT has_function_privilege('$role', '$signature', 'EXECUTE')"),
			'f', "$signature: $role has no EXECUTE");
		my ($ret, $stdout, $stderr) = on_target($call, $role);
		is(sqlstate_of($stderr), '42501', "$signature: $role calling it gets 42501");
		like($stderr, $role eq 'fresh' ? qr/permission denied for schema zdm/ :
			  qr/permission denied for (function|procedure)/,
			"$signature: $role: " . ($role eq 'fresh' ? 'no usage on the schema' : 'no EXECUTE'));
	}
}
is( $target->safe_psql('app', q{
SELECT count(*) FROM pg_class c
WHERE c.relnamespace = 'zdm'::regnamespace AND c.relkind IN ('r', 'S', 'v', 'm', 'p')
  AND EXISTS (SELECT 1 FROM aclexplode(coalesce(c.relacl,
                acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
              WHERE a.grantee = 0)}),
	'0', 'no table or sequence of schema zdm is readable by PUBLIC');
foreach my $table ('zdm.migration', 'zdm.event_log')
{
	my ($ret, $stdout, $stderr) = on_target("SELECT * FROM $table", 'fresh_usage');
	is(sqlstate_of($stderr), '42501', "$table: a fresh role cannot read it (42501)");
}
{
	my ($ret, $stdout, $stderr) = on_target('SELECT * FROM zdm.migration', 'monitor');
	is(sqlstate_of($stderr), '42501', 'zdm.migration: the monitoring role cannot read it');
	($ret, $stdout, $stderr) = on_target('SELECT * FROM zdm.event_log', 'monitor');
	is($ret, 0, 'zdm.event_log: the monitoring role can read it');
}

# --- a source that is not PostgreSQL -------------------------------------------

# A listener on 127.0.0.1 in a process of its own: to every connection it
# writes reply (maybe nothing) and closes.  Returns (pid, port).
my @servers;
END { kill 'KILL', @servers if @servers; }

sub fake_server
{
	my ($reply) = @_;
	my $listener = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto => 'tcp',
		Listen => 16)
	  or die "cannot listen on 127.0.0.1: $!";
	my $port = $listener->sockport;
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		while (my $conn = $listener->accept)
		{
			# let the client's first packet arrive, then answer and hang up
			my $in = '';
			vec($in, fileno($conn), 1) = 1;
			select($in, undef, undef, 1);
			sysread($conn, my $buf, 8192);
			syswrite($conn, $reply) if length $reply;
			close $conn;
		}
		POSIX::_exit(0);
	}
	close $listener;
	push @servers, $pid;
	return $port;
}

my %fakes = (
	'garbage server' => fake_server(
		"HTTP/1.1 400 Bad Request\r\nServer: not-postgres\r\n\r\n\x00\xff\xfe\x01garbage"),
	'server closing at once' => fake_server(''));
foreach my $name (sort keys %fakes)
{
	foreach my $sslmode ('prefer', 'disable')
	{
		my $label = "$name, sslmode=$sslmode";
		my $fake_dsn = "host=127.0.0.1 port=$fakes{$name} dbname=app user=migrator "
		  . "password=$ZdmTest::PASSWORD sslmode=$sslmode connect_timeout=10";
		my ($ret, $stdout, $stderr) = on_target(
			"SELECT ok, detail FROM zdm.check('$fake_dsn') WHERE name = 'connection'");
		like($stdout, qr/^f\|.*\S/, "$label: zdm.check's connection row is not ok, with a reason");
		note "$label: zdm.check says: $stdout";
		($ret, $stdout, $stderr) = on_target("CALL zdm.init('$fake_dsn')");
		is(sqlstate_of($stderr), '08001', "$label: zdm.init fails with 08001");
		like($stderr, qr/could not connect to the source server/,
			"$label: ... saying it could not connect");
		like($stderr, qr/DETAIL:  .*(invalid response|expected authentication request|closed the connection|received)/,
			"$label: ... with libpq's reason in the detail");
		is(migration_leftovers($target), '', "$label: nothing created");
	}
}

# --- names that need quoting ----------------------------------------------------

# the tables, as SQL names them, and the sequence behind each one's id
my @tables = (
	q{"Mixed ""Schema""; --"."Tbl; DROP TABLE x; --"},
	q{public."it's a 'table'"},
	q{"Ünïcødé Schéma"."tâblé ñ"},
	q{public."back\slash $1 %s"});
my %sequence_of = (
	$tables[0] => q{"Mixed ""Schema""; --"."Tbl; DROP TABLE x; --_id_seq"},
	$tables[1] => q{public."it's a 'table'_id_seq"},
	$tables[2] => q{"Ünïcødé Schéma"."séq ""x""; y"},
	$tables[3] => q{public."back\slash $1 %s_id_seq"});
my $names_sql = qq{
CREATE SCHEMA "Mixed ""Schema""; --";
CREATE TABLE $tables[0] (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text);
CREATE TABLE $tables[1] (id serial PRIMARY KEY, note text);
CREATE SCHEMA "Ünïcødé Schéma";
CREATE SEQUENCE $sequence_of{$tables[2]};
CREATE TABLE $tables[2] (id bigint PRIMARY KEY DEFAULT nextval('"Ünïcødé Schéma"."séq ""x""; y"'), note text);
CREATE TABLE $tables[3] (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
};
same_schema_on_both($source, $target, $names_sql);
my $source_only = q{public."only on; ""source"""};
$source->safe_psql('app', "CREATE TABLE $source_only (id integer PRIMARY KEY)");

# rows on the source through each table's default
sub insert_rows
{
	my ($node, $note) = @_;
	$node->safe_psql('app', join('',
		map { "INSERT INTO $_ (note) SELECT '$note ' || i FROM generate_series(1, 5) i;\n" }
		  @tables));
	return;
}

sub digest
{
	my ($node, $table) = @_;
	return $node->safe_psql('app',
		"SET search_path = pg_catalog; "
		  . "SELECT count(*) || ' ' || md5(string_agg(x::text, ',' ORDER BY id)) FROM $table x");
}

# poll zdm.status() (as the session sets it up) until the overall row is ok
sub wait_ready
{
	my ($label, $setup) = @_;
	my $ready = 0;
	foreach my $i (1 .. $PostgreSQL::Test::Utils::timeout_default * 5)
	{
		my ($ret, $stdout, $stderr) =
		  on_target(($setup // '') . 'SELECT component, ok FROM zdm.status()');
		if ($stdout =~ /^overall\|t$/m)
		{
			$ready = 1;
			last;
		}
		select(undef, undef, undef, 0.2);
	}
	ok($ready, "$label: zdm.status() is ready for cutover");
	return;
}

insert_rows($source, 'copied');

{
	my ($ret, $stdout, $stderr) = on_target("CALL zdm.init('$wrong_dsn')");
	is(sqlstate_of($stderr), '08001', 'init with a wrong password fails with 08001');
	like($stderr, qr/password authentication failed/, '... saying the password was refused');
	is(migration_leftovers($target, $source), '', '... creating nothing');

	foreach my $check_dsn ($dsn, $uri_dsn)
	{
		($ret, $stdout, $stderr) = on_target(
			"SELECT name, ok, detail FROM zdm.check('$check_dsn', ignore_missing => true)");
		like($stdout, qr/^connection\|t\|Connected to .*password=\*+/m,
			'zdm.check connects and shows the DSN with the password masked');
	}

	($ret, $stdout, $stderr) =
	  on_target("CALL zdm.init('$dsn', ignore_missing => true)");
	is($ret, 0, 'init with quoted names and ignore_missing succeeds') or diag $stderr;
	wait_ready('names');
	insert_rows($source, 'streamed');
	($ret, $stdout, $stderr) = on_target(
		"SELECT schema_name, table_name, state FROM zdm.tables() ORDER BY 1, 2");
	is( $stdout,
		join("\n",
			"Mixed \"Schema\"; --|Tbl; DROP TABLE x; --|ready",
			"public|back\\slash \$1 %s|ready",
			"public|it's a 'table'|ready",
			"Ünïcødé Schéma|tâblé ñ|ready"),
		'zdm.tables() lists the tables by their names, not the source-only one');
}

# what a superuser and the monitoring role see
sub look_around
{
	my ($label) = @_;
	foreach my $role (undef, 'monitor')
	{
		my $who = $role // 'superuser';
		my ($ret, $stdout, $stderr) = on_target('SELECT * FROM zdm.status()', $role);
		is($ret, 0, "$label: zdm.status() works for the $who") or diag $stderr;
		($ret, $stdout, $stderr) = on_target('SELECT * FROM zdm.tables()', $role);
		is($ret, 0, "$label: zdm.tables() works for the $who") or diag $stderr;
		($ret, $stdout, $stderr) = on_target('SELECT * FROM zdm.event_log', $role);
		is($ret, 0, "$label: zdm.event_log is readable by the $who") or diag $stderr;
	}
	my ($ret, $stdout, $stderr) =
	  on_target('SELECT subconninfo FROM pg_subscription', 'monitor');
	is(sqlstate_of($stderr), '42501',
		"$label: the monitoring role cannot read the subscription's connection string");
	on_target('SELECT source_display FROM zdm.migration');
	return;
}
look_around('streaming');

# a failed cutover: the target is held back (lock on one table, a source
# row for it) and the timeout expires
{
	my $stall = $target->background_psql('app');
	$stall->query_safe("BEGIN; LOCK TABLE $tables[0] IN EXCLUSIVE MODE");
	$source->safe_psql('app', "INSERT INTO $tables[0] (note) VALUES ('stuck')");
	ok( $target->poll_query_until('app', qq{
SELECT count(*) > 0 FROM pg_locks WHERE relation = '$tables[0]'::regclass AND NOT granted}),
		'the apply worker waits for a lock on a quoted table');
	my ($ret, $stdout, $stderr) = on_target("CALL zdm.cutover(timeout => '2 s')");
	like($stderr, qr/writes blocked on the source: 4 tables fenced/,
		'a cutover fences the four tables with quoted names');
	is(sqlstate_of($stderr), '57014', '... and times out (57014)');
	$stall->query_safe('COMMIT');
	$stall->quit;
	look_around('after a failed cutover');

	($ret, $stdout, $stderr) = on_target('CALL zdm.abort()');
	is($ret, 0, 'abort succeeds') or diag $stderr;
	is(migration_leftovers($target, $source), '', 'abort leaves nothing behind');
	$target->safe_psql('app', 'TRUNCATE ' . join(', ', @tables));
}

{
	my ($ret, $stdout, $stderr) =
	  on_target("CALL zdm.init('$dsn', ignore_missing => true)");
	is($ret, 0, 'a new init succeeds') or diag $stderr;
	wait_ready('names, again');
	insert_rows($source, 'before cutover');
	($ret, $stdout, $stderr) = on_target("CALL zdm.cutover(timeout => '2 min')");
	is($ret, 0, 'the cutover of the quoted tables succeeds') or diag $stderr;
	like($stderr, qr/4 sequences set to the source's value \+ 5000/,
		"the four tables' sequences are set");
	look_around('completed');

	foreach my $table (@tables)
	{
		is(digest($target, $table), digest($source, $table),
			"$table: the same rows on both sides");
		my $seq = $sequence_of{$table};
		(my $literal = $seq) =~ s/'/''/g;
		my $sql = "SELECT pg_sequence_last_value('$literal'::regclass)";
		cmp_ok($target->safe_psql('app', $sql), '>=',
			$source->safe_psql('app', $sql) + 5000,
			"$seq: ahead on the target by the buffer");
		($ret, $stdout, $stderr) =
		  psql_verbose($source, 'app', "INSERT INTO $table (note) VALUES ('late')");
		is(sqlstate_of($stderr), '25006', "$table: the source rejects writes");
		($ret, $stdout, $stderr) = psql_verbose($target, 'app',
			"INSERT INTO $table (note) VALUES ('on the target')");
		is($ret, 0, "$table: the target takes writes using its sequence") or diag $stderr;
	}
}

# --- a hostile search_path ----------------------------------------------------

# mallory's objects in schema public of a node's database app: a recorder
# (unlogged, so that a publication FOR ALL TABLES leaves it out) and shadows of what pg_catalog provides.  Each shadow records its call
# and then does what the original does, so that nothing else changes.
my $mallory_sql = q{
CREATE SEQUENCE public.mallory_seq;
GRANT USAGE ON SEQUENCE public.mallory_seq TO PUBLIC;
CREATE UNLOGGED TABLE public.mallory_calls (fn text, called_as text);
GRANT INSERT ON public.mallory_calls TO PUBLIC;
CREATE FUNCTION public.mallory_note(fn text) RETURNS void LANGUAGE plpgsql AS $m$
BEGIN
    PERFORM pg_catalog.nextval('public.mallory_seq'::pg_catalog.regclass);
    INSERT INTO public.mallory_calls VALUES (fn, CURRENT_USER);
    RAISE WARNING 'mallory: % called as %', fn, CURRENT_USER;
END $m$;
};
# operators: name, left, right, result, body
my @operators = (
	[ '-', 'integer', 'integer', 'integer', 'pg_catalog.int4mi($1, $2)' ],
	[ '+', 'bigint', 'bigint', 'bigint', 'pg_catalog.int8pl($1, $2)' ],
	[ '+', 'numeric', 'bigint', 'numeric', 'pg_catalog.numeric_add($1, $2::pg_catalog.numeric)' ],
	[ '-', 'numeric', 'bigint', 'numeric', 'pg_catalog.numeric_sub($1, $2::pg_catalog.numeric)' ],
	[ '=', 'text', 'text', 'boolean', 'pg_catalog.texteq($1, $2)' ],
	[ '<>', 'text', 'text', 'boolean', 'pg_catalog.textne($1, $2)' ],
	[ '=', 'name', 'name', 'boolean', 'pg_catalog.nameeq($1, $2)' ],
	[ '=', 'name', 'text', 'boolean', 'pg_catalog.nameeqtext($1, $2)' ],
	[ '||', 'name', 'name', 'text', 'pg_catalog.textcat($1::pg_catalog.text, $2::pg_catalog.text)' ],
	[ '=', '"char"', '"char"', 'boolean', 'pg_catalog.chareq($1, $2)' ],
	[ '<>', '"char"', '"char"', 'boolean', 'pg_catalog.charne($1, $2)' ],
	[ '=', 'integer', 'integer', 'boolean', 'pg_catalog.int4eq($1, $2)' ],
	[ '<>', 'integer', 'integer', 'boolean', 'pg_catalog.int4ne($1, $2)' ],
	[ '>', 'bigint', 'integer', 'boolean', 'pg_catalog.int84gt($1, $2)' ],
	[ '=', 'oid', 'oid', 'boolean', 'pg_catalog.oideq($1, $2)' ],
	[ '>=', 'pg_lsn', 'pg_lsn', 'boolean', 'pg_catalog.pg_lsn_ge($1, $2)' ],);
my $n = 0;
foreach my $op (@operators)
{
	my ($name, $left, $right, $result, $body) = @$op;
	$n++;
	$mallory_sql .= qq{
CREATE FUNCTION public.mallory_op$n($left, $right) RETURNS $result LANGUAGE plpgsql AS \$m\$
BEGIN PERFORM public.mallory_note('operator $name($left, $right)'); RETURN $body; END \$m\$;
CREATE OPERATOR public.$name (LEFTARG = $left, RIGHTARG = $right, FUNCTION = public.mallory_op$n);
};
}
# functions and aggregates
$mallory_sql .= q{
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('now()'); RETURN pg_catalog.now(); END $m$;
CREATE FUNCTION public.current_database() RETURNS name LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('current_database()'); RETURN pg_catalog.current_database(); END $m$;
CREATE FUNCTION public.format(text) RETURNS text LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('format(text)'); RETURN pg_catalog.format($1); END $m$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $m$;
CREATE FUNCTION public.pg_wal_lsn_diff(pg_lsn, pg_lsn) RETURNS numeric LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('pg_wal_lsn_diff()'); RETURN pg_catalog.pg_wal_lsn_diff($1, $2); END $m$;
CREATE FUNCTION public.pg_sequence_last_value(regclass) RETURNS bigint LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('pg_sequence_last_value()'); RETURN pg_catalog.pg_sequence_last_value($1); END $m$;
CREATE FUNCTION public.setval(regclass, bigint, boolean) RETURNS bigint LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('setval()'); RETURN pg_catalog.setval($1, $2, $3); END $m$;
CREATE FUNCTION public.mallory_count_star(bigint) RETURNS bigint LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('count(*)'); RETURN pg_catalog.int8pl($1, 1::pg_catalog.int8); END $m$;
CREATE AGGREGATE public.count(*) (SFUNC = public.mallory_count_star, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.mallory_count_bigint(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('count(bigint)'); RETURN pg_catalog.int8pl($1, 1::pg_catalog.int8); END $m$;
CREATE AGGREGATE public.count(bigint) (SFUNC = public.mallory_count_bigint, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.mallory_sum(numeric, bigint) RETURNS numeric LANGUAGE plpgsql AS $m$
BEGIN PERFORM public.mallory_note('sum(bigint)'); RETURN pg_catalog.numeric_add(COALESCE($1, 0::pg_catalog.numeric), $2::pg_catalog.numeric); END $m$;
CREATE AGGREGATE public.sum(bigint) (SFUNC = public.mallory_sum, STYPE = numeric);
};

# What mallory's objects recorded on a node: the calls, '' when none.
sub mallory_calls
{
	my ($node) = @_;
	return $node->safe_psql('app', q{
SET search_path = pg_catalog;
SELECT coalesce(pg_sequence_last_value('public.mallory_seq'::regclass)::text, 'never')
    || ' ' || coalesce(string_agg(DISTINCT fn || ' as ' || called_as, '; '), '')
FROM public.mallory_calls});
}

# Forget what mallory's objects recorded so far.
sub mallory_reset
{
	my ($node) = @_;
	$node->safe_psql('app', q{
SET search_path = pg_catalog;
TRUNCATE public.mallory_calls;
ALTER SEQUENCE public.mallory_seq RESTART});
	return;
}

# The source is read-only after the cutover above (it now also rejects new
# tables): make it writable again, as the README says, before mallory
# creates objects there.
$source->safe_psql('app', 'DROP SCHEMA zdm_fence CASCADE');
foreach my $node ($source, $target)
{
	$node->safe_psql('app', q{
CREATE ROLE mallory LOGIN;
GRANT CREATE ON SCHEMA public TO mallory;
});
	$node->safe_psql('app', $mallory_sql,
		connstr => $node->connstr('app') . ' user=mallory');
	is(mallory_calls($node), 'never ',
		$node->name . ": mallory's objects are in place, never called yet");
}

# One migration of the quoted tables from scratch (FOR ALL TABLES now),
# every call made with search_path set by setup; after each step nothing
# of mallory's may have been called, on either side.
sub migration_under
{
	my ($label, $setup) = @_;
	my $output_before = length $all_output;

	$source->safe_psql('app', 'DROP SCHEMA IF EXISTS zdm_fence CASCADE');
	$target->safe_psql('app', 'DROP EXTENSION pg_zdm; TRUNCATE ' . join(', ', @tables));
	mallory_reset($_) foreach ($source, $target);

	my ($ret, $stdout, $stderr) = on_target($setup . 'CREATE EXTENSION pg_zdm');
	is($ret, 0, "$label: CREATE EXTENSION") or diag $stderr;
	is(mallory_calls($target), 'never ', "$label: CREATE EXTENSION calls nothing of mallory's");

	($ret, $stdout, $stderr) = on_target($setup . "SELECT * FROM zdm.check('$dsn')");
	is($ret, 0, "$label: zdm.check") or diag $stderr;
	is(mallory_calls($target), 'never ', "$label: zdm.check calls nothing of mallory's");
	mallory_reset($target);

	($ret, $stdout, $stderr) = on_target($setup . "CALL zdm.init('$dsn')");
	is($ret, 0, "$label: zdm.init") or diag $stderr;
	is(mallory_calls($target), 'never ', "$label: zdm.init calls nothing of mallory's");
	mallory_reset($target);

	wait_ready($label, $setup);
	($ret, $stdout, $stderr) = on_target($setup . 'SELECT * FROM zdm.tables()');
	is($ret, 0, "$label: zdm.tables") or diag $stderr;
	is(mallory_calls($target), 'never ',
		"$label: zdm.status and zdm.tables call nothing of mallory's");
	mallory_reset($target);

	insert_rows($source, $label);
	($ret, $stdout, $stderr) =
	  on_target($setup . "CALL zdm.cutover(timeout => '2 min')");
	is($ret, 0, "$label: zdm.cutover") or diag $stderr;
	is(mallory_calls($target), 'never ',
		"$label: zdm.cutover and its worker call nothing of mallory's");
	is(mallory_calls($source), 'never ',
		"$label: nothing of mallory's is called on the source");
	unlike(substr($all_output, $output_before), qr/WARNING:[^\n]*mallory/,
		"$label: no WARNING of mallory's in the output");
	foreach my $table (@tables)
	{
		is(digest($target, $table), digest($source, $table),
			"$label: $table: the same rows on both sides");
	}
	return;
}

# the default search_path ("$user", public): only mallory's more exact
# overloads can be found
$source->safe_psql('app', "DROP TABLE $source_only");
migration_under('default search_path', '');

# public first, as the databases' default too (the cutover worker takes it)
$_->safe_psql('app', 'ALTER DATABASE app SET search_path = public, pg_catalog')
  foreach ($source, $target);
migration_under('search_path = public, pg_catalog',
	'SET search_path = public, pg_catalog; ');

# --- the password, nowhere -------------------------------------------------------

is(secret_lines($all_output), '', 'no password in any psql output of this test');
foreach my $node ($source, $target)
{
	my $log = slurp_file($node->logfile);
	is(secret_lines($log), '', 'no password in any line of the log of ' . $node->name);
	like($log, qr/STATEMENT:  /, $node->name . "'s log has STATEMENT lines of failed statements (the check is meaningful)")
	  if $node == $target;
	unlike($log, qr/mallory: /, "no call of mallory's objects in the log of " . $node->name);
}

done_testing();
