/*-------------------------------------------------------------------------
 *
 * state.c
 *		  The migration's state on the target: the zdm.migration row, the
 *		  zdm.event_log, and the lock that lets one zdm command at a time
 *		  change them.
 *
 * The state lives in tables rather than shared memory because it must
 * survive a restart of the target: after a crash nothing of ours runs until
 * a DBA calls zdm.status(), which reads it.  All access goes through SPI;
 * callers are inside a transaction, and each function connects to SPI
 * itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/* Advisory lock key of the migration lock: ('zdm', 1) in this database. */
#define ZDM_LOCK_KEY1	0x7A646D
#define ZDM_LOCK_KEY2	1

/*
 * zdm_spi_execute: SPI_execute_with_args with search_path = pg_catalog,
 * pg_temp for the duration of the statement, so that no function or
 * operator a user created elsewhere can stand in for a catalog one in our
 * queries.  Procedures cannot pin search_path with a SET clause (it would
 * forbid their commits), so every statement pins it for itself.
 */
int
zdm_spi_execute(const char *sql, int nargs, Oid *types, Datum *values,
				const char *nulls, bool read_only, long count)
{
	int			level = NewGUCNestLevel();
	int			rc;

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only,
							   count);
	AtEOXact_GUC(true, level);
	return rc;
}

/*
 * Run fn(arg) as the owner of zdm.migration, as a SECURITY DEFINER function
 * would: zdm.status() may be granted to a monitoring role that must not read
 * the table (it holds the source password) but needs what it says.
 */
void
as_state_owner(void (*fn) (void *arg), void *arg)
{
	Oid			relid = RangeVarGetRelid(makeRangeVar("zdm", "migration", -1),
										 NoLock, false);
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		fn(arg);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
}

static char *
spi_text(HeapTuple tuple, TupleDesc desc, int col)
{
	return SPI_getvalue(tuple, desc, col);
}

