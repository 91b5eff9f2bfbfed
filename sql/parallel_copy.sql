-- parallel_copy: zdm.init(copy_method => 'parallel') with the source a second
-- database of this same server, so that the slot is created (through a
-- replication connection, exporting its snapshot) while the copy workers and
-- init itself run on the cluster the slot waits on; and bad copy arguments.

-- Bad arguments: refused before anything is made.
\set VERBOSITY terse
CALL zdm.init(source_dsn(), copy_method => 'fast');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init(source_dsn(), defer_copy => true, copy_method => 'parallel');
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init(source_dsn(), copy_method => 'parallel', copy_jobs => 0);
\echo :LAST_ERROR_SQLSTATE
CALL zdm.init(source_dsn(), copy_method => NULL);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- The checks of the parallel copy.
SELECT name, ok, blocking FROM zdm.check(source_dsn(), copy_method => 'parallel')
WHERE name LIKE 'copy%' ORDER BY name;

-- A table split into ranges, with a secondary index set aside and rebuilt.
SELECT on_both('CREATE TABLE pc_items (id int PRIMARY KEY, v text)');
SELECT on_both('CREATE INDEX pc_items_v ON pc_items (v)');
SELECT on_source($$INSERT INTO pc_items SELECT g, 'v' || g FROM generate_series(1, 5000) g$$);
SET zdm.copy_range_size = '64kB';
SET zdm.copy_index_set_aside_size = 0;
CALL zdm.init(source_dsn(), copy_method => 'parallel', copy_jobs => 2);
RESET zdm.copy_range_size;
RESET zdm.copy_index_set_aside_size;
CALL zdm.wait_ready('2 min', '1 h');
SELECT count(*), sum(id) FROM pc_items;
SELECT kind, count(*) > 1 AS several, string_agg(DISTINCT state, ',') AS states
FROM zdm.copy_task GROUP BY kind ORDER BY kind;
SELECT indexname FROM pg_indexes WHERE tablename = 'pc_items' ORDER BY 1;
SELECT schema_name, table_name, state, copied_bytes > 0 AS copied, indexes_pending
FROM zdm.tables();
SELECT metric, ok FROM zdm.status() WHERE component IN ('copy', 'overall') ORDER BY metric;

-- A row written after the copy arrives by streaming, once.
SELECT on_source($$INSERT INTO pc_items VALUES (5001, 'after')$$);
DO $$
BEGIN
  FOR i IN 1..300 LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM pc_items WHERE id = 5001);
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SELECT count(*), sum(id) FROM pc_items;

CALL zdm.abort();
SELECT count(*) FROM zdm.copy_task;
SELECT on_both('DROP TABLE pc_items');
