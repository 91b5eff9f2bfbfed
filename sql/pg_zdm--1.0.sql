/* sql/pg_zdm--1.0.sql: the SQL API of pg_zdm, and the user's reference to it */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_zdm" to load this file. \quit

/*
 * State.  One migration per target database.  Everything here is readable by
 * superusers only: the migration row holds the source connection string
 * (password included), because the cutover worker and zdm.abort() must reach
 * the source again.  Granting SELECT on zdm.migration to anyone else would
 * show them that password; grant zdm.event_log instead if a monitoring role
 * needs the history.
 */
CREATE TABLE zdm.migration (
    id                  integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    source_conninfo     text NOT NULL,
    source_display      text NOT NULL,
    publication_name    name NOT NULL,
    slot_name           name NOT NULL,
    subscription_name   name NOT NULL,
    ignore_missing      boolean NOT NULL,
    defer_copy          boolean NOT NULL,
    phase               text NOT NULL
        CHECK (phase IN ('streaming', 'cutover', 'detaching', 'completed')),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    cutover_started_at  timestamptz,
    completed_at        timestamptz,
    final_lsn           pg_catalog.pg_lsn,
    writes_blocked_ms   double precision
);
COMMENT ON TABLE zdm.migration IS
    'the migration in progress or completed on this target database (superuser only: holds the source password)';
COMMENT ON COLUMN zdm.migration.source_display IS
    'the source connection string with its password masked';
COMMENT ON COLUMN zdm.migration.phase IS
    'streaming after init; cutover while writes are fenced; detaching once the source fence is permanent; completed';

CREATE TABLE zdm.event_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    event   text NOT NULL,
    detail  text
);
COMMENT ON TABLE zdm.event_log IS
    'what pg_zdm did and when: init, copy, cutover steps, failures, abort (never contains the password)';

REVOKE ALL ON zdm.migration, zdm.event_log FROM PUBLIC;

/*
 * zdm.check: every preflight check as a row, changing nothing on either side.
 * ok is false for a failed check; blocking says whether zdm.init refuses
 * because of it (the others are warnings worth reading).  detail names at
 * most 10 objects; objects lists every affected object, each one's quoted
 * name followed, where the fix differs per object, by " (what is wrong): "
 * and the statement to run.
 */
CREATE FUNCTION zdm.check(source_dsn text,
                          ignore_missing boolean DEFAULT false,
                          defer_copy boolean DEFAULT false,
                          OUT name text,
                          OUT ok boolean,
                          OUT detail text,
                          OUT hint text,
                          OUT blocking boolean,
                          OUT objects text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_check'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.check(text, boolean, boolean) IS
    'run every preflight check against the source and this target; changes nothing';

/*
 * zdm.init: run the checks, then create publication zdm_pub and a logical
 * slot on the source and subscription zdm_sub here.  ignore_missing publishes
 * only the source tables that exist on this target; defer_copy creates the
 * subscription with copy_data = false.  Must be called outside a transaction
 * block (it commits, and the slot must be created while this session holds
 * no transaction id).  On failure everything it made is removed again.
 */
CREATE PROCEDURE zdm.init(source_dsn text,
                          ignore_missing boolean DEFAULT false,
                          defer_copy boolean DEFAULT false)
AS 'MODULE_PATHNAME', 'zdm_init'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.init(text, boolean, boolean) IS
    'check the source, then create publication, slot and subscription';

/*
 * zdm.status: one row per metric.  bytes holds lags in bytes, ok says whether
 * the metric is healthy.  The last row, component 'overall', is ok only when
 * every table is ready and the target has applied everything the source has
 * written: ready for cutover.  Without a migration it is the only row.
 */
CREATE FUNCTION zdm.status(OUT component text,
                           OUT metric text,
                           OUT value text,
                           OUT bytes bigint,
                           OUT ok boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_status'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.status() IS
    'replication lag, copy progress and readiness for cutover, one row per metric';

/*
 * zdm.tables: per published table, its initial copy state (init, copying,
 * synchronized, ready), its size on this target, and the bytes copied so far
 * while it is being copied.
 */
CREATE FUNCTION zdm.tables(OUT schema_name name,
                           OUT table_name name,
                           OUT state text,
                           OUT size_bytes bigint,
                           OUT copied_bytes bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_tables'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.tables() IS
    'initial copy state and size of every published table';

/*
 * zdm.cutover: block every write on the source, wait in a background worker
 * until this target has applied everything up to the source's final WAL
 * position, move every sequence to the source's value plus sequence_buffer,
 * and detach.  Any failure before the detach leaves the source writable and
 * replication running.  After success the source stays read-only.
 */
CREATE PROCEDURE zdm.cutover(timeout interval DEFAULT '5 min',
                             sequence_buffer bigint DEFAULT 5000)
AS 'MODULE_PATHNAME', 'zdm_cutover'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.cutover(interval, bigint) IS
    'fence writes on the source, catch up, move sequences ahead, detach';

/*
 * zdm.abort: undo zdm.init: subscription, slot and publication dropped, state
 * removed, the source writable.  Safe to run twice.  When the source cannot
 * be reached it drops what it can here and says what it left on the source.
 */
CREATE PROCEDURE zdm.abort()
AS 'MODULE_PATHNAME', 'zdm_abort'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.abort() IS
    'drop subscription, slot and publication and forget the migration';

REVOKE ALL ON FUNCTION zdm.check(text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.init(text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.status() FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.tables() FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.cutover(interval, bigint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.abort() FROM PUBLIC;
