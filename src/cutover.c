/*-------------------------------------------------------------------------
 *
 * cutover.c
 *		  CALL zdm.cutover(): start the cutover worker and relay what it says.
 *
 * The caller checks its arguments and the obvious preconditions, starts the
 * worker of worker.c with a DSM segment holding the shared state and a
 * message queue, and turns each NOTICE the worker sends into a NOTICE of
 * its own as it arrives; the worker's ERROR becomes the caller's ERROR, with
 * its SQLSTATE.  If the caller is cancelled or terminated, a cleanup that
 * also runs at process exit asks the worker to give up, and waits a moment
 * for it to unlock the source.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_cutover);

/* Largest sequence_buffer accepted: beyond it the number is surely a typo. */
#define MAX_SEQUENCE_BUFFER		INT64CONST(1000000000000)

/* Longest timeout accepted. */
#define MAX_TIMEOUT_MS			(INT64CONST(24) * 60 * 60 * 1000)

/* How long a cancelled caller waits for its worker to unlock the source. */
#define WORKER_EXIT_WAIT_MS		10000

typedef struct CutoverCall
{
	dsm_segment *seg;
	CutoverShared *shared;
	BackgroundWorkerHandle *handle;
} CutoverCall;

/*
 * The timeout argument in milliseconds; refuses NULL, zero, negative and
 * more than a day.
 */
int64
timeout_argument(FunctionCallInfo fcinfo)
{
	Interval   *timeout;
	int64		ms;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be null"),
				 errhint("Pass an interval such as '5 min', or leave it out for the default.")));
	timeout = PG_GETARG_INTERVAL_P(0);
	ms = timeout->time / 1000 +
		((int64) timeout->day + (int64) timeout->month * DAYS_PER_MONTH) * SECS_PER_DAY * 1000;
	if (ms <= 0 || ms > MAX_TIMEOUT_MS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be positive and at most one day"),
				 errdetail("The timeout given is %lld ms.", (long long) ms),
				 errhint("Pass an interval such as '5 min'.")));
	return ms;
}

int64
sequence_buffer_argument(FunctionCallInfo fcinfo)
{
	int64		buffer;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("sequence_buffer must not be null"),
				 errhint("Pass a number of values such as 5000, or leave it out for the default.")));
	buffer = PG_GETARG_INT64(1);
	if (buffer < 0 || buffer > MAX_SEQUENCE_BUFFER)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sequence_buffer must be between 0 and %lld",
						(long long) MAX_SEQUENCE_BUFFER),
				 errdetail("The value given is %lld.", (long long) buffer),
				 errhint("The buffer is how many values each sequence is moved past the other side's; the default is 5000.")));
	return buffer;
}

/*
 * load_migration_to_cut_over: read the migration into *state, refusing when
 * there is none or it is complete.  The caller of zdm.cutover and its worker
 * both ask.
 */
void
load_migration_to_cut_over(MigrationState *state)
{
	if (!state_load(state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("there is no migration to cut over"),
				 errhint("Start one with CALL zdm.init(source_dsn).")));
	if (strcmp(state->phase, "fallen_back") == 0 ||
		strncmp(state->phase, "fallback", 8) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration was cut over and is falling or has fallen back"),
				 errhint("CALL zdm.fallback() finishes a fallback; CALL zdm.finish() ends the migration.")));
	if (strcmp(state->phase, "completed") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration is already complete"),
				 errdetail("The cutover completed at %s, final source position %s.",
						   state->completed_at, state->final_lsn),
				 errhint("The target is independent; point the application at it.")));
}

/*
 * refuse_unfinished_copy: the error of a cutover asked for before every
 * table is ready, raised by the caller and by the worker alike.
 */
void
refuse_unfinished_copy(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the initial copy has not finished"),
			 errdetail("Some tables are not ready yet; the source was not locked."),
			 errhint("Wait until SELECT * FROM zdm.status() shows every table ready (zdm.tables() lists them).")));
}

/*
 * Refuse early, with the source untouched, what the worker would refuse,
 * and with fallback what the reverse replication would lack.
 */
