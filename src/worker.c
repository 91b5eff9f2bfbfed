/*-------------------------------------------------------------------------
 *
 * worker.c
 *		  The background worker that runs a cutover.
 *
 * zdm.cutover() starts this worker and relays what it reports.  The worker
 * owns the two source connections of the cutover (control, and the fence
 * of fence.c), so the write fence lives and dies with the worker, not with
 * the caller's session: if the caller is cancelled or terminated it sets
 * abort_requested, and the worker unlocks the source itself.
 *
 * Steps: come close to the source without any lock (so that the locked
 * window is short), fence writes, capture the final position with a
 * logical message, move the sequences ahead, wait until this target has
 * applied and flushed everything up to that position, then detach.  The
 * fence commit is the point of no return: before it every failure releases
 * the fence (the source is writable again, replication goes on); after it
 * the migration can only be finished, by this worker or by the next
 * zdm.cutover() call.
 *
 * A target that cannot apply a change of the source (its apply worker
 * fails, is restarted and fails again) would keep the source fenced until
 * the timeout: the worker refuses to fence while the apply worker is
 * failing, and reads the error counts on every poll to release the fence
 * as soon as it fails again (check_apply_errors).
 *
 * A cutover with fallback also prepares the reverse replication before it
 * fences (reverse.c), marks where it starts once the target has caught up,
 * and enables it in the transaction that commits the fence; a failure
 * before that removes it again.
 *
 * Catch-up is proven by either of two facts: the slot on the source has
 * confirmed_flush_lsn >= final position (applied and flushed here), or
 * every table is ready and the apply worker has reported a position
 * >= final (latest_end_lsn: applied), after which this worker flushes WAL
 * here itself.  The second fires sooner: the apply worker only reports a
 * flush once the WAL writer flushed its asynchronous commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/bgwriter.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/standby.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/*
 * How often a waiting cutover tells the caller where the target is: while
 * it moves, and while it does not.
 */
#define PROGRESS_NOTICE_MS		250
#define STALLED_NOTICE_MS		5000

/* How much the source may be ahead when the fence is taken. */
#define FENCE_LAG_LIMIT_BYTES	(1024 * 1024)

/* How long the end of a cutover waits for the source to drop the slot. */
#define DETACH_SOURCE_TIMEOUT_MS	30000

/* How long a failed cutover may take to remove the reverse replication. */
#define REVERSE_UNDO_TIMEOUT_MS		10000

/* Everything one cutover run holds. */
typedef struct CutoverRun
{
	CutoverShared *shared;
	MemoryContext cxt;			/* lives as long as the run */
	MigrationState state;
	Oid			subid;
	PGconn	   *control;		/* queries on the source */
	PGconn	   *fence;			/* the fence transaction, fence.c */
	TimestampTz deadline;
	TimestampTz fence_started;
	double		blocked_ms;		/* fence taken until target detached */
	char	   *final_lsn;
	int64		apply_errors;	/* error counts when the cutover started */
	int64		sync_errors;
	SequenceCache *sequences;	/* read before the fence, in cxt */
	char	   *target_dsn;		/* with fallback: how the source reaches us */
	char	   *fallback_name;	/* with fallback: reverse subscription, slot */
	PGconn	   *target;			/* with fallback: this target, via target_dsn */
	bool		reverse_prepared;	/* reverse objects may exist: undo them */
	bool		advance_origin; /* with fallback: the source role may call
								 * pg_replication_origin_advance */
	char	   *reverse_start;	/* with fallback: where the reverse stream starts */
} CutoverRun;

/* What one poll of the catch-up sees. */
typedef struct Progress
{
	bool		all_ready;		/* every table ready */
	bool		enabled;		/* the subscription is enabled */
	bool		running;		/* apply worker alive and enabled */
	int64		apply_errors;	/* pg_stat_subscription_stats counts */
	int64		sync_errors;
	bool		applied;		/* latest_end_lsn >= target position */
	bool		flushed;		/* slot confirmed_flush_lsn >= target position */
	char	   *applied_lsn;	/* latest_end_lsn here, text */
	int64		behind;			/* bytes the slot still lacks */
} Progress;

/*
 * Run fn in a transaction of its own, with a snapshot.  What fn allocates
 * outside SPI lands in the run's memory context and survives the commit.
 */
static void
in_transaction(void (*fn) (CutoverRun *), CutoverRun *run)
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
 * worker_abort_requested: has the caller of a cutover or fallback given up?
 */
bool
worker_abort_requested(CutoverShared *shared)
{
	bool		requested;

	SpinLockAcquire(&shared->mutex);
	requested = shared->abort_requested;
	SpinLockRelease(&shared->mutex);
	return requested;
}

/*
 * Stop unless the caller still wants the cutover and time is left.
 */
