-- check: zdm.check reports every preflight check and changes nothing.
SELECT on_both('CREATE TABLE chk_items (id int PRIMARY KEY, v text)');

-- All fine: every row ok.
SELECT name, ok, blocking FROM zdm.check(source_dsn());

-- Source tables the target lacks, or that would break once published.
SELECT on_source('CREATE TABLE chk_only_on_source (id int PRIMARY KEY)');
SELECT on_source('CREATE TABLE chk_no_key (v text)');
SELECT on_source('CREATE UNLOGGED TABLE chk_unlogged (id int)');
SELECT on_source('ALTER TABLE chk_items ADD COLUMN extra int, ALTER COLUMN v TYPE varchar(10)');
SELECT from_source('SELECT lo_create(0)::text') IS NOT NULL AS large_object_created;
SELECT name, ok, blocking, detail, hint
FROM zdm.check(source_dsn())
WHERE NOT ok
ORDER BY name;

-- ignore_missing: the missing tables are no longer a failure.
SELECT name, ok, detail FROM zdm.check(source_dsn(), ignore_missing => true)
WHERE name = 'missing_tables';

-- The target itself as the source: refused.
SELECT name, ok, detail FROM zdm.check(source_dsn(current_database()))
WHERE name = 'same_database';

-- Nothing was created anywhere.
SELECT source_objects();
SELECT count(*) AS subscriptions FROM pg_subscription;

SELECT on_source('DROP TABLE chk_only_on_source, chk_no_key, chk_unlogged');
SELECT from_source('SELECT count(lo_unlink(oid))::text FROM pg_largeobject_metadata') AS large_objects_removed;
SELECT on_both('DROP TABLE chk_items');

-- Every affected object is named: the detail names 10, objects all of them.
SELECT on_source($q$DO $$ BEGIN FOR i IN 1 .. 12 LOOP
  EXECUTE format('CREATE TABLE chk_many_%s (id int PRIMARY KEY)', i); END LOOP; END $$$q$);
SELECT detail, cardinality(objects) AS objects FROM zdm.check(source_dsn())
WHERE name = 'missing_tables';
SELECT unnest(objects) AS missing FROM zdm.check(source_dsn())
WHERE name = 'missing_tables';
SELECT on_source($q$DO $$ BEGIN FOR i IN 1 .. 12 LOOP
  EXECUTE format('DROP TABLE chk_many_%s', i); END LOOP; END $$$q$);

-- Replica identity: a DEFERRABLE key cannot identify rows; FULL needs an
-- equality operator for every column type (asked of the catalog, through
-- domains and arrays); each table gets a statement that works for it.
CREATE DOMAIN chk_pt AS point;
SELECT on_source('CREATE DOMAIN chk_pt AS point');
SELECT on_both('CREATE TABLE chk_deferrable (id int PRIMARY KEY DEFERRABLE, v int)');
SELECT on_both('CREATE TABLE chk_deferrable_unique (id int PRIMARY KEY DEFERRABLE, code text NOT NULL UNIQUE)');
SELECT on_both('CREATE TABLE chk_keyless (a int, b text[], c varchar(3))');
SELECT on_both('CREATE TABLE chk_keyless_json (a int, j json)');
SELECT on_both('CREATE TABLE chk_full_point (a int, p chk_pt[])');
SELECT on_source('ALTER TABLE chk_full_point REPLICA IDENTITY FULL');
SELECT on_both('CREATE TABLE chk_full_jsonb (a int, j jsonb)');
SELECT on_source('ALTER TABLE chk_full_jsonb REPLICA IDENTITY FULL');
-- FULL with a json column on the source, but a primary key here: fine
SELECT on_source('CREATE TABLE chk_full_keyed_here (id int, j json)');
SELECT on_source('ALTER TABLE chk_full_keyed_here REPLICA IDENTITY FULL');
CREATE TABLE chk_full_keyed_here (id int PRIMARY KEY, j json);
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn())
WHERE name = 'replica_identity';
SELECT unnest(objects) AS replica_identity FROM zdm.check(source_dsn())
WHERE name = 'replica_identity';
SELECT on_both('DROP TABLE chk_deferrable, chk_deferrable_unique, chk_keyless, chk_keyless_json, chk_full_point, chk_full_jsonb, chk_full_keyed_here');
SELECT on_both('DROP DOMAIN chk_pt');

-- Generated columns: generated on one side only.
SELECT on_source('CREATE TABLE chk_gen (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED, c int)');
CREATE TABLE chk_gen (id int PRIMARY KEY, a int, b int, c int GENERATED ALWAYS AS (a + 1) STORED);
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn())
WHERE name = 'generated_columns';
SELECT unnest(objects) AS generated_columns FROM zdm.check(source_dsn())
WHERE name = 'generated_columns';
SELECT on_both('DROP TABLE chk_gen');

