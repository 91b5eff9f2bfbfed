/*-------------------------------------------------------------------------
 *
 * copy_status.c
 *		  How far the parallel initial copy has come (for zdm.status()), and
 *		  undoing it (for zdm.abort()).
 *
 * Progress of a range being copied is its rows so far (tuples_processed of
 * pg_stat_progress_copy, on the copy worker's row) against the source's
 * estimate; the rate is in bytes of source table data per second since the
 * copy started, and the ETA is the rest of the table data at that rate (the
 * index builds that follow the data are counted, not timed).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/* How long abort waits for the copy workers it terminated to go. */
#define COPY_STOP_TIMEOUT_MS	30000

static char *
copy_pretty_bytes(double bytes)
{
	return text_to_cstring(DatumGetTextPP(DirectFunctionCall1(pg_size_pretty,
															  Int64GetDatum((int64) bytes))));
}

static char *
copy_pretty_secs(double secs)
{
	if (secs < 60)
		return psprintf("%.0f s", secs);
	if (secs < 3600)
		return psprintf("%d min %02d s", (int) (secs / 60), (int) fmod(secs, 60));
	return psprintf("%d h %02d min", (int) (secs / 3600), (int) fmod(secs / 60, 60));
}

static void
read_progress(void *arg)
{
	CopyProgress *p = (CopyProgress *) arg;
	MemoryContext callercxt = CurrentMemoryContext;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *state;
	char	   *error;
	double		secs;
	int64		data_total;
	int64		data_done;
	int64		index_total;
	int64		index_done;
	double		est_total;
	double		est_done;
	bool		alive;

	SPI_connect();
	if (zdm_spi_execute("WITH t AS ("
						"  SELECT t.kind, t.state, t.est_bytes, t.est_rows, t.bytes_copied, "
						"         p.bytes_processed, p.tuples_processed "
						"  FROM zdm.copy_task t "
						"  LEFT JOIN pg_catalog.pg_stat_progress_copy p "
						"    ON p.pid OPERATOR(pg_catalog.=) t.worker_pid "
						"   AND p.relid OPERATOR(pg_catalog.=) t.relid "
						"   AND t.state OPERATOR(pg_catalog.=) 'running') "
						"SELECT r.state, r.error, "
						"  pg_catalog.date_part('epoch', coalesce(r.finished_at, pg_catalog.clock_timestamp()) "
						"    OPERATOR(pg_catalog.-) r.started_at), "
						"  (SELECT pg_catalog.count(*) FROM t WHERE kind OPERATOR(pg_catalog.=) 'data'), "
						"  (SELECT pg_catalog.count(*) FROM t WHERE kind OPERATOR(pg_catalog.=) 'data' "
						"     AND state OPERATOR(pg_catalog.=) 'done'), "
						"  (SELECT pg_catalog.count(*) FROM t WHERE kind OPERATOR(pg_catalog.=) 'index'), "
						"  (SELECT pg_catalog.count(*) FROM t WHERE kind OPERATOR(pg_catalog.=) 'index' "
						"     AND state OPERATOR(pg_catalog.=) 'done'), "
						"  (SELECT coalesce(pg_catalog.sum(est_bytes), 0)::pg_catalog.float8 FROM t "
						"     WHERE kind OPERATOR(pg_catalog.=) 'data'), "
						"  (SELECT coalesce(pg_catalog.sum(CASE WHEN state OPERATOR(pg_catalog.=) 'done' THEN est_bytes "
						"     WHEN est_rows OPERATOR(pg_catalog.>) 0 THEN est_bytes OPERATOR(pg_catalog.*) "
						"       least(coalesce(tuples_processed, 0) OPERATOR(pg_catalog./) est_rows, 0.99) "
						"     ELSE 0 END), 0)::pg_catalog.float8 FROM t WHERE kind OPERATOR(pg_catalog.=) 'data'), "
						"  (SELECT coalesce(pg_catalog.sum(coalesce(bytes_copied, bytes_processed, 0)), 0)::pg_catalog.int8 "
						"     FROM t WHERE kind OPERATOR(pg_catalog.=) 'data'), "
						"  EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a "
						"    WHERE a.backend_type OPERATOR(pg_catalog.=) 'pg_zdm copy' "
						"      AND a.datid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database "
						"        WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())) "
						"FROM zdm.copy_run r",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the progress of the copy");
	if (SPI_processed == 0)
	{
		SPI_finish();
		return;
	}
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	state = SPI_getvalue(tup, desc, 1);
	error = SPI_getvalue(tup, desc, 2);
	secs = DatumGetFloat8(SPI_getbinval(tup, desc, 3, &isnull));
	data_total = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
	data_done = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	index_total = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	index_done = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
	est_total = DatumGetFloat8(SPI_getbinval(tup, desc, 8, &isnull));
	est_done = DatumGetFloat8(SPI_getbinval(tup, desc, 9, &isnull));
	p->bytes = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
	alive = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));

	MemoryContextSwitchTo(callercxt);
	p->exists = true;
	if (strcmp(state, "done") == 0)
	{
		p->ok = true;
		p->value = psprintf("done in %s: %lld ranges of table data (%s), %lld %s rebuilt",
							copy_pretty_secs(secs), (long long) data_total,
							copy_pretty_bytes(p->bytes), (long long) index_total,
							index_total == 1 ? "index" : "indexes");
	}
	else if (strcmp(state, "failed") == 0)
		p->value = psprintf("failed after %s: %s; run CALL zdm.abort(), fix the cause and init again",
							copy_pretty_secs(secs), error ? error : "(no message)");
	else if (!alive)
		p->value = pstrdup("interrupted: no copy worker runs any more (the target restarted, or a worker was terminated); run CALL zdm.abort() and init again");
	else if (data_done < data_total)
	{
		double		rate = secs > 0 ? est_done / secs : 0;

		/* index builds of finished tables run beside the copy: say how far */
		p->value = psprintf("copying: %lld/%lld ranges done, %s received, %.0f%% of %s of table data, %s/s, ETA %s%s",
							(long long) data_done, (long long) data_total,
							copy_pretty_bytes(p->bytes),
							est_total > 0 ? 100.0 * est_done / est_total : 0,
							copy_pretty_bytes(est_total),
							copy_pretty_bytes(rate),
							rate > 0 ? copy_pretty_secs((est_total - est_done) / rate) :
							"unknown",
							index_total > 0 ?
							psprintf("; indexes: %lld/%lld rebuilt",
									 (long long) index_done, (long long) index_total) : "");
	}
	else
		p->value = psprintf("building indexes: %lld/%lld done (table data copied in %lld ranges, %s)",
							(long long) index_done, (long long) index_total,
							(long long) data_total, copy_pretty_bytes(p->bytes));
	SPI_finish();
}