static bool
spi_bool(HeapTuple tuple, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

typedef struct StateRead
{
	MigrationState *state;
	MemoryContext cxt;
	bool		found;
} StateRead;

static void
read_state(void *arg)
{
	StateRead  *read = (StateRead *) arg;
	MigrationState *state = read->state;

	SPI_connect();
	if (zdm_spi_execute("SELECT source_conninfo, source_display, publication_name, "
						"slot_name, subscription_name, ignore_missing, defer_copy, "
						"phase, final_lsn, completed_at, fallback_conninfo, "
						"fallback_name, fallback_lsn "
						"FROM zdm.migration", 0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read zdm.migration");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext oldcxt = MemoryContextSwitchTo(read->cxt);

		state->source_conninfo = spi_text(tup, desc, 1);
		state->source_display = spi_text(tup, desc, 2);
		state->publication_name = spi_text(tup, desc, 3);
		state->slot_name = spi_text(tup, desc, 4);
		state->subscription_name = spi_text(tup, desc, 5);
		state->ignore_missing = spi_bool(tup, desc, 6);
		state->defer_copy = spi_bool(tup, desc, 7);
		state->phase = spi_text(tup, desc, 8);
		state->final_lsn = spi_text(tup, desc, 9);
		state->completed_at = spi_text(tup, desc, 10);
		state->fallback_conninfo = spi_text(tup, desc, 11);
		state->fallback_name = spi_text(tup, desc, 12);
		state->fallback_lsn = spi_text(tup, desc, 13);
		MemoryContextSwitchTo(oldcxt);
		read->found = true;
	}
	SPI_finish();
}

/*
 * state_load: read the migration row into *state (palloc'd in the caller's
 * context), as the table's owner.  Returns false when there is no migration.
 */
bool
state_load(MigrationState *state)
{
	StateRead	read;

	read.state = state;
	read.cxt = CurrentMemoryContext;
	read.found = false;
	as_state_owner(read_state, &read);
	return read.found;
}

static void
spi_exec_params(const char *sql, int nargs, Oid *types, Datum *values,
				const char *nulls, int expected)
{
	int			rc;

	SPI_connect();
	rc = zdm_spi_execute(sql, nargs, types, values, nulls, false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

/*
 * state_insert: record a new migration in phase 'streaming'.
 */
void
state_insert(const char *conninfo, const char *slot_name,
			 bool ignore_missing, bool defer_copy)
{
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, BOOLOID};
	Datum		values[5];

	values[0] = CStringGetTextDatum(conninfo);
	values[1] = CStringGetTextDatum(dsn_mask(conninfo));
	values[2] = CStringGetTextDatum(slot_name);
	values[3] = BoolGetDatum(ignore_missing);
	values[4] = BoolGetDatum(defer_copy);
	spi_exec_params("INSERT INTO zdm.migration (source_conninfo, source_display, "
					"publication_name, slot_name, subscription_name, "
					"ignore_missing, defer_copy, phase) "
					"VALUES ($1, $2, '" ZDM_PUBLICATION "', $3, '" ZDM_SUBSCRIPTION "', "
					"$4, $5, 'streaming')",
					5, types, values, NULL, SPI_OK_INSERT);
}

/*
 * state_set_phase: move the migration to another phase; entering 'cutover'
 * stamps cutover_started_at.
 */
void
state_set_phase(const char *phase)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(phase);
	spi_exec_params("UPDATE zdm.migration SET phase = $1, "
					"cutover_started_at = CASE WHEN $1 = 'cutover' "
					"THEN pg_catalog.now() ELSE cutover_started_at END",
					1, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * state_begin_detach: the fence is about to commit; remember the final
 * position so that an interrupted detach can be finished.
 */
void
state_begin_detach(const char *final_lsn)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(final_lsn);
	spi_exec_params("UPDATE zdm.migration SET phase = 'detaching', "
					"final_lsn = $1::pg_catalog.pg_lsn",
					1, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * state_complete: the migration is done; keep its final position and how
 * long writes were blocked.
 */
void
state_complete(const char *final_lsn, double writes_blocked_ms)
{
	Oid			types[2] = {TEXTOID, FLOAT8OID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(final_lsn);
	values[1] = Float8GetDatum(writes_blocked_ms);
	spi_exec_params("UPDATE zdm.migration SET phase = 'completed', "
					"completed_at = pg_catalog.now(), "
					"final_lsn = $1::pg_catalog.pg_lsn, writes_blocked_ms = $2",
					2, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * state_set_fallback: the reverse replication of a cutover with fallback is
 * being prepared (conninfo and name set) or was removed again (NULL).
 * Recorded before anything is created, so that every later step, and
 * zdm.finish(), knows what to remove.
 */
void
state_set_fallback(const char *conninfo, const char *name)
{
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	if (conninfo != NULL)
	{
		values[0] = CStringGetTextDatum(conninfo);
		values[1] = CStringGetTextDatum(dsn_mask(conninfo));
		values[2] = CStringGetTextDatum(name);
	}
	else
		nulls[0] = nulls[1] = nulls[2] = 'n';
	spi_exec_params("UPDATE zdm.migration SET fallback_conninfo = $1, "
					"fallback_display = $2, fallback_name = $3::pg_catalog.name",
					3, types, values, nulls, SPI_OK_UPDATE);
}

/*
 * state_begin_fallback_detach: this target's fence is about to commit;
 * remember its final position.
 */
void
state_begin_fallback_detach(const char *final_lsn)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(final_lsn);
	spi_exec_params("UPDATE zdm.migration SET phase = 'fallback_detaching', "
					"fallback_lsn = $1::pg_catalog.pg_lsn",
					1, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * state_fallen_back: the source is writable again and this target
 * read-only; keep how long writes were blocked here.
 */
void
state_fallen_back(double writes_blocked_ms)
{
	Oid			types[1] = {FLOAT8OID};
	Datum		values[1];

	values[0] = Float8GetDatum(writes_blocked_ms);
	spi_exec_params("UPDATE zdm.migration SET phase = 'fallen_back', "
					"fallback_at = pg_catalog.now(), fallback_blocked_ms = $1",
					1, types, values, NULL, SPI_OK_UPDATE);
}

void
state_delete(void)
{
	spi_exec_params("DELETE FROM zdm.migration", 0, NULL, NULL, NULL,
					SPI_OK_DELETE);
}

/*
 * event_log: append an event.  The detail must never hold a password:
 * callers pass masked connection strings only.
 */
void
event_log(const char *event, const char *fmt,...)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	StringInfoData buf;

	initStringInfo(&buf);
	if (fmt != NULL)
	{
		for (;;)
		{
			va_list		args;
			int			needed;

			va_start(args, fmt);
			needed = appendStringInfoVA(&buf, fmt, args);
			va_end(args);
			if (needed == 0)
				break;
			enlargeStringInfo(&buf, needed);
		}
	}
	values[0] = CStringGetTextDatum(event);
	values[1] = CStringGetTextDatum(buf.data);
	if (fmt == NULL)
		nulls[1] = 'n';
	spi_exec_params("INSERT INTO zdm.event_log (event, detail) VALUES ($1, $2)",
					2, types, values, nulls, SPI_OK_INSERT);
}

/*
 * migration_lock_try: take the session-level lock that init, the cutover
 * worker and abort hold while they change the migration, without waiting.
 * Session-level because init and abort commit midway; the holder releases it
 * with migration_lock_release, and process exit releases it too.
 */
bool
migration_lock_try(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, ZDM_LOCK_KEY1, ZDM_LOCK_KEY2, 2);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * migration_lock_wait: migration_lock_try, retried for up to wait_ms (for
 * a worker finishing its cleanup); interruptible.
 */
bool
migration_lock_wait(int wait_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   wait_ms);

	while (!migration_lock_try())
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	return true;
}

/*
 * migration_lock_held_elsewhere: does another process hold the migration
 * lock (a cutover worker, an init, an abort)?  Does not take it.
 */
bool
migration_lock_held_elsewhere(void)
{
	LOCKTAG		tag;
	LockData   *data = GetLockStatusData();
	bool		held = false;
	int			i;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, ZDM_LOCK_KEY1, ZDM_LOCK_KEY2, 2);
	for (i = 0; i < data->nelements; i++)
	{
		LockInstanceData *lock = &data->locks[i];

		if (lock->locktag.locktag_type == tag.locktag_type &&
			lock->locktag.locktag_field1 == tag.locktag_field1 &&
			lock->locktag.locktag_field2 == tag.locktag_field2 &&
			lock->locktag.locktag_field3 == tag.locktag_field3 &&
			lock->locktag.locktag_field4 == tag.locktag_field4 &&
			lock->holdMask != 0 && lock->pid != MyProcPid)
			held = true;
	}
	return held;
}

void
migration_lock_release(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, ZDM_LOCK_KEY1, ZDM_LOCK_KEY2, 2);
	LockRelease(&tag, ExclusiveLock, true);
}

/*
 * require_nonatomic: refuse a procedure call that cannot commit (CALL inside
 * an explicit transaction block, or from a function); why is the detail, a
 * full sentence.
 */
void
require_nonatomic(FunctionCallInfo fcinfo, const char *procname,
				  const char *why)
{
	if (!(fcinfo->context && IsA(fcinfo->context, CallContext) &&
		  !castNode(CallContext, fcinfo->context)->atomic))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s cannot run inside a transaction block", procname),
				 errdetail_internal("%s", why),
				 errhint("Run CALL %s(...) on its own, outside BEGIN ... COMMIT and not from a function.", procname)));
}

/*
 * target_slot_name: the source slot name for this target database.  The
 * target's system identifier and database OID make it unique, so several
 * targets can migrate from one source cluster.
 */
char *
target_slot_name(void)
{
	return psprintf("zdm_" UINT64_FORMAT "_%u", GetSystemIdentifier(), MyDatabaseId);
}

/*
 * fallback_name: the name of the reverse subscription on the source and of
 * its slot here; unique per target database like target_slot_name, so that
 * two targets of one source can both keep a way back.
 */
char *
fallback_name(void)
{
	return psprintf("zdm_fallback_" UINT64_FORMAT "_%u", GetSystemIdentifier(),
					MyDatabaseId);
}