-- CHECK constraints here that source rows may violate: NOT VALID here and
-- on the source, absent on the source, a NOT VALID domain constraint.
-- Validated on the source with the same definition: fine.
SELECT on_both('CREATE DOMAIN chk_positive AS int');
SELECT on_both('CREATE TABLE chk_con (id int PRIMARY KEY, a int, b int, c int, d chk_positive)');
SELECT on_both('ALTER TABLE chk_con ADD CONSTRAINT chk_a CHECK (a > 0) NOT VALID');
SELECT on_both('ALTER TABLE chk_con ADD CONSTRAINT chk_b CHECK (b > 0) NOT VALID');
SELECT on_source('ALTER TABLE chk_con VALIDATE CONSTRAINT chk_b');
ALTER TABLE chk_con ADD CONSTRAINT chk_c CHECK (c > 0);
ALTER DOMAIN chk_positive ADD CONSTRAINT chk_positive_check CHECK (VALUE > 0) NOT VALID;
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn())
WHERE name = 'target_constraints';
SELECT unnest(objects) AS target_constraints FROM zdm.check(source_dsn())
WHERE name = 'target_constraints';
SELECT on_both('DROP TABLE chk_con');
SELECT on_both('DROP DOMAIN chk_positive');

-- Keys here that the source lacks: duplicates there would fail the copy.
SELECT on_source('CREATE TABLE chk_keys (id int PRIMARY KEY, code text, during tstzrange)');
CREATE TABLE chk_keys (id int PRIMARY KEY, code text UNIQUE, during tstzrange,
  EXCLUDE USING gist (during WITH &&));
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn())
WHERE name = 'target_keys';
SELECT unnest(objects) AS target_keys FROM zdm.check(source_dsn())
WHERE name = 'target_keys';
SELECT on_both('DROP TABLE chk_keys');

-- NOT NULL here where the source allows NULL, or a column only here that is
-- NOT NULL without a default; with a default or as identity it is fine.
SELECT on_source('CREATE TABLE chk_nn (id int PRIMARY KEY, a int, b int NOT NULL)');
CREATE TABLE chk_nn (id int PRIMARY KEY, a int NOT NULL, b int NOT NULL,
  c int NOT NULL, d int NOT NULL DEFAULT 0, e bigint GENERATED ALWAYS AS IDENTITY);
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn())
WHERE name = 'target_not_null';
SELECT unnest(objects) AS target_not_null FROM zdm.check(source_dsn())
WHERE name = 'target_not_null';
SELECT on_both('DROP TABLE chk_nn');

-- A sequence only on the source; a trigger here that fires for replicated
-- rows (ENABLE ALWAYS), next to one that does not.
SELECT on_source('CREATE SEQUENCE chk_seq_only_there');
SELECT on_both('CREATE TABLE chk_trg (id int PRIMARY KEY)');
CREATE FUNCTION chk_trg_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER chk_always BEFORE INSERT ON chk_trg FOR EACH ROW EXECUTE FUNCTION chk_trg_fn();
ALTER TABLE chk_trg ENABLE ALWAYS TRIGGER chk_always;
CREATE TRIGGER chk_local BEFORE INSERT ON chk_trg FOR EACH ROW EXECUTE FUNCTION chk_trg_fn();
SELECT name, ok, blocking, detail, hint, objects FROM zdm.check(source_dsn())
WHERE name IN ('missing_sequences', 'target_triggers');
SELECT on_source('DROP SEQUENCE chk_seq_only_there');
SELECT on_both('DROP TABLE chk_trg');
DROP FUNCTION chk_trg_fn();

