/*-------------------------------------------------------------------------
 *
 * init.c
 *		  zdm.check and CALL zdm.init: preflight checks, then publication and
 *		  slot on the source and subscription here.
 *
 * The slot is created while this session holds no transaction id: creating
 * a logical slot waits for every transaction of the source cluster that
 * holds one, and when source and target share a cluster, ours would be
 * among them (a deadlock nobody can see).  If init fails or is cancelled or
 * terminated at any point, whatever it created on the source is removed
 * again; what it created here goes with the aborted transaction.
 *
 * With copy_method 'parallel' the slot is created through a replication
 * connection that exports its snapshot, and the copy is planned and its
 * workers started (copy.c) before init commits; a failure before the commit
 * also sends the waiting workers away.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_check);
PG_FUNCTION_INFO_V1(zdm_init);

/* How long the cleanup of a failed init may take on the source. */
#define CLEANUP_TIMEOUT_MS	10000

/* What a running init has made on the source, for its cleanup. */
typedef struct InitProgress
{
	const char *dsn;
	const char *slot_name;
	bool		publication_created;
	bool		slot_requested;	/* slot creation sent (may be in flight) */
	int			remote_pid;		/* the source backend creating the slot */
	CopyLaunch *launch;			/* parallel copy workers waiting to start */
} InitProgress;

/*
 * A boolean argument that must not be NULL.
 */
static bool
bool_argument(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name),
				 errhint("Pass true or false, or leave it out for the default.")));
	return PG_GETARG_BOOL(argno);
}

/*
 * The source DSN argument, validated (NULL, empty, malformed: ERROR).
 */
static char *
dsn_argument(FunctionCallInfo fcinfo)
{
	return dsn_validate(PG_ARGISNULL(0) ? NULL :
						text_to_cstring(PG_GETARG_TEXT_PP(0)), "source");
}

static int	copy_jobs_argument(FunctionCallInfo fcinfo, bool defer_copy);

/*
 * zdm.check(source_dsn, ignore_missing, defer_copy, copy_method, copy_jobs):
 * every check as a row.  A source that cannot be reached is a failed
 * 'connection' row, not an error.
 */
Datum
zdm_check(PG_FUNCTION_ARGS)
{
	char	   *dsn = dsn_argument(fcinfo);
	bool		ignore_missing = bool_argument(fcinfo, 1, "ignore_missing");
	bool		defer_copy = bool_argument(fcinfo, 2, "defer_copy");
	int			copy_jobs = copy_jobs_argument(fcinfo, defer_copy);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *checks = NIL;
	List	   *published;
	bool		explicit_list;
	char	   *reason = NULL;
	PGconn	   *conn;

	InitMaterializedSRF(fcinfo, 0);

	conn = remote_try_connect(dsn, &reason);
	{
		CheckResult *c = palloc0(sizeof(CheckResult));

		c->name = "connection";
		c->ok = conn != NULL;
		c->blocking = true;
		c->detail = conn ? psprintf("Connected to %s.", dsn_mask(dsn)) : reason;
		c->hint = conn ? NULL :
			pstrdup("Check the host, port, database name, user and password of the connection string, and the source's pg_hba.conf.");
		checks = lappend(checks, c);
	}
	if (conn != NULL)
	{
		checks = list_concat(checks, run_checks(conn, ignore_missing,
												defer_copy, &published,
												&explicit_list));
		if (copy_jobs > 0 && PQserverVersion(conn) >= ZDM_MIN_SOURCE_VERSION_NUM)
			checks = list_concat(checks, copy_checks(conn, copy_jobs));
		remote_disconnect(conn);
	}

	check_put_rows(rsinfo, checks);
	return (Datum) 0;
}

/*
 * Remove from the source what a failed init made there.  Runs on ERROR and
 * on process exit (pg_terminate_backend), so it must not throw: it uses a
 * fresh connection, bounded waits, and only warns about what it could not
 * remove.  A slot creation still in flight is stopped by terminating the
 * source backend running it; a creation that completed is dropped.
 */
