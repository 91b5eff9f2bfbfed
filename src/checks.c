/*-------------------------------------------------------------------------
 *
 * checks.c
 *		  The preflight checks: is the source fit to be migrated to this
 *		  target?  zdm.check shows them all; zdm.init refuses on the first
 *		  blocking one that fails.  This file holds the list of checks, what
 *		  they share, and the checks of servers, roles and settings; the
 *		  checks of tables and columns are in checks_schema.c, those of the
 *		  source role's privileges in checks_privileges.c.
 *
 * As in pg_upgrade's check.c, every check is its own function with one
 * signature, called from one list: adding a check is adding one function
 * and one entry in check_list below.  Every check only reads.  The queries
 * that several checks need (the server facts, the source tables) run once,
 * on first use, and are kept in the CheckContext.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/tuplestore.h"
#include "funcapi.h"

#include "checks.h"

/* A transaction older than this on the source delays slot creation. */
#define LONG_TRANSACTION_SECONDS	60

/* At most this many names are listed in one detail. */
#define MAX_LISTED	10

/* Columns of source_facts_sql. */
enum
{
	FACT_VERSION_NUM,
	FACT_VERSION,
	FACT_IN_RECOVERY,
	FACT_WAL_LEVEL,
	FACT_MAX_SLOTS,
	FACT_SLOTS,
	FACT_MAX_SENDERS,
	FACT_SENDERS,
	FACT_SUPERUSER,
	FACT_REPLICATION,
	FACT_SYSTEM_ID,
	FACT_DATABASE,
	FACT_PREPARED,
	FACT_LONG_XACTS,
	FACT_LARGE_OBJECTS,
	FACT_HAS_PUBLICATION,
	FACT_HAS_SLOT,
	FACT_HAS_FENCE,
	FACT_MAX_LOCKS,
	FACT_MAX_CONNECTIONS,
	FACT_MAX_PREPARED
};

static const char *source_facts_sql =
"SELECT current_setting('server_version_num')::int, "
"       current_setting('server_version'), "
"       pg_is_in_recovery(), "
"       current_setting('wal_level'), "
"       current_setting('max_replication_slots')::int, "
"       (SELECT count(*) FROM pg_replication_slots), "
"       current_setting('max_wal_senders')::int, "
"       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), "
"       r.rolsuper, r.rolreplication, "
"       (SELECT system_identifier FROM pg_control_system()), "
"       current_database(), "
"       (SELECT count(*) FROM pg_prepared_xacts), "
"       (SELECT count(*) FROM pg_stat_activity "
"         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() "
"           AND xact_start < now() - make_interval(secs => $2::int)), "
"       (SELECT count(*) FROM pg_largeobject_metadata), "
"       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '" ZDM_PUBLICATION "'), "
"       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), "
"       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '" ZDM_FENCE_SCHEMA "'), "
"       current_setting('max_locks_per_transaction')::int, "
"       current_setting('max_connections')::int, "
"       current_setting('max_prepared_transactions')::int "
"FROM pg_roles r WHERE r.rolname = current_user";

static void check_server_version(CheckContext *ctx, CheckResult *result);
static void check_primary(CheckContext *ctx, CheckResult *result);
static void check_wal_level(CheckContext *ctx, CheckResult *result);
static void check_replication_slots(CheckContext *ctx, CheckResult *result);
static void check_wal_senders(CheckContext *ctx, CheckResult *result);
static void check_replication_privilege(CheckContext *ctx, CheckResult *result);
static void check_target_workers(CheckContext *ctx, CheckResult *result);
static void check_replication_origins(CheckContext *ctx, CheckResult *result);
static void check_same_database(CheckContext *ctx, CheckResult *result);
static void check_leftovers(CheckContext *ctx, CheckResult *result);
static void check_fence_locks(CheckContext *ctx, CheckResult *result);
static void check_target_locks(CheckContext *ctx, CheckResult *result);
static void check_truncate_replication(CheckContext *ctx, CheckResult *result);
static void check_large_objects(CheckContext *ctx, CheckResult *result);
static void check_long_transactions(CheckContext *ctx, CheckResult *result);
static void check_prepared_transactions(CheckContext *ctx, CheckResult *result);
static void check_target_status_interval(CheckContext *ctx, CheckResult *result);

