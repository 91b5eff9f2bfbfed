/*-------------------------------------------------------------------------
 *
 * status.c
 *		  zdm.status() and zdm.tables(): how far the migration has come.
 *
 * status() asks the source one question (its WAL position and the slot's)
 * and reads the rest from this target's catalogs and statistics views.  A
 * source that cannot be reached is a failed row, not an error: the target
 * side still has something to say.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_status);
PG_FUNCTION_INFO_V1(zdm_tables);

typedef struct StatusRows
{
	ReturnSetInfo *rsinfo;
} StatusRows;

/*
 * Emit one status row; bytes < 0 means NULL.
 */
static void
put_row(StatusRows *rows, const char *component, const char *metric,
		const char *value, int64 bytes, bool ok)
{
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	values[0] = CStringGetTextDatum(component);
	values[1] = CStringGetTextDatum(metric);
	if (value)
		values[2] = CStringGetTextDatum(value);
	else
		nulls[2] = true;
	values[3] = Int64GetDatum(bytes);
	nulls[3] = bytes < 0;
	values[4] = BoolGetDatum(ok);
	tuplestore_putvalues(rows->rsinfo->setResult, rows->rsinfo->setDesc,
						 values, nulls);
}

static char *
pretty_bytes(int64 bytes)
{
	return text_to_cstring(DatumGetTextPP(DirectFunctionCall1(pg_size_pretty,
															  Int64GetDatum(bytes))));
}

/*
 * The source's view: its current WAL position and what the slot holds, the
 * published tables into *published, and into *unpublished the source tables
 * the publication leaves out when it lists its tables (unless
 * ignore_missing left them out on purpose).  Returns the source's current
 * LSN (NULL when unknown).
 */
static char *
source_rows(StatusRows *rows, const MigrationState *state, bool *slot_ok,
			int64 *slot_lag, List **published, List **unpublished)
{
	const char *params[1] = {state->slot_name};
	char	   *reason = NULL;
	char	   *current_lsn = NULL;
	RemoteResult *res;
	SourceFeatures features;
	PGconn	   *conn;

	*slot_ok = false;
	*slot_lag = -1;
	*published = NIL;
	conn = remote_try_connect(state->source_conninfo, &reason);
	put_row(rows, "source", "connection",
			conn ? state->source_display : reason, -1, conn != NULL);
	if (conn == NULL)
		return NULL;

	*published = fence_published_tables(conn);
	*unpublished = NIL;
	if (!state->ignore_missing)
	{
		*unpublished = source_unpublished_tables(conn);
	}
	source_features(conn, &features);
	res = remote_query(conn,
					   psprintf("SELECT pg_current_wal_lsn(), s.active, %s, "
						   "  pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, "
						   "  pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint "
						   "FROM (SELECT 1) one LEFT JOIN pg_replication_slots s "
						   "  ON s.slot_name = $1",
					   /* before 13 a slot keeps all its WAL, always */
							features.slot_wal_status ? "s.wal_status" :
							"CASE WHEN s.slot_name IS NOT NULL THEN 'reserved' END"),
					   1, params, "reading the slot");
	remote_disconnect(conn);

	current_lsn = pstrdup(remote_value(res, 0, 0));
	if (remote_value(res, 0, 1) == NULL)
	{
		put_row(rows, "source", "slot_lag",
				psprintf("slot %s is missing on the source", state->slot_name),
				-1, false);
		return current_lsn;
	}
	/* an invalidated slot has no restart_lsn and wal_status 'lost' */
	if (remote_value(res, 0, 3) == NULL || remote_value(res, 0, 4) == NULL)
	{
		put_row(rows, "source", "slot_lag",
				psprintf("slot %s has lost the WAL the target still needs (wal_status %s)",
						 state->slot_name,
						 remote_value(res, 0, 2) ? remote_value(res, 0, 2) : "unknown"),
				-1, false);
		return current_lsn;
	}
	*slot_lag = strtoi64(remote_value(res, 0, 3), NULL, 10);
	*slot_ok = strcmp(remote_value(res, 0, 1), "t") == 0;
	put_row(rows, "source", "slot_lag",
			psprintf("%s not yet confirmed by the target%s", pretty_bytes(*slot_lag),
					 *slot_ok ? "" : " (slot inactive: no walsender streams it)"),
			*slot_lag, *slot_ok);
	put_row(rows, "source", "retained_wal",
			psprintf("%s of WAL kept for the slot (%s)",
					 pretty_bytes(strtoi64(remote_value(res, 0, 4), NULL, 10)),
					 remote_value(res, 0, 2) ? remote_value(res, 0, 2) : "unknown"),
			strtoi64(remote_value(res, 0, 4), NULL, 10),
			remote_value(res, 0, 2) != NULL &&
			strcmp(remote_value(res, 0, 2), "lost") != 0);
	return current_lsn;
}