static void
check_still_wanted(CutoverRun *run, const char *waiting_for)
{
	CHECK_FOR_INTERRUPTS();
	if (worker_abort_requested(run->shared))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("cutover cancelled while %s", waiting_for),
				 errdetail("The session that called zdm.cutover() was cancelled or terminated. A write fence on the source is released before this error is returned; replication goes on.")));
	if (GetCurrentTimestamp() >= run->deadline)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("cutover timed out while %s", waiting_for),
				 errdetail("A write fence on the source is released before this error is returned; replication goes on."),
				 errhint("Look at SELECT * FROM zdm.status(); retry with a longer timeout once the target keeps up.")));
}

/* check_still_wanted for fence_acquire's wait. */
static void
still_wanted_while_fencing(void *arg)
{
	check_still_wanted((CutoverRun *) arg,
					   "taking the fence");
}

/*
 * Load the migration and refuse what cannot be cut over.
 */
static void
load_migration(CutoverRun *run)
{
	load_migration_to_cut_over(&run->state);
	run->subid = subscription_oid();
}

static void
mark_cutover_started(CutoverRun *run)
{
	state_set_phase("cutover");
	event_log("cutover_started", "timeout %lld ms, sequence buffer %lld",
			  (long long) run->shared->timeout_ms,
			  (long long) run->shared->sequence_buffer);
}

static void
mark_detaching(CutoverRun *run)
{
	state_begin_detach(run->final_lsn);
	event_log("fence_committed",
			  "target caught up with %s; the source is read-only from now on",
			  run->final_lsn);
}

/*
 * One look at how far this target is, for target position lsn (NULL: only
 * the local facts).
 */
static Progress
poll_progress(CutoverRun *run, const char *lsn)
{
	Progress	p;
	MemoryContext callercxt = CurrentMemoryContext;
	Oid			types[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};

	memset(&p, 0, sizeof(p));
	p.behind = -1;

	if (lsn != NULL)
	{
		const char *params[2] = {run->state.slot_name, lsn};
		RemoteResult *res;

		res = remote_query(run->control,
						   "SELECT confirmed_flush_lsn >= $2::pg_lsn, "
						   "  greatest(pg_wal_lsn_diff($2::pg_lsn, confirmed_flush_lsn), 0)::bigint "
						   "FROM pg_replication_slots WHERE slot_name = $1",
						   2, params, "watching the slot");
		if (res->ntuples == 1 && remote_value(res, 0, 0) != NULL)
		{
			p.flushed = strcmp(remote_value(res, 0, 0), "t") == 0;
			p.behind = strtoi64(remote_value(res, 0, 1), NULL, 10);
		}
	}

	values[0] = lsn ? CStringGetTextDatum(lsn) : (Datum) 0;
	nulls[0] = lsn ? ' ' : 'n';
	values[1] = ObjectIdGetDatum(run->subid);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (zdm_spi_execute("SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r "
							  "    WHERE r.srsubid = s.oid AND r.srsubstate <> 'r'), "
							  "  s.subenabled AND st.pid IS NOT NULL, "
							  "  coalesce(st.latest_end_lsn >= $1::pg_catalog.pg_lsn, false), "
							  "  st.latest_end_lsn::text, s.subenabled, "
							  "  coalesce(ss.apply_error_count, 0), coalesce(ss.sync_error_count, 0) "
							  "FROM pg_catalog.pg_subscription s "
							  "LEFT JOIN pg_catalog.pg_stat_subscription st "
							  "  ON st.subid = s.oid AND " ZDM_APPLY_LEADER("st") " "
							  "LEFT JOIN pg_catalog.pg_stat_subscription_stats ss ON ss.subid = s.oid "
							  "WHERE s.oid = $2",
							  2, types, values, nulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscription's progress");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *applied_lsn = SPI_getvalue(tup, desc, 4);

		p.all_ready = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		p.running = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)) && !isnull;
		p.applied = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		p.applied_lsn = applied_lsn ? MemoryContextStrdup(callercxt, applied_lsn) : NULL;
		p.enabled = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		p.apply_errors = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		p.sync_errors = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextSwitchTo(callercxt);
	return p;
}

/*
 * worker_sleep_ms: wait ms, or less if the latch is set.
 */
void
worker_sleep_ms(int ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/*
 * worker_nap: wait zdm.poll_interval, or less if the latch is set.
 */
void
worker_nap(void)
{
	worker_sleep_ms(zdm_poll_interval_ms);
}

/*
 * Stop the cutover when the apply worker keeps failing: a change the target
 * cannot apply (a constraint, trigger or type of the target that the
 * source's rows do not satisfy) is queued, and the target will not catch up
 * however long the fence waits -- the worker fails, is restarted every
 * wal_retrieve_retry_interval, and fails again on the same change.
 *
 * PostgreSQL 15 counts every error of the worker, a lost connection to the
 * source included, after which it reconnects and catches up.  So while the
 * source is fenced (fenced: the error then releases it) the cutover stops
 * once the worker has failed again after a restart: two new errors since
 * the cutover started.  Before the fence nothing is locked, and one new
 * error is enough to refuse.  Called on every poll, every zdm.poll_interval.
 */
static void
check_apply_errors(CutoverRun *run, Progress *p, bool fenced)
{
	int64		apply_new = p->apply_errors - run->apply_errors;
	int64		sync_new = p->sync_errors - run->sync_errors;

	if (apply_new + sync_new < (fenced ? 2 : 1))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 fenced ?
			 errmsg("replication failed while writes were fenced: the target cannot apply a change of the source") :
			 errmsg("the apply worker of subscription %s is failing: the target cannot apply a change of the source",
					ZDM_SUBSCRIPTION),
			 errdetail("Its apply worker reported %lld new apply errors and %lld new copy errors while the cutover waited%s; %s PostgreSQL keeps the error messages only in this server's log.",
					   (long long) apply_new, (long long) sync_new,
					   fenced ? " (it failed again after a restart)" : "",
					   fenced ?
					   "the fence is released and the source is writable again." :
					   "the source was not locked."),
			 errhint("Find the error of the logical replication worker in this server's log and fix its cause (often a constraint, trigger or column type of the target that the source's rows do not satisfy); once zdm.status() shows ready and apply_errors no longer grows, cut over again.")));
}

