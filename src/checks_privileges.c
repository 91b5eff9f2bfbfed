/*-------------------------------------------------------------------------
 *
 * checks_privileges.c
 *		  The preflight checks of what the source role may do: every
 *		  privilege that zdm.check, zdm.init, zdm.status, zdm.cutover, the
 *		  cleanup after it and zdm.abort need on the source, each failing
 *		  check naming what is missing and the exact statements that grant it.
 *
 * A superuser may do everything.  Managed services give the migration a
 * role that is not one: REPLICATION (checked in checks.c), owner of the
 * application's tables, CREATE on the database, perhaps pg_signal_backend.
 * What each step needs from such a role:
 *
 *	zdm.init	CREATE on the database (CREATE PUBLICATION); a publication
 *				FOR ALL TABLES needs a superuser, so for anyone else init
 *				publishes the list of tables, which needs their ownership;
 *				SELECT on them (the initial copy); EXECUTE on
 *				pg_create_logical_replication_slot.
 *	cutover		LOCK TABLE ... IN EXCLUSIVE MODE: UPDATE, DELETE or TRUNCATE
 *				(MAINTAIN too from 17) on every published table;
 *				CREATE SCHEMA zdm_fence: CREATE on the database; CREATE
 *				TRIGGER: TRIGGER; ALTER TABLE ... ENABLE ALWAYS TRIGGER: the
 *				table's ownership; ending open write transactions:
 *				pg_signal_backend for other roles' sessions, and superusers'
 *				sessions never (see fence.c); pg_logical_emit_message; the
 *				sequences: SELECT on each; DROP PUBLICATION:
 *				ownership, which init gave it.
 *	status		pg_current_wal_lsn, pg_wal_lsn_diff; catalogs readable by all.
 *	cleanup,	pg_drop_replication_slot (REPLICATION), DROP PUBLICATION
 *	abort		(its owner), pg_terminate_backend of its own sessions.
 *	check		pg_control_system, pg_is_in_recovery; pg_read_all_stats to
 *				see other roles' sessions in pg_stat_activity.
 *
 * Blocking checks are those without which a step cannot work; the others
 * warn about what will behave differently.  Privileges differ by release
 * only in what LOCK TABLE accepts (MAINTAIN, 17: source_features); the
 * predefined roles used here exist in every supported release
 * (pg_signal_backend from 9.6, pg_read_all_stats from 10).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "checks.h"

/* At most this many statements are spelled out in one hint. */
#define MAX_STATEMENTS	10

/* The source role and what it may do, once per check run. */
static const char *source_role_sql =
"SELECT quote_ident(current_user), quote_ident(current_database()), "
"       r.rolsuper, "
"       has_database_privilege(current_database(), 'CREATE'), "
"       pg_has_role('pg_signal_backend', 'USAGE'), "
"       pg_has_role('pg_read_all_stats', 'USAGE'), "
"       (SELECT setting FROM pg_settings WHERE name = 'deadlock_timeout') "
"FROM pg_roles r WHERE r.rolname = current_user";

/* Columns of source_role_sql. */
enum
{
	ROLE_NAME,
	ROLE_DATABASE,
	ROLE_SUPERUSER,
	ROLE_CREATE,
	ROLE_SIGNAL,
	ROLE_READ_STATS,
	ROLE_DEADLOCK_TIMEOUT
};

/*
 * Permanent tables on which the role lacks a privilege a step needs; %s is
 * the privilege list that lets LOCK TABLE take EXCLUSIVE mode.
 */
static const char *table_privileges_sql =
"SELECT n.nspname, c.relname, "
"       pg_has_role(c.relowner, 'USAGE'), "
"       quote_ident(pg_get_userbyid(c.relowner)), "
"       has_table_privilege(c.oid, 'SELECT'), "
"       has_table_privilege(c.oid, '%s'), "
"       has_table_privilege(c.oid, 'TRIGGER') "
"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND NOT (pg_has_role(c.relowner, 'USAGE') "
"           AND has_table_privilege(c.oid, 'SELECT') "
"           AND has_table_privilege(c.oid, '%s') "
"           AND has_table_privilege(c.oid, 'TRIGGER')) "
"ORDER BY 1, 2";

/* Columns of table_privileges_sql. */
enum
{
	ACL_SCHEMA,
	ACL_NAME,
	ACL_OWNED,
	ACL_OWNER,
	ACL_SELECT,
	ACL_LOCK,
	ACL_TRIGGER
};

