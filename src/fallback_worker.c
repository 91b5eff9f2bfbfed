/*-------------------------------------------------------------------------
 *
 * fallback_worker.c
 *		  The background worker that runs a fallback: the cutover in the
 *		  other direction, after a cutover with fallback.
 *
 * zdm.fallback() starts this worker (fallback.c) and relays what it
 * reports, as for the cutover.  The roles of the servers swap: writes are
 * fenced on this target, with the very fence of fence.c, taken through a
 * connection to this target made with the DSN the source uses to reach it
 * (the fence must be a session of its own, whose end -- this worker's
 * death, a cancel -- unlocks); the reverse replication of reverse.c plays
 * the forward subscription's part, and the catch-up is proven as the
 * cutover proves it: the source has applied and flushed everything up to
 * this target's final position once the reverse slot's confirmed_flush_lsn
 * reaches it, or, sooner, once its apply worker reports that position and a
 * synchronous commit there has flushed its WAL (source_applied).
 *
 * Steps: come close without a lock, fence writes here, capture the final
 * position, move the source's sequences ahead of ours, wait for the source,
 * commit the fence (the point of no return: this target is read-only for
 * good), make the source writable (its read-only trigger function becomes a
 * no-op and its event trigger goes: one short transaction, no table lock),
 * then remove the reverse replication and drop the source's disabled
 * triggers, and release the caller.  Before the
 * point of no return every failure releases the fence: this target is
 * writable again and the reverse replication goes on.  After it, the next
 * zdm.fallback() call finishes what is left.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/* How far the source may be behind when the fence is taken. */
#define FENCE_LAG_LIMIT_BYTES	(1024 * 1024)

/* How often a waiting fallback says where the source is. */
#define PROGRESS_NOTICE_MS		250

/* How long the cleanup after the point of no return may take. */
#define CLEANUP_TIMEOUT_MS		30000

/* How the source's disabled triggers are dropped once the caller is gone. */
#define SOURCE_FENCE_LOCK_TIMEOUT	"200ms"
#define SOURCE_FENCE_ATTEMPTS		5

typedef struct FallbackRun
{
	CutoverShared *shared;
	MemoryContext cxt;
	MigrationState state;
	PGconn	   *source;
	PGconn	   *target;			/* this target, through fallback_conninfo */
	PGconn	   *fence;			/* the fence transaction here */
	TimestampTz deadline;
	TimestampTz fence_started;
	double		blocked_ms;
	char	   *final_lsn;
	int64		reverse_errors;	/* the reverse apply worker's error count
								 * when the fallback started (-1: before 15) */
} FallbackRun;

static const char *failure_message = NULL;

/*
 * Run fn in a transaction of its own; what it allocates outside SPI lives
 * in the run's context.
 */
static void
in_transaction(void (*fn) (FallbackRun *), FallbackRun *run)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	MemoryContextSwitchTo(run->cxt);
	fn(run);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Stop unless the caller still wants the fallback and time is left.
 */
static void
check_still_wanted(FallbackRun *run, const char *waiting_for)
{
	CHECK_FOR_INTERRUPTS();
	if (worker_abort_requested(run->shared))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("fallback cancelled while %s", waiting_for),
				 errdetail("The session that called zdm.fallback() was cancelled or terminated. A write fence on this target is released before this error is returned; the reverse replication goes on.")));
	if (GetCurrentTimestamp() >= run->deadline)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("fallback timed out while %s", waiting_for),
				 errdetail("A write fence on this target is released before this error is returned; the reverse replication goes on."),
				 errhint("Look at the fallback rows of SELECT * FROM zdm.status(); retry with a longer timeout once the source keeps up.")));
}

static void
still_wanted_while_fencing(void *arg)
{
	check_still_wanted((FallbackRun *) arg, "taking the fence");
}

/*
 * load_migration_to_fall_back: read the migration into *state, refusing
 * when its phase allows no fallback.  The caller of zdm.fallback and its
 * worker both ask.
 */