/*
 * Refuse to start when the subscription cannot deliver: disabled, its apply
 * worker failing or not running, or tables still being copied.  Remembers
 * the error counts, which every later poll compares with.
 */
static void
check_subscription_ready(CutoverRun *run)
{
	Progress	p;

	if (!OidIsValid(run->subid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("subscription %s is missing", ZDM_SUBSCRIPTION),
				 errhint("Run CALL zdm.abort() and start again with zdm.init.")));
	p = poll_progress(run, NULL);
	if (!p.all_ready)
		refuse_unfinished_copy();
	if (!p.enabled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("subscription %s is disabled", ZDM_SUBSCRIPTION),
				 errdetail("Nothing is replicated while it is disabled; the source was not locked."),
				 errhint("Enable it (ALTER SUBSCRIPTION %s ENABLE), wait until zdm.status() is ready, and cut over again.",
						 ZDM_SUBSCRIPTION)));
	if (!p.running && p.apply_errors + p.sync_errors > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the apply worker of subscription %s is failing", ZDM_SUBSCRIPTION),
				 errdetail("The subscription is enabled, but its apply worker is not running and has reported %lld apply errors and %lld copy errors since the statistics were reset; it is restarted every wal_retrieve_retry_interval and fails again while the cause remains. The source was not locked.",
						   (long long) p.apply_errors, (long long) p.sync_errors),
				 errhint("Find the error of the logical replication worker in this server's log and fix its cause (often a constraint, trigger or column type of the target that the source's rows do not satisfy); once zdm.status() shows ready and apply_errors no longer grows, cut over again.")));
	if (!p.running)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the apply worker of subscription %s is not running", ZDM_SUBSCRIPTION),
				 errdetail("The subscription is enabled and has reported no errors; its worker may be starting or waiting to be restarted. The source was not locked."),
				 errhint("Retry in a few seconds; if zdm.status() keeps showing the worker not running, this server's log says why.")));
	run->apply_errors = p.apply_errors;
	run->sync_errors = p.sync_errors;
}

/*
 * Before fencing: wait, unlocked, until the slot is less than
 * FENCE_LAG_LIMIT_BYTES behind the source, so the fenced wait is short.
 *
 * When the apply worker has reported errors before, it may be running
 * again only to fail on the same queued change (it is restarted every
 * wal_retrieve_retry_interval).  Then the fence also waits until the target
 * has applied what the source had written when this wait began, for at
 * most twice that interval: a failing worker reports a new error within
 * it, and the cutover ends with the source never locked; a worker that is
 * merely slow or held up by a lock is not failing, and the cutover goes on
 * (the errors were old).
 */
static void
come_close(CutoverRun *run)
{
	MemoryContext loopcxt = AllocSetContextCreate(CurrentMemoryContext,
												  "pg_zdm come close",
												  ALLOCSET_SMALL_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(loopcxt);
	char	   *start_lsn = NULL;
	TimestampTz watch_until = 0;

	if (run->apply_errors + run->sync_errors > 0)
	{
		RemoteResult *res = remote_query(run->control,
										 "SELECT pg_current_wal_lsn()::text",
										 0, NULL, "reading the source's position");

		start_lsn = MemoryContextStrdup(oldcxt, remote_value(res, 0, 0));
		watch_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  2 * (int64) Max(wal_retrieve_retry_interval, 500));
	}

	for (;;)
	{
		RemoteResult *res;
		const char *params[1] = {run->state.slot_name};
		Progress	p;
		bool		close;

		MemoryContextReset(loopcxt);
		check_still_wanted(run, "waiting for the target to come close before fencing");
		res = remote_query(run->control,
						   "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
						   "FROM pg_replication_slots WHERE slot_name = $1",
						   1, params, "watching the slot");
		if (res->ntuples != 1 || remote_value(res, 0, 0) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("replication slot %s is missing on the source", run->state.slot_name),
					 errhint("Run CALL zdm.abort() and start again with zdm.init.")));
		close = strtoi64(remote_value(res, 0, 0), NULL, 10) <= FENCE_LAG_LIMIT_BYTES;
		p = poll_progress(run, start_lsn);
		check_apply_errors(run, &p, false);
		if (start_lsn != NULL &&
			((p.all_ready && (p.flushed || (p.applied && p.running))) ||
			 GetCurrentTimestamp() >= watch_until))
			start_lsn = NULL;	/* not failing: stop watching */
		if (close && start_lsn == NULL)
			break;
		worker_nap();
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(loopcxt);
}

