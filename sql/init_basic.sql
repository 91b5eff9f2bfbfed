-- init_basic: the happy path, check -> init -> copy -> streaming -> ready ->
-- abort, with the source a second database of this server.
SELECT on_both('CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL)');
SELECT on_both('CREATE TABLE events (id serial PRIMARY KEY, account bigint, note text)');
SELECT on_source($$INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g * 10 FROM generate_series(1, 500) g$$);
SELECT on_source($$INSERT INTO events (account, note) SELECT g % 500 + 1, 'note ' || g FROM generate_series(1, 2000) g$$);

SELECT count(*) FILTER (WHERE NOT ok) AS failed_checks FROM zdm.check(source_dsn());

SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn');

-- The migration's objects exist on both sides.
SELECT source_objects();
SELECT subname, subenabled FROM pg_subscription;
SELECT phase, publication_name, subscription_name, ignore_missing, defer_copy,
       source_display NOT LIKE '%password%' AS masked
FROM zdm.migration;

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