void
load_migration_to_fall_back(MigrationState *state)
{
	if (!state_load(state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("there is no migration to fall back from"),
				 errhint("A fallback follows a CALL zdm.cutover(fallback => true).")));
	if (strcmp(state->phase, "fallen_back") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the fallback is already complete"),
				 errdetail("The source is writable and this target read-only since %s.",
						   state->fallback_lsn),
				 errhint("CALL zdm.finish() ends the migration.")));
	if (state->fallback_name == NULL ||
		(strcmp(state->phase, "completed") != 0 &&
		 strcmp(state->phase, "fallback") != 0 &&
		 strcmp(state->phase, "fallback_detaching") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("there is no reverse replication to fall back with"),
				 errdetail("The migration is in phase %s%s.", state->phase,
						   state->fallback_name ? "" : ", and its cutover did not set up a fallback"),
				 strcmp(state->phase, "streaming") == 0 ?
				 errhint("Before the cutover the source is still in use: CALL zdm.abort() stops the migration.") :
				 errhint("A fallback needs CALL zdm.cutover(fallback => true).")));
}

static void
load_migration(FallbackRun *run)
{
	load_migration_to_fall_back(&run->state);
}

static void
mark_started(FallbackRun *run)
{
	state_set_phase("fallback");
	event_log("fallback_started", "timeout %lld ms, sequence buffer %lld",
			  (long long) run->shared->timeout_ms,
			  (long long) run->shared->sequence_buffer);
}

static void
mark_detaching(FallbackRun *run)
{
	state_begin_fallback_detach(run->final_lsn);
	event_log("fallback_fence_committed",
			  "source caught up with %s; this target is read-only from now on",
			  run->final_lsn);
}

static void
mark_fallen_back(FallbackRun *run)
{
	run->blocked_ms = run->fence_started == 0 ? 0 :
		(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0;
	state_fallen_back(run->blocked_ms);
	event_log("fallen_back", "final target position %s, writes blocked for %.1f ms",
			  run->final_lsn ? run->final_lsn : "(from an earlier call)",
			  run->blocked_ms);
}

static void
record_failure(FallbackRun *run)
{
	if (!run->shared->past_no_return)
		state_set_phase("completed");
	event_log("fallback_failed", "%s", failure_message);
}

/*
 * Refuse while a table here that holds rows is not in the reverse
 * publication (created after the cutover, or here only from the start):
 * its rows would never reach the source, and it would stay writable here.
 * Tables of extensions are left out (pg_zdm's own among them).
 * pg_partition_ancestors gives no row for a table that is no partition.
 */
static void
check_all_tables_published(FallbackRun *run)
{
	StringInfoData names;
	uint64		i;
	int			nonempty = 0;

	initStringInfo(&names);		/* before SPI_connect: it outlives SPI */
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) "
						"FROM pg_catalog.pg_class c "
						"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
						"  AND n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', '" ZDM_FENCE_SCHEMA "') "
						"  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "
						"    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
						"      AND d.objid = c.oid AND d.deptype = 'e') "
						"  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r "
						"    JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid "
						"    WHERE p.pubname = '" ZDM_PUBLICATION "' "
						"      AND (r.prrelid = c.oid OR r.prrelid IN "
						"        (SELECT relid FROM pg_catalog.pg_partition_ancestors(c.oid)))) "
						"ORDER BY 1", 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the unpublished tables");
	if (SPI_processed > 0)
	{
		SPITupleTable *tables = SPI_tuptable;
		uint64		ntables = SPI_processed;

		for (i = 0; i < ntables; i++)
		{
			char	   *name = SPI_getvalue(tables->vals[i], tables->tupdesc, 1);

			if (zdm_spi_execute(psprintf("SELECT 1 FROM %s LIMIT 1", name),
								0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not read table %s", name);
			if (SPI_processed == 0)
				continue;
			if (nonempty++ < 10)
				appendStringInfo(&names, "%s%s", names.len > 0 ? ", " : "", name);
		}
	}
	SPI_finish();
	if (nonempty > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg_plural("%d table with rows here is not replicated to the source",
							   "%d tables with rows here are not replicated to the source",
							   nonempty, nonempty),
				 errdetail("Their rows would stay behind at the fallback: %s%s. Nothing was locked.",
						   names.data, nonempty > 10 ? " and more" : ""),
				 errhint("Create them on the source and copy their rows there, or drop them here (they were created after the cutover, or exist here only), then call zdm.fallback() again.")));
}

/*
 * Refuse to fence while the reverse replication does not run: the source
 * could not catch up.
 */
static void
check_reverse_running(FallbackRun *run)
{
	const char *params[1] = {run->state.fallback_name};
	RemoteResult *res;

	res = remote_query(run->source,
					   "SELECT s.subenabled, "
					   "  EXISTS (SELECT 1 FROM pg_stat_subscription st "
					   "          WHERE st.subid = s.oid AND st.pid IS NOT NULL) "
					   "FROM pg_subscription s WHERE s.subname = $1 "
					   "  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
					   1, params, "looking at the reverse subscription");
	if (res->ntuples != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the reverse subscription %s is missing on the source", run->state.fallback_name),
				 errdetail("Nothing was locked."),
				 errhint("Without it the source cannot catch up with this target; a fallback is no longer possible.")));
	if (strcmp(remote_value(res, 0, 0), "t") != 0 ||
		strcmp(remote_value(res, 0, 1), "t") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the reverse replication is not running on the source"),
				 errdetail("Subscription %s there is %s. Nothing was locked.",
						   run->state.fallback_name,
						   strcmp(remote_value(res, 0, 0), "t") != 0 ? "disabled" :
						   "enabled but has no apply worker (it may be failing, see the source's log)"),
				 errhint("Fix the cause on the source, wait until the fallback rows of zdm.status() show it streaming, and call zdm.fallback() again.")));
}

