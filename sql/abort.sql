-- abort: status and abort before any init, abort twice, and abort while the
-- initial copy is still running.
SELECT * FROM zdm.status();
SELECT * FROM zdm.tables();
CALL zdm.abort();

SELECT on_both('CREATE TABLE ab_big (id int PRIMARY KEY, pad text)');
SELECT on_source($$INSERT INTO ab_big SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g$$);
SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn');
CALL zdm.abort();
CALL zdm.abort();
SELECT source_objects();
SELECT count(*) AS subscriptions FROM pg_subscription;
SELECT event, detail LIKE '%dropped%' AS dropped FROM zdm.event_log ORDER BY id;

-- The source is writable and untouched.
SELECT on_source($$INSERT INTO ab_big VALUES (0, 'after')$$);
SELECT from_source('SELECT count(*) FROM ab_big');
SELECT on_both('DROP TABLE ab_big');
