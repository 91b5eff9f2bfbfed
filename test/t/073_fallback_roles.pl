# test/t/073_fallback_roles.pl: the roles a cutover with fallback and a
# fallback run with when they are not superusers (issue 12: "what it needs
# is checked before the cutover ... not discovered after").
#
#   1. target_dsn names a role of this target that may replicate
#      (REPLICATION) but neither is a superuser nor owns the migrated
#      tables.  The fallback's fence here is taken in a session of that
#      role (README, "Sources on managed services"), which cannot lock those
#      tables or put triggers on them.  Either the cutover with fallback
#      refuses it (zdm.check_fallback() having said so beforehand, nothing
#      created, the source writable), or the fallback then works with it; a
#      fallback that fails only then, after the application moved, is what
#      the issue rules out.
#   2. A source role that is not a superuser (as on managed services:
#      REPLICATION, CREATE on the database, owner of the tables), migrated
#      with zdm.init.  Up to PostgreSQL 15 only a superuser may create a
#      subscription: fallback_subscription_privilege fails, the cutover with
#      fallback is refused, nothing is created, the source stays writable.
#      From 16: without pg_create_subscription the check fails; with it,
#      a target_dsn without password fails it too (the subscription of a
#      role that is not a superuser must authenticate with a password);
#      with a password (a target role with REPLICATION that owns the tables
#      here, scram over TCP) the checks must pass exactly when the cutover
#      with fallback can complete (first without, then with CREATE on the
#      target database); then it completes, a write on the target reaches the source, the fallback
#      completes with the same rows on both sides and the source's sequence
#      ahead, zdm.finish() leaves nothing behind, and the password shows in
#      no status row, event log entry or NOTICE.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmFallback;
use ZdmTest;

my $TARGET_PASSWORD = 'fb-T4rget-pw';