/*
 * The reverse slot's view: whether the source has confirmed lsn (NULL:
 * only how far behind it is), and how many bytes it still lacks.
 */
static bool
source_confirmed(FallbackRun *run, const char *lsn, int64 *behind)
{
	const char *params[2] = {run->state.fallback_name, lsn};
	RemoteResult *res;

	res = remote_query(run->target,
					   "SELECT confirmed_flush_lsn >= coalesce($2::pg_lsn, pg_current_wal_lsn()), "
					   "  greatest(pg_wal_lsn_diff(coalesce($2::pg_lsn, pg_current_wal_lsn()), "
					   "    confirmed_flush_lsn), 0)::bigint "
					   "FROM pg_replication_slots WHERE slot_name = $1",
					   2, params, "watching the reverse slot");
	if (res->ntuples != 1 || remote_value(res, 0, 0) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the reverse replication slot %s is missing or unused on this target",
						run->state.fallback_name),
				 errhint("Without it the source cannot catch up with this target; a fallback is no longer possible.")));
	*behind = strtoi64(remote_value(res, 0, 1), NULL, 10);
	return strcmp(remote_value(res, 0, 0), "t") == 0;
}

/*
 * One look at the source's reverse apply worker: whether it has reported a
 * position at or past lsn (NULL: never), and, from 15, how many errors it
 * has reported (-1 before 15).
 */