static void
init_cleanup(int code, Datum arg)
{
	InitProgress *progress = (InitProgress *) DatumGetPointer(arg);
	char	   *reason = NULL;
	PGconn	   *conn;
	bool		slot_dropped = true;
	bool		publication_dropped = true;

	copy_cancel(progress->launch);
	progress->launch = NULL;
	if (!progress->publication_created && !progress->slot_requested)
		return;

	conn = remote_connect_quietly(progress->dsn, CLEANUP_TIMEOUT_MS, &reason);
	if (conn != NULL)
	{
		if (progress->slot_requested)
		{
			(void) source_end_session(conn, progress->remote_pid, 5000);
			slot_dropped = source_drop_slots(conn, progress->slot_name,
											 InvalidOid, CLEANUP_TIMEOUT_MS);
		}
		if (progress->publication_created)
			publication_dropped = source_drop_publication(conn, CLEANUP_TIMEOUT_MS);
		remote_disconnect(conn);
	}
	else
		slot_dropped = publication_dropped = false;

	if (!slot_dropped || !publication_dropped)
		ereport(WARNING,
				(errmsg("zdm.init failed and could not remove everything it created on the source"),
				 !slot_dropped && !publication_dropped ?
				 errdetail("Replication slot %s and publication %s are left on the source.",
						   progress->slot_name, ZDM_PUBLICATION) :
				 !slot_dropped ?
				 errdetail("Replication slot %s is left on the source.",
						   progress->slot_name) :
				 errdetail("Publication %s is left on the source.", ZDM_PUBLICATION),
				 errhint("On the source, run SELECT pg_drop_replication_slot('%s') and DROP PUBLICATION %s.",
						 progress->slot_name, ZDM_PUBLICATION)));
}

/*
 * CREATE PUBLICATION zdm_pub for all tables, or for a list of tables: those
 * present on both sides with ignore_missing, all of them with defer_copy
 * (starting the copy later means dropping the tables from the publication
 * and adding them again, which FOR ALL TABLES does not allow) or when the
 * source role is not a superuser (FOR ALL TABLES needs one; a list needs
 * the tables' owner, which the publication_privilege check made sure of).
 */
static void
create_publication(PGconn *conn, bool explicit_list, List *published)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "CREATE PUBLICATION " ZDM_PUBLICATION);
	if (!explicit_list)
		appendStringInfoString(&sql, " FOR ALL TABLES");
	else if (published != NIL)
	{
		appendStringInfoString(&sql, " FOR TABLE ");
		foreach(lc, published)
		{
			if (lc != list_head(published))
				appendStringInfoString(&sql, ", ");
			appendStringInfoString(&sql, (char *) lfirst(lc));
		}
	}
	remote_command(conn, sql.data, "creating the publication");
}

/*
 * Raise the error of the first blocking check that failed, if any.
 */
static void
refuse_on_failed_checks(List *checks)
{
	ListCell   *lc;

	foreach(lc, checks)
	{
		CheckResult *c = lfirst(lc);

		if (c->blocking && !c->ok)
			ereport(ERROR,
					(errcode(c->sqlstate),
					 errmsg("source is not ready for migration: check \"%s\" failed", c->name),
					 errdetail_internal("%s", c->detail),
					 c->hint ? errhint("%s", c->hint) : 0));
	}
}

/*
 * Refuse when this database already has a migration.
 */
static void
refuse_existing_migration(void)
{
	MigrationState state;

	if (state_load(&state))
	{
		if (strcmp(state.phase, "completed") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("this database has already been migrated"),
					 errdetail("The cutover from %s completed at %s.",
							   state.source_display, state.completed_at),
					 errhint("To migrate again, DROP EXTENSION pg_zdm and create it anew.")));
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("a migration already exists on this database"),
				 errdetail("It replicates from %s and is in phase %s.",
						   state.source_display, state.phase),
				 errhint("See SELECT * FROM zdm.status(); run CALL zdm.abort() to start over.")));
	}
	if (OidIsValid(subscription_oid()))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("subscription \"%s\" already exists", ZDM_SUBSCRIPTION),
				 errhint("Drop it, or run CALL zdm.abort(), before zdm.init.")));
}