/*
 * The functions pg_zdm calls on the source, every overload of them, that
 * the role may not execute (managed services sometimes revoke some).
 */
static const char *function_privileges_sql =
"SELECT p.oid::regprocedure::text FROM pg_proc p "
"WHERE p.pronamespace = 'pg_catalog'::regnamespace "
"  AND p.proname IN ('pg_create_logical_replication_slot', "
"    'pg_drop_replication_slot', 'pg_logical_emit_message', "
"    'pg_terminate_backend', 'pg_blocking_pids', 'pg_current_wal_lsn', "
"    'pg_wal_lsn_diff', 'pg_sequence_last_value', 'pg_control_system', "
"    'pg_is_in_recovery') "
"  AND NOT has_function_privilege(p.oid, 'EXECUTE') "
"ORDER BY 1";

/*
 * Sequences whose value the cutover could not read: pg_sequence_last_value
 * takes SELECT or USAGE, reading a restarted sequence's relation SELECT.
 * The CASE keeps the planner from asking about relations that are not
 * sequences (has_sequence_privilege raises an error for them).
 */
static const char *sequence_privileges_sql =
"SELECT n.nspname, c.relname FROM pg_class c "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'S' AND c.relpersistence <> 't' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND CASE WHEN c.relkind = 'S' "
"      THEN NOT has_sequence_privilege(c.oid, 'SELECT') END "
"ORDER BY 1, 2";

/*
 * The source role's row, read on first use.
 */
static RemoteResult *
source_role(CheckContext *ctx)
{
	if (ctx->role == NULL)
	{
		ctx->role = remote_query(ctx->conn, source_role_sql, 0, NULL,
								 "reading the privileges of the source role");
		if (ctx->role->ntuples != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("could not read the role of the source connection"),
					 errhint("Connect to the source as a role that can read pg_roles.")));
	}
	return ctx->role;
}

static const char *
role_value(CheckContext *ctx, int column)
{
	return remote_value(source_role(ctx), 0, column);
}

static bool
role_true(CheckContext *ctx, int column)
{
	return strcmp(role_value(ctx, column), "t") == 0;
}

/*
 * check_role_name: the source role's name, quoted for SQL.
 */
const char *
check_role_name(CheckContext *ctx)
{
	return role_value(ctx, ROLE_NAME);
}

/*
 * Is name (quoted and qualified) among the tables to publish?
 */
static bool
is_published(CheckContext *ctx, const char *name)
{
	ListCell   *lc;

	foreach(lc, ctx->published)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	}
	return false;
}

/*
 * statements: the first MAX_STATEMENTS statements, one after another, and
 * how many more there are, for a hint.
 */
static char *
statements(List *stmts)
{
	StringInfoData buf;
	ListCell   *lc;
	int			n = 0;

	initStringInfo(&buf);
	foreach(lc, stmts)
	{
		if (n == MAX_STATEMENTS)
		{
			appendStringInfo(&buf, " (and %d more like these, for the objects listed by zdm.check)",
							 list_length(stmts) - MAX_STATEMENTS);
			break;
		}
		if (n > 0)
			appendStringInfoChar(&buf, ' ');
		appendStringInfoString(&buf, (char *) lfirst(lc));
		n++;
	}
	return buf.data;
}

/*
 * Append stmt to list unless it is there already.
 */
static List *
add_statement(List *list, char *stmt)
{
	ListCell   *lc;

	foreach(lc, list)
	{
		if (strcmp((char *) lfirst(lc), stmt) == 0)
			return list;
	}
	return lappend(list, stmt);
}

/*
 * The published tables on which the role lacks something, read once.
 * Empty for a superuser, who lacks nothing.
 */
static RemoteResult *
table_acl(CheckContext *ctx)
{
	static RemoteResult none = {0, 7, NULL};

	if (check_superuser(ctx))
		return &none;
	if (ctx->table_acl == NULL)
	{
		/* LOCK TABLE ... IN EXCLUSIVE MODE: any of these; MAINTAIN from 17 */
		const char *lock = ctx->features.maintain_privilege ?
			"UPDATE,DELETE,TRUNCATE,MAINTAIN" : "UPDATE,DELETE,TRUNCATE";

		check_read_tables(ctx);
		ctx->table_acl = remote_query(ctx->conn,
									  psprintf(table_privileges_sql, lock, lock),
									  0, NULL, "reading the table privileges of the source role");
	}
	return ctx->table_acl;
}