static void
poll_source(FallbackRun *run, const char *lsn, bool *applied, int64 *errors)
{
	const char *params[2] = {run->state.fallback_name, lsn};
	RemoteResult *res;

	res = remote_query(run->source, PQserverVersion(run->source) >= 150000 ?
					   "SELECT coalesce(bool_or(st.latest_end_lsn >= $2::pg_lsn), false), "
					   "  (SELECT coalesce(max(ss.apply_error_count), 0) FROM pg_stat_subscription_stats ss "
					   "   WHERE ss.subid = s.oid) "
					   "FROM pg_subscription s LEFT JOIN pg_stat_subscription st "
					   "  ON st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL "
					   "WHERE s.subname = $1 "
					   "  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
					   "GROUP BY s.oid" :
					   "SELECT coalesce(bool_or(st.latest_end_lsn >= $2::pg_lsn), false), -1 "
					   "FROM pg_subscription s LEFT JOIN pg_stat_subscription st "
					   "  ON st.subid = s.oid AND st.relid IS NULL AND st.pid IS NOT NULL "
					   "WHERE s.subname = $1 "
					   "  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
					   "GROUP BY s.oid",
					   2, params, "watching the reverse subscription");
	if (res->ntuples != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the reverse subscription %s is missing on the source", run->state.fallback_name)));
	*applied = strcmp(remote_value(res, 0, 0), "t") == 0;
	*errors = strtoi64(remote_value(res, 0, 1), NULL, 10);
}

/*
 * Stop when the source's reverse apply worker keeps failing: a change of
 * this target the source cannot apply (a column or constraint it lacks)
 * would keep writes fenced here until the timeout.  As in the cutover's
 * check_apply_errors: one new error refuses before the fence, two are
 * needed while fenced (a lost connection counts too).  Sources before 15
 * keep no count: the timeout ends the fallback there.
 */
static void
check_reverse_errors(FallbackRun *run, int64 errors, bool fenced)
{
	if (errors < 0 || errors - run->reverse_errors < (fenced ? 2 : 1))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the source cannot apply a change of this target: its reverse apply worker is failing"),
			 errdetail("It reported %lld new errors while the fallback waited; %s",
					   (long long) (errors - run->reverse_errors),
					   fenced ? "the fence here is released and this target is writable again." :
					   "this target was not locked."),
			 errhint("Find the error of the logical replication worker in the source's log and fix its cause (often a column or constraint of this target the source lacks); once the fallback rows of zdm.status() show no new errors, call zdm.fallback() again.")));
}

/*
 * The faster of the two proofs of the source's catch-up: its apply worker
 * has reported a position at or past the final one (latest_end_lsn, set
 * when it handles a keepalive: every transaction before it applied; from
 * 16 the leader waits for its parallel apply workers' commits first),
 * after which a transaction committed there with synchronous_commit on
 * flushes the source's WAL up to its commit, the applied ones included.
 * The reverse subscription commits asynchronously, and the slot here would
 * only learn of the flush once the source's WAL writer and the next
 * feedback message came round.
 */
static bool
source_applied(FallbackRun *run)
{
	bool		applied;
	int64		errors;

	poll_source(run, run->final_lsn, &applied, &errors);
	check_reverse_errors(run, errors, true);
	if (!applied)
		return false;
	(void) remote_query(run->source, "SELECT txid_current()", 0, NULL,
						"flushing the source's WAL");
	return true;
}

/*
 * Before fencing: wait, unlocked, until the source is less than
 * FENCE_LAG_LIMIT_BYTES behind, so the fenced wait is short.
 */
static void
come_close(FallbackRun *run)
{
	int64		behind;

	for (;;)
	{
		bool		applied;
		int64		errors;

		check_still_wanted(run, "waiting for the source to come close before fencing");
		(void) source_confirmed(run, NULL, &behind);
		poll_source(run, NULL, &applied, &errors);
		check_reverse_errors(run, errors, false);
		if (behind <= FENCE_LAG_LIMIT_BYTES)
			return;
		worker_nap();
	}
}

/*
 * With the fence held: wait until the source has applied and flushed
 * everything up to run->final_lsn.
 */
static void
wait_for_source(FallbackRun *run)
{
	TimestampTz last_notice = 0;
	TimestampTz last_ping = GetCurrentTimestamp();
	int64		behind;

	for (;;)
	{
		TimestampTz now;

		check_still_wanted(run, "waiting for the source to catch up");
		if (source_confirmed(run, run->final_lsn, &behind) ||
			source_applied(run))
			return;
		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_ping, now, zdm_fence_idle_timeout_ms / 4))
		{
			fence_ping(run->fence);
			last_ping = now;
		}
		if (TimestampDifferenceExceeds(last_notice, now, PROGRESS_NOTICE_MS))
		{
			ereport(NOTICE,
					(errmsg("source %lld bytes behind this target's final position %s",
							(long long) behind, run->final_lsn)));
			last_notice = now;
		}
		worker_nap();
	}
}