/*
 * The end of the WAL inserted so far, as XLogFlush accepts it.  At the start
 * of a page GetXLogInsertRecPtr points past the page's header, which is not
 * written until a record goes there, and XLogFlush fails ("xlog flush
 * request ... is not satisfied"); nothing is on that page yet, so its start
 * is the end.  (PostgreSQL 17 has GetXLogInsertEndRecPtr for this.)
 */
static XLogRecPtr
inserted_wal_end(void)
{
	XLogRecPtr	ptr = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(ptr, wal_segment_size) == SizeOfXLogLongPHD)
		return ptr - SizeOfXLogLongPHD;
	if (ptr % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		return ptr - SizeOfXLogShortPHD;
	return ptr;
}

/*
 * With the fence held: wait until this target has applied and flushed
 * everything up to run->final_lsn, telling the caller how far it is.
 */
static void
wait_for_catchup(CutoverRun *run)
{
	TimestampTz last_notice = 0;
	TimestampTz last_ping = GetCurrentTimestamp();
	int64		last_behind = -1;
	MemoryContext loopcxt = AllocSetContextCreate(CurrentMemoryContext,
												  "pg_zdm catch-up",
												  ALLOCSET_SMALL_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(loopcxt);

	for (;;)
	{
		TimestampTz now;
		Progress	p;

		MemoryContextReset(loopcxt);
		check_still_wanted(run, "waiting for the target to catch up");
		p = poll_progress(run, run->final_lsn);
		check_apply_errors(run, &p, true);
		if (p.all_ready && (p.flushed || (p.applied && p.running)))
		{
			if (!p.flushed)
				XLogFlush(inserted_wal_end());
			break;
		}

		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_ping, now, zdm_fence_idle_timeout_ms / 4))
		{
			fence_ping(run->fence);
			last_ping = now;
		}
		if (TimestampDifferenceExceeds(last_notice, now,
									   p.behind != last_behind ?
									   PROGRESS_NOTICE_MS : STALLED_NOTICE_MS))
		{
			ereport(NOTICE,
					(errmsg("target applied up to %s, %lld bytes behind the final position %s",
							p.applied_lsn ? p.applied_lsn : "(unknown)",
							(long long) p.behind, run->final_lsn)));
			last_notice = now;
			last_behind = p.behind;
		}
		worker_nap();
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(loopcxt);
}

/*
 * Move the sequences here ahead of the source's (sequences.c), and report
 * the sequences found on one side only: their values are not carried, so a
 * default using one may hand out ids the source already used.
 */
static void
set_sequences(CutoverRun *run)
{
	SequenceSync sync;
	TimestampTz started = GetCurrentTimestamp();
	double		took_ms;
	StringInfoData detail;

	SPI_connect();
	sequences_sync(run->control, run->shared->sequence_buffer, run->sequences,
				   &sync);
	SPI_finish();
	took_ms = (double) (GetCurrentTimestamp() - started) / 1000.0;

	initStringInfo(&detail);
	if (sync.nsource_only > 0)
		appendStringInfo(&detail, "%d sequences of the source have no counterpart on this target and were left alone: %s. ",
						 sync.nsource_only, sync.source_only);
	if (sync.ntarget_only > 0)
		appendStringInfo(&detail, "%d sequences of this target have no counterpart on the source and were not set: %s. ",
						 sync.ntarget_only, sync.target_only);
	if (sync.nunreadable > 0)
		appendStringInfo(&detail, "%d sequences of the source could not be read by the source role (it needs SELECT on them) and were not set: %s. ",
						 sync.nunreadable, sync.unreadable);
	if (detail.len > 0)
		detail.data[--detail.len] = '\0';

	event_log("sequences_synced", "%lld sequences set to the source's value + %lld in %.1f ms%s%s",
			  (long long) sync.set, (long long) run->shared->sequence_buffer,
			  took_ms, detail.len > 0 ? "; " : "", detail.data);
	ereport(NOTICE,
			(errmsg("%lld sequences set to the source's value + %lld in %.1f ms",
					(long long) sync.set,
					(long long) run->shared->sequence_buffer, took_ms),
			 detail.len > 0 ? errdetail("%s", detail.data) : 0,
			 detail.len > 0 ?
			 errhint("After the cutover, set each of them by hand with setval() past the largest value in use, or drop it if it is not used.") : 0));
}

/*
 * Read the source's sequences before the fence, those not called from
 * their relations (a query each): under the fence only what changed since
 * is read again (sequences.c).
 */