/*
 * Every check, in the order a DBA would fix them (zdm.check shows them in
 * this order, zdm.init raises the first blocking one that fails).  blocking
 * and sqlstate are what zdm.init does when the check fails.
 */
typedef struct CheckEntry
{
	const char *name;
	CheckFunction function;
	bool		blocking;
	int			sqlstate;
} CheckEntry;

static const CheckEntry check_list[] =
{
	{"server_version", check_server_version, true, ERRCODE_FEATURE_NOT_SUPPORTED},
	{"primary", check_primary, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"wal_level", check_wal_level, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"replication_slots", check_replication_slots, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"wal_senders", check_wal_senders, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"replication_privilege", check_replication_privilege, true, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"target_workers", check_target_workers, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"replication_origins", check_replication_origins, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"same_database", check_same_database, true, ERRCODE_INVALID_PARAMETER_VALUE},
	{"leftovers", check_leftovers, true, ERRCODE_DUPLICATE_OBJECT},
	{"database_privilege", check_database_privilege, true, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"publication_privilege", check_publication_privilege, true, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"table_privileges", check_table_privileges, true, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"function_privileges", check_function_privileges, true, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"missing_tables", check_missing_tables, true, ERRCODE_UNDEFINED_TABLE},
	{"partitions", check_partitions, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"replica_identity", check_replica_identity, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"missing_columns", check_missing_columns, true, ERRCODE_UNDEFINED_COLUMN},
	{"column_types", check_column_types, false, 0},
	{"generated_columns", check_generated_columns, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"target_constraints", check_target_constraints, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"target_keys", check_target_keys, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"target_not_null", check_target_not_null, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"target_tables_empty", check_target_tables_empty, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"fence_locks", check_fence_locks, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"target_locks", check_target_locks, true, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"unlogged_tables", check_unlogged_tables, false, 0},
	{"truncate_replication", check_truncate_replication, false, 0},
	{"large_objects", check_large_objects, false, 0},
	{"materialized_views", check_materialized_views, false, 0},
	{"missing_sequences", check_missing_sequences, false, 0},
	{"target_triggers", check_target_triggers, false, 0},
	{"sequence_privileges", check_sequence_privileges, false, 0},
	{"signal_privilege", check_signal_privilege, false, 0},
	{"stats_privilege", check_stats_privilege, false, 0},
	{"fence_deadlock_timeout", check_fence_deadlock_timeout, false, 0},
	{"long_transactions", check_long_transactions, false, 0},
	{"prepared_transactions", check_prepared_transactions, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"target_status_interval", check_target_status_interval, true, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
};

/*
 * run_checks: every preflight check, as a list of CheckResult.  conn is a
 * live connection to the source.  *published receives the qualified names
 * of the tables to publish (with ignore_missing, only those present on both
 * sides).  *explicit_list says whether the publication must list them rather
 * than be FOR ALL TABLES (ignore_missing, defer_copy, or a source role that
 * is not a superuser).  A source older than pg_zdm supports gets the
 * server_version row only: the other checks' queries need a release pg_zdm
 * supports.
 */
List *
run_checks(PGconn *conn, bool ignore_missing, bool defer_copy,
		   List **published, bool *explicit_list)
{
	CheckContext ctx;
	List	   *results = NIL;
	int			i;

	memset(&ctx, 0, sizeof(ctx));
	ctx.conn = conn;
	source_features(conn, &ctx.features);
	ctx.ignore_missing = ignore_missing;
	ctx.defer_copy = defer_copy;
	ctx.slot_name = target_slot_name();
	ctx.needed = 1 + (defer_copy ? 0 :
					  Min(atoi(GetConfigOption("max_sync_workers_per_subscription",
											   false, false)), 1));
	*published = NIL;
	*explicit_list = true;

	for (i = 0; i < lengthof(check_list); i++)
	{
		CheckResult *result = palloc0(sizeof(CheckResult));

		result->name = check_list[i].name;
		result->blocking = check_list[i].blocking;
		result->sqlstate = check_list[i].sqlstate;
		check_list[i].function(&ctx, result);
		if (result->ok)
			result->hint = NULL;
		if (!result->not_applicable)
			results = lappend(results, result);

		if (!ctx.features.supported)
			break;				/* server_version failed: nothing else applies */
	}

	if (ctx.features.supported)
	{
		check_read_tables(&ctx);
		*published = ctx.published;
		*explicit_list = ignore_missing || defer_copy || !check_superuser(&ctx);
	}
	return results;
}

/*
 * The server facts, read on first use.
 */
static RemoteResult *
source_facts(CheckContext *ctx)
{
	if (ctx->facts == NULL)
	{
		char		long_secs[16];
		const char *params[2];

		snprintf(long_secs, sizeof(long_secs), "%d", LONG_TRANSACTION_SECONDS);
		params[0] = ctx->slot_name;
		params[1] = long_secs;
		ctx->facts = remote_query(ctx->conn, source_facts_sql, 2, params,
								  "the preflight checks");
		if (ctx->facts->ntuples != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("could not read the role of the source connection"),
					 errhint("Connect to the source as a role that can read pg_roles.")));
	}
	return ctx->facts;
}