static void
set_sequences(FallbackRun *run)
{
	int64		set;
	int			skipped;

	sequences_push(run->source, run->shared->sequence_buffer, &set, &skipped);
	event_log("sequences_synced", "%lld sequences of the source set to this target's value + %lld; %d without counterpart or privilege left alone",
			  (long long) set, (long long) run->shared->sequence_buffer, skipped);
	ereport(NOTICE,
			(errmsg("%lld sequences of the source set to this target's value + %lld",
					(long long) set, (long long) run->shared->sequence_buffer),
			 skipped > 0 ?
			 errdetail("%d sequences of this target have no counterpart on the source, or the source role may not set them, and were left alone.",
					   skipped) : 0));
}

/*
 * Commit the fence here: the point of no return.  The reverse publication
 * stays until the subscription is gone: its walsender would fail on a
 * publication dropped under it.
 */
static void
commit_fence(FallbackRun *run)
{
	int			fence_pid = PQbackendPID(run->fence);
	FenceOutcome outcome;

	fence_finish_permanent(run->fence);
	SpinLockAcquire(&run->shared->mutex);
	run->shared->past_no_return = true;
	SpinLockRelease(&run->shared->mutex);

	if (fence_commit(run->fence, NULL))
		return;
	outcome = fence_outcome(run->state.fallback_conninfo, fence_pid);
	if (outcome == FENCE_COMMITTED)
		return;
	if (outcome == FENCE_ROLLED_BACK)
	{
		SpinLockAcquire(&run->shared->mutex);
		run->shared->past_no_return = false;
		SpinLockRelease(&run->shared->mutex);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the fence on this target ended before the fallback could commit it"),
				 errdetail("The session holding the fence was lost; writes resumed here."),
				 errhint("Run CALL zdm.fallback() again.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not learn whether the fence on this target was committed"),
			 errhint("Run CALL zdm.fallback() again: it looks and either finishes or starts over.")));
}

/*
 * After the point of no return: make the source writable.  Its trigger
 * function becomes a no-op and its event trigger goes, in one transaction
 * that takes no table lock (the triggers themselves are dropped once the
 * caller is released, drop_source_fence).  Idempotent: retried, with a new
 * connection if need be, for CLEANUP_TIMEOUT_MS while the source does not
 * answer; then the next zdm.fallback() finishes it.
 */
static const char *make_source_writable_sql =
"CREATE OR REPLACE FUNCTION " ZDM_FENCE_SCHEMA ".reject_write() "
"RETURNS trigger LANGUAGE plpgsql AS $zdm$ BEGIN RETURN NULL; END $zdm$; "
"DROP EVENT TRIGGER IF EXISTS zdm_reject_create";

static void
make_source_writable(FallbackRun *run)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   CLEANUP_TIMEOUT_MS);
	char	   *reason = NULL;

	for (;;)
	{
		if (run->source != NULL &&
			remote_command_quietly(run->source, make_source_writable_sql, 0, NULL,
								   CLEANUP_TIMEOUT_MS))
			return;
		if (GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not make the source writable"),
					 errdetail("This target is read-only for good: the fallback passed its point of no return. The source still rejects writes.%s%s",
							   reason ? " " : "", reason ? reason : ""),
					 errhint("CALL zdm.fallback() again once the source answers: it finishes the fallback.")));
		worker_sleep_ms(1000);
		CHECK_FOR_INTERRUPTS();
		if (run->source == NULL || PQstatus(run->source) != CONNECTION_OK)
		{
			remote_disconnect(run->source);
			run->source = remote_connect_quietly(run->state.source_conninfo,
												 5000, &reason);
			if (run->source != NULL)
				remote_keep_across_abort(run->source);
		}
	}
}