/*
 * This target's view of the subscription.  Sets *ready when every table is
 * ready and the target has applied everything up to source_lsn.
 */
static void
target_rows(StatusRows *rows, const char *source_lsn, bool *ready)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char		nulls[1] = {' '};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		enabled;
	bool		running;
	int64		apply_lag = -1;
	int64		total;
	int64		ready_count;
	int64		errors;

	*ready = false;
	values[0] = source_lsn ? CStringGetTextDatum(source_lsn) : (Datum) 0;
	nulls[0] = source_lsn ? ' ' : 'n';

	SPI_connect();
	if (zdm_spi_execute("SELECT s.subenabled, st.pid IS NOT NULL, "
							  "  pg_catalog.pg_wal_lsn_diff($1::pg_catalog.pg_lsn, st.latest_end_lsn)::bigint, "
							  "  st.latest_end_time, "
							  "  (SELECT count(*) FROM pg_catalog.pg_subscription_rel r WHERE r.srsubid = s.oid), "
							  "  (SELECT count(*) FROM pg_catalog.pg_subscription_rel r "
							  "    WHERE r.srsubid = s.oid AND r.srsubstate = 'r'), "
							  "  coalesce(ss.apply_error_count + ss.sync_error_count, 0), "
							  "  (SELECT sum(p.bytes_processed) FROM pg_catalog.pg_stat_subscription w "
							  "    JOIN pg_catalog.pg_stat_progress_copy p ON p.pid = w.pid "
							  "    WHERE w.subid = s.oid AND w.relid IS NOT NULL)::bigint "
							  "FROM pg_catalog.pg_subscription s "
							  "LEFT JOIN pg_catalog.pg_stat_subscription st "
							  "  ON st.subid = s.oid AND " ZDM_APPLY_LEADER("st") " "
							  "LEFT JOIN pg_catalog.pg_stat_subscription_stats ss ON ss.subid = s.oid "
							  "WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
							  "  AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
							  "                   WHERE datname = pg_catalog.current_database())",
							  1, types, values, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscription's statistics");
	if (SPI_processed == 0)
	{
		SPI_finish();
		put_row(rows, "target", "subscription",
				"subscription " ZDM_SUBSCRIPTION " is missing", -1, false);
		return;
	}
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	enabled = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
	running = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
	errors = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
	put_row(rows, "target", "subscription",
			!enabled ? "disabled" : running ? "enabled, apply worker running" :
			errors > 0 ?
			"enabled, but the apply worker is not running: it keeps failing (see apply_errors and the server log)" :
			"enabled, apply worker not running (starting, or see the server log)",
			-1, enabled && running);

	{
		Datum		lag = SPI_getbinval(tup, desc, 3, &isnull);

		if (!isnull)
			apply_lag = Max(DatumGetInt64(lag), 0);
		put_row(rows, "target", "apply_lag",
				isnull ? "unknown: no position reported by the apply worker yet" :
				psprintf("%s written on the source not yet applied here",
						 pretty_bytes(apply_lag)),
				apply_lag, apply_lag == 0);
	}
	put_row(rows, "target", "last_applied_at",
			SPI_getvalue(tup, desc, 4) ? SPI_getvalue(tup, desc, 4) : "never",
			-1, SPI_getvalue(tup, desc, 4) != NULL);

	put_row(rows, "target", "apply_errors",
			errors == 0 ? "none" :
			psprintf("%lld apply or copy errors since the statistics were reset; the server log has their messages (pg_stat_reset_subscription_stats resets the count)",
					 (long long) errors),
			errors, errors == 0);

	total = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	ready_count = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	{
		Datum		copied = SPI_getbinval(tup, desc, 8, &isnull);

		put_row(rows, "copy", "tables_ready",
				psprintf("%lld/%lld tables ready", (long long) ready_count,
						 (long long) total),
				isnull ? -1 : DatumGetInt64(copied), ready_count == total);
	}
	SPI_finish();

	*ready = enabled && running && ready_count == total && apply_lag == 0;
}

/*
 * Is a cutover running right now?  The worker holds the migration lock.
 * Looked up in the lock table rather than by taking the lock, which would
 * make a concurrent init, cutover or abort fail.
 */
static bool
cutover_running(void)
{
	return migration_lock_held_elsewhere();
}

/*
 * After a cutover with fallback: the reverse replication's rows.  Its state
 * from the source (the subscription and its leader apply worker -- from 16
 * parallel apply workers have rows too --, and from 15 its error count),
 * its lag from the slot here.
 */
static void
fallback_rows(StatusRows *rows, const MigrationState *state)
{
	const char *params[1] = {state->fallback_name};
	char	   *reason = NULL;
	PGconn	   *conn = remote_try_connect(state->source_conninfo, &reason);
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	if (conn == NULL)
		put_row(rows, "fallback", "state",
				psprintf("unknown: the source cannot be reached: %s", reason), -1, false);
	else
	{
		RemoteResult *res = remote_query(conn, PQserverVersion(conn) >= 160000 ?
										 "SELECT s.subenabled, st.pid IS NOT NULL, "
										 "  coalesce(ss.apply_error_count, 0) "
										 "FROM pg_subscription s "
										 "LEFT JOIN pg_stat_subscription st ON st.subid = s.oid "
										 "  AND st.relid IS NULL AND st.leader_pid IS NULL "
										 "LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid "
										 "WHERE s.subname = $1 AND s.subdbid = "
										 "  (SELECT oid FROM pg_database WHERE datname = current_database())" :
										 PQserverVersion(conn) >= 150000 ?
										 "SELECT s.subenabled, st.pid IS NOT NULL, "
										 "  coalesce(ss.apply_error_count, 0) "
										 "FROM pg_subscription s "
										 "LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL "
										 "LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid "
										 "WHERE s.subname = $1 AND s.subdbid = "
										 "  (SELECT oid FROM pg_database WHERE datname = current_database())" :
										 "SELECT s.subenabled, st.pid IS NOT NULL, NULL "
										 "FROM pg_subscription s "
										 "LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL "
										 "WHERE s.subname = $1 AND s.subdbid = "
										 "  (SELECT oid FROM pg_database WHERE datname = current_database())",
										 1, params, "reading the reverse subscription");

		if (res->ntuples != 1)
			put_row(rows, "fallback", "state",
					psprintf("subscription %s is missing on the source", state->fallback_name),
					-1, false);
		else
		{
			bool		enabled = strcmp(remote_value(res, 0, 0), "t") == 0;
			bool		running = strcmp(remote_value(res, 0, 1), "t") == 0;
			const char *errors = remote_value(res, 0, 2);

			put_row(rows, "fallback", "state",
					running ? psprintf("streaming to the source (subscription %s there)", state->fallback_name) :
					!enabled ? psprintf("subscription %s on the source is disabled", state->fallback_name) :
					psprintf("subscription %s on the source has no apply worker: see the source's log", state->fallback_name),
					-1, running);
			if (errors != NULL)
				put_row(rows, "fallback", "apply_errors",
						psprintf("%s errors of the reverse apply worker on the source", errors),
						-1, strcmp(errors, "0") == 0);
		}
		remote_disconnect(conn);
	}

	values[0] = CStringGetTextDatum(state->fallback_name);
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), "
						"  confirmed_flush_lsn)::bigint "
						"FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
						1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the reverse slot");
	if (SPI_processed == 1)
	{
		bool		isnull;
		int64		lag = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull));

		put_row(rows, "fallback", "lag",
				psprintf("%s of this target's WAL not yet confirmed by the source",
						 pretty_bytes(lag)), lag, true);
	}
	else
		put_row(rows, "fallback", "lag",
				psprintf("slot %s is missing on this target", state->fallback_name),
				-1, false);
	SPI_finish();
}