static void
check_preconditions(const char *target_dsn)
{
	MigrationState state;

	SPI_connect();
	load_migration_to_cut_over(&state);
	if (zdm_spi_execute("SELECT 1 FROM pg_catalog.pg_subscription s "
					"JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid "
					"WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
					"  AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
					"                   WHERE datname = pg_catalog.current_database()) "
					"  AND r.srsubstate <> 'r'", 0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscription's tables");
	if (SPI_processed > 0)
		refuse_unfinished_copy();
	/* the parallel copy enables the subscription only once it is done */
	if (zdm_spi_execute("SELECT 1 FROM zdm.copy_run WHERE state <> 'done'",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of the copy");
	if (SPI_processed > 0)
		refuse_unfinished_copy();
	if (target_dsn != NULL)
		fallback_refuse(fallback_checks(state.source_conninfo, target_dsn));
	SPI_finish();

	if (!migration_lock_try())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("a cutover or another pg_zdm command is already running on this database"),
				 errhint("Wait for it to finish; zdm.status() shows its progress.")));
	migration_lock_release();
}

/*
 * Ask the worker to give up and wait, briefly, until it has (the source is
 * then writable again).  Runs on ERROR and at process exit; never throws.
 */
static void
stop_worker(int code, Datum arg)
{
	CutoverCall *call = (CutoverCall *) DatumGetPointer(arg);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   WORKER_EXIT_WAIT_MS);
	Latch	   *worker_latch;
	pid_t		pid;

	SpinLockAcquire(&call->shared->mutex);
	call->shared->abort_requested = true;
	worker_latch = call->shared->worker_latch;
	SpinLockRelease(&call->shared->mutex);
	if (worker_latch)
		SetLatch(worker_latch);

	HOLD_INTERRUPTS();
	while (GetBackgroundWorkerPid(call->handle, &pid) != BGWH_STOPPED &&
		   GetCurrentTimestamp() < deadline)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	RESUME_INTERRUPTS();

	/* too late to give up: say so, the error that follows would mislead */
	if ((call->shared->succeeded || call->shared->past_no_return) &&
		!call->shared->fallback)
		ereport(WARNING,
				(errmsg("the cutover %s although this call ends with an error",
						call->shared->succeeded ? "completed" : "had passed its point of no return"),
				 errdetail("The source is read-only for good; the worker %s the target.",
						   call->shared->succeeded ? "detached" : "is detaching"),
				 errhint("See SELECT * FROM zdm.status(); if it is not complete, CALL zdm.cutover() again finishes it.")));
	else if (call->shared->succeeded || call->shared->past_no_return)
		ereport(WARNING,
				(errmsg("the fallback %s although this call ends with an error",
						call->shared->succeeded ? "completed" : "had passed its point of no return"),
				 call->shared->succeeded ?
				 errdetail("This target is read-only for good; the source is writable.") :
				 errdetail("This target is read-only for good; the source rejects writes until the fallback is finished."),
				 errhint("See SELECT * FROM zdm.status(); if it is not complete, CALL zdm.fallback() again finishes it.")));
}

/*
 * Turn one message of the worker into ours: a NOTICE is re-emitted, an
 * ERROR raised.
 */
static void
relay_message(char *data, Size nbytes)
{
	StringInfoData msg;
	ErrorData	edata;
	char		msgtype;

	initStringInfo(&msg);
	appendBinaryStringInfo(&msg, data, nbytes);
	msgtype = pq_getmsgbyte(&msg);
	if (msgtype != 'E' && msgtype != 'N')
		return;
	pq_parse_errornotice(&msg, &edata);
	edata.elevel = Min(edata.elevel, ERROR);
	ThrowErrorData(&edata);
}

/*
 * Wait for the worker's messages until it detaches from the queue.
 */
static void
relay_until_done(shm_mq_handle *mqh)
{
	for (;;)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res;

		CHECK_FOR_INTERRUPTS();
		res = shm_mq_receive(mqh, &nbytes, &data, true);
		if (res == SHM_MQ_SUCCESS)
			relay_message(data, nbytes);
		else if (res == SHM_MQ_DETACHED)
			return;
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, 0,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/*
 * run_worker: start function_name (zdm_cutover_worker_main or
 * zdm_fallback_worker_main) in a background worker with a DSM segment
 * holding the shared state and the message queue, relay its messages until
 * it detaches, and raise an error unless it succeeded.  A caller that is
 * cancelled or terminated asks the worker to give up (stop_worker).
 */
void
run_worker(const char *function_name, int64 timeout_ms, int64 sequence_buffer,
		   bool fallback, const char *target_dsn)
{
	const char *what = fallback ? "fallback" : "cutover";
	BackgroundWorker worker;
	CutoverCall call;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	pid_t		pid;

	call.seg = dsm_create(MAXALIGN(sizeof(CutoverShared)) + CUTOVER_QUEUE_SIZE, 0);
	call.shared = dsm_segment_address(call.seg);
	memset(call.shared, 0, sizeof(CutoverShared));
	SpinLockInit(&call.shared->mutex);
	call.shared->fallback = fallback;
	call.shared->database_id = MyDatabaseId;
	call.shared->user_id = GetUserId();
	call.shared->timeout_ms = timeout_ms;
	call.shared->sequence_buffer = sequence_buffer;
	call.shared->lock_grace_ms = zdm_lock_grace_ms;
	call.shared->fence_idle_timeout_ms = zdm_fence_idle_timeout_ms;
	call.shared->poll_interval_ms = zdm_poll_interval_ms;
	if (target_dsn != NULL)
		strlcpy(call.shared->target_dsn, target_dsn, ZDM_DSN_MAX);
	mq = shm_mq_create((char *) call.shared + MAXALIGN(sizeof(CutoverShared)),
					   CUTOVER_QUEUE_SIZE);
	shm_mq_set_receiver(mq, MyProc);
	mqh = shm_mq_attach(mq, call.seg, NULL);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_zdm");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function_name);
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_zdm %s", what);
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_zdm %s", what);
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(call.seg));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &call.handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the %s worker", what),
				 errdetail("Every background worker slot of this server is in use; nothing was locked."),
				 errhint("Raise max_worker_processes (needs a restart), or retry once parallel queries have finished.")));

	PG_ENSURE_ERROR_CLEANUP(stop_worker, PointerGetDatum(&call));
	{
		if (WaitForBackgroundWorkerStartup(call.handle, &pid) != BGWH_STARTED)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("the %s worker did not start", what),
					 errdetail("Nothing was locked."),
					 errhint("See the server log.")));
		shm_mq_set_handle(mqh, call.handle);
		relay_until_done(mqh);
	}
	PG_END_ENSURE_ERROR_CLEANUP(stop_worker, PointerGetDatum(&call));

	/* the worker goes on to clean up the other side; no need to wait */
	if (!call.shared->succeeded)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the %s worker ended without completing the %s", what, what),
				 errhint("See the server log and SELECT * FROM zdm.status().")));
	dsm_detach(call.seg);
}

