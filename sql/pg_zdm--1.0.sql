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
        CHECK (phase IN ('streaming', 'cutover', 'detaching', 'completed',
                         'fallback', 'fallback_detaching', 'fallen_back')),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    cutover_started_at  timestamptz,
    completed_at        timestamptz,
    final_lsn           pg_catalog.pg_lsn,
    writes_blocked_ms   double precision,
    fallback_conninfo   text,
    fallback_display    text,
    fallback_name       name,
    fallback_lsn        pg_catalog.pg_lsn,
    fallback_at         timestamptz,
    fallback_blocked_ms double precision
);
COMMENT ON TABLE zdm.migration IS
    'the migration in progress or completed on this target database (superuser only: holds the source password)';
COMMENT ON COLUMN zdm.migration.source_display IS
    'the source connection string with its password masked';
COMMENT ON COLUMN zdm.migration.phase IS
    'streaming after init; cutover while writes are fenced; detaching once the source fence is permanent; completed; then, after a cutover with fallback, fallback while writes are fenced here, fallback_detaching once this target is read-only for good, fallen_back';
COMMENT ON COLUMN zdm.migration.fallback_conninfo IS
    'how the source reaches this target for the reverse replication of a cutover with fallback (password included)';
COMMENT ON COLUMN zdm.migration.fallback_name IS
    'name of the reverse subscription on the source and of its slot on this target';

CREATE TABLE zdm.event_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    event   text NOT NULL,
    detail  text
);
COMMENT ON TABLE zdm.event_log IS
    'what pg_zdm did and when: init, copy, cutover steps, failures, abort (never contains the password)';

/*
 * The parallel initial copy (copy_method => 'parallel'): one row per unit of
 * work.  A 'data' task copies one table, or one range of a large table, from
 * the snapshot the slot exported; an 'index' task rebuilds a secondary index
 * that init set aside (dropped here, its definition kept in index_def) once
 * every data task of its table is done.  An index set aside is always either
 * rebuilt by its task or rebuilt by zdm.abort(), and until then it is listed
 * here.  copy_run holds the state of the copy as a whole.
 */
CREATE TABLE zdm.copy_run (
    id              integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    jobs            integer NOT NULL,
    consistent_lsn  pg_catalog.pg_lsn NOT NULL,
    state           text NOT NULL CHECK (state IN ('copying', 'done', 'failed')),
    started_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at     timestamptz,
    error           text
);
COMMENT ON TABLE zdm.copy_run IS
    'the parallel initial copy as a whole: copying, done (subscription enabled) or failed';

CREATE TABLE zdm.copy_task (
    id              integer PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('data', 'index')),
    relid           pg_catalog.regclass NOT NULL,
    part            integer NOT NULL DEFAULT 1,
    parts           integer NOT NULL DEFAULT 1,
    source_query    text,
    target_columns  text,
    copy_format     text CHECK (copy_format IN ('text', 'binary')),
    index_name      name,
    index_def       text,
    est_rows        double precision NOT NULL DEFAULT 0,
    est_bytes       bigint NOT NULL DEFAULT 0,
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    worker_pid      integer,
    started_at      timestamptz,
    finished_at     timestamptz,
    rows_copied     bigint,
    bytes_copied    bigint,
    error           text
);
COMMENT ON TABLE zdm.copy_task IS
    'the units of work of the parallel initial copy: table ranges to copy, secondary indexes set aside to rebuild';

REVOKE ALL ON zdm.migration, zdm.event_log, zdm.copy_run, zdm.copy_task FROM PUBLIC;

/*
 * zdm.check: every preflight check as a row, changing nothing on either side
 * (with copy_method 'parallel' also those of the parallel copy).
 * ok is false for a failed check; blocking says whether zdm.init refuses
 * because of it (the others are warnings worth reading).  detail names at
 * most 10 objects; objects lists every affected object, each one's quoted
 * name followed, where the fix differs per object, by " (what is wrong): "
 * and the statement to run.
 */