static void
prefetch_sequences(CutoverRun *run)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(run->cxt);

	run->sequences = sequences_prefetch(run->control);
	MemoryContextSwitchTo(oldcxt);
}

static void
drop_subscription_and_complete(CutoverRun *run)
{
	subscription_drop();
	run->blocked_ms = run->fence_started == 0 ? 0 :
		(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0;
	state_complete(run->final_lsn, run->blocked_ms);
	event_log("completed", "final source position %s, writes blocked for %.1f ms",
			  run->final_lsn, run->blocked_ms);
}

/*
 * After the point of no return: drop the subscription here and record the
 * completion.  The target is independent from here on; the caller is told
 * so and released before the source is cleaned (clean_source).
 */
static void
detach_target(CutoverRun *run)
{
	in_transaction(drop_subscription_and_complete, run);

	SpinLockAcquire(&run->shared->mutex);
	run->shared->succeeded = true;
	SpinLockRelease(&run->shared->mutex);

	ereport(NOTICE,
			(errmsg("cutover complete: writes were blocked on the source for %.1f ms; point the application at this server now",
					run->blocked_ms),
			 errdetail("Final source position %s. The source stays read-only (schema %s holds its write-rejecting triggers); the slot is dropped there next, see zdm.event_log.",
					   run->final_lsn, ZDM_FENCE_SCHEMA),
			 run->fallback_name ?
			 errhint("Writes made here are replicated back to the source. CALL zdm.fallback() moves the application back; CALL zdm.finish() ends the migration and the reverse replication.") : 0));
}

static void
log_source_cleaned(CutoverRun *run)
{
	event_log("source_cleaned", "slot %s and publication %s dropped on the source",
			  run->state.slot_name, ZDM_PUBLICATION);
}

static void
log_source_leftovers(CutoverRun *run)
{
	event_log("source_cleanup_failed",
			  "slot %s or publication %s could not be dropped on the source; drop them by hand",
			  run->state.slot_name, ZDM_PUBLICATION);
}

/*
 * Once the caller is gone: drop the slot (its walsender lets go once the
 * subscription's workers have stopped) and the publication on the source.
 * A failure is logged, not raised: the migration itself is complete.
 */
static void
clean_source(CutoverRun *run)
{
	if (source_drop_slots(run->control, run->state.slot_name, run->subid,
						  DETACH_SOURCE_TIMEOUT_MS) &&
		source_drop_publication(run->control, DETACH_SOURCE_TIMEOUT_MS))
	{
		in_transaction(log_source_cleaned, run);
		return;
	}
	ereport(WARNING,
			(errmsg("the target is detached, but slot %s or publication %s is still on the source",
					run->state.slot_name, ZDM_PUBLICATION),
			 errhint("On the source, run SELECT pg_drop_replication_slot('%s') and DROP PUBLICATION IF EXISTS %s; an unused slot keeps WAL forever.",
					 run->state.slot_name, ZDM_PUBLICATION)));
	in_transaction(log_source_leftovers, run);
}

static bool
source_has_fence_schema(CutoverRun *run)
{
	RemoteResult *res = remote_query(run->control,
									 "SELECT EXISTS (SELECT 1 FROM pg_namespace "
									 "WHERE nspname = '" ZDM_FENCE_SCHEMA "')",
									 0, NULL, "checking the fence");

	return strcmp(remote_value(res, 0, 0), "t") == 0;
}

static void
mark_streaming(CutoverRun *run)
{
	state_set_phase("streaming");
}

/*
 * Commit the fence: the point of no return.  If the commit cannot be
 * confirmed (the connection broke, the source is slow), fence_outcome ends
 * the fence session and then looks whether the commit happened.
 */
static void
commit_fence(CutoverRun *run)
{
	int			fence_pid = PQbackendPID(run->fence);
	FenceOutcome outcome;

	fence_finish_permanent(run->fence);
	if (run->fallback_name != NULL)
		remote_command(run->fence,
					   reverse_start_sql(run->fallback_name, run->reverse_start,
										 run->advance_origin),
					   "starting the reverse replication");

	SpinLockAcquire(&run->shared->mutex);
	run->shared->past_no_return = true;
	SpinLockRelease(&run->shared->mutex);

	if (fence_commit(run->fence, "DROP PUBLICATION " ZDM_PUBLICATION))
		return;
	outcome = fence_outcome(run->state.source_conninfo, fence_pid);
	if (outcome == FENCE_COMMITTED)
		return;
	if (outcome == FENCE_ROLLED_BACK)
	{
		SpinLockAcquire(&run->shared->mutex);
		run->shared->past_no_return = false;
		SpinLockRelease(&run->shared->mutex);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the fence on the source ended before the cutover could commit it"),
				 errdetail("The source session holding the fence was lost (terminated, restarted, or idle longer than zdm.fence_idle_timeout); writes resumed there."),
				 errhint("Run CALL zdm.cutover() again.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not learn whether the fence on the source was committed"),
			 errdetail("The source did not confirm the commit and could not be asked afterwards."),
			 errhint("Run CALL zdm.cutover() again once the source answers: it looks at the source and either finishes the detach or starts over.")));
}

