/*-------------------------------------------------------------------------
 *
 * fallback_checks.c
 *		  What a cutover with fallback needs, checked before it locks
 *		  anything: zdm.check_fallback() shows the checks, and
 *		  zdm.cutover(fallback => true) refuses on the first blocking one
 *		  that fails.
 *
 * The reverse replication runs from this target to the source, so the
 * roles of the two servers swap: this target needs what a publisher needs
 * (wal_level = logical, a free slot and WAL sender, a key on every table
 * for UPDATE and DELETE to be published), the source what a subscriber
 * needs (the privilege to create a subscription, a free worker and
 * replication origin).  Whether the source can reach this target with the
 * DSN given is only known by trying: the cutover creates the subscription,
 * still before any lock, and stops if that fails.  The list has the shape
 * of checks.c's: one function per check, one entry each.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "checks.h"

PG_FUNCTION_INFO_V1(zdm_check_fallback);

/* What the fallback checks share. */
typedef struct FallbackContext
{
	PGconn	   *source;			/* NULL when it could not be reached */
	char	   *source_reason;
	PGconn	   *target;			/* this target, through target_dsn */
	char	   *target_reason;
	const char *target_dsn;
} FallbackContext;

typedef void (*FallbackCheck) (FallbackContext *ctx, CheckResult *result);

static void check_source_version(FallbackContext *ctx, CheckResult *result);
static void check_target_connection(FallbackContext *ctx, CheckResult *result);
static void check_subscription_privilege(FallbackContext *ctx, CheckResult *result);
static void check_source_workers(FallbackContext *ctx, CheckResult *result);
static void check_target_wal_level(FallbackContext *ctx, CheckResult *result);
static void check_target_slots(FallbackContext *ctx, CheckResult *result);
static void check_target_wal_senders(FallbackContext *ctx, CheckResult *result);
static void check_fallback_replica_identity(FallbackContext *ctx, CheckResult *result);
static void check_fallback_columns(FallbackContext *ctx, CheckResult *result);

static const struct
{
	const char *name;
	FallbackCheck function;
	int			sqlstate;
}			fallback_check_list[] =
{
	{"fallback_source_version", check_source_version, ERRCODE_FEATURE_NOT_SUPPORTED},
	{"fallback_target_connection", check_target_connection, ERRCODE_CONNECTION_FAILURE},
	{"fallback_subscription_privilege", check_subscription_privilege, ERRCODE_INSUFFICIENT_PRIVILEGE},
	{"fallback_source_workers", check_source_workers, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"fallback_target_wal_level", check_target_wal_level, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"fallback_target_slots", check_target_slots, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"fallback_target_wal_senders", check_target_wal_senders, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED},
	{"fallback_replica_identity", check_fallback_replica_identity, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE},
	{"fallback_columns", check_fallback_columns, ERRCODE_UNDEFINED_COLUMN},
};

/*
 * A one-row, one-column query here, as text; NULL for SQL NULL.
 */
