-- bad_input: each bad call ends with a clear error and changes nothing.
-- Messages are shown terse (libpq's details name this run's socket); the
-- SQLSTATE is printed after each error.
SELECT on_both('CREATE TABLE bi_items (id int PRIMARY KEY)');
SELECT source_dsn() AS dsn \gset
\set VERBOSITY terse

-- Malformed, empty, NULL connection strings, and unknown keywords.
CALL zdm.init('host=localhost port');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init('nosuchkeyword=1');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init('   ');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init(NULL);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init(:'dsn', ignore_missing => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM zdm.check(NULL);
\echo :LAST_ERROR_SQLSTATE

-- Nothing listens there, or no such database.
CALL zdm.init('host=127.0.0.1 port=1 dbname=nowhere connect_timeout=5');
\echo :LAST_ERROR_SQLSTATE
SELECT source_dsn('no_such_database') AS missing_db_dsn \gset
CALL zdm.init(:'missing_db_dsn');
\echo :LAST_ERROR_SQLSTATE

-- A wrong password: refused, and the password shows nowhere.
CREATE ROLE zdm_pw_user LOGIN SUPERUSER PASSWORD 'right-S3cret';
DO $$
DECLARE
  old_rules text := pg_read_file(current_setting('hba_file'));
BEGIN
  EXECUTE format('COPY (SELECT %L UNION ALL SELECT unnest(string_to_array(%L, E''\n''))) TO %L',
                 'local all zdm_pw_user scram-sha-256', old_rules,
                 current_setting('hba_file'));
END $$;
SELECT pg_reload_conf();
SELECT source_dsn() || ' user=zdm_pw_user password=wrong-S3cret' AS wrong_pw_dsn \gset
CALL zdm.init(:'wrong_pw_dsn');
\echo :LAST_ERROR_SQLSTATE
SELECT position('wrong-S3cret' IN :'LAST_ERROR_MESSAGE') AS password_in_message;
SELECT ok, detail LIKE '%password authentication failed%' AS says_why,
       position('wrong-S3cret' IN detail) AS password_in_detail
FROM zdm.check(:'wrong_pw_dsn') WHERE name = 'connection';

-- The target itself as the source.
SELECT source_dsn(current_database()) AS self_dsn \gset
CALL zdm.init(:'self_dsn');
\echo :LAST_ERROR_SQLSTATE

-- Tables missing on the target; tables without replica identity.
SELECT on_source('CREATE TABLE bi_source_only (id int PRIMARY KEY)');
CALL zdm.init(:'dsn');
\echo :LAST_ERROR_SQLSTATE
SELECT on_source('DROP TABLE bi_source_only');
SELECT on_both('CREATE TABLE bi_no_key (v text)');
CALL zdm.init(:'dsn');
\echo :LAST_ERROR_SQLSTATE
SELECT on_both('DROP TABLE bi_no_key');

-- init inside a transaction block.
BEGIN;
CALL zdm.init(:'dsn');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- Nothing was created by any of the above.
SELECT source_objects();
SELECT count(*) AS subscriptions FROM pg_subscription;
SELECT count(*) AS migrations FROM zdm.migration;

-- Cutover without a migration, and with bad arguments.
CALL zdm.cutover();
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(timeout => '0 s');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(timeout => '-1 min');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(timeout => NULL);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(sequence_buffer => -1);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(sequence_buffer => 9223372036854775807);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(fallback => NULL);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(target_dsn => 'host=elsewhere');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(fallback => true, target_dsn => 'nosuchkeyword=1');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(fallback => true, target_dsn => '  ');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.cutover(fallback => true);
\echo :LAST_ERROR_SQLSTATE

-- Fallback, its checks and finish without a migration.
CALL zdm.fallback();
\echo :LAST_ERROR_SQLSTATE
CALL zdm.fallback(timeout => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM zdm.check_fallback();
\echo :LAST_ERROR_SQLSTATE
CALL zdm.finish();
BEGIN;
CALL zdm.fallback();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
CALL zdm.finish();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- init twice.
CALL zdm.init(:'dsn');
CALL zdm.init(:'dsn');
\echo :LAST_ERROR_SQLSTATE

-- Before the cutover: no fallback and no finish; the fallback checks run.
CALL zdm.fallback();
\echo :LAST_ERROR_SQLSTATE
CALL zdm.finish();
\echo :LAST_ERROR_SQLSTATE
SELECT name, ok, blocking FROM zdm.check_fallback();
SELECT count(*) AS migrations FROM zdm.migration WHERE phase = 'streaming';
-- (the copy done: an abort during it may report a table-sync slot it drops)
SELECT wait_ready();
CALL zdm.abort();
SELECT source_objects();
SELECT on_both('DROP TABLE bi_items');
TRUNCATE zdm.event_log;