static bool
target_has_fence_schema(FallbackRun *run)
{
	RemoteResult *res = remote_query(run->target,
									 "SELECT EXISTS (SELECT 1 FROM pg_namespace "
									 "WHERE nspname = '" ZDM_FENCE_SCHEMA "')",
									 0, NULL, "checking the fence");

	return strcmp(remote_value(res, 0, 0), "t") == 0;
}

/*
 * The end: the source is writable; record it and release the caller.
 */
static void
complete(FallbackRun *run)
{
	make_source_writable(run);
	in_transaction(mark_fallen_back, run);
	SpinLockAcquire(&run->shared->mutex);
	run->shared->succeeded = true;
	SpinLockRelease(&run->shared->mutex);
	ereport(NOTICE,
			(errmsg("fallback complete: writes were blocked on this target for %.1f ms; point the application at the source now",
					run->blocked_ms),
			 errdetail("This target stays read-only (schema %s holds its write-rejecting triggers); the reverse replication is removed next, see zdm.event_log.",
					   ZDM_FENCE_SCHEMA),
			 errhint("CALL zdm.finish() ends the migration.")));
}

/*
 * The fallback proper; see the file header.
 */
static void
fallback_steps(FallbackRun *run)
{
	List	   *tables;

	run->source = remote_connect(run->state.source_conninfo, "to fall back");
	remote_keep_across_abort(run->source);
	remote_command(run->source,
				   "SET synchronous_commit = on; SET statement_timeout = 0",
				   "setting up the control session");
	run->target = remote_connect_to(run->state.fallback_conninfo, "target",
									"to fall back");
	remote_keep_across_abort(run->target);
	remote_command(run->target,
				   "SET synchronous_commit = on; SET statement_timeout = 0",
				   "setting up the control session");

	if (target_has_fence_schema(run))
	{
		ereport(NOTICE,
				(errmsg("finishing an interrupted fallback"),
				 errdetail("This target was made read-only for good before the interruption.")));
		SpinLockAcquire(&run->shared->mutex);
		run->shared->past_no_return = true;
		SpinLockRelease(&run->shared->mutex);
		complete(run);
		return;
	}

	check_reverse_running(run);
	{
		bool		applied;

		poll_source(run, NULL, &applied, &run->reverse_errors);
	}
	in_transaction(check_all_tables_published, run);
	in_transaction(mark_started, run);
	come_close(run);

	tables = fence_published_tables(run->target);
	run->fence_started = GetCurrentTimestamp();
	fence_acquire(run->state.fallback_conninfo, run->target, tables, &run->fence,
				  (int) Min(TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															run->deadline) + 1000,
							INT_MAX),
				  still_wanted_while_fencing, run);
	fence_make_permanent(run->fence, NULL);
	fence_verify(run->target, run->fence, list_length(tables));
	ereport(NOTICE,
			(errmsg("writes blocked on this target: %d tables fenced in %.1f ms",
					list_length(tables),
					(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0)));

	run->final_lsn = pstrdup(remote_value(remote_query(run->target,
													   "SELECT pg_logical_emit_message(true, 'pg_zdm', 'fallback')::text",
													   0, NULL, "capturing the final position"),
										  0, 0));
	ereport(NOTICE, (errmsg("final target position %s", run->final_lsn)));

	in_transaction(set_sequences, run);
	wait_for_source(run);
	ereport(NOTICE,
			(errmsg("source caught up with %s, %.1f ms after the fence",
					run->final_lsn,
					(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0)));

	check_still_wanted(run, "about to make this target read-only");
	in_transaction(mark_detaching, run);
	remote_set_deadline(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													CLEANUP_TIMEOUT_MS));
	commit_fence(run);
	complete(run);
}

/*
 * End the fence unless the fallback passed its point of no return; also
 * runs when the worker is terminated.
 */
static void
release_fence_on_failure(int code, Datum arg)
{
	FallbackRun *run = (FallbackRun *) DatumGetPointer(arg);

	remote_set_deadline(0);
	if (!run->shared->past_no_return)
	{
		fence_release(run->fence, run->target, run->state.fallback_conninfo);
		run->fence = NULL;
	}
}