/*
 * database_privilege: CREATE on the source database, for CREATE PUBLICATION
 * (init) and CREATE SCHEMA zdm_fence (cutover).
 */
void
check_database_privilege(CheckContext *ctx, CheckResult *result)
{
	result->ok = role_true(ctx, ROLE_CREATE);
	result->detail = result->ok ?
		psprintf("The source role may create objects in database %s (publication %s at init, schema %s at the cutover).",
				 role_value(ctx, ROLE_DATABASE), ZDM_PUBLICATION, ZDM_FENCE_SCHEMA) :
		psprintf("The source role %s may not create objects in database %s: zdm.init creates publication %s there and the cutover creates schema %s.",
				 check_role_name(ctx), role_value(ctx, ROLE_DATABASE),
				 ZDM_PUBLICATION, ZDM_FENCE_SCHEMA);
	result->hint = psprintf("On the source, as the database owner or a superuser: GRANT CREATE ON DATABASE %s TO %s;",
							role_value(ctx, ROLE_DATABASE), check_role_name(ctx));
}

/*
 * publication_privilege: a superuser gets FOR ALL TABLES (unless
 * ignore_missing or defer_copy ask for a list); anyone else gets the list of
 * tables to publish, and must own every one of them -- CREATE PUBLICATION
 * ... FOR TABLE needs it, and so does the cutover's ALTER TABLE ... ENABLE
 * ALWAYS TRIGGER.  Membership in the owning role counts as ownership.
 */
void
check_publication_privilege(CheckContext *ctx, CheckResult *result)
{
	bool		superuser = check_superuser(ctx);
	RemoteResult *acl;
	List	   *not_owned = NIL;
	List	   *fixes = NIL;
	List	   *alters = NIL;
	List	   *objects = NIL;
	int			row;

	check_read_tables(ctx);
	ctx->explicit_list = ctx->ignore_missing || ctx->defer_copy || !superuser;
	acl = table_acl(ctx);
	for (row = 0; row < acl->ntuples; row++)
	{
		char	   *name = check_qualified(remote_value(acl, row, ACL_SCHEMA),
										   remote_value(acl, row, ACL_NAME));

		if (strcmp(remote_value(acl, row, ACL_OWNED), "t") == 0 ||
			!is_published(ctx, name))
			continue;
		not_owned = lappend(not_owned, name);
		fixes = add_statement(fixes,
							  psprintf("GRANT %s TO %s;",
									   remote_value(acl, row, ACL_OWNER),
									   check_role_name(ctx)));
		objects = lappend(objects,
						  psprintf("%s (owned by %s): GRANT %s TO %s;", name,
								   remote_value(acl, row, ACL_OWNER),
								   remote_value(acl, row, ACL_OWNER),
								   check_role_name(ctx)));
		alters = lappend(alters, psprintf("ALTER TABLE %s OWNER TO %s;",
										  name, check_role_name(ctx)));
	}

	result->ok = not_owned == NIL;
	result->objects = objects;
	if (superuser)
		result->detail = ctx->explicit_list ?
			psprintf("The source role is a superuser; zdm.init will publish a list of %d tables.",
					 list_length(ctx->published)) :
			psprintf("The source role is a superuser; zdm.init will create publication %s FOR ALL TABLES.",
					 ZDM_PUBLICATION);
	else if (result->ok)
		result->detail = psprintf("The source role is not a superuser, so zdm.init will publish the %d tables as a list, not FOR ALL TABLES: a table created on the source later is not published until it is added to publication %s. The role owns every one of them, as the publication and the cutover's read-only triggers require.",
								  list_length(ctx->published), ZDM_PUBLICATION);
	else
		result->detail = psprintf("The source role %s is not a superuser and does not own %d of the tables to publish: %s. Publishing a list of tables and the cutover's read-only triggers (ALTER TABLE ... ENABLE ALWAYS TRIGGER) need their owner.",
								  check_role_name(ctx), list_length(not_owned),
								  check_summary(not_owned));
	result->hint = not_owned == NIL ? NULL :
		psprintf("On the source, as a superuser or the owning role, make the source role a member of the owning role: %s Or give it the tables: %s",
				 statements(fixes), statements(alters));
}

/*
 * table_privileges: on every published table, SELECT (the initial copy),
 * UPDATE, DELETE or TRUNCATE (the fence's LOCK TABLE ... IN EXCLUSIVE MODE;
 * or MAINTAIN from 17) and TRIGGER (the fence's CREATE TRIGGER).  Owners
 * have them unless they were revoked.
 */