CREATE FUNCTION zdm.check(source_dsn text,
                          ignore_missing boolean DEFAULT false,
                          defer_copy boolean DEFAULT false,
                          copy_method text DEFAULT 'native',
                          copy_jobs integer DEFAULT 2,
                          OUT name text,
                          OUT ok boolean,
                          OUT detail text,
                          OUT hint text,
                          OUT blocking boolean,
                          OUT objects text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_check'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.check(text, boolean, boolean, text, integer) IS
    'run every preflight check against the source and this target; changes nothing';

/*
 * zdm.init: run the checks, then create publication zdm_pub and a logical
 * slot on the source and subscription zdm_sub here.  ignore_missing publishes
 * only the source tables that exist on this target; defer_copy creates the
 * subscription with copy_data = false.  copy_method 'native' leaves the
 * initial copy to PostgreSQL's table synchronization workers; 'parallel'
 * creates the slot with an exported snapshot, copies the tables (large ones
 * in ranges) with copy_jobs background workers from that snapshot, rebuilds
 * secondary indexes afterwards, and only then enables the subscription
 * (copy_data = false) at the slot's start.  Must be called outside a transaction
 * block (it commits, and the slot must be created while this session holds
 * no transaction id).  On failure everything it made is removed again.
 */
CREATE PROCEDURE zdm.init(source_dsn text,
                          ignore_missing boolean DEFAULT false,
                          defer_copy boolean DEFAULT false,
                          copy_method text DEFAULT 'native',
                          copy_jobs integer DEFAULT 2)
AS 'MODULE_PATHNAME', 'zdm_init'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.init(text, boolean, boolean, text, integer) IS
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
 * while it is being copied.  With the parallel copy also the rate (bytes of
 * table data per second), the estimated time left for its data, and how many
 * of its secondary indexes are still to be rebuilt.
 */
CREATE FUNCTION zdm.tables(OUT schema_name name,
                           OUT table_name name,
                           OUT state text,
                           OUT size_bytes bigint,
                           OUT copied_bytes bigint,
                           OUT copy_rate bigint,
                           OUT copy_eta interval,
                           OUT indexes_pending integer)
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
 *
 * With fallback => true the cutover also sets up the way back: it runs the
 * checks of zdm.check_fallback first (and refuses, the source untouched,
 * when one fails), then before fencing creates publication zdm_pub and a
 * logical slot here and a disabled subscription on the source that reaches
 * this target with target_dsn (NULL: host and port this session connected
 * to, this database, the session user).  The subscription is enabled in the
 * same transaction that makes the source read-only, starting at this
 * target's position after the last change of the source was applied: every
 * later write made here reaches the source, none of the source's own
 * changes come back.  The source's read-only triggers let the reverse
 * subscription's workers through, and no other session.
 */
CREATE PROCEDURE zdm.cutover(timeout interval DEFAULT '5 min',
                             sequence_buffer bigint DEFAULT 5000,
                             fallback boolean DEFAULT false,
                             target_dsn text DEFAULT NULL)
AS 'MODULE_PATHNAME', 'zdm_cutover'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.cutover(interval, bigint, boolean, text) IS
    'fence writes on the source, catch up, move sequences ahead, detach; optionally set up the way back';

/*
 * zdm.check_fallback: the checks that zdm.cutover(fallback => true) runs
 * before it locks anything, as rows like zdm.check's: this target reachable
 * with target_dsn by a role that may replicate, wal_level = logical, a free
 * slot and WAL sender here, a key on every migrated table, and on the
 * source the privilege to create a subscription and a free worker for it.
 * Whether the source can reach this target is proven when the cutover
 * creates the subscription, still before any lock.  Changes nothing.
 */
CREATE FUNCTION zdm.check_fallback(target_dsn text DEFAULT NULL,
                                   OUT name text,
                                   OUT ok boolean,
                                   OUT detail text,
                                   OUT hint text,
                                   OUT blocking boolean,
                                   OUT objects text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_check_fallback'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.check_fallback(text) IS
    'check what a cutover with fallback needs; changes nothing';

/*
 * zdm.fallback: after a cutover with fallback, move the application back to
 * the source: block every write here, wait in a background worker until the
 * source has applied and flushed everything up to this target's final
 * position, move the source's sequences to this target's value plus
 * sequence_buffer, make this target read-only for good (its point of no
 * return), make the source writable, and remove the reverse replication.
 * Any failure before the point of no return leaves this target writable and
 * the reverse replication running; call it again.
 */
CREATE PROCEDURE zdm.fallback(timeout interval DEFAULT '5 min',
                              sequence_buffer bigint DEFAULT 5000)
AS 'MODULE_PATHNAME', 'zdm_fallback'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.fallback(interval, bigint) IS
    'after a cutover with fallback: fence writes here, let the source catch up, make it writable again';

/*
 * zdm.finish: the migration is over.  After a cutover with fallback it
 * removes the reverse replication (the subscription on the source, slot and
 * publication here; the source stays read-only); after a fallback or a plain
 * cutover there is nothing left to remove.  The migration is forgotten
 * (zdm.event_log keeps its history).  Refused before the cutover: that is
 * zdm.abort().
 */
CREATE PROCEDURE zdm.finish()
AS 'MODULE_PATHNAME', 'zdm_finish'
LANGUAGE C;
COMMENT ON PROCEDURE zdm.finish() IS
    'end a cut-over migration: remove the reverse replication and forget the migration';

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

/*
 * zdm.verify: compare the rows of the source and this target, one row per
 * table (every table of the subscription, or after the cutover every table
 * here that the source has too; or the tables given).  Both servers scan at
 * once and only per-chunk digests cross the network; chunks that differ are
 * fetched key by key, and detail names the keys missing on the target,
 * extra on the target and different.  While the source is live a differing
 * chunk is compared again once this target has applied the source position
 * read with it: only a difference that persists is reported, a chunk that
 * keeps changing is reported as unsettled.  Tables without a key are
 * compared whole.  ok is true when every row is equal.
 */
CREATE FUNCTION zdm.verify(tables regclass[] DEFAULT NULL,
                           OUT schema_name text,
                           OUT table_name text,
                           OUT source_rows bigint,
                           OUT target_rows bigint,
                           OUT ok boolean,
                           OUT detail text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'zdm_verify'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION zdm.verify(regclass[]) IS
    'compare the rows of the source and this target per table, naming the keys that differ';

REVOKE ALL ON FUNCTION zdm.check(text, boolean, boolean, text, integer) FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.init(text, boolean, boolean, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.status() FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.tables() FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.cutover(interval, bigint, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.check_fallback(text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.fallback(interval, bigint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.finish() FROM PUBLIC;
REVOKE ALL ON PROCEDURE zdm.abort() FROM PUBLIC;
REVOKE ALL ON FUNCTION zdm.verify(regclass[]) FROM PUBLIC;

/*
 * zdm.wait_ready: wait until zdm.status() says the target is ready for
 * cutover, printing a NOTICE with the copy's progress every notice_every.
 * Fails with SQLSTATE 57014 after timeout (NULL: wait for ever), and at once
 * with 55000 when the parallel copy failed or was interrupted.  Commits between its looks (it holds no
 * snapshot while it sleeps): call it on its own, not inside BEGIN.
 */
CREATE PROCEDURE zdm.wait_ready(timeout interval DEFAULT NULL,
                                notice_every interval DEFAULT '5 s')
LANGUAGE plpgsql
AS $$
DECLARE
    deadline    timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    next_notice timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) notice_every;
    ready       boolean;
    overall     text;
    copy        text;
    failed      text;
    seen_interrupted boolean := false;
BEGIN
    LOOP
        SELECT pg_catalog.bool_or(s.ok) FILTER (WHERE s.component OPERATOR(pg_catalog.=) 'overall'),
               pg_catalog.max(s.value) FILTER (WHERE s.component OPERATOR(pg_catalog.=) 'overall'),
               pg_catalog.string_agg(s.metric OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) s.value, '; ')
                   FILTER (WHERE s.component OPERATOR(pg_catalog.=) 'copy' AND NOT s.ok),
               pg_catalog.max(s.value) FILTER (WHERE s.metric OPERATOR(pg_catalog.=) 'parallel_copy'
                                               AND (s.value OPERATOR(pg_catalog.~~) 'failed%'
                                                    OR s.value OPERATOR(pg_catalog.~~) 'interrupted%'))
          INTO ready, overall, copy, failed
          FROM zdm.status() s;
        IF ready THEN
            RAISE NOTICE 'ready for cutover';
            RETURN;
        END IF;
        -- interrupted (no copy worker left, copy not done) is seen once
        -- also in the moment a failing worker has recorded its failure but
        -- this statement's snapshot predates it: believe it the second time
        IF failed OPERATOR(pg_catalog.~~) 'interrupted%' AND NOT seen_interrupted THEN
            seen_interrupted := true;
            failed := NULL;
        END IF;
        IF failed IS NOT NULL THEN
            RAISE EXCEPTION 'the initial copy failed or was interrupted'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = failed,
                      HINT = 'Run CALL zdm.abort(), fix the cause, and run zdm.init again.';
        END IF;
        IF overall IS NULL OR overall OPERATOR(pg_catalog.~~) 'no migration%' THEN
            RAISE EXCEPTION 'there is no migration to wait for'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Start one with CALL zdm.init(source_dsn).';
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) deadline THEN
            RAISE EXCEPTION 'the target did not become ready within %', timeout
                USING ERRCODE = 'query_canceled',
                      DETAIL = coalesce(copy, 'The copy is done; replication is catching up.'),
                      HINT = 'See SELECT * FROM zdm.status() and zdm.tables(); call zdm.wait_ready again to keep waiting.';
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) next_notice THEN
            RAISE NOTICE 'not ready yet: %', coalesce(copy, 'copy done, replication catching up');
            next_notice := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) notice_every;
        END IF;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.5);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE zdm.wait_ready(interval, interval) IS
    'wait until the target is ready for cutover, with NOTICE progress';
REVOKE ALL ON PROCEDURE zdm.wait_ready(interval, interval) FROM PUBLIC;