static char *
local_value(const char *sql, int nargs, Oid *types, Datum *values)
{
	char	   *value = NULL;
	MemoryContext callercxt = CurrentMemoryContext;

	SPI_connect();
	if (zdm_spi_execute(sql, nargs, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not run a fallback check");
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		value = v ? MemoryContextStrdup(callercxt, v) : NULL;
	}
	SPI_finish();
	return value;
}

/*
 * A PostgreSQL 10 subscriber does not know the TRUNCATE message: a TRUNCATE
 * made here would never reach it, an acknowledged write lost at the
 * fallback.
 */
static void
check_source_version(FallbackContext *ctx, CheckResult *result)
{
	if (ctx->source == NULL)
	{
		result->detail = psprintf("The source could not be reached: %s", ctx->source_reason);
		return;
	}
	result->ok = PQserverVersion(ctx->source) >= 110000;
	result->detail = result->ok ?
		psprintf("The source runs PostgreSQL %s.", PQparameterStatus(ctx->source, "server_version")) :
		psprintf("The source runs PostgreSQL %s; a subscriber before 11 cannot apply TRUNCATE, so a TRUNCATE made on this target after the cutover would be lost at a fallback.",
				 PQparameterStatus(ctx->source, "server_version"));
	if (!result->ok)
		result->hint = pstrdup("Cut over without fallback, or upgrade the source to 11 or later first.");
}

/*
 * The DSN must reach this very database, as a role that may replicate and
 * fence writes here (the fallback takes its fence in a session of that
 * role): the loopback session's own row of pg_stat_activity, read there,
 * must be a session of this server and database.
 */
static void
check_target_connection(FallbackContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	char	   *local_start;

	if (ctx->target == NULL)
	{
		result->detail = psprintf("This target could not be reached with %s: %s",
								  dsn_mask(ctx->target_dsn), ctx->target_reason);
		result->hint = pstrdup("Pass target_dsn, a connection string with which the source reaches this database (host, port, dbname, user, password), and allow it in this server's pg_hba.conf as a replication-capable role.");
		return;
	}
	res = remote_query(ctx->target,
					   "SELECT extract(epoch FROM backend_start)::text, "
					   "  (SELECT rolsuper OR rolreplication FROM pg_roles "
					   "   WHERE rolname = current_user), quote_ident(current_user), "
					   "  (SELECT rolsuper OR (has_database_privilege(current_database(), 'CREATE') "
					   "     AND NOT EXISTS (SELECT 1 FROM pg_subscription_rel r "
					   "       JOIN pg_subscription s ON s.oid = r.srsubid "
					   "       JOIN pg_class c ON c.oid = r.srrelid "
					   "       WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
					   "         AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
					   "         AND NOT pg_has_role(c.relowner, 'USAGE'))) "
					   "   FROM pg_roles WHERE rolname = current_user) "
					   "FROM pg_stat_activity WHERE pid = pg_backend_pid()",
					   0, NULL, "reading the target session");
	values[0] = Int32GetDatum(PQbackendPID(ctx->target));
	local_start = local_value("SELECT extract(epoch FROM backend_start)::text "
							  "FROM pg_catalog.pg_stat_activity "
							  "WHERE pid = $1 AND datname = pg_catalog.current_database()",
							  1, types, values);
	if (res->ntuples != 1 || local_start == NULL ||
		strcmp(local_start, remote_value(res, 0, 0)) != 0)
	{
		result->detail = psprintf("%s reaches another server or database, not this one.",
								  dsn_mask(ctx->target_dsn));
		result->hint = pstrdup("Pass a target_dsn that names this server's host and port and this database.");
		return;
	}
	if (strcmp(remote_value(res, 0, 1), "t") != 0)
	{
		result->detail = psprintf("Role %s of %s may not replicate.",
								  remote_value(res, 0, 2), dsn_mask(ctx->target_dsn));
		result->hint = psprintf("ALTER ROLE %s REPLICATION; here, or use a role that has it.",
								remote_value(res, 0, 2));
		return;
	}
	if (strcmp(remote_value(res, 0, 3), "t") != 0)
	{
		result->detail = psprintf("Role %s of %s may not fence writes here: the fallback locks the migrated tables and creates triggers on them in a session of this role.",
								  remote_value(res, 0, 2), dsn_mask(ctx->target_dsn));
		result->hint = pstrdup("Use a superuser, or the owner of every migrated table with CREATE on this database, in target_dsn.");
		return;
	}
	result->ok = true;
	result->detail = psprintf("Connected to this database with %s.",
							  dsn_mask(ctx->target_dsn));
}

/* Whether the DSN carries a password. */
static bool
dsn_has_password(const char *dsn)
{
	PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
	PQconninfoOption *opt;
	bool		found = false;

	for (opt = opts; opt && opt->keyword != NULL; opt++)
		if (strcmp(opt->keyword, "password") == 0 && opt->val && opt->val[0])
			found = true;
	PQconninfoFree(opts);
	return found;
}

/*
 * Up to 15 only a superuser creates subscriptions; from 16 also members of
 * pg_create_subscription with CREATE on the database, whose subscriptions
 * must then authenticate with a password (password_required).
 */
static void
check_subscription_privilege(FallbackContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	bool		from16;

	if (ctx->source == NULL)
	{
		result->detail = psprintf("The source could not be reached: %s", ctx->source_reason);
		return;
	}
	from16 = PQserverVersion(ctx->source) >= 160000;
	res = remote_query(ctx->source, from16 ?
					   "SELECT rolsuper, pg_has_role('pg_create_subscription', 'USAGE') "
					   "  AND has_database_privilege(current_database(), 'CREATE'), "
					   "  quote_ident(current_user) FROM pg_roles WHERE rolname = current_user" :
					   "SELECT rolsuper, false, quote_ident(current_user) "
					   "FROM pg_roles WHERE rolname = current_user",
					   0, NULL, "reading the source role");
	if (strcmp(remote_value(res, 0, 0), "t") == 0)
	{
		result->ok = true;
		result->detail = psprintf("Role %s is a superuser on the source.", remote_value(res, 0, 2));
		return;
	}
	if (strcmp(remote_value(res, 0, 1), "t") == 0)
	{
		/* from 16 the apply worker writes as each table's owner */
		RemoteResult *owners = remote_query(ctx->source,
											"SELECT count(*), string_agg(DISTINCT quote_ident(pg_get_userbyid(c.relowner)), ', ') "
											"FROM pg_publication_tables p "
											"JOIN pg_namespace n ON n.nspname = p.schemaname "
											"JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
											"WHERE p.pubname = '" ZDM_PUBLICATION "' "
											"  AND NOT pg_has_role(c.relowner, 'SET')",
											0, NULL, "reading the owners of the source's tables");

		if (strcmp(remote_value(owners, 0, 0), "0") != 0)
		{
			result->detail = psprintf("Role %s may not SET ROLE to the owners of %s published tables (%s); from PostgreSQL 16 a subscription writes as each table's owner.",
									  remote_value(res, 0, 2), remote_value(owners, 0, 0),
									  remote_value(owners, 0, 1));
			result->hint = psprintf("On the source, GRANT each of those roles TO %s; or have it own the tables.",
									remote_value(res, 0, 2));
			return;
		}
		result->ok = dsn_has_password(ctx->target_dsn);
		result->detail = result->ok ?
			psprintf("Role %s has pg_create_subscription and CREATE on the source database.",
					 remote_value(res, 0, 2)) :
			psprintf("Role %s is not a superuser, so its subscription must authenticate with a password, and target_dsn has none.",
					 remote_value(res, 0, 2));
		if (!result->ok)
			result->hint = pstrdup("Put the password of the target role in target_dsn.");
		return;
	}
	result->detail = from16 ?
		psprintf("Role %s on the source is not a superuser and lacks pg_create_subscription or CREATE on the database.",
				 remote_value(res, 0, 2)) :
		psprintf("Role %s on the source is not a superuser; before PostgreSQL 16 only a superuser creates subscriptions.",
				 remote_value(res, 0, 2));
	result->hint = from16 ?
		psprintf("On the source: GRANT pg_create_subscription TO %s; GRANT CREATE ON DATABASE to it.",
				 remote_value(res, 0, 2)) :
		pstrdup("Use a superuser of the source in the source connection string of zdm.init, or cut over without fallback.");
}

/*
 * The source runs the reverse apply worker: one logical replication worker
 * and one replication origin (counted against max_replication_slots up to
 * 17, max_active_replication_origins from 18).
 */
static void
check_source_workers(FallbackContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	int			workers_free;
	int			origins_free;

	if (ctx->source == NULL)
	{
		result->detail = psprintf("The source could not be reached: %s", ctx->source_reason);
		return;
	}
	res = remote_query(ctx->source, PQserverVersion(ctx->source) >= 180000 ?
					   "SELECT current_setting('max_logical_replication_workers')::int "
					   "  - (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL), "
					   "  current_setting('max_active_replication_origins')::int "
					   "  - (SELECT count(*) FROM pg_subscription)" :
					   "SELECT current_setting('max_logical_replication_workers')::int "
					   "  - (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL), "
					   "  current_setting('max_replication_slots')::int "
					   "  - (SELECT count(*) FROM pg_subscription)",
					   0, NULL, "reading the source's worker settings");
	workers_free = atoi(remote_value(res, 0, 0));
	origins_free = atoi(remote_value(res, 0, 1));
	result->ok = workers_free >= 1 && origins_free >= 1;
	result->detail = psprintf("The source has %d logical replication workers and %d replication origins free; the reverse replication needs one of each.",
							  workers_free, origins_free);
	if (!result->ok)
		result->hint = psprintf("On the source raise %s (needs a restart).",
								workers_free < 1 ? "max_logical_replication_workers" :
								PQserverVersion(ctx->source) >= 180000 ?
								"max_active_replication_origins" : "max_replication_slots");
}

static void
check_target_wal_level(FallbackContext *ctx, CheckResult *result)
{
	result->ok = XLogLogicalInfoActive();
	result->detail = psprintf("wal_level is %s on this target.",
							  GetConfigOption("wal_level", false, false));
	if (!result->ok)
		result->hint = pstrdup("ALTER SYSTEM SET wal_level = logical; and restart this server.");
}

static void
check_target_slots(FallbackContext *ctx, CheckResult *result)
{
	int			free_slots = atoi(local_value("SELECT pg_catalog.current_setting('max_replication_slots')::int "
											  "  - (SELECT count(*) FROM pg_catalog.pg_replication_slots)",
											  0, NULL, NULL));

	result->ok = free_slots >= 1;
	result->detail = psprintf("%d replication slots are free on this target; the reverse replication needs one.",
							  free_slots);
	if (!result->ok)
		result->hint = pstrdup("Raise max_replication_slots here (needs a restart), or drop an unused slot.");
}

static void
check_target_wal_senders(FallbackContext *ctx, CheckResult *result)
{
	int			free_senders = atoi(local_value("SELECT pg_catalog.current_setting('max_wal_senders')::int "
												"  - (SELECT count(*) FROM pg_catalog.pg_stat_activity "
												"     WHERE backend_type = 'walsender')",
												0, NULL, NULL));

	result->ok = free_senders >= 1;
	result->detail = psprintf("%d WAL senders are free on this target; the reverse replication needs one.",
							  free_senders);
	if (!result->ok)
		result->hint = pstrdup("Raise max_wal_senders here (needs a restart).");
}

/*
 * UPDATE and DELETE are published only for tables with a replica identity:
 * every table the forward subscription fills, and the partitions of those
 * partitioned here (pg_partition_tree gives no row for a plain table).
 * The names are built in the caller's context: SPI's goes at SPI_finish.
 */
static void
check_fallback_replica_identity(FallbackContext *ctx, CheckResult *result)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext oldcxt;
	uint64		i;

	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) "
						"FROM pg_catalog.pg_subscription s "
						"JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid "
						"CROSS JOIN LATERAL (SELECT r.srrelid AS relid UNION "
						"  SELECT p.relid FROM pg_catalog.pg_partition_tree(r.srrelid) p) t "
						"JOIN pg_catalog.pg_class c ON c.oid = t.relid "
						"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						"WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
						"  AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
						"                   WHERE datname = pg_catalog.current_database()) "
						"  AND c.relkind = 'r' "
						"  AND (c.relreplident = 'n' "
						"    OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index x "
						"          WHERE x.indrelid = c.oid AND x.indisprimary)) "
						"    OR (c.relreplident = 'i' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index x "
						"          WHERE x.indrelid = c.oid AND x.indisreplident))) "
						"ORDER BY 1", 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the replica identities");
	oldcxt = MemoryContextSwitchTo(callercxt);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		result->objects = lappend(result->objects,
								  psprintf("%s (no key): ALTER TABLE %s REPLICA IDENTITY FULL",
										   name, name));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	result->ok = result->objects == NIL;
	result->detail = result->ok ?
		pstrdup("Every migrated table here has a replica identity.") :
		psprintf("%d migrated tables here have no primary key or replica identity; their UPDATEs and DELETEs could not be sent back: %s.",
				 list_length(result->objects), check_summary(result->objects));
	if (!result->ok)
		result->hint = pstrdup("Add a primary key, or set REPLICA IDENTITY FULL, on each table listed in objects.");
}