/*
 * Refuse when the publication and the subscription disagree about the
 * tables (see subscription_table_mismatch).  Returns the published tables,
 * which the fence then locks: they are listed once per cutover, before any
 * lock, and fence_verify proves with one small query that the fence holds
 * them all.
 */
static List *
check_same_tables(CutoverRun *run)
{
	List	   *published = fence_published_tables(run->control);
	MemoryContext callercxt = CurrentMemoryContext;
	char	   *mismatch;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	mismatch = subscription_table_mismatch(run->subid, published, callercxt);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(callercxt);

	/* a table created on the source after init would be left behind */
	if (!run->state.ignore_missing)
	{
		List	   *unpublished = source_unpublished_tables(run->control);
		StringInfoData names;
		ListCell   *lc;

		initStringInfo(&names);
		foreach(lc, unpublished)
		{
			if (foreach_current_index(lc) == 10)
			{
				appendStringInfo(&names, " and %d more", list_length(unpublished) - 10);
				break;
			}
			appendStringInfo(&names, "%s%s", names.len > 0 ? ", " : "",
							 (char *) lfirst(lc));
		}
		if (unpublished != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg_plural("publication %s does not list %d table of the source (the source was not locked)",
								   "publication %s does not list %d tables of the source (the source was not locked)",
								   list_length(unpublished),
								   ZDM_PUBLICATION, list_length(unpublished)),
					 errdetail("Tables created on the source after zdm.init are not replicated, and their rows would not reach this target: %s.",
							   names.data),
					 errhint("On the source run ALTER PUBLICATION %s ADD TABLE for each of them (zdm.status() lists the statement), then here ALTER SUBSCRIPTION %s REFRESH PUBLICATION, wait until zdm.status() is ready, and cut over again; or drop them on the source.",
							 ZDM_PUBLICATION, ZDM_SUBSCRIPTION)));
	}
	if (mismatch != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the publication and the subscription do not cover the same tables (the source was not locked)"),
				 errdetail("Tables: %s.", mismatch),
				 errhint("Run ALTER SUBSCRIPTION %s REFRESH PUBLICATION on this target (outside a transaction block), wait until zdm.status() is ready, and cut over again.",
						 ZDM_SUBSCRIPTION)));
	return published;
}

/*
 * The final position of a cutover whose local record of it was lost: any
 * position after the fence committed will do, the source is read-only.
 */
static void
set_final_lsn_from_source(CutoverRun *run)
{
	RemoteResult *res = remote_query(run->control,
									 "SELECT pg_current_wal_lsn()::text",
									 0, NULL, "reading the source's position");

	run->final_lsn = pstrdup(remote_value(res, 0, 0));
}

static void
record_fallback(CutoverRun *run)
{
	state_set_fallback(run->target_dsn, run->fallback_name);
	event_log("fallback_prepared",
			  "publication %s and slot %s here, disabled subscription %s on the source reaching %s",
			  ZDM_PUBLICATION, run->fallback_name, run->fallback_name,
			  dsn_mask(run->target_dsn));
}

static void
forget_fallback(CutoverRun *run)
{
	state_set_fallback(NULL, NULL);
}

/*
 * A cutover without fallback after one with fallback that failed and could
 * not remove its reverse replication: remove it now, before any lock, or a
 * disabled subscription and a slot holding WAL here would stay behind.
 */
static void
remove_leftover_fallback(CutoverRun *run)
{
	char	   *reason = NULL;
	PGconn	   *target = remote_connect_quietly(run->state.fallback_conninfo,
												5000, &reason);

	if (!reverse_remove(run->control, target, run->state.fallback_name,
						REVERSE_UNDO_TIMEOUT_MS))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("could not remove the reverse replication an earlier cutover with fallback left"),
				 errdetail("Subscription %s on the source, or slot %s or publication %s on this target, is still there. The source was not locked.",
						   run->state.fallback_name, run->state.fallback_name, ZDM_PUBLICATION),
				 errhint("Drop them by hand, or CALL zdm.abort(), and try again.")));
	remote_disconnect(target);
	in_transaction(forget_fallback, run);
}

/*
 * Before any lock: create the reverse replication's objects, disabled
 * (reverse.c).  Recorded first, so that whatever happens next knows what
 * to remove.
 */
static void
prepare_fallback(CutoverRun *run)
{
	run->fallback_name = fallback_name();
	run->target = remote_connect_to(run->target_dsn, "target",
									"to set up the fallback");
	remote_keep_across_abort(run->target);
	in_transaction(record_fallback, run);
	run->reverse_prepared = true;
	reverse_prepare(run->control, run->target, run->target_dsn,
					run->fallback_name);
	run->advance_origin =
		strcmp(remote_value(remote_query(run->control,
										 "SELECT has_function_privilege('pg_replication_origin_advance(text, pg_lsn)', 'EXECUTE')",
										 0, NULL, "reading the source role's privileges"), 0, 0), "t") == 0;
	ereport(NOTICE,
			(errmsg("reverse replication prepared: subscription %s on the source, disabled until the cutover commits",
					run->fallback_name)));
}

