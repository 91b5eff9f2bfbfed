-- init_basic: the happy path, check -> init -> copy -> streaming -> ready ->
-- abort, with the source a second database of this server.
SELECT on_both('CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL)');
SELECT on_both('CREATE TABLE events (id serial PRIMARY KEY, account bigint, note text)');
SELECT on_source($$INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g * 10 FROM generate_series(1, 500) g$$);
SELECT on_source($$INSERT INTO events (account, note) SELECT g % 500 + 1, 'note ' || g FROM generate_series(1, 2000) g$$);

SELECT count(*) FILTER (WHERE NOT ok) AS failed_checks FROM zdm.check(source_dsn());

-- The DSN carries a password: this server trusts its socket connections, so
-- libpq never sends it, but pg_zdm must never show it.
SELECT source_dsn() || ' password=Pw-init-basic-secret' AS dsn \gset
CALL zdm.init(:'dsn');

-- The migration's objects exist on both sides.
SELECT source_objects();
SELECT subname, subenabled FROM pg_subscription;
SELECT phase, publication_name, subscription_name, ignore_missing, defer_copy
FROM zdm.migration;
-- What is shown of the DSN: the password masked (host and port vary from run
-- to run); the password itself nowhere in the row of zdm.migration meant for
-- display, in the status row of the connection or in the event log.
SELECT regexp_replace(source_display, 'host=\S+ port=\S+', 'host=HOST port=PORT') AS source_display,
       strpos(source_display, 'Pw-init-basic-secret') = 0 AS password_absent
FROM zdm.migration;
SELECT component, metric, ok,
       regexp_replace(value, 'host=\S+ port=\S+', 'host=HOST port=PORT') AS value,
       strpos(value, 'Pw-init-basic-secret') = 0 AS password_absent
FROM zdm.status() WHERE component = 'source' AND metric = 'connection';
SELECT count(*) AS events_with_password FROM zdm.event_log
WHERE strpos(event_log::text, 'Pw-init-basic-secret') > 0;

SELECT wait_ready();

-- The initial copy brought every row.
SELECT count(*), sum(balance) FROM accounts;
SELECT count(*), sum(account) FROM events;
SELECT schema_name, table_name, state FROM zdm.tables();

-- New rows, updates and deletes on the source arrive.
SELECT on_source($$INSERT INTO accounts (owner, balance) VALUES ('late', 1)$$);
SELECT on_source($$UPDATE events SET note = 'changed' WHERE id <= 10$$);
SELECT on_source($$DELETE FROM events WHERE id > 1990$$);
SELECT wait_for($$SELECT count(*) = 501 FROM accounts$$);
SELECT wait_for($$SELECT count(*) = 1990 FROM events$$);
SELECT count(*) AS changed FROM events WHERE note = 'changed';

-- Status: every metric healthy once the target has applied everything.
SELECT wait_ready();
SELECT component, metric, ok, bytes IS NOT NULL AS has_bytes FROM zdm.status();
SELECT value FROM zdm.status() WHERE metric IN ('tables_ready', 'ready_for_cutover');

-- The event log tells what happened.
SELECT event FROM zdm.event_log ORDER BY id;

-- abort removes everything and the source stays writable.
CALL zdm.abort();
SELECT source_objects();
SELECT count(*) AS subscriptions FROM pg_subscription;
SELECT count(*) AS migrations FROM zdm.migration;
SELECT on_source($$INSERT INTO accounts (owner, balance) VALUES ('after abort', 2)$$);
SELECT * FROM zdm.status();

SELECT on_both('DROP TABLE accounts, events');
TRUNCATE zdm.event_log;
