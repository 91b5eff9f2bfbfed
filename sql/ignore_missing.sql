-- ignore_missing: publish only the source tables that exist on the target.
SELECT on_both('CREATE TABLE im_common (id int PRIMARY KEY, v text)');
SELECT on_source('CREATE TABLE im_source_only (id int PRIMARY KEY)');
SELECT on_source($$INSERT INTO im_common SELECT g, 'v' FROM generate_series(1, 100) g$$);
SELECT on_source($$INSERT INTO im_source_only SELECT g FROM generate_series(1, 10) g$$);

SELECT source_dsn() AS dsn \gset

-- Without it, init refuses and creates nothing.
\set VERBOSITY terse
CALL zdm.init(:'dsn');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT source_objects();

CALL zdm.init(:'dsn', ignore_missing => true);
SELECT wait_ready();
SELECT from_source($$SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'zdm_pub'$$) AS published;
SELECT count(*) FROM im_common;
SELECT schema_name, table_name, state FROM zdm.tables();

-- Writes to the table the target lacks do not disturb replication.
SELECT on_source($$INSERT INTO im_source_only VALUES (11)$$);
SELECT on_source($$INSERT INTO im_common VALUES (101, 'late')$$);
SELECT wait_for($$SELECT count(*) = 101 FROM im_common$$);

CALL zdm.abort();
SELECT source_objects();
SELECT on_source('DROP TABLE im_source_only');
SELECT on_both('DROP TABLE im_common');
TRUNCATE zdm.event_log;