/*
 * The cutover proper; see the file header.
 */
static void
cutover_steps(CutoverRun *run)
{
	const char *dsn = run->state.source_conninfo;
	RemoteResult *res;
	List	   *tables;

	run->control = remote_connect(dsn, "to cut over");
	remote_keep_across_abort(run->control);
	remote_command(run->control,
				   "SET synchronous_commit = on; SET statement_timeout = 0",
				   "setting up the control session");

	/*
	 * The source, not the local phase, says whether an earlier cutover got
	 * past its point of no return: the local record may be older.
	 */
	if (source_has_fence_schema(run))
	{
		ereport(NOTICE,
				(errmsg("finishing the detach of an interrupted cutover"),
				 errdetail("The source was made read-only for good before the interruption.")));
		SpinLockAcquire(&run->shared->mutex);
		run->shared->past_no_return = true;
		SpinLockRelease(&run->shared->mutex);
		if (run->state.final_lsn)
			run->final_lsn = run->state.final_lsn;
		else
			set_final_lsn_from_source(run);
		detach_target(run);
		return;
	}
	if (strcmp(run->state.phase, "streaming") != 0)
		in_transaction(mark_streaming, run);

	check_subscription_ready(run);
	tables = check_same_tables(run);
	if (run->target_dsn == NULL && run->state.fallback_name != NULL)
		remove_leftover_fallback(run);
	in_transaction(mark_cutover_started, run);
	if (run->target_dsn != NULL)
		prepare_fallback(run);

	come_close(run);
	if (run->fallback_name != NULL)
	{
		/*
		 * Decoding, the slot's advance too, starts at its restart point,
		 * which moves only past a record of the running transactions: log
		 * one, so that the advance under the fence decodes little.
		 */
		XLogFlush(LogStandbySnapshot());
		reverse_skip_applied(run->target, run->fallback_name);
	}
	prefetch_sequences(run);
	run->fence_started = GetCurrentTimestamp();
	fence_acquire(dsn, run->control, tables, &run->fence,
				  (int) Min(TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															run->deadline) + 1000,
							INT_MAX),
				  still_wanted_while_fencing, run);
	/* the triggers are created while the rest goes on */
	fence_make_permanent(run->fence, run->fallback_name);
	fence_verify(run->control, run->fence, list_length(tables));
	ereport(NOTICE,
			(errmsg("writes blocked on the source: %d tables fenced in %.1f ms",
					list_length(tables),
					(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0)));

	res = remote_query(run->control,
					   "SELECT pg_logical_emit_message(true, 'pg_zdm', 'cutover')::text",
					   0, NULL, "capturing the final position");
	run->final_lsn = pstrdup(remote_value(res, 0, 0));
	ereport(NOTICE, (errmsg("final source position %s", run->final_lsn)));

	in_transaction(set_sequences, run);
	wait_for_catchup(run);
	ereport(NOTICE,
			(errmsg("target caught up with %s, %.1f ms after the fence",
					run->final_lsn,
					(double) (GetCurrentTimestamp() - run->fence_started) / 1000.0)));

	if (run->fallback_name != NULL)
	{
		run->reverse_start = reverse_mark_start(run->target, run->fallback_name);
		ereport(NOTICE,
				(errmsg("reverse replication will start at this target's position %s",
						run->reverse_start)));
	}

	check_still_wanted(run, "about to detach");
	in_transaction(mark_detaching, run);
	remote_set_deadline(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													DETACH_SOURCE_TIMEOUT_MS));
	commit_fence(run);
	/* see reverse_start_sql: without the origin, a checkpoint keeps the start */
	if (run->fallback_name != NULL && !run->advance_origin)
		RequestCheckpoint(CHECKPOINT_IMMEDIATE | CHECKPOINT_FORCE | CHECKPOINT_WAIT);
	detach_target(run);
}

/*
 * Cleanup that must also run when the worker is terminated (FATAL): end the
 * fence unless the cutover passed the point of no return.
 */
static void
release_fence_on_failure(int code, Datum arg)
{
	CutoverRun *run = (CutoverRun *) DatumGetPointer(arg);

	/* the cutover's deadline may be what failed: cleanup has its own */
	remote_set_deadline(0);
	if (!run->shared->past_no_return)
	{
		fence_release(run->fence, run->control, run->state.source_conninfo);
		run->fence = NULL;
		if (run->reverse_prepared &&
			reverse_remove(run->control, run->target, run->fallback_name,
						   REVERSE_UNDO_TIMEOUT_MS))
			run->reverse_prepared = false;
		else if (run->reverse_prepared)
			ereport(WARNING,
					(errmsg("could not remove the reverse replication this cutover prepared"),
					 errdetail("Subscription %s on the source, or slot %s or publication %s on this target, may be left.",
							   run->fallback_name, run->fallback_name, ZDM_PUBLICATION),
					 errhint("The next CALL zdm.cutover(fallback => true), or CALL zdm.abort(), removes them.")));
	}
}

