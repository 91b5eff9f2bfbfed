-- quoted_names: schemas and tables whose names need quoting replicate.
SELECT on_both($$CREATE SCHEMA "Odd Schema"$$);
SELECT on_both($$CREATE TABLE "Odd Schema"."we""ird; name" (id int PRIMARY KEY, "Value" text)$$);
SELECT on_both($$CREATE TABLE "MiXeD" ("Id" int PRIMARY KEY)$$);
SELECT on_both($$CREATE TABLE "ünïcödé tàble" (id int PRIMARY KEY)$$);
SELECT on_source($$INSERT INTO "Odd Schema"."we""ird; name" SELECT g, 'x' FROM generate_series(1, 10) g$$);
SELECT on_source($$INSERT INTO "MiXeD" SELECT g FROM generate_series(1, 20) g$$);
SELECT on_source($$INSERT INTO "ünïcödé tàble" SELECT g FROM generate_series(1, 30) g$$);

SELECT name, ok FROM zdm.check(source_dsn()) WHERE NOT ok;

SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn');
SELECT wait_ready();
SELECT schema_name, table_name, state FROM zdm.tables();
SELECT (SELECT count(*) FROM "Odd Schema"."we""ird; name") AS weird,
       (SELECT count(*) FROM "MiXeD") AS mixed,
       (SELECT count(*) FROM "ünïcödé tàble") AS unicode;

-- The same with ignore_missing, which names each table on the source.
CALL zdm.abort();
TRUNCATE "Odd Schema"."we""ird; name", "MiXeD", "ünïcödé tàble";
CALL zdm.init(:'dsn', ignore_missing => true);
SELECT wait_ready();
SELECT from_source($$SELECT string_agg(format('%I.%I', schemaname, tablename), ', ' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'zdm_pub'$$) AS published;
SELECT on_source($$INSERT INTO "Odd Schema"."we""ird; name" VALUES (11, 'late')$$);
SELECT wait_for($$SELECT count(*) = 11 FROM "Odd Schema"."we""ird; name"$$);

CALL zdm.abort();
SELECT source_objects();
SELECT on_both($$DROP SCHEMA "Odd Schema" CASCADE$$);
SELECT on_both($$DROP TABLE "MiXeD", "ünïcödé tàble"$$);
TRUNCATE zdm.event_log;