/*
 * Columns of the migrated tables here that the source's table lacks: the
 * reverse apply worker fails on the first row that has them (the forward
 * checks allow them: nothing from the source fills them).  Generated
 * columns are not sent.
 */
static void
check_fallback_columns(FallbackContext *ctx, CheckResult *result)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext oldcxt;
	RemoteResult *res;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	uint64		i;

	if (ctx->source == NULL)
	{
		result->detail = psprintf("The source could not be reached: %s", ctx->source_reason);
		return;
	}
	res = remote_query(ctx->source,
					   "SELECT coalesce(array_agg(format('%I.%I.%I', p.schemaname, p.tablename, a.attname))::text, '{}') "
					   "FROM pg_publication_tables p "
					   "JOIN pg_namespace n ON n.nspname = p.schemaname "
					   "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
					   "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
					   "WHERE p.pubname = '" ZDM_PUBLICATION "'",
					   0, NULL, "reading the columns of the source's tables");
	values[0] = CStringGetTextDatum(remote_value(res, 0, 0));
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), a.attname "
						"FROM pg_catalog.pg_subscription s "
						"JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid "
						"JOIN pg_catalog.pg_class c ON c.oid = r.srrelid "
						"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						"JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
						"  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
						"WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
						"  AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
						"                   WHERE datname = pg_catalog.current_database()) "
						"  AND pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname) "
						"      <> ALL ($1::pg_catalog.text[]) "
						"ORDER BY 1, 2", 1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the columns");
	oldcxt = MemoryContextSwitchTo(callercxt);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *table = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *column = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		result->objects = lappend(result->objects,
								  psprintf("%s.%s (only on this target): on the source ALTER TABLE %s ADD COLUMN %s ...",
										   table, quote_identifier(column), table,
										   quote_identifier(column)));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	result->ok = result->objects == NIL;
	result->detail = result->ok ?
		pstrdup("Every column of the migrated tables here exists on the source.") :
		psprintf("%d columns of the migrated tables here do not exist on the source; the source could not apply a row of this target that has them: %s.",
				 list_length(result->objects), check_summary(result->objects));
	if (!result->ok)
		result->hint = pstrdup("Add those columns on the source (the objects column lists them), or drop them here.");
}