/*
 * The parallel copy's part of init, once the publication exists and no
 * local transaction id is held: the slot through a replication connection,
 * exporting its snapshot; the copy planned (copy.c); the subscription,
 * disabled until the copy is done; the copy workers started, each with the
 * snapshot imported.  Then everything is committed, the workers are let go
 * and the replication connection (whose snapshot they hold now) is closed.
 */
static void
create_migration_parallel(PGconn *conn, InitProgress *progress,
						  bool ignore_missing, List *published, int copy_jobs)
{
	PGconn	   *repl;
	RemoteResult *slot;
	char	   *consistent_lsn;
	char	   *snapshot;
	int			ntables;

	repl = remote_connect_replication(progress->dsn, "to create the replication slot");
	progress->remote_pid = PQbackendPID(repl);
	progress->slot_requested = true;
	remote_send(repl,
				psprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput EXPORT_SNAPSHOT",
						 quote_identifier(progress->slot_name)),
				"creating the replication slot");
	slot = remote_receive(repl, "creating the replication slot");
	if (slot->ntuples != 1 || slot->nfields < 3 || remote_value(slot, 0, 2) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the source did not export a snapshot when it created the replication slot")));
	consistent_lsn = pstrdup(remote_value(slot, 0, 1));
	snapshot = pstrdup(remote_value(slot, 0, 2));

	ntables = copy_plan(conn, copy_jobs, consistent_lsn);
	subscription_create(progress->dsn, progress->slot_name, false, false);
	state_insert(progress->dsn, progress->slot_name, ignore_missing, false);
	event_log("init", "source %s, publication %s, slot %s, %s, parallel initial copy of %d tables by %d workers from %s",
			  dsn_mask(progress->dsn), ZDM_PUBLICATION, progress->slot_name,
			  ignore_missing ? psprintf("%d tables present on the target", list_length(published)) :
			  "all tables", ntables, copy_jobs, consistent_lsn);

	copy_launch(progress->dsn, snapshot, copy_jobs, &progress->launch);
	SPI_commit();
	SPI_start_transaction();
	/* committed: from here on zdm.abort() undoes it, not init's cleanup */
	progress->publication_created = false;
	progress->slot_requested = false;
	copy_go(progress->launch);
	progress->launch = NULL;
	remote_disconnect(repl);
}

/*
 * The steps of init after the checks passed; progress records what exists.
 */
static void
create_migration(PGconn *conn, InitProgress *progress, bool ignore_missing,
				 bool defer_copy, List *published, bool explicit_list,
				 int copy_jobs)
{
	const char *params[1] = {progress->slot_name};

	create_publication(conn, explicit_list, published);
	progress->publication_created = true;

	/* No transaction id of ours may be open while the source creates slots. */
	if (TransactionIdIsValid(GetTopTransactionIdIfAny()))
	{
		SPI_commit();
		SPI_start_transaction();
	}
	if (copy_jobs > 0)
	{
		create_migration_parallel(conn, progress, ignore_missing, published,
								  copy_jobs);
		return;
	}
	progress->remote_pid = PQbackendPID(conn);
	progress->slot_requested = true;
	(void) remote_query(conn,
						"SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
						1, params, "creating the replication slot");

	subscription_create(progress->dsn, progress->slot_name, !defer_copy, true);
	state_insert(progress->dsn, progress->slot_name, ignore_missing, defer_copy);
	event_log("init", "source %s, publication %s, slot %s, %s%s",
			  dsn_mask(progress->dsn), ZDM_PUBLICATION, progress->slot_name,
			  ignore_missing ? psprintf("%d tables present on the target", list_length(published)) :
			  explicit_list ? psprintf("a list of %d tables", list_length(published)) :
			  "all tables",
			  defer_copy ? ", initial copy deferred" : ", initial copy started");
}

/*
 * create_migration, with what it made on the source dropped again on any
 * ERROR or FATAL.  A function of its own because zdm_init's PG_TRY and this
 * one cannot share a scope (-Wshadow=compatible-local).
 */