/*
 * zdm.status()
 */
Datum
zdm_status(PG_FUNCTION_ARGS)
{
	StatusRows	rows;
	MigrationState state;
	bool		slot_ok;
	int64		slot_lag;
	bool		ready;
	char	   *source_lsn;
	List	   *published;
	List	   *unpublished = NIL;

	InitMaterializedSRF(fcinfo, 0);
	rows.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	if (!state_load(&state))
	{
		put_row(&rows, "overall", "ready_for_cutover",
				"no migration: start one with CALL zdm.init(source_dsn)", -1, false);
		return (Datum) 0;
	}

	if (strcmp(state.phase, "completed") == 0)
	{
		put_row(&rows, "migration", "phase",
				psprintf("completed at %s, final source position %s",
						 state.completed_at, state.final_lsn), -1, true);
		if (state.fallback_name != NULL)
			fallback_rows(&rows, &state);
		put_row(&rows, "overall", "completed",
				state.fallback_name ?
				"the target is independent; the source is read-only and receives this target's writes" :
				"the target is independent; the source is read-only", -1, true);
		return (Datum) 0;
	}
	if (strcmp(state.phase, "fallen_back") == 0)
	{
		put_row(&rows, "migration", "phase",
				psprintf("fallen back, final target position %s", state.fallback_lsn),
				-1, true);
		put_row(&rows, "overall", "fallen_back",
				"the source is writable again; this target is read-only", -1, true);
		return (Datum) 0;
	}
	if (strncmp(state.phase, "fallback", 8) == 0)
	{
		bool		running = cutover_running();

		put_row(&rows, "migration", "phase",
				running ? psprintf("%s in progress", state.phase) :
				strcmp(state.phase, "fallback_detaching") == 0 ?
				"fallback interrupted after this target was fenced for good: run CALL zdm.fallback() to finish it" :
				"fallback interrupted; this target unlocked itself: run CALL zdm.fallback() again, or CALL zdm.finish() to stay here",
				-1, running);
		fallback_rows(&rows, &state);
		put_row(&rows, "overall", "fallback",
				running ? "fallback in progress" : "fallback interrupted",
				-1, false);
		return (Datum) 0;
	}

	if (strcmp(state.phase, "streaming") == 0)
		put_row(&rows, "migration", "phase", "streaming", -1, true);
	else if (cutover_running())
		put_row(&rows, "migration", "phase",
				psprintf("%s in progress", state.phase), -1, true);
	else
		put_row(&rows, "migration", "phase",
				strcmp(state.phase, "detaching") == 0 ?
				"cutover interrupted after the source was fenced for good: run CALL zdm.cutover() to finish it" :
				"cutover interrupted (the target restarted or the worker died); the source unlocked itself: run CALL zdm.cutover() again",
				-1, false);

	source_lsn = source_rows(&rows, &state, &slot_ok, &slot_lag, &published,
							 &unpublished);
	target_rows(&rows, source_lsn, &ready);
	{
		CopyProgress copy;

		copy_progress(&copy);
		if (copy.exists)
		{
			put_row(&rows, "copy", "parallel_copy", copy.value, copy.bytes, copy.ok);
			ready = ready && copy.ok;
		}
	}
	if (source_lsn != NULL)
	{
		char	   *mismatch = subscription_table_mismatch(subscription_oid(),
														   published,
														   CurrentMemoryContext);

		if (unpublished != NIL)
		{
			StringInfoData names;
			ListCell   *lc;

			initStringInfo(&names);
			foreach(lc, unpublished)
				appendStringInfo(&names, "%s%s", names.len > 0 ? ", " : "",
								 (char *) lfirst(lc));
			put_row(&rows, "copy", "tables_match",
					psprintf("tables on the source that publication %s does not list (it lists its tables: the source role is not a superuser, or defer_copy): %s; on the source run ALTER PUBLICATION %s ADD TABLE %s; then here ALTER SUBSCRIPTION %s REFRESH PUBLICATION%s",
							 ZDM_PUBLICATION, names.data, ZDM_PUBLICATION,
							 names.data, ZDM_SUBSCRIPTION,
							 mismatch ? psprintf("; publication and subscription also differ: %s", mismatch) : ""),
					-1, false);
			mismatch = mismatch ? mismatch : names.data;
		}
		else
			put_row(&rows, "copy", "tables_match",
					mismatch ? psprintf("publication and subscription differ: %s; run ALTER SUBSCRIPTION %s REFRESH PUBLICATION",
										mismatch, ZDM_SUBSCRIPTION) :
					"the subscription covers every published table",
					-1, mismatch == NULL);
		ready = ready && mismatch == NULL;
	}

	ready = ready && slot_ok && strcmp(state.phase, "streaming") == 0;
	put_row(&rows, "overall", "ready_for_cutover",
			ready ? "fully synchronized, ready for cutover" :
			"not yet: see the rows above whose ok is false",
			-1, ready);
	return (Datum) 0;
}

