-- verify: zdm.verify() compares the rows of source and target and names
-- the keys that differ, with the source a second database of this server.
-- NOTICEs carry timings: only warnings are shown.
SET client_min_messages = warning;
SET zdm.verify_chunk_rows = 500;

SELECT on_both('CREATE TABLE vaccounts (id integer PRIMARY KEY, owner text, balance numeric, ratio float8, opened timestamptz, span interval, raw bytea)');
SELECT on_both('CREATE TABLE "Verify Me" ("Key A" integer, "key b" text, v text, PRIMARY KEY ("Key A", "key b"))');
SELECT on_both('CREATE TABLE vlog (at integer, msg text)');
SELECT on_both('ALTER TABLE vlog REPLICA IDENTITY FULL');
SELECT on_both('CREATE VIEW vview AS SELECT 1 AS one');
SELECT on_source($$INSERT INTO vaccounts SELECT g, 'owner ' || g, g * 1.5, g / 3.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 day 1 hour', g * interval '1 min 0.5 sec', decode(md5(g::text), 'hex') FROM generate_series(1, 3000) g$$);
SELECT on_source($$INSERT INTO "Verify Me" SELECT g, 'k ' || g, 'v' || g FROM generate_series(1, 100) g$$);
SELECT on_source($$INSERT INTO vlog SELECT g % 5, 'm' || g % 5 FROM generate_series(1, 20) g$$);

-- no migration yet
SELECT * FROM zdm.verify();

SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn');
SELECT wait_ready();
SELECT on_source('ANALYZE vaccounts');
ANALYZE vaccounts;

-- every table equal, whatever this session's own settings
SET TimeZone = 'Pacific/Auckland';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = -5;
SET bytea_output = 'escape';
SELECT schema_name, table_name, source_rows, target_rows, ok, detail
FROM zdm.verify() WHERE table_name IN ('vaccounts', 'Verify Me', 'vlog')
ORDER BY table_name;
SHOW TimeZone;    -- the session's settings are back

-- changes on this target behind replication's back
SET session_replication_role = replica;
UPDATE vaccounts SET balance = balance + 1 WHERE id = 1234;
DELETE FROM vaccounts WHERE id = 42;
INSERT INTO vaccounts (id, owner) VALUES (5000, 'intruder');
DELETE FROM "Verify Me" WHERE "Key A" = 7;
UPDATE "Verify Me" SET v = 'changed' WHERE "Key A" = 8;
INSERT INTO vlog VALUES (9, 'extra');
RESET session_replication_role;
SELECT schema_name, table_name, source_rows, target_rows, ok, detail
FROM zdm.verify() WHERE table_name IN ('vaccounts', 'Verify Me', 'vlog')
ORDER BY table_name;

-- the tables given only
SELECT table_name, ok FROM zdm.verify(ARRAY['"Verify Me"'::regclass, 'vlog']);

-- bad input
SELECT * FROM zdm.verify(ARRAY[NULL::regclass]);
SELECT * FROM zdm.verify(ARRAY['vview'::regclass]);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM zdm.verify();
ROLLBACK;

CALL zdm.abort();
SELECT on_both('DROP VIEW vview');
SELECT on_both('DROP TABLE vaccounts, "Verify Me", vlog');
TRUNCATE zdm.event_log;
