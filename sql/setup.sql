-- setup: the source database and the helpers every regression test uses.
-- The source is a second database of the throwaway server that
-- `make installcheck` starts (wal_level = logical); dblink reaches it.
CREATE EXTENSION pg_zdm;
CREATE EXTENSION dblink;
CREATE DATABASE zdm_source;

-- The source DSN: this very server, database zdm_source, over its socket.
CREATE FUNCTION source_dsn(dbname text DEFAULT 'zdm_source') RETURNS text
LANGUAGE sql AS $$
  SELECT format('host=%s port=%s dbname=%s',
                split_part(current_setting('unix_socket_directories'), ',', 1),
                current_setting('port'), dbname)
$$;

-- Run statements on the source.
CREATE FUNCTION on_source(sql text) RETURNS text
LANGUAGE sql AS $$ SELECT dblink_exec(source_dsn(), sql) $$;

-- A single value from the source.
CREATE FUNCTION from_source(sql text) RETURNS text
LANGUAGE sql AS $$ SELECT v FROM dblink(source_dsn(), sql) AS t(v text) $$;

-- Run the same DDL on both sides, as pg_dump --schema-only would.
CREATE FUNCTION on_both(sql text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM on_source(sql);
  EXECUTE sql;
END $$;


-- Wait until a query on this target returns true (or 120 s pass).
CREATE FUNCTION wait_for(sql text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  done boolean;
BEGIN
  FOR i IN 1 .. 1200 LOOP
    EXECUTE sql INTO done;
    IF done THEN
      RETURN true;
    END IF;
    PERFORM pg_sleep(0.1);
  END LOOP;
  RETURN false;
END $$;

-- Wait until zdm.status() says ready (or 120 s pass); true when ready.
CREATE FUNCTION wait_ready() RETURNS boolean
LANGUAGE sql AS $$
  SELECT wait_for($q$SELECT ok FROM zdm.status() WHERE component = 'overall'$q$)
$$;

-- The migration's objects on the source: publication, slots.
CREATE FUNCTION source_objects() RETURNS text
LANGUAGE sql AS $$
  SELECT from_source($q$
    SELECT format('publications=%s slots=%s',
                  (SELECT count(*) FROM pg_publication WHERE pubname = 'zdm_pub'),
                  (SELECT count(*) FROM pg_replication_slots
                    WHERE slot_name LIKE 'zdm\_%' OR slot_name LIKE 'pg\_%\_sync\_%'))
  $q$)
$$;

SELECT source_objects();