/*
 * fallback_checks: every fallback check as a list of CheckResult, with a
 * connection of its own to each side.
 */
List *
fallback_checks(const char *source_dsn, const char *target_dsn)
{
	FallbackContext ctx;
	List	   *checks = NIL;
	int			i;

	memset(&ctx, 0, sizeof(ctx));
	ctx.target_dsn = target_dsn;
	ctx.source = remote_try_connect(source_dsn, &ctx.source_reason);
	ctx.target = remote_try_connect(target_dsn, &ctx.target_reason);
	for (i = 0; i < lengthof(fallback_check_list); i++)
	{
		CheckResult *result = palloc0(sizeof(CheckResult));

		result->name = fallback_check_list[i].name;
		result->blocking = true;
		result->sqlstate = fallback_check_list[i].sqlstate;
		fallback_check_list[i].function(&ctx, result);
		checks = lappend(checks, result);
	}
	remote_disconnect(ctx.source);
	remote_disconnect(ctx.target);
	return checks;
}

/*
 * fallback_refuse: raise the first failed check, naming all that failed.
 */
void
fallback_refuse(List *checks)
{
	StringInfoData failed;
	CheckResult *first = NULL;
	ListCell   *lc;

	initStringInfo(&failed);
	foreach(lc, checks)
	{
		CheckResult *c = lfirst(lc);

		if (c->ok)
			continue;
		if (first == NULL)
			first = c;
		appendStringInfo(&failed, "%s%s: %s", failed.len > 0 ? " " : "",
						 c->name, c->detail);
	}
	if (first == NULL)
		return;
	ereport(ERROR,
			(errcode(first->sqlstate),
			 errmsg("cannot cut over with fallback: %s failed", first->name),
			 errdetail("%s The source was not locked; replication goes on.", failed.data),
			 first->hint ? errhint("%s", first->hint) :
			 errhint("SELECT * FROM zdm.check_fallback() shows every check.")));
}