static void
fallback_steps_or_release(FallbackRun *run)
{
	PG_ENSURE_ERROR_CLEANUP(release_fence_on_failure, PointerGetDatum(run));
	{
		fallback_steps(run);
	}
	PG_END_ENSURE_ERROR_CLEANUP(release_fence_on_failure, PointerGetDatum(run));
}

/* worker_run's view of the fallback */
static void
run_fallback_steps(void *arg)
{
	fallback_steps_or_release((FallbackRun *) arg);
}

static void
record_fallback_failure(void *arg, const char *message)
{
	failure_message = message;
	in_transaction(record_failure, (FallbackRun *) arg);
}

static void
log_source_fence_dropped(FallbackRun *run)
{
	event_log("source_fence_dropped", "schema %s and its disabled triggers dropped on the source",
			  ZDM_FENCE_SCHEMA);
}

static void
log_reverse_removed(FallbackRun *run)
{
	event_log("fallback_cleaned", "subscription %s on the source, slot %s and publication %s here dropped",
			  run->state.fallback_name, run->state.fallback_name, ZDM_PUBLICATION);
}

/*
 * After success: remove the reverse replication.  A failure is a WARNING,
 * not an error: the fallback is complete, zdm.finish() removes what is
 * left.
 */
static void
remove_reverse(FallbackRun *run)
{
	if (reverse_remove(run->source, run->target, run->state.fallback_name,
					   CLEANUP_TIMEOUT_MS))
		in_transaction(log_reverse_removed, run);
	else
		ereport(WARNING,
				(errmsg("the fallback is complete, but its reverse replication is still partly in place"),
				 errhint("CALL zdm.finish() removes it.")));
}

/*
 * After success: drop the source's disabled triggers.  Dropping a
 * trigger locks its table, so each attempt waits at most
 * SOURCE_FENCE_LOCK_TIMEOUT for the locks (the application is held up for
 * no longer); what is left after a few attempts is zdm.finish()'s.
 */
static void
drop_source_fence(FallbackRun *run)
{
	int			attempt;

	for (attempt = 0; attempt < SOURCE_FENCE_ATTEMPTS; attempt++)
	{
		if (remote_command_quietly(run->source,
								   "SET lock_timeout = '" SOURCE_FENCE_LOCK_TIMEOUT "'; "
								   "DROP SCHEMA IF EXISTS " ZDM_FENCE_SCHEMA " CASCADE",
								   0, NULL, CLEANUP_TIMEOUT_MS))
		{
			in_transaction(log_source_fence_dropped, run);
			return;
		}
		worker_sleep_ms(1000);
	}
	ereport(WARNING,
			(errmsg("schema %s is still on the source", ZDM_FENCE_SCHEMA),
			 errdetail("Its triggers do nothing since the fallback; dropping them needs a moment without other sessions on each table."),
			 errhint("CALL zdm.finish() drops it.")));
}

/*
 * Entry point of the fallback worker; main_arg is the DSM handle.
 */
void
zdm_fallback_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	FallbackRun run;

	memset(&run, 0, sizeof(run));
	run.cxt = AllocSetContextCreate(TopMemoryContext, "pg_zdm fallback",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(run.cxt);
	run.shared = worker_attach(main_arg, "pg_zdm fallback", &seg);

	in_transaction(load_migration, &run);
	run.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   run.shared->timeout_ms);
	remote_set_deadline(TimestampTzPlusMilliseconds(run.deadline, 1000));

	worker_run(run_fallback_steps, record_fallback_failure, &run, run.cxt);

	/*
	 * The source is writable (the caller was told so); clean up before
	 * releasing the caller, so that its CALL returns with nothing of the
	 * migration left but the migration row, and the lock free for
	 * zdm.finish().  Detaching the segment releases the caller.
	 */
	remote_set_deadline(0);
	remote_disconnect(run.fence);
	remove_reverse(&run);
	drop_source_fence(&run);
	remote_disconnect(run.target);
	remote_disconnect(run.source);
	migration_lock_release();
	dsm_detach(seg);
}