-- Timestamps in constraints and partition bounds compare equal whatever
-- this session's TimeZone and DateStyle.
SELECT on_both($q$CREATE TABLE chk_ts (t timestamptz PRIMARY KEY CHECK (t > '2020-01-01 00:00:00+00')) PARTITION BY RANGE (t)$q$);
SELECT on_both($q$CREATE TABLE chk_ts_2024 PARTITION OF chk_ts FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')$q$);
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SELECT name, ok, objects FROM zdm.check(source_dsn())
WHERE name IN ('partitions', 'target_constraints');
RESET TimeZone;
RESET DateStyle;
SELECT on_both('DROP TABLE chk_ts');

-- Partitions: the source's partitions are replicated by name; here the
-- parent exists partitioned by the same key but lacks a partition, and
-- another parent is partitioned differently.
SELECT on_both('CREATE TABLE chk_part (id int PRIMARY KEY) PARTITION BY RANGE (id)');
SELECT on_both('CREATE TABLE chk_part_1 PARTITION OF chk_part FOR VALUES FROM (0) TO (100)');
SELECT on_source('CREATE TABLE chk_part_2 PARTITION OF chk_part FOR VALUES FROM (100) TO (200)');
SELECT on_source('CREATE TABLE chk_repart (id int PRIMARY KEY) PARTITION BY RANGE (id)');
SELECT on_source('CREATE TABLE chk_repart_a PARTITION OF chk_repart FOR VALUES FROM (0) TO (100)');
CREATE TABLE chk_repart (id int PRIMARY KEY) PARTITION BY HASH (id);
CREATE TABLE chk_repart_a PARTITION OF chk_repart FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE chk_repart_b PARTITION OF chk_repart FOR VALUES WITH (MODULUS 2, REMAINDER 1);
SELECT ok, blocking, detail, hint FROM zdm.check(source_dsn(), ignore_missing => true)
WHERE name = 'partitions';
SELECT unnest(objects) AS partitions FROM zdm.check(source_dsn(), ignore_missing => true)
WHERE name = 'partitions';
SELECT on_both('DROP TABLE chk_part, chk_repart');

-- A partitioned table here holds its rows in its partitions.
SELECT on_both('CREATE TABLE chk_filled (id int PRIMARY KEY) PARTITION BY RANGE (id)');
SELECT on_both('CREATE TABLE chk_filled_1 PARTITION OF chk_filled FOR VALUES FROM (0) TO (100)');
INSERT INTO chk_filled VALUES (1);
SELECT ok, blocking, detail, objects FROM zdm.check(source_dsn())
WHERE name = 'target_tables_empty';
SELECT on_both('DROP TABLE chk_filled');

-- 1000 tables with rows here: no statement grows with the number of tables
-- (with one UNION ALL of them all, a small max_stack_depth is exceeded).
SELECT on_both($q$DO $$ BEGIN FOR i IN 1 .. 1000 LOOP
  EXECUTE format('CREATE TABLE chk_scale_%s (id int PRIMARY KEY)', i); END LOOP; END $$$q$);
DO $$ BEGIN FOR i IN 1 .. 1000 LOOP
  EXECUTE format('INSERT INTO chk_scale_%s VALUES (1)', i); END LOOP; END $$;
SET max_stack_depth = '100kB';
SELECT ok, blocking, cardinality(objects) AS tables_with_rows, detail
FROM zdm.check(source_dsn())
WHERE name = 'target_tables_empty';
RESET max_stack_depth;
SELECT on_both($q$DO $$ BEGIN FOR i IN 1 .. 1000 LOOP
  EXECUTE format('DROP TABLE chk_scale_%s', i); END LOOP; END $$$q$);

-- Materialized views are not replicated: refresh them after the cutover.
SELECT on_source('CREATE MATERIALIZED VIEW chk_mv AS SELECT 1 AS one');
SELECT ok, blocking, detail, hint, objects FROM zdm.check(source_dsn())
WHERE name = 'materialized_views';
SELECT on_source('DROP MATERIALIZED VIEW chk_mv');

-- The statements that objects gives work: run them, and the checks pass.
SELECT on_both('CREATE TABLE chk_fix_deferrable (id int PRIMARY KEY DEFERRABLE, v int)');
SELECT on_both('CREATE TABLE chk_fix_unique (id int PRIMARY KEY DEFERRABLE, code text NOT NULL UNIQUE)');
SELECT on_both('CREATE TABLE chk_fix_keyless (a int, b text[])');
SELECT on_source('CREATE TABLE chk_fix_gen (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED, c int)');
CREATE TABLE chk_fix_gen (id int PRIMARY KEY, a int, b int, c int GENERATED ALWAYS AS (a + 1) STORED);
SELECT on_both('CREATE TABLE chk_fix_part (id int PRIMARY KEY) PARTITION BY RANGE (id)');
SELECT on_source('CREATE TABLE chk_fix_part_1 PARTITION OF chk_fix_part FOR VALUES FROM (0) TO (100)');
SELECT on_both('CREATE MATERIALIZED VIEW chk_fix_mv AS SELECT 1 AS one WITH NO DATA');
CREATE TEMP TABLE chk_fixes AS
SELECT c.name, substr(o, strpos(o, '): ') + 3) AS statement
FROM zdm.check(source_dsn()) c, unnest(c.objects) o
WHERE c.name IN ('replica_identity', 'generated_columns', 'partitions', 'materialized_views');
SELECT name, statement FROM chk_fixes ORDER BY 1, 2;
-- replica identities are set on the source, the rest here
SELECT count(on_source(statement)) FROM chk_fixes WHERE name = 'replica_identity';
DO $$ DECLARE s text; BEGIN
  FOR s IN SELECT statement FROM chk_fixes WHERE name <> 'replica_identity' LOOP
    EXECUTE s;
  END LOOP; END $$;
SELECT name, ok, objects FROM zdm.check(source_dsn())
WHERE name IN ('replica_identity', 'generated_columns', 'partitions');
SELECT on_both('DROP TABLE chk_fix_deferrable, chk_fix_unique, chk_fix_keyless, chk_fix_gen, chk_fix_part');
SELECT on_both('DROP MATERIALIZED VIEW chk_fix_mv');

-- Nothing was created anywhere.
SELECT source_objects();