void
check_table_privileges(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *acl = table_acl(ctx);
	List	   *lacking = NIL;
	List	   *grants = NIL;
	List	   *objects = NIL;
	int			row;

	check_read_tables(ctx);
	for (row = 0; row < acl->ntuples; row++)
	{
		char	   *name = check_qualified(remote_value(acl, row, ACL_SCHEMA),
										   remote_value(acl, row, ACL_NAME));
		bool		select = strcmp(remote_value(acl, row, ACL_SELECT), "t") == 0;
		bool		lock = strcmp(remote_value(acl, row, ACL_LOCK), "t") == 0;
		bool		trigger = strcmp(remote_value(acl, row, ACL_TRIGGER), "t") == 0;
		StringInfoData privs;

		if ((select && lock && trigger) || !is_published(ctx, name))
			continue;
		initStringInfo(&privs);
		if (!select)
			appendStringInfoString(&privs, "SELECT");
		if (!lock)
			appendStringInfo(&privs, "%sUPDATE", privs.len > 0 ? ", " : "");
		if (!trigger)
			appendStringInfo(&privs, "%sTRIGGER", privs.len > 0 ? ", " : "");
		lacking = lappend(lacking, name);
		grants = lappend(grants, psprintf("GRANT %s ON TABLE %s TO %s;",
										  privs.data, name, check_role_name(ctx)));
		objects = lappend(objects, psprintf("%s (lacks %s): %s", name, privs.data,
											(char *) llast(grants)));
	}

	result->ok = lacking == NIL;
	result->objects = objects;
	result->detail = result->ok ?
		pstrdup("The source role may read, lock and add triggers to every table to publish.") :
		psprintf("The source role lacks privileges on %d of the tables to publish: %s. The initial copy needs SELECT; the cutover's fence needs UPDATE, DELETE or TRUNCATE (LOCK TABLE ... IN EXCLUSIVE MODE) and TRIGGER.",
				 list_length(lacking), check_summary(lacking));
	result->hint = psprintf("On the source, as the tables' owner or a superuser: %s",
							statements(grants));
}

/*
 * function_privileges: EXECUTE on the functions pg_zdm calls on the source.
 */
void
check_function_privileges(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res = remote_query(ctx->conn, function_privileges_sql, 0, NULL,
									 "reading the function privileges of the source role");
	List	   *denied = NIL;
	List	   *grants = NIL;
	List	   *objects = NIL;
	int			row;

	for (row = 0; row < res->ntuples; row++)
	{
		denied = lappend(denied, pstrdup(remote_value(res, row, 0)));
		grants = lappend(grants, psprintf("GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s;",
										  remote_value(res, row, 0),
										  check_role_name(ctx)));
		objects = lappend(objects, psprintf("pg_catalog.%s (no EXECUTE): %s",
											remote_value(res, row, 0),
											(char *) llast(grants)));
	}
	result->ok = denied == NIL;
	result->objects = objects;
	result->detail = result->ok ?
		pstrdup("The source role may execute every function pg_zdm calls on the source.") :
		psprintf("The source role may not execute functions pg_zdm calls on the source: %s (slot creation and removal, the cutover's final position, ending blocking sessions, status).",
				 check_summary(denied));
	result->hint = psprintf("On the source, as a superuser: %s", statements(grants));
}

/*
 * sequence_privileges: the cutover reads every sequence's value (SELECT); a
 * sequence it may not read is left alone on the target, which may then hand
 * out values the source already used.
 */
void
check_sequence_privileges(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res = remote_query(ctx->conn, sequence_privileges_sql, 0, NULL,
									 "reading the sequence privileges of the source role");
	List	   *unreadable = NIL;
	List	   *grants = NIL;
	List	   *objects = NIL;
	int			row;

	for (row = 0; row < res->ntuples; row++)
	{
		char	   *name = check_qualified(remote_value(res, row, 0),
										   remote_value(res, row, 1));

		unreadable = lappend(unreadable, name);
		grants = lappend(grants, psprintf("GRANT SELECT ON SEQUENCE %s TO %s;",
										  name, check_role_name(ctx)));
		objects = lappend(objects, psprintf("%s (not readable): %s", name,
											(char *) llast(grants)));
	}
	result->ok = unreadable == NIL;
	result->objects = objects;
	result->detail = result->ok ?
		pstrdup("The source role may read every sequence; the cutover moves them all ahead on the target.") :
		psprintf("The source role may not read %d sequences: %s. The cutover leaves them unchanged on the target, which may then hand out values the source already used.",
				 list_length(unreadable), check_summary(unreadable));
	result->hint = psprintf("On the source, as the sequences' owner or a superuser: %s",
							statements(grants));
}