static void
create_migration_or_undo(PGconn *conn, InitProgress *progress,
						 bool ignore_missing, bool defer_copy, List *published,
						 bool explicit_list, int copy_jobs)
{
	PG_ENSURE_ERROR_CLEANUP(init_cleanup, PointerGetDatum(progress));
	{
		create_migration(conn, progress, ignore_missing, defer_copy, published,
						 explicit_list, copy_jobs);
	}
	PG_END_ENSURE_ERROR_CLEANUP(init_cleanup, PointerGetDatum(progress));
}

/*
 * The copy_method and copy_jobs arguments as the number of parallel copy
 * workers: 0 for the native copy (table synchronization).
 */
static pg_noinline int
copy_jobs_argument(FunctionCallInfo fcinfo, bool defer_copy)
{
	char	   *method;
	int			jobs;

	if (PG_NARGS() < 5)
		return 0;
	if (PG_ARGISNULL(3) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("copy_method and copy_jobs must not be null"),
				 errhint("Leave them out for the defaults.")));
	method = text_to_cstring(PG_GETARG_TEXT_PP(3));
	jobs = PG_GETARG_INT32(4);
	if (strcmp(method, "native") == 0)
		return 0;
	if (strcmp(method, "parallel") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown copy_method \"%s\"", method),
				 errhint("Pass 'native' (PostgreSQL's table synchronization) or 'parallel'.")));
	if (defer_copy)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("copy_method 'parallel' cannot be combined with defer_copy"),
				 errdetail("defer_copy skips the initial copy altogether."),
				 errhint("Leave out copy_method, or defer_copy.")));
	if (jobs < 1 || jobs > ZDM_COPY_MAX_JOBS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("copy_jobs must be between 1 and %d", ZDM_COPY_MAX_JOBS),
				 errdetail("The value given is %d.", jobs)));
	return jobs;
}

/*
 * CALL zdm.init(source_dsn, ignore_missing, defer_copy, copy_method, copy_jobs)
 */
Datum
zdm_init(PG_FUNCTION_ARGS)
{
	char	   *dsn = dsn_argument(fcinfo);
	bool		ignore_missing = bool_argument(fcinfo, 1, "ignore_missing");
	bool		defer_copy = bool_argument(fcinfo, 2, "defer_copy");
	int			copy_jobs = copy_jobs_argument(fcinfo, defer_copy);
	InitProgress progress;
	List	   *checks;
	List	   *published = NIL;
	bool		explicit_list = true;
	PGconn	   *conn;

	require_nonatomic(fcinfo, "zdm.init",
					  "It commits its work step by step, and must hold no transaction id while the source creates replication slots.");
	if (!migration_lock_try())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("another pg_zdm command is running on this database"),
				 errhint("Wait for it to finish; zdm.status() shows the migration.")));

	memset(&progress, 0, sizeof(progress));
	progress.dsn = dsn;
	progress.slot_name = target_slot_name();

	PG_TRY();
	{
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		refuse_existing_migration();

		conn = remote_connect(dsn, "to check it");
		checks = run_checks(conn, ignore_missing, defer_copy, &published,
							&explicit_list);
		if (copy_jobs > 0)
			checks = list_concat(checks, copy_checks(conn, copy_jobs));
		refuse_on_failed_checks(checks);

		create_migration_or_undo(conn, &progress, ignore_missing, defer_copy,
								 published, explicit_list, copy_jobs);

		remote_disconnect(conn);
		SPI_finish();
	}
	PG_FINALLY();
	{
		migration_lock_release();
	}
	PG_END_TRY();

	ereport(NOTICE,
			(errmsg("migration started: publication %s and a replication slot on the source, subscription %s here",
					ZDM_PUBLICATION, ZDM_SUBSCRIPTION),
			 copy_jobs > 0 ?
			 errhint("The parallel initial copy runs in %d background workers; CALL zdm.wait_ready() waits for it and for the catch-up, SELECT * FROM zdm.tables() shows each table.", copy_jobs) :
			 defer_copy ?
			 errhint("The initial copy is deferred: only changes from now on are replicated; the README shows how to copy the existing rows later.") :
			 errhint("Follow the copy with SELECT * FROM zdm.status(); cut over with CALL zdm.cutover() once it is ready.")));
	PG_RETURN_VOID();
}