/*
 * CALL zdm.cutover(timeout, sequence_buffer, fallback, target_dsn)
 */
Datum
zdm_cutover(PG_FUNCTION_ARGS)
{
	int64		timeout_ms = timeout_argument(fcinfo);
	int64		sequence_buffer = sequence_buffer_argument(fcinfo);
	bool		fallback;
	char	   *target_dsn = NULL;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fallback must not be null"),
				 errhint("Pass true or false, or leave it out for the default.")));
	fallback = PG_GETARG_BOOL(2);
	if (!fallback && !PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("target_dsn is used only with fallback => true"),
				 errhint("Leave target_dsn out, or pass fallback => true as well.")));

	/*
	 * A caller inside a transaction block could hold locks that stall the
	 * apply worker, and so keep writes fenced until the timeout.
	 */
	require_nonatomic(fcinfo, "zdm.cutover",
					  "A transaction block could hold locks that stall the apply worker while writes are fenced on the source.");
	if (fallback)
	{
		MigrationState state;
		bool		found = state_load(&state);

		target_dsn = fallback_target_dsn(PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3),
										 found ? state.source_conninfo : NULL);
	}
	if (target_dsn != NULL && strlen(target_dsn) >= ZDM_DSN_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("target_dsn is longer than %d bytes", ZDM_DSN_MAX - 1)));
	check_preconditions(target_dsn);
	run_worker("zdm_cutover_worker_main", timeout_ms, sequence_buffer, false,
			   target_dsn);
	PG_RETURN_VOID();
}