/*
 * signal_privilege: after zdm.lock_grace_period the fence ends the open
 * write transactions that keep it from being granted.  A role may end its
 * own sessions (and those of roles whose privileges it has); other roles'
 * need pg_signal_backend; a superuser's need a superuser.  A session the
 * role may not end makes the cutover give up with the source writable.
 */
void
check_signal_privilege(CheckContext *ctx, CheckResult *result)
{
	bool		superuser = check_superuser(ctx);

	result->ok = superuser || role_true(ctx, ROLE_SIGNAL);
	result->detail = superuser ?
		pstrdup("The source role is a superuser: the fence can end any session's open write transaction.") :
		result->ok ?
		pstrdup("The source role is a member of pg_signal_backend: the fence can end the open write transactions of every role except superusers. A superuser's transaction still holding a write lock on a published table after zdm.lock_grace_period makes the cutover give up, the source writable, naming that session.") :
		psprintf("The source role %s is not a member of pg_signal_backend: the fence can end only the open write transactions of roles whose privileges it has. Another role's transaction still holding a write lock on a published table after zdm.lock_grace_period makes the cutover give up, the source writable, naming that session.",
				 check_role_name(ctx));
	result->hint = psprintf("On the source: GRANT pg_signal_backend TO %s;",
							check_role_name(ctx));
}

/*
 * stats_privilege: without pg_read_all_stats, pg_stat_activity hides the
 * details of other roles' sessions: their backend type (walsenders) and
 * transaction start.
 */
void
check_stats_privilege(CheckContext *ctx, CheckResult *result)
{
	result->ok = check_superuser(ctx) || role_true(ctx, ROLE_READ_STATS);
	result->detail = result->ok ?
		pstrdup("The source role sees every session in pg_stat_activity.") :
		psprintf("The source role %s is not a member of pg_read_all_stats: pg_stat_activity hides other roles' session details from it, so the wal_senders and long_transactions checks count only its own sessions, and a cutover that gives up on another role's session cannot say when its transaction started.",
				 check_role_name(ctx));
	result->hint = psprintf("On the source: GRANT pg_read_all_stats TO %s;",
							check_role_name(ctx));
}

/*
 * fence_deadlock_timeout: LOCK TABLE takes the published tables one at a
 * time, so a transaction that wrote to one and then waits for another the
 * fence holds deadlocks with it.  A superuser's fence session raises its
 * own deadlock_timeout so that the detector cancels the application's
 * transaction; anyone else's cannot, and the detector may cancel the fence
 * (the cutover fails, the source stays writable) -- unless
 * zdm.lock_grace_period is shorter than the source's deadlock_timeout, so
 * that the fence ends that transaction first.
 */
void
check_fence_deadlock_timeout(CheckContext *ctx, CheckResult *result)
{
	int			deadlock_ms = atoi(role_value(ctx, ROLE_DEADLOCK_TIMEOUT));

	result->ok = check_superuser(ctx) || zdm_lock_grace_ms < deadlock_ms;
	result->detail = check_superuser(ctx) ?
		pstrdup("The source role is a superuser: the fence session raises its deadlock_timeout, so a deadlock with the fence cancels the other transaction.") :
		psprintf("The source role %s cannot raise the fence session's deadlock_timeout (%d ms on the source)%s zdm.lock_grace_period (%d ms here)%s",
				 check_role_name(ctx), deadlock_ms,
				 result->ok ? "; it is longer than" : ", and it is not longer than",
				 zdm_lock_grace_ms,
				 result->ok ? ", so the fence ends a transaction that deadlocks with it before the deadlock detector runs." :
				 ": a transaction writing to two published tables while the fence takes them may make the deadlock detector cancel the fence instead (the cutover fails, the source stays writable; it can be run again).");
	result->hint = psprintf("SET zdm.lock_grace_period = '%dms' (below the source's deadlock_timeout) in the session before CALL zdm.cutover(), or raise deadlock_timeout on the source.",
							Max(deadlock_ms / 2, 1));
}
