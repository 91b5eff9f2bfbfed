-- abort: status and abort before any init, abort twice, and abort while the
-- initial copy is still running.
SELECT * FROM zdm.status();
SELECT * FROM zdm.tables();
CALL zdm.abort();

SELECT on_both('CREATE TABLE ab_big (id int PRIMARY KEY, pad text)');
SELECT on_source($$INSERT INTO ab_big SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g$$);

-- Hold the initial copy back: a second session of this target database
-- holds SHARE on ab_big, which conflicts with the ROW EXCLUSIVE lock the
-- table-sync worker takes before it copies a row.  SHARE assigns no
-- transaction id, so creating the slots (which waits for every transaction
-- holding one in the cluster) is not held back.
SELECT dblink_connect('copy_hold', source_dsn(current_database()));
SELECT dblink_exec('copy_hold', 'BEGIN');
SELECT dblink_exec('copy_hold', 'LOCK TABLE ab_big IN SHARE MODE');
SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn');
-- The table-sync worker of ab_big has started and waits for the lock: the
-- copy is running, and not finished, when abort comes.  (pg_stat_subscription
-- and pg_locks are read live; pg_stat_activity would stay as wait_for's
-- transaction first saw it.)
SELECT wait_for($$SELECT EXISTS (SELECT 1 FROM pg_locks l
                                  JOIN pg_stat_subscription s ON s.pid = l.pid
                                  WHERE s.relid = 'ab_big'::regclass
                                    AND l.relation = 'ab_big'::regclass AND NOT l.granted)$$) AS copy_waits;
SELECT table_name, state FROM zdm.tables();
SELECT count(*) AS rows_copied FROM ab_big;
CALL zdm.abort();
-- The table-sync worker went with the subscription: nothing waits for the
-- lock any more.
SELECT wait_for($$SELECT NOT EXISTS (SELECT 1 FROM pg_locks
                                      WHERE relation = 'ab_big'::regclass AND NOT granted)$$) AS copy_stopped;
SELECT dblink_exec('copy_hold', 'ROLLBACK');
SELECT dblink_disconnect('copy_hold');
CALL zdm.abort();
SELECT source_objects();
SELECT count(*) AS subscriptions FROM pg_subscription;
SELECT event, detail LIKE '%dropped%' AS dropped FROM zdm.event_log ORDER BY id;

-- The source is writable and untouched.
SELECT on_source($$INSERT INTO ab_big VALUES (0, 'after')$$);
SELECT from_source('SELECT count(*) FROM ab_big');
SELECT on_both('DROP TABLE ab_big');