/*
 * fallback_target_dsn: the target_dsn argument validated, or when NULL one
 * derived from this session: the address it connected to (or the first
 * socket directory), this port and database, the session user, and no
 * password (a source that needs one must be given target_dsn).  A derived
 * address that only works on this machine (a socket, a loopback address)
 * is refused when source_dsn, if known, names another machine: the source
 * would reach a server of its own.
 */
char *
fallback_target_dsn(text *arg, const char *source_dsn)
{
	MemoryContext callercxt = CurrentMemoryContext;
	StringInfoData dsn;
	char	   *host;
	int			i;

	if (arg != NULL)
		return dsn_validate(text_to_cstring(arg), "target");

	SPI_connect();
	if (zdm_spi_execute("SELECT coalesce(pg_catalog.host(pg_catalog.inet_server_addr()), "
						"    pg_catalog.btrim(pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), ',', 1))), "
						"  pg_catalog.current_setting('port'), pg_catalog.current_database(), "
						"  session_user",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not derive the target connection string");
	MemoryContextSwitchTo(callercxt);
	initStringInfo(&dsn);
	for (i = 0; i < 4; i++)
	{
		static const char *const keywords[] = {"host", "port", "dbname", "user"};

		appendStringInfo(&dsn, "%s%s=", i > 0 ? " " : "", keywords[i]);
		dsn_append_value(&dsn, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1));
	}
	host = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_finish();
	if (source_dsn != NULL && dsn_is_local(dsn.data) && !dsn_is_local(source_dsn))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("target_dsn must be given: this session reached this server through %s, which the source cannot use",
						host),
				 errdetail("The source runs on another machine; a socket or loopback address would reach a server there."),
				 errhint("Pass target_dsn => 'host=... port=... dbname=... user=... password=...', with which the source reaches this server.")));
	return dsn_validate(dsn.data, "target");
}

/*
 * zdm.check_fallback(target_dsn): every fallback check as a row.  Needs a
 * migration not yet cut over (the source's connection string and the
 * tables come from it, and only its cutover can set up a fallback).
 */
Datum
zdm_check_fallback(PG_FUNCTION_ARGS)
{
	char	   *target_dsn;
	MigrationState state;

	if (!state_load(&state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("there is no migration to check a fallback for"),
				 errhint("Start one with CALL zdm.init(source_dsn).")));
	if (strcmp(state.phase, "streaming") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration is past its cutover, which is where a fallback is set up"),
				 errdetail("The migration is in phase %s.", state.phase),
				 errhint("zdm.status() shows whether this cutover set one up.")));
	target_dsn = fallback_target_dsn(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0),
									 state.source_conninfo);
	InitMaterializedSRF(fcinfo, 0);
	check_put_rows((ReturnSetInfo *) fcinfo->resultinfo,
				   fallback_checks(state.source_conninfo, target_dsn));
	return (Datum) 0;
}