/*
 * The cutover steps, with the fence released on any ERROR or FATAL before
 * the point of no return.  A function of its own because the caller's
 * PG_TRY and this one cannot share a scope (-Wshadow=compatible-local).
 */
static void
cutover_steps_or_release(CutoverRun *run)
{
	PG_ENSURE_ERROR_CLEANUP(release_fence_on_failure, PointerGetDatum(run));
	{
		cutover_steps(run);
	}
	PG_END_ENSURE_ERROR_CLEANUP(release_fence_on_failure, PointerGetDatum(run));
}

static const char *failure_message = NULL;

static void
record_failure(CutoverRun *run)
{
	if (!run->shared->past_no_return)
	{
		state_set_phase("streaming");
		/* what could not be removed stays recorded, for abort and the next cutover */
		if (run->fallback_name != NULL && !run->reverse_prepared)
			state_set_fallback(NULL, NULL);
	}
	event_log("cutover_failed", "%s", failure_message);
}

/*
 * worker_run: run steps(arg) and, when it throws, leave every transaction,
 * let record_failure(arg, message) note the failure, and rethrow: the
 * caller gets the error through the message queue.  Shared by the cutover
 * and fallback workers; steps has its own cleanup for the fence.
 */
void
worker_run(void (*steps) (void *), void (*record_failure) (void *, const char *),
		   void *arg, MemoryContext cxt)
{
	PG_TRY();
	{
		steps(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		remote_set_deadline(0);
		record_failure(arg, edata->message);
		ReThrowError(edata);
	}
	PG_END_TRY();
}

/* worker_run's view of the cutover */
static void
run_cutover_steps(void *arg)
{
	cutover_steps_or_release((CutoverRun *) arg);
}

static void
record_cutover_failure(void *arg, const char *message)
{
	failure_message = message;
	in_transaction(record_failure, (CutoverRun *) arg);
}

/*
 * worker_attach: the start of a cutover or fallback worker (main_arg is the
 * DSM handle): signals, the shared state, NOTICEs and ERRORs redirected to
 * the caller's queue, a connection to the caller's database as the
 * caller's user with the caller's zdm.* settings, and the migration lock.
 */
CutoverShared *
worker_attach(Datum main_arg, const char *type, dsm_segment **segp)
{
	dsm_segment *seg;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	CutoverShared *shared;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	CurrentResourceOwner = ResourceOwnerCreate(NULL, type);
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the caller of %s went away before its worker started", type)));
	dsm_pin_mapping(seg);
	*segp = seg;

	shared = dsm_segment_address(seg);
	mq = (shm_mq *) ((char *) shared + MAXALIGN(sizeof(CutoverShared)));
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);
	pq_redirect_to_shm_mq(seg, mqh);

	SpinLockAcquire(&shared->mutex);
	shared->worker_latch = MyLatch;
	SpinLockRelease(&shared->mutex);

	BackgroundWorkerInitializeConnectionByOid(shared->database_id,
											  shared->user_id, 0);
	/* the settings of the session that called us */
	zdm_lock_grace_ms = shared->lock_grace_ms;
	zdm_fence_idle_timeout_ms = shared->fence_idle_timeout_ms;
	zdm_poll_interval_ms = shared->poll_interval_ms;
	/* JIT-compiling the catalog lookups of the sequence step costs ~1 s */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* our state must be durable before either side is made read-only */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(type);

	if (!migration_lock_try())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("a cutover or another pg_zdm command is already running on this database"),
				 errhint("Wait for it to finish; zdm.status() shows its progress.")));
	return shared;
}

/*
 * Entry point of the cutover worker; main_arg is the DSM handle.
 */
void
zdm_cutover_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	CutoverRun	run;

	memset(&run, 0, sizeof(run));
	run.cxt = AllocSetContextCreate(TopMemoryContext, "pg_zdm cutover",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(run.cxt);
	run.shared = worker_attach(main_arg, "pg_zdm cutover", &seg);
	if (run.shared->target_dsn[0] != '\0')
		run.target_dsn = pstrdup(run.shared->target_dsn);

	in_transaction(load_migration, &run);
	run.deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   run.shared->timeout_ms);
	/*
	 * A source that stops answering ends the cutover too, a moment after the
	 * deadline: check_still_wanted reports the timeout itself when the source
	 * is merely slow.
	 */
	remote_set_deadline(TimestampTzPlusMilliseconds(run.deadline, 1000));

	worker_run(run_cutover_steps, record_cutover_failure, &run, run.cxt);

	/*
	 * Release the caller: the target is independent.  Detaching the segment
	 * detaches the message queue (the caller's relay loop ends) and ends the
	 * redirection of our messages to it; run.shared is gone from here on.
	 */
	dsm_detach(seg);
	run.shared = NULL;
	remote_disconnect(run.fence);
	remote_disconnect(run.target);
	clean_source(&run);
	remote_disconnect(run.control);
	migration_lock_release();
}