/*
 * copy_progress: the parallel copy's state for zdm.status(); exists is false
 * when this migration has none (native copy).  Reads the copy tables as
 * their owner: zdm.status() may be granted to a role that cannot.
 */
void
copy_progress(CopyProgress *progress)
{
	memset(progress, 0, sizeof(CopyProgress));
	progress->bytes = -1;
	as_state_owner(read_progress, progress);
}

/*
 * Terminate the copy workers of this database and wait until they are gone:
 * their transactions roll back.  Returns false when some are still there.
 */
static bool
stop_copy_workers(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   COPY_STOP_TIMEOUT_MS);
	List	   *pids = NIL;
	ListCell   *lc;
	uint64		i;
	Oid			types[1] = {OIDOID};
	Datum		values[1];

	values[0] = ObjectIdGetDatum(MyDatabaseId);
	SPI_connect();
	if (zdm_spi_execute("SELECT pid FROM pg_catalog.pg_stat_activity "
						"WHERE backend_type OPERATOR(pg_catalog.=) 'pg_zdm copy' "
						"  AND datid OPERATOR(pg_catalog.=) $1",
						1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the copy workers");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		pids = lappend_int(pids, DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc,
															 1, &isnull)));
	}
	SPI_finish();

	foreach(lc, pids)
		(void) DirectFunctionCall2(pg_terminate_backend,
								   Int32GetDatum(lfirst_int(lc)), Int64GetDatum(0));
	foreach(lc, pids)
	{
		while (BackendPidGetProc(lfirst_int(lc)) != NULL)
		{
			if (GetCurrentTimestamp() >= deadline)
				return false;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 10, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	return true;
}

/*
 * copy_undo: for zdm.abort(), in its transaction, before the subscription
 * is dropped.  Stops the copy workers; if the copy did not finish, empties
 * the tables it filled (init refused tables that held rows) and rebuilds
 * every index set aside that was not rebuilt yet; then forgets the copy.
 * Nothing when this migration used the native copy.
 */
void
copy_undo(void)
{
	List	   *defs = NIL;
	ListCell   *lc;
	uint64		i;
	bool		unfinished;
	char	   *truncate = NULL;
	MemoryContext callercxt = CurrentMemoryContext;

	if (!stop_copy_workers())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("the copy workers did not stop in time"),
				 errdetail("Nothing was aborted."),
				 errhint("Run CALL zdm.abort() again.")));

	SPI_connect();
	if (zdm_spi_execute("SELECT EXISTS (SELECT 1 FROM zdm.copy_run "
						"    WHERE state OPERATOR(pg_catalog.<>) 'done'), "
						"  (SELECT 'TRUNCATE ONLY ' OPERATOR(pg_catalog.||) pg_catalog.string_agg(DISTINCT relid::pg_catalog.text, ', ') "
						"     FROM zdm.copy_task WHERE kind OPERATOR(pg_catalog.=) 'data')",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of the copy");
	unfinished = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	if (SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2) != NULL)
		truncate = MemoryContextStrdup(callercxt,
									   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	if (zdm_spi_execute("SELECT index_def FROM zdm.copy_task "
						"WHERE kind OPERATOR(pg_catalog.=) 'index' "
						"  AND state OPERATOR(pg_catalog.<>) 'done' ORDER BY id",
						0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the indexes set aside");
	for (i = 0; i < SPI_processed; i++)
		defs = lappend(defs, MemoryContextStrdup(callercxt,
												 SPI_getvalue(SPI_tuptable->vals[i],
															  SPI_tuptable->tupdesc, 1)));

	/* relid::text is quoted and qualified as needed under search_path pg_catalog */
	if (unfinished && truncate != NULL &&
		zdm_spi_execute(truncate, 0, NULL, NULL, NULL, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not empty the tables of the copy");
	foreach(lc, defs)
	{
		if (zdm_spi_execute((char *) lfirst(lc), 0, NULL, NULL, NULL, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not rebuild an index set aside");
	}
	if (zdm_spi_execute("DELETE FROM zdm.copy_task", 0, NULL, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		zdm_spi_execute("DELETE FROM zdm.copy_run", 0, NULL, NULL, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not forget the copy");
	SPI_finish();
	if (unfinished && truncate != NULL)
		event_log("copy_undone", "%s; %d indexes set aside rebuilt",
				  truncate, list_length(defs));
}
