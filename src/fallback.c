/*-------------------------------------------------------------------------
 *
 * fallback.c
 *		  CALL zdm.fallback() and CALL zdm.finish(): the way back after a
 *		  cutover with fallback, and the end of a migration.
 *
 * zdm.fallback() refuses what its worker (fallback_worker.c) would refuse,
 * then runs it exactly as zdm.cutover() runs its own (cutover.c's
 * run_worker: messages relayed, a cancelled caller stops the worker).
 *
 * zdm.finish() removes what is left of the migration: the reverse
 * replication after a cutover with fallback (subscription on the source,
 * slot and publication here; also after a fallback that could not remove
 * it, or one interrupted before its point of no return), after a fallback
 * the source's disabled write-rejecting triggers, and the migration row.  It refuses while
 * anything it would remove cannot be reached, so that nothing is left
 * behind unknown.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_fallback);
PG_FUNCTION_INFO_V1(zdm_finish);

/* How long finish waits for each side. */
#define FINISH_TIMEOUT_MS	30000

/*
 * How long finish waits for the migration lock: a cutover's worker keeps it
 * while it drops the slot on the source, after its caller returned.
 */
#define FINISH_LOCK_WAIT_MS	30000

/*
 * CALL zdm.fallback(timeout, sequence_buffer)
 */
Datum
zdm_fallback(PG_FUNCTION_ARGS)
{
	int64		timeout_ms = timeout_argument(fcinfo);
	int64		sequence_buffer = sequence_buffer_argument(fcinfo);
	MigrationState state;

	require_nonatomic(fcinfo, "zdm.fallback",
					  "A transaction block could hold locks that stall the fence on this target.");
	SPI_connect();
	load_migration_to_fall_back(&state);
	SPI_finish();
	if (!migration_lock_try())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("a fallback or another pg_zdm command is already running on this database"),
				 errhint("Wait for it to finish; zdm.status() shows its progress.")));
	migration_lock_release();
	run_worker("zdm_fallback_worker_main", timeout_ms, sequence_buffer, true,
			   NULL);
	PG_RETURN_VOID();
}

/*
 * Connect to one side for finish, or refuse naming what stays there.
 */
static PGconn *
connect_or_refuse(const char *dsn, const char *side, const char *what)
{
	char	   *reason = NULL;
	PGconn	   *conn = remote_try_connect(dsn, &reason);

	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not reach the %s to remove %s", side, what),
				 errdetail_internal("%s", reason),
				 errhint("Nothing was changed; call zdm.finish() again once the %s answers.", side)));
	return conn;
}

/*
 * After a cutover with fallback: remove the reverse replication, the
 * subscription on the source first (it frees the slot here).
 */
static void
finish_reverse(const MigrationState *state)
{
	PGconn	   *source = connect_or_refuse(state->source_conninfo, "source",
										   "the reverse subscription");
	PGconn	   *target = connect_or_refuse(state->fallback_conninfo, "target",
										   "the reverse slot");

	if (!reverse_drop_subscription(source, state->fallback_name, FINISH_TIMEOUT_MS))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("could not drop subscription %s on the source", state->fallback_name),
				 errhint("Call zdm.finish() again; see the source's log.")));
	if (!reverse_drop_target(target, state->fallback_name, FINISH_TIMEOUT_MS))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("could not drop slot %s or publication %s here",
						state->fallback_name, ZDM_PUBLICATION),
				 errdetail("The subscription on the source is gone."),
				 errhint("Call zdm.finish() again.")));
	remote_disconnect(target);
	remote_disconnect(source);
}

/*
 * After a fallback: drop the source's write-rejecting triggers, which the
 * fallback only disabled (dropping them takes an ACCESS EXCLUSIVE lock on
 * every table: with a short lock_timeout, so that the application is held
 * up for at most that long).
 */
static void
finish_source_triggers(const MigrationState *state)
{
	PGconn	   *source = connect_or_refuse(state->source_conninfo, "source",
										   "its disabled triggers");

	if (!remote_command_quietly(source,
								"SET lock_timeout = '200ms'; "
								"DROP SCHEMA IF EXISTS " ZDM_FENCE_SCHEMA " CASCADE",
								0, NULL, FINISH_TIMEOUT_MS))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not drop schema %s on the source", ZDM_FENCE_SCHEMA),
				 errdetail("Its triggers do nothing since the fallback, but dropping them needs a moment without other sessions on each table."),
				 errhint("Call zdm.finish() again in a quieter moment.")));
	remote_disconnect(source);
}

/*
 * A fallback whose worker died (terminated, or this server restarted)
 * before its point of no return leaves phase 'fallback' behind, although
 * its fence went with its session: this target is writable, as after the
 * cutover, when it has no fence schema.  The caller holds the migration
 * lock, so no fallback is running.
 */
static bool
fallback_interrupted_before_no_return(const MigrationState *state)
{
	if (strcmp(state->phase, "fallback") != 0)
		return false;
	if (zdm_spi_execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = '"
						ZDM_FENCE_SCHEMA "'", 0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for schema %s", ZDM_FENCE_SCHEMA);
	return SPI_processed == 0;
}

/*
 * CALL zdm.finish()
 */
Datum
zdm_finish(PG_FUNCTION_ARGS)
{
	MigrationState state;

	require_nonatomic(fcinfo, "zdm.finish",
					  "It commits each removal before the next side is changed.");
	if (!migration_lock_wait(FINISH_LOCK_WAIT_MS))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("another pg_zdm command is running on this database"),
				 errhint("Wait for it to finish.")));
	PG_TRY();
	{
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		if (!state_load(&state))
			ereport(NOTICE, (errmsg("there is no migration to finish")));
		else if (strcmp(state.phase, "completed") != 0 &&
				 strcmp(state.phase, "fallen_back") != 0 &&
				 !fallback_interrupted_before_no_return(&state))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the migration cannot be finished in phase %s", state.phase),
					 strcmp(state.phase, "streaming") == 0 ?
					 errhint("Before the cutover, CALL zdm.abort() stops the migration.") :
					 strncmp(state.phase, "fallback", 8) == 0 ?
					 errhint("CALL zdm.fallback() again completes the interrupted fallback.") :
					 errhint("CALL zdm.cutover() again completes the interrupted cutover.")));
		else
		{
			if (state.fallback_name != NULL)
				finish_reverse(&state);
			if (strcmp(state.phase, "fallen_back") == 0)
				finish_source_triggers(&state);
			event_log("finished", "migration from %s ended after %s",
					  state.source_display,
					  strcmp(state.phase, "fallen_back") == 0 ? "a fallback" :
					  state.fallback_name ? "a cutover with fallback" : "a cutover");
			state_delete();
			ereport(NOTICE,
					(errmsg("migration finished"),
					 strcmp(state.phase, "fallen_back") == 0 ?
					 errdetail("The source is the only writable side; this target stays read-only (DROP SCHEMA %s CASCADE here makes it writable).",
							   ZDM_FENCE_SCHEMA) :
					 errdetail("This target is the only writable side; the source stays read-only (DROP SCHEMA %s CASCADE there makes it writable).",
							   ZDM_FENCE_SCHEMA)));
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		migration_lock_release();
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