/*
 * The rows of zdm.tables(), read as the owner of the state tables (the
 * parallel copy's tasks are not readable by a monitoring role).  A table
 * of an unfinished parallel copy is 'init' until its first range starts and
 * 'copying' until its data and its indexes are all done; its rate is the
 * table data copied per second since it started, and its ETA the rest of it
 * at that rate.
 */
static void
read_tables(void *arg)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) arg;
	uint64		i;

	SPI_connect();
	if (zdm_spi_execute("SELECT n.nspname, c.relname, "
					"  CASE WHEN cr.state IS NOT NULL AND ct.data_total > 0 "
					"        AND (ct.data_done < ct.data_total OR ct.indexes_pending > 0) THEN "
					"      CASE WHEN ct.data_started = 0 THEN 'init' ELSE 'copying' END "
					"    ELSE CASE r.srsubstate WHEN 'i' THEN 'init' WHEN 'd' THEN 'copying' "
					"    WHEN 'f' THEN 'copying' WHEN 's' THEN 'synchronized' "
					"    WHEN 'r' THEN 'ready' ELSE r.srsubstate::text END END, "
					"  pg_catalog.pg_table_size(c.oid), "
					"  coalesce(ct.copied, p.bytes_processed), "
					"  (ct.est_done / nullif(ct.secs, 0))::bigint, "
					"  CASE WHEN ct.data_done < ct.data_total AND ct.est_done > 0 AND ct.secs > 0 THEN "
					"    pg_catalog.make_interval(secs => pg_catalog.round(((ct.est_total - ct.est_done) "
					"      / (ct.est_done / ct.secs))::numeric)::float8) END, "
					"  ct.indexes_pending::integer "
					"FROM pg_catalog.pg_subscription s "
					"JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid "
					"JOIN pg_catalog.pg_class c ON c.oid = r.srrelid "
					"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
					"LEFT JOIN pg_catalog.pg_stat_subscription w "
					"  ON w.subid = s.oid AND w.relid = r.srrelid "
					"LEFT JOIN pg_catalog.pg_stat_progress_copy p "
					"  ON p.pid = w.pid AND p.relid = r.srrelid "
					"LEFT JOIN zdm.copy_run cr ON true "
					"LEFT JOIN LATERAL ("
					"  SELECT count(*) FILTER (WHERE t.kind = 'data') AS data_total, "
					"    count(*) FILTER (WHERE t.kind = 'data' AND t.state = 'done') AS data_done, "
					"    count(*) FILTER (WHERE t.kind = 'data' AND t.state <> 'pending') AS data_started, "
					"    count(*) FILTER (WHERE t.kind = 'index' AND t.state <> 'done') AS indexes_pending, "
					"    sum(coalesce(t.bytes_copied, tp.bytes_processed, 0)) FILTER (WHERE t.kind = 'data')::bigint AS copied, "
					"    sum(t.est_bytes)::float8 AS est_total, "
					"    sum(CASE WHEN t.state = 'done' THEN t.est_bytes "
					"      WHEN t.est_rows > 0 THEN t.est_bytes * least(coalesce(tp.tuples_processed, 0) / t.est_rows, 0.99) "
					"      ELSE 0 END) FILTER (WHERE t.kind = 'data')::float8 AS est_done, "
					"    date_part('epoch', coalesce(max(t.finished_at) FILTER (WHERE t.kind = 'data' AND "
					"        NOT EXISTS (SELECT 1 FROM zdm.copy_task u WHERE u.relid = c.oid AND u.kind = 'data' AND u.state <> 'done')), "
					"      clock_timestamp()) - min(t.started_at)) AS secs "
					"  FROM zdm.copy_task t "
					"  LEFT JOIN pg_catalog.pg_stat_progress_copy tp "
					"    ON tp.pid = t.worker_pid AND tp.relid = t.relid AND t.state = 'running' "
					"  WHERE t.relid = c.oid) ct ON true "
					"WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
					"  AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
					"                   WHERE datname = pg_catalog.current_database()) "
					"ORDER BY 1, 2", 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscription's tables");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		values[8];
		bool		nulls[8];
		int			col;

		for (col = 0; col < 8; col++)
			values[col] = SPI_getbinval(tup, desc, col + 1, &nulls[col]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
}

/*
 * zdm.tables(): per published table its copy state, size and progress.
 */
Datum
zdm_tables(PG_FUNCTION_ARGS)
{
	InitMaterializedSRF(fcinfo, 0);
	as_state_owner(read_tables, fcinfo->resultinfo);
	return (Datum) 0;
}