static const char *
fact(CheckContext *ctx, int column)
{
	return remote_value(source_facts(ctx), 0, column);
}

static bool
fact_true(CheckContext *ctx, int column)
{
	return strcmp(fact(ctx, column), "t") == 0;
}

/*
 * check_superuser: is the source role a superuser?
 */
bool
check_superuser(CheckContext *ctx)
{
	return fact_true(ctx, FACT_SUPERUSER);
}

/*
 * check_summary: names for a detail, "a, b, c": the first MAX_LISTED of
 * them, and how many more the objects column of zdm.check holds.
 */
char *
check_summary(List *names)
{
	StringInfoData buf;
	ListCell   *lc;
	int			n = 0;

	initStringInfo(&buf);
	foreach(lc, names)
	{
		if (n == MAX_LISTED)
			break;
		if (n > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, (char *) lfirst(lc));
		n++;
	}
	if (list_length(names) > MAX_LISTED)
		appendStringInfo(&buf, " and %d more (the objects column of zdm.check lists them all)",
						 list_length(names) - MAX_LISTED);
	return buf.data;
}

/*
 * check_put_rows: the rows of zdm.check and zdm.check_fallback, one per
 * check, into a materialized set-returning function's result.
 */
void
check_put_rows(ReturnSetInfo *rsinfo, List *checks)
{
	ListCell   *lc;

	foreach(lc, checks)
	{
		CheckResult *c = lfirst(lc);
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};
		Datum	   *objects = palloc(sizeof(Datum) * Max(list_length(c->objects), 1));
		ListCell   *olc;
		int			nobjects = 0;

		values[0] = CStringGetTextDatum(c->name);
		values[1] = BoolGetDatum(c->ok);
		values[2] = CStringGetTextDatum(c->detail);
		if (c->hint)
			values[3] = CStringGetTextDatum(c->hint);
		else
			nulls[3] = true;
		values[4] = BoolGetDatum(c->blocking);
		foreach(olc, c->objects)
			objects[nobjects++] = CStringGetTextDatum((char *) lfirst(olc));
		values[5] = PointerGetDatum(construct_array(objects, nobjects, TEXTOID,
													-1, false, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

char *
check_qualified(const char *schema, const char *name)
{
	return quote_qualified_identifier(schema, name);
}

/*
 * check_text_array, check_int4_array: a List of C strings or of ints as an
 * array Datum, to pass a source's list to one query here.
 */
Datum
check_text_array(List *items)
{
	int			n = list_length(items);
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, items)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

Datum
check_int4_array(List *items)
{
	int			n = list_length(items);
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, items)
		elems[i++] = Int32GetDatum(lfirst_int(lc));
	return PointerGetDatum(construct_array(elems, n, INT4OID, 4, true,
										   TYPALIGN_INT));
}

static int
setting_int(const char *name)
{
	return atoi(GetConfigOption(name, false, false));
}

/*
 * server_version: known from the connection before any query.
 */
static void
check_server_version(CheckContext *ctx, CheckResult *result)
{
	const char *version = PQparameterStatus(ctx->conn, "server_version");

	result->ok = ctx->features.supported;
	result->detail = psprintf("The source runs PostgreSQL %s; pg_zdm needs 10 or later.",
							  ctx->features.supported ? fact(ctx, FACT_VERSION) :
							  version ? version : "(unknown)");
	result->hint = pstrdup("Upgrade the source to PostgreSQL 10 or later first, or migrate with pg_dump.");
}

static void
check_primary(CheckContext *ctx, CheckResult *result)
{
	result->ok = !fact_true(ctx, FACT_IN_RECOVERY);
	result->detail = result->ok ?
		pstrdup("The source is a primary (not in recovery).") :
		pstrdup("The source is a standby in recovery; pg_zdm needs the primary: the cutover must block writes and make the source read-only, which a standby cannot do (and before PostgreSQL 16 a standby cannot decode WAL at all).");
	result->hint = pstrdup("Point the connection string at the primary server.");
}

static void
check_wal_level(CheckContext *ctx, CheckResult *result)
{
	result->ok = strcmp(fact(ctx, FACT_WAL_LEVEL), "logical") == 0;
	result->detail = psprintf("wal_level is %s on the source.",
							  fact(ctx, FACT_WAL_LEVEL));
	result->hint = pstrdup("Set wal_level = logical on the source and restart it.");
}

static void
check_replication_slots(CheckContext *ctx, CheckResult *result)
{
	int			free_slots = atoi(fact(ctx, FACT_MAX_SLOTS)) - atoi(fact(ctx, FACT_SLOTS));

	result->ok = free_slots >= ctx->needed;
	result->detail = psprintf("%d of max_replication_slots = %s are free on the source; the migration needs %d (one for the subscription%s).",
							  Max(free_slots, 0), fact(ctx, FACT_MAX_SLOTS),
							  ctx->needed,
							  ctx->defer_copy ? "" : ", one for the initial copy");
	result->hint = pstrdup("Raise max_replication_slots on the source (needs a restart), or drop unused slots listed in pg_replication_slots.");
}

static void
check_wal_senders(CheckContext *ctx, CheckResult *result)
{
	int			free_senders = atoi(fact(ctx, FACT_MAX_SENDERS)) - atoi(fact(ctx, FACT_SENDERS));

	result->ok = free_senders >= ctx->needed;
	result->detail = psprintf("%d of max_wal_senders = %s are free on the source; the migration needs %d.",
							  Max(free_senders, 0), fact(ctx, FACT_MAX_SENDERS),
							  ctx->needed);
	result->hint = pstrdup("Raise max_wal_senders on the source (needs a restart).");
}

static void
check_replication_privilege(CheckContext *ctx, CheckResult *result)
{
	bool		replication = fact_true(ctx, FACT_REPLICATION);

	result->ok = check_superuser(ctx) || replication;
	result->detail = check_superuser(ctx) ? pstrdup("The source role is a superuser.") :
		replication ? pstrdup("The source role has the REPLICATION attribute.") :
		pstrdup("The source role has neither REPLICATION nor SUPERUSER.");
	result->hint = psprintf("On the source, as a superuser: ALTER ROLE %s REPLICATION; (on a managed service, its replication role, e.g. GRANT rds_replication TO %s;) or connect as another role.",
							check_role_name(ctx), check_role_name(ctx));
}

/*
 * target_workers: free background worker and logical replication worker
 * slots here.  Background workers are every process in pg_stat_activity
 * that is not one of the server's own kinds (those of 17 and 18 included:
 * walsummarizer, slotsync worker, io worker); logical replication workers
 * are called "logical replication worker" up to 16 and "logical replication
 * apply / tablesync / parallel worker" from 17.
 */
static void
check_target_workers(CheckContext *ctx, CheckResult *result)
{
	int			free_logical;
	int			free_background;

	SPI_connect();
	if (zdm_spi_execute("SELECT count(*) FILTER (WHERE backend_type LIKE 'logical replication%worker'), "
						"       count(*) FILTER (WHERE backend_type NOT IN ("
						"         'client backend', 'checkpointer', 'background writer', "
						"         'walwriter', 'autovacuum launcher', 'autovacuum worker', "
						"         'archiver', 'startup', 'walreceiver', 'walsender', "
						"         'standalone backend', 'logger', 'walsummarizer', "
						"         'slotsync worker', 'io worker')) "
						"FROM pg_catalog.pg_stat_activity", 0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the workers of the target");
	free_logical = setting_int("max_logical_replication_workers") -
		atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	free_background = setting_int("max_worker_processes") -
		atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	SPI_finish();

	result->ok = free_logical >= ctx->needed && free_background >= ctx->needed + 1;
	result->detail = psprintf("This target has %d free logical replication worker slots and %d free background worker slots; the migration needs %d and %d (apply worker%s, cutover worker).",
							  Max(free_logical, 0), Max(free_background, 0),
							  ctx->needed, ctx->needed + 1,
							  ctx->defer_copy ? "" : ", table synchronization worker");
	result->hint = pstrdup("Raise max_logical_replication_workers and max_worker_processes on this target (needs a restart).");
}

/*
 * replication_origins: the subscription tracks its progress in a
 * replication origin, and each table synchronization in one more, in a
 * fixed-size array (max_active_replication_origins from 18, before that
 * max_replication_slots of this target).
 */
static void
check_replication_origins(CheckContext *ctx, CheckResult *result)
{
	int			used;
	int			limit = setting_int(ZDM_ORIGINS_SETTING);

	SPI_connect();
	if (zdm_spi_execute("SELECT count(*) FROM pg_catalog.pg_replication_origin_status",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the replication origins of the target");
	used = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();

	result->ok = limit - used >= ctx->needed;
	result->detail = psprintf("%d of %s = %d replication origins are free on this target; the migration needs %d (the subscription%s).",
							  Max(limit - used, 0), ZDM_ORIGINS_SETTING, limit,
							  ctx->needed,
							  ctx->defer_copy ? "" : ", one table synchronization");
	result->hint = psprintf("Raise %s on this target (needs a restart), or drop unused subscriptions.",
							ZDM_ORIGINS_SETTING);
}

static void
check_same_database(CheckContext *ctx, CheckResult *result)
{
	bool		same = strtou64(fact(ctx, FACT_SYSTEM_ID), NULL, 10) == GetSystemIdentifier() &&
		strcmp(fact(ctx, FACT_DATABASE), get_database_name(MyDatabaseId)) == 0;

	result->ok = !same;
	result->detail = same ? pstrdup("The connection string points at this very database.") :
		pstrdup("The source is another database than this target.");
	result->hint = pstrdup("Point the connection string at the source database, not at the target.");
}

static void
check_leftovers(CheckContext *ctx, CheckResult *result)
{
	List	   *found = NIL;

	if (fact_true(ctx, FACT_HAS_PUBLICATION))
		found = lappend(found, "publication " ZDM_PUBLICATION);
	if (fact_true(ctx, FACT_HAS_SLOT))
		found = lappend(found, psprintf("replication slot %s", ctx->slot_name));
	if (fact_true(ctx, FACT_HAS_FENCE))
		found = lappend(found, "schema " ZDM_FENCE_SCHEMA " (a completed cutover made this source read-only)");

	result->ok = found == NIL;
	result->objects = found;
	result->detail = found == NIL ? pstrdup("No objects of an earlier migration on the source.") :
		psprintf("The source already has: %s.", check_summary(found));
	result->hint = pstrdup("Another migration is using this source, or an earlier one left these behind: run CALL zdm.abort() on its target, or drop them on the source by hand.");
}

/*
 * lock_table_result: the verdict of fence_locks and target_locks.  A
 * server's shared lock table holds about max_locks_per_transaction *
 * (max_connections + max_prepared_transactions) locks (slots) for all its
 * sessions together; one transaction locking every table may take at most
 * half of it, the other half is left to the sessions named by others.
 * locker is the detail's first sentence, with %lld for the table count.
 */
static void
lock_table_result(CheckResult *result, int64 tables, int64 per_xact,
				  int64 slots, const char *locker, const char *others,
				  const char *server)
{
	int64		capacity = per_xact * slots;

	/* smallest setting whose lock table is at least twice the locks */
	int64		needed = (2 * tables + slots - 1) / Max(slots, 1);

	result->ok = 2 * tables <= capacity;
	result->detail = psprintf("%s; its lock table holds max_locks_per_transaction * (max_connections + max_prepared_transactions) = %lld * %lld = %lld locks, and pg_zdm keeps half of them for %s.",
							  psprintf(locker, (long long) tables),
							  (long long) per_xact, (long long) slots,
							  (long long) capacity, others);
	result->hint = psprintf("Set max_locks_per_transaction = %lld (or more) on %s and restart it.",
							(long long) Max(needed, per_xact), server);
}

/*
 * fence_locks: the cutover's fence locks every published table in one
 * transaction on the source.  The source's shared lock table holds about
 * max_locks_per_transaction * (max_connections + max_prepared_transactions)
 * locks for all sessions together; the fence may take at most half of it,
 * so that the application's own sessions keep the other half while the
 * fence holds its locks.
 */
static void
check_fence_locks(CheckContext *ctx, CheckResult *result)
{
	check_read_tables(ctx);
	lock_table_result(result, list_length(ctx->published),
					  atoi(fact(ctx, FACT_MAX_LOCKS)),
					  atoi(fact(ctx, FACT_MAX_CONNECTIONS)) +
					  atoi(fact(ctx, FACT_MAX_PREPARED)),
					  "The cutover locks %lld published tables in one transaction on the source",
					  "the application", "the source");
}

/*
 * target_locks: CREATE SUBSCRIPTION, in init's transaction here, locks every
 * table it subscribes; with too small a lock table init fails with "out of
 * shared memory".  The same half-and-half rule as fence_locks, with this
 * target's settings.
 */
static void
check_target_locks(CheckContext *ctx, CheckResult *result)
{
	check_read_tables(ctx);
	lock_table_result(result, list_length(ctx->copied),
					  setting_int("max_locks_per_transaction"),
					  setting_int("max_connections") +
					  setting_int("max_prepared_transactions"),
					  "Creating the subscription locks %lld tables in one transaction on this target",
					  "other sessions", "this target");
}

/*
 * truncate_replication: PostgreSQL 10 does not replicate TRUNCATE.  Only a
 * row for such a source, like pg_upgrade's checks for one old release.
 */
static void
check_truncate_replication(CheckContext *ctx, CheckResult *result)
{
	result->not_applicable = ctx->features.truncate_replicated;
	result->ok = false;
	result->detail = psprintf("PostgreSQL %s does not replicate TRUNCATE (from 11 it does): a TRUNCATE of a published table on the source after init leaves the table's rows on the target.",
							  fact(ctx, FACT_VERSION));
	result->hint = pstrdup("Do not TRUNCATE published tables on the source until the cutover (DELETE is replicated), or repeat each TRUNCATE on the target.");
}

static void
check_large_objects(CheckContext *ctx, CheckResult *result)
{
	result->ok = strcmp(fact(ctx, FACT_LARGE_OBJECTS), "0") == 0;
	result->detail = psprintf("The source has %s large objects; logical replication does not carry them.",
							  fact(ctx, FACT_LARGE_OBJECTS));
	result->hint = pstrdup("Copy large objects separately before the cutover, with pg_dump -b (--blobs; PostgreSQL 16 and later also call it --large-objects) and pg_restore; writes to them after that copy are not carried either.");
}

static void
check_long_transactions(CheckContext *ctx, CheckResult *result)
{
	result->ok = strcmp(fact(ctx, FACT_LONG_XACTS), "0") == 0;
	result->detail = psprintf("%s transactions holding a transaction id have been open on the source for more than %d seconds; creating replication slots waits for them.",
							  fact(ctx, FACT_LONG_XACTS), LONG_TRANSACTION_SECONDS);
	result->hint = pstrdup("Let them finish, or end them (pg_stat_activity shows them), before init.");
}

static void
check_prepared_transactions(CheckContext *ctx, CheckResult *result)
{
	result->ok = strcmp(fact(ctx, FACT_PREPARED), "0") == 0;
	result->detail = psprintf("The source cluster has %s prepared transactions; creating a replication slot would wait for them to end.",
							  fact(ctx, FACT_PREPARED));
	result->hint = pstrdup("Run COMMIT PREPARED or ROLLBACK PREPARED for those listed in pg_prepared_xacts on the source.");
}

static void
check_target_status_interval(CheckContext *ctx, CheckResult *result)
{
	int			interval = setting_int("wal_receiver_status_interval");

	result->ok = interval > 0;
	result->detail = psprintf("wal_receiver_status_interval is %d s on the target.", interval);
	result->hint = pstrdup("Set wal_receiver_status_interval to a positive value on this target (the default is 10s) and reload: with 0 the target never reports its progress to the source.");
}