my $source = start_source('source', "log_statement = ddl\n");
my $target = start_fallback_target('target', "log_statement = ddl\n");
my $schema = q{
CREATE TABLE t1 (id serial PRIMARY KEY, v text);
CREATE TABLE t2 (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
};
same_schema_on_both($source, $target, $schema);
$source->safe_psql('app', q{
INSERT INTO t1 (v) SELECT 'row ' || i FROM generate_series(1, 100) i;
INSERT INTO t2 (v) SELECT 'row ' || i FROM generate_series(1, 100) i;
});
$target->safe_psql('app', 'CREATE ROLE fbrepl LOGIN REPLICATION');

# The output of a statement on the target, errors verbose: (exit code,
# stderr).
sub on_target
{
	my ($sql) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($target, 'app', $sql);
	return ($ret, $stderr);
}

# The source takes a write now (a fence would make it wait: 10 s at most).
sub source_writable
{
	my ($label) = @_;
	my ($ret, $stdout, $stderr) = psql_verbose($source, 'app',
		"SET lock_timeout = '10s'; INSERT INTO t1 (v) VALUES ('$label')");
	return is($ret, 0, "$label: the source takes writes") || diag $stderr;
}

# A new migration on the same clusters, with the source DSN given: the
# sides made writable again, the extension created anew, the target's
# tables emptied for the initial copy.
sub new_migration
{
	my ($dsn) = @_;
	$source->safe_psql('app', 'DROP SCHEMA IF EXISTS zdm_fence CASCADE');
	$target->safe_psql('app', 'DROP SCHEMA IF EXISTS zdm_fence CASCADE');
	$target->safe_psql('app',
		'DROP EXTENSION pg_zdm; CREATE EXTENSION pg_zdm; TRUNCATE t1, t2');
	my ($ret, $stderr) = on_target("CALL zdm.init('$dsn')");
	is($ret, 0, 'a new migration starts') or diag $stderr;
	wait_until_ready($target);
	return;
}

# The fallback checks that fail for target_dsn, "name: detail; ...", '' when
# every one passes.
sub failing_checks
{
	my ($dsn) = @_;
	return $target->safe_psql('app',
		"SELECT coalesce(string_agg(name || ': ' || detail, '; '), '') FROM zdm.check_fallback('$dsn') WHERE NOT ok");
}

# --- 1. a target role that may replicate but not fence the tables here --------

init_migration($source, $target);
{
	my $label = 'target_dsn role without the tables';
	my $dsn = 'host=127.0.0.1 port=' . $target->port . ' dbname=app user=fbrepl';
	my $failing = failing_checks($dsn);
	my ($ret, $stderr) =
	  on_target("CALL zdm.cutover(fallback => true, target_dsn => '$dsn')");
	my $works;
	if ($ret != 0)
	{
		note "$label: the cutover with fallback was refused: $stderr";
		isnt($failing, '', "$label: zdm.check_fallback() had said beforehand what is missing");
		unlike($stderr, qr/writes blocked on the source/, "$label: the source was never fenced");
		is(wait_no_reverse_objects($source, $target), '',
			"$label: nothing created on either side");
		source_writable($label);
		$works = 1;
		$target->safe_psql('app', 'CALL zdm.abort()');
	}
	else
	{
		note "$label: the cutover with fallback accepted it; the fallback must work with it";
		wait_reverse_streaming($target, $label);
		$target->safe_psql('app', "INSERT INTO t1 (v) VALUES ('$label: on the target')");
		ok( $source->poll_query_until('app',
				"SELECT count(*) = 1 FROM t1 WHERE v = '$label: on the target'"),
			"$label: a write on the target reaches the source");
		($ret, $stderr) = on_target("CALL zdm.fallback(timeout => '30 s')");
		note "$label: zdm.fallback() said: $stderr";
		$works = $ret == 0;
		if ($works)
		{
			is(wait_no_reverse_objects($source, $target), '',
				"$label: the fallback removed the reverse replication");
			source_writable("$label: after the fallback");
		}
		else
		{
			# the way back is closed: end the migration to go on
			($ret, $stderr) = on_target('CALL zdm.finish()');
			is($ret, 0, "$label: zdm.finish() after the failed fallback") or diag $stderr;
		}
		$target->safe_psql('app', 'CALL zdm.finish()') if $works;
	}
	ok($works,
		"$label: refused before the cutover, or the fallback works with it (not a failure discovered after the cutover)"
	);
}

# --- 2. a source role that is not a superuser ------------------------------------

my $mgr_dsn = managed_role($source, 'mgr');
$source->safe_psql('app', 'ALTER TABLE t1 OWNER TO mgr; ALTER TABLE t2 OWNER TO mgr');
new_migration($mgr_dsn);
my $major = int($source->safe_psql('app', 'SHOW server_version_num') / 10000);
my $fbrepl_dsn = 'host=127.0.0.1 port=' . $target->port . ' dbname=app user=fbrepl';

# "ok|blocking" of a fallback check for target_dsn.
sub fallback_check
{
	my ($name, $dsn) = @_;
	return $target->safe_psql('app',
		"SELECT ok || '|' || blocking FROM zdm.check_fallback('$dsn') WHERE name = '$name'");
}

if ($major < 16)
{
	my $label = "PostgreSQL $major source, role mgr";
	is(fallback_check('fallback_subscription_privilege', $fbrepl_dsn), 'false|true',
		"$label: fallback_subscription_privilege fails, blocking");
	my ($ret, $stderr) =
	  on_target("CALL zdm.cutover(fallback => true, target_dsn => '$fbrepl_dsn')");
	isnt($ret, 0, "$label: the cutover with fallback is refused");
	like($stderr, qr/DETAIL:[^\n]*fallback_subscription_privilege/,
		"$label: the detail names fallback_subscription_privilege") or diag $stderr;
	is(wait_no_reverse_objects($source, $target), '', "$label: nothing created on either side");
	source_writable($label);
	is($target->safe_psql('app', 'SELECT phase FROM zdm.migration'),
		'streaming', "$label: the migration is still streaming");
}
else
{
	my $label = "PostgreSQL $major source, role mgr";
	# the target role of the reverse replication: REPLICATION, owner of the
	# tables here, with a password, scram over TCP
	$target->safe_psql('app', qq{
CREATE ROLE fbpw LOGIN REPLICATION PASSWORD '$TARGET_PASSWORD';
ALTER TABLE t1 OWNER TO fbpw;
ALTER TABLE t2 OWNER TO fbpw;
});
	my $hba = $target->data_dir . '/pg_hba.conf';
	my $old = slurp_file($hba);
	open my $fh, '>', $hba or die "cannot write $hba: $!";
	print $fh "host all fbpw 127.0.0.1/32 scram-sha-256\n";
	print $fh $old;
	close $fh;
	$target->reload;
	my $nopw_dsn = 'host=127.0.0.1 port=' . $target->port . ' dbname=app user=fbpw';
	my $pw_dsn = "$nopw_dsn password=$TARGET_PASSWORD";

	is(fallback_check('fallback_subscription_privilege', $pw_dsn), 'false|true',
		"$label without pg_create_subscription: fallback_subscription_privilege fails");
	$source->safe_psql('app', 'GRANT pg_create_subscription TO mgr');
	is(fallback_check('fallback_subscription_privilege', $nopw_dsn), 'false|true',
		"$label with pg_create_subscription, a target_dsn without password: it fails");
	my ($ret, $stderr) =
	  on_target("CALL zdm.cutover(fallback => true, target_dsn => '$nopw_dsn')");
	isnt($ret, 0, "$label, a target_dsn without password: the cutover with fallback is refused");
	is(wait_no_reverse_objects($source, $target), '', "$label: nothing created on either side");
	source_writable("$label, refused");

	# fbpw is what the README asks of the target role (REPLICATION, owner of
	# the tables), without CREATE on the database: if the checks pass, the
	# cutover must complete; if it cannot, they must have said so.
	my $failing = failing_checks($pw_dsn);
	note "$label, fbpw without CREATE on the target database: failing checks: '$failing'";
	($ret, $stderr) = on_target("CALL zdm.cutover(fallback => true, target_dsn => '$pw_dsn')");
	ok($ret == 0 || $failing ne '',
		"$label, fbpw without CREATE on the target database: every check passing means the cutover with fallback completes"
	) or diag $stderr;
	if ($ret != 0)
	{
		is(wait_no_reverse_objects($source, $target), '',
			"$label, fbpw without CREATE: nothing created on either side");
		source_writable("$label, fbpw without CREATE");
		$target->safe_psql('app', 'GRANT CREATE ON DATABASE app TO fbpw');
		is(failing_checks($pw_dsn), '',
			"$label with pg_create_subscription, a password, fbpw with CREATE here: every fallback check passes");
		($ret, $stderr) = on_target("CALL zdm.cutover(fallback => true, target_dsn => '$pw_dsn')");
	}
	is($ret, 0, "$label: the cutover with fallback completes") or diag $stderr;
	my $outputs = $stderr;
	stop_unless($ret == 0, "$label: the cutover with fallback");
	wait_reverse_streaming($target, $label);
	my ($r, $out, $err) = psql_verbose($source, 'app', "INSERT INTO t1 (v) VALUES ('x')");
	is(sqlstate_of($err), '25006', "$label: the source rejects application writes");
	$target->safe_psql('app', q{
INSERT INTO t1 (v) SELECT 'on the target ' || i FROM generate_series(1, 50) i;
INSERT INTO t2 (v) SELECT 'on the target ' || i FROM generate_series(1, 50) i;
UPDATE t1 SET v = v || ' (updated on the target)' WHERE id <= 10;
DELETE FROM t2 WHERE id <= 10;
});
	ok( $source->poll_query_until('app', q{
SELECT (SELECT count(*) FROM t1 WHERE v LIKE 'on the target%')
    + (SELECT count(*) FROM t2 WHERE v LIKE 'on the target%')
    + (SELECT count(*) FROM t1 WHERE v LIKE '%(updated on the target)') = 110
   AND NOT EXISTS (SELECT 1 FROM t2 WHERE id <= 10)}),
		"$label: the target's inserts, updates and deletes reach the source");
	$outputs .= $target->safe_psql('app',
		"SELECT string_agg(component || ' ' || metric || ' ' || coalesce(value, ''), E'\\n') FROM zdm.status()");

	($ret, $stderr) = on_target('CALL zdm.fallback()');
	is($ret, 0, "$label: the fallback completes") or diag $stderr;
	$outputs .= $stderr;
	stop_unless($ret == 0, "$label: the fallback");
	foreach my $table ('t1', 't2')
	{
		is(table_digest($source, $table), table_digest($target, $table),
			"$label: $table has the same rows on both sides");
	}
	my $max = $target->safe_psql('app', 'SELECT max(id) FROM t2');
	($r, my $new_id, $err) = psql_verbose($source, 'app',
		"INSERT INTO t2 (v) VALUES ('back on the source') RETURNING id");
	is($r, 0, "$label: the source takes writes") or diag $err;
	cmp_ok($new_id || 0, '>', $max, "$label: its identity is ahead of the target's keys ($max)");
	($r, $out, $err) = psql_verbose($target, 'app', "INSERT INTO t1 (v) VALUES ('x')");
	is(sqlstate_of($err), '25006', "$label: the target rejects writes");
	($ret, $stderr) = on_target('CALL zdm.finish()');
	is($ret, 0, "$label: zdm.finish() completes") or diag $stderr;
	$outputs .= $stderr;
	is(wait_no_reverse_objects($source, $target), '', "$label: nothing left on either side");
	is($source->safe_psql('app', "SELECT count(*) FROM pg_namespace WHERE nspname = 'zdm_fence'"),
		'0', "$label: no zdm_fence left on the source");
	$outputs .= $target->safe_psql('app',
		"SELECT string_agg(event || ' ' || coalesce(detail, ''), E'\\n') FROM zdm.event_log");
	is(lines_with_secret($outputs, $TARGET_PASSWORD), '',
		"$label: the target's password is in no NOTICE, status row or event log entry");
}

done_testing();
