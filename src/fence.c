/*-------------------------------------------------------------------------
 *
 * fence.c
 *		  The write fence on the source: nothing can commit a change to a
 *		  published table while it holds, and it goes away by itself when the
 *		  cutover does.
 *
 * The fence is one transaction in a source session of its own that holds
 * LOCK TABLE ... IN EXCLUSIVE MODE on every published table and on the
 * partitioned tables above them (writes through those reach the published
 * partitions, and fire the parent's statement triggers only).  EXCLUSIVE
 * conflicts with the ROW EXCLUSIVE lock every INSERT, UPDATE, DELETE, MERGE
 * and COPY FROM takes, and with TRUNCATE and DDL, for every role and every
 * session, whatever default_transaction_read_only says; plain SELECT still
 * runs.  Writers that come later queue behind the fence.  Transactions that
 * already hold a conflicting lock are given zdm.lock_grace_period to end,
 * then terminated (they were never acknowledged, so nothing is lost).  When
 * only sessions the source role may not terminate are left in the way (a
 * superuser's, or another role's without pg_signal_backend), the fence
 * gives up at once with an error naming the session: the source is
 * writable again, and the cutover can be retried once that session is gone.
 *
 * LOCK TABLE takes its tables one at a time, so a transaction that wrote to
 * one of them and then waits for another we already hold deadlocks with the
 * fence.  The fence session raises its own deadlock_timeout (superusers
 * only), so that the detector, which runs in whichever waiter's timeout
 * fires first, picks the application's transaction: it was never
 * acknowledged, and the fence goes on.
 *
 * Because the fence is a transaction on a connection, failures end it: on an
 * ERROR the worker terminates the fence session (fence_release); a killed
 * worker or a restarted target closes the connection and the source rolls
 * the transaction back.  A backend still waiting for the LOCK does not read
 * its socket, so the fence session also has lock_timeout (the cutover's
 * remaining time) and client_connection_check_interval.  If the target goes
 * silent once the fence holds, the session's
 * idle_in_transaction_session_timeout (zdm.fence_idle_timeout) ends it; the
 * worker pings the fence while it waits so that the timeout only fires when
 * the target is really gone.  One wait has no bound on the source side: a
 * COMMIT of the fence waiting for a synchronous standby.
 *
 * In the same transaction the fence creates what keeps the source read-only
 * after success: schema zdm_fence with a statement trigger on every published
 * table, on the partitioned tables above them and on every unlogged table,
 * rejecting writes, enabled ALWAYS so that session_replication_role =
 * replica does not skip it, and, when the role is a superuser, an event
 * trigger that rejects new tables.  Committing the fence (fence_commit) is
 * the cutover's point of no return: it publishes those triggers and releases
 * the locks in one step, so the writers queued behind the fence wake up to
 * the triggers.  Rolling it back leaves no trace.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/* How often the fence looks for sessions to terminate once the grace ends. */
#define TERMINATE_INTERVAL_MS	100

/* How long the fence commit and the look at its outcome may take. */
#define COMMIT_TIMEOUT_MS	30000

/* fence_make_permanent's statements are still running in the fence session */
static bool permanent_pending = false;

/*
 * fence_published_tables: the tables of the publication, quoted and
 * qualified, from the source's catalog, in name order.
 */
List *
fence_published_tables(PGconn *control)
{
	RemoteResult *res;
	List	   *tables = NIL;
	int			row;

	res = remote_query(control,
					   "SELECT schemaname, tablename FROM pg_publication_tables "
					   "WHERE pubname = '" ZDM_PUBLICATION "' ORDER BY 1, 2",
					   0, NULL, "listing the published tables");
	for (row = 0; row < res->ntuples; row++)
		tables = lappend(tables,
						 (char *) quote_qualified_identifier(remote_value(res, row, 0),
															 remote_value(res, row, 1)));
	return tables;
}

/*
 * The partitioned tables above the published tables, as (nspname, relname):
 * pg_inherits, not pg_partition_ancestors, which is from PostgreSQL 12.
 * Also run inside fence_make_permanent's DO block.
 */
#define PARTITIONED_PARENTS_SQL \
	"WITH RECURSIVE up(relid) AS (" \
	"  SELECT i.inhparent FROM pg_publication_tables p " \
	"  JOIN pg_namespace n ON n.nspname = p.schemaname " \
	"  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename " \
	"  JOIN pg_inherits i ON i.inhrelid = c.oid " \
	"  WHERE p.pubname = '" ZDM_PUBLICATION "' " \
	"  UNION " \
	"  SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.relid) " \
	"SELECT n.nspname, c.relname FROM up " \
	"JOIN pg_class c ON c.oid = up.relid " \
	"JOIN pg_namespace n ON n.oid = c.relnamespace " \
	"WHERE c.relkind = 'p'"

/*
 * The partitions below the published partitioned tables, as (nspname,
 * relname).  A publication with publish_via_partition_root lists the
 * partitioned table (the reverse publication of a fallback does, for a table
 * partitioned on the target only): LOCK TABLE on it reaches its partitions,
 * but its statement triggers do not fire for a write made to a partition
 * directly.  Run inside fence_make_permanent's DO block.
 */
#define PARTITIONS_BELOW_SQL \
	"WITH RECURSIVE down(relid) AS (" \
	"  SELECT i.inhrelid FROM pg_publication_tables p " \
	"  JOIN pg_namespace n ON n.nspname = p.schemaname " \
	"  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename " \
	"  JOIN pg_inherits i ON i.inhparent = c.oid " \
	"  WHERE p.pubname = '" ZDM_PUBLICATION "' AND c.relkind = 'p' " \
	"  UNION " \
	"  SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid) " \
	"SELECT n.nspname, c.relname FROM down " \
	"JOIN pg_class c ON c.oid = down.relid " \
	"JOIN pg_namespace n ON n.oid = c.relnamespace"

/*
 * fence_partitioned_parents: the partitioned tables above the published
 * tables (a publication lists leaf partitions), quoted and qualified, in
 * name order.  A write through a partitioned table locks it before its
 * partitions and fires its statement triggers, not theirs: the fence must
 * lock it and make it read-only too.  pg_inherits, not
 * pg_partition_ancestors, which is from PostgreSQL 12.
 */
static List *
fence_partitioned_parents(PGconn *control)
{
	RemoteResult *res;
	List	   *parents = NIL;
	int			row;

	res = remote_query(control, PARTITIONED_PARENTS_SQL " ORDER BY 1, 2",
					   0, NULL, "listing the partitioned tables above the published ones");
	for (row = 0; row < res->ntuples; row++)
		parents = lappend(parents,
						  (char *) quote_qualified_identifier(remote_value(res, row, 0),
															  remote_value(res, row, 1)));
	return parents;
}

static char *
join_names(List *names)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, names)
	{
		if (buf.len > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, (char *) lfirst(lc));
	}
	return buf.data;
}

/*
 * The sessions that keep the fence from being granted, whether the source
 * role may terminate each, and the termination of those it may.  The rules
 * are pg_signal_backend()'s (10 to 18): a superuser may end any session; no
 * one else a superuser's; a role those of roles whose privileges it has, and
 * any other with pg_signal_backend.  Sessions without a role (autovacuum;
 * PostgreSQL cancels it for a waiting lock itself) are left alone unless the
 * role is a superuser.  Deciding before calling pg_terminate_backend keeps
 * one unterminable session from failing the whole statement.
 */
static const char *blockers_sql =
"SELECT b.pid, a.usename, a.application_name, a.xact_start, a.query_start, "
"       CASE WHEN m.may THEN pg_terminate_backend(b.pid) END, m.may, "
"       (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid), "
"       quote_ident(current_user) "
"FROM unnest(pg_blocking_pids($1::int)) AS b(pid) "
"LEFT JOIN pg_stat_activity a ON a.pid = b.pid "
"CROSS JOIN LATERAL (SELECT CASE "
"    WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN true "
"    WHEN a.usesysid IS NULL THEN NULL "
"    WHEN (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid) THEN false "
"    ELSE pg_has_role(a.usesysid, 'USAGE') "
"         OR pg_has_role('pg_signal_backend', 'USAGE') END AS may) m "
"WHERE b.pid <> 0 "
"ORDER BY a.xact_start NULLS LAST, b.pid";

/* Columns of blockers_sql. */
enum
{
	BLOCKER_PID,
	BLOCKER_USER,
	BLOCKER_APPLICATION,
	BLOCKER_XACT_START,
	BLOCKER_QUERY_START,
	BLOCKER_TERMINATED,
	BLOCKER_MAY,
	BLOCKER_SUPERUSER,
	BLOCKER_SOURCE_ROLE
};

/* The call that retries a fence given up on the server control reaches. */
static const char *
fence_retry(PGconn *control)
{
	return strcmp(remote_side(control), "target") == 0 ?
		"CALL zdm.fallback()" : "CALL zdm.cutover()";
}

/*
 * Terminate the sessions that keep the fence from being granted.
 * Returns how many were terminated.  When only sessions that the source
 * role may not terminate stand in the way -- a superuser's, or another
 * role's without pg_signal_backend -- waiting longer is pointless: throw,
 * naming the first of them (the caller's error cleanup releases the fence,
 * and the source is writable again).  A session it may not terminate that
 * is only queued behind one it terminates gets its lock and finishes, so
 * the fence gives up only once nothing it can end is left.
 */
static int
terminate_blockers(PGconn *control, int fence_pid)
{
	char		pid[16];
	const char *params[1] = {pid};
	RemoteResult *res;
	int			terminated = 0;
	bool		progress = false;
	int			stuck = -1;
	int			nstuck = 0;
	int			row;

	snprintf(pid, sizeof(pid), "%d", fence_pid);
	res = remote_query(control, blockers_sql, 1, params,
					   "ending transactions that block the fence");
	for (row = 0; row < res->ntuples; row++)
	{
		const char *may = remote_value(res, row, BLOCKER_MAY);
		const char *done = remote_value(res, row, BLOCKER_TERMINATED);

		if (may == NULL)
			continue;			/* no role: not ours to end, not a reason to stop */
		if (strcmp(may, "f") == 0)
		{
			if (stuck < 0)
				stuck = row;
			nstuck++;
			continue;
		}
		/* false: it had already gone, which is progress all the same */
		progress = true;
		if (done != NULL && strcmp(done, "t") == 0)
			terminated++;
	}

	if (stuck >= 0 && !progress)
	{
		const char *spid = remote_value(res, stuck, BLOCKER_PID);
		const char *user = remote_value(res, stuck, BLOCKER_USER);
		const char *app = remote_value(res, stuck, BLOCKER_APPLICATION);
		const char *xact = remote_value(res, stuck, BLOCKER_XACT_START);
		const char *query = remote_value(res, stuck, BLOCKER_QUERY_START);
		const char *super = remote_value(res, stuck, BLOCKER_SUPERUSER);
		bool		superuser = super != NULL && strcmp(super, "t") == 0;
		const char *role = remote_value(res, stuck, BLOCKER_SOURCE_ROLE);

		const char *side = remote_side(control);
		const char *retry = fence_retry(control);

		user = quote_identifier(user ? user : "?");
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not fence writes: %s session %s of %s %s holds a lock on a published table and role %s may not terminate it",
						side, spid, superuser ? "superuser" : "role", user, role),
				 errdetail("Session %s (user %s, application_name %s, transaction started %s, query started %s) was still in the way after zdm.lock_grace_period%s. %s "
						   "The fence was given up and released: the %s is writable and replication goes on.",
						   spid, user, quote_literal_cstr(app ? app : ""),
						   xact ? xact : "(hidden: the role is not in pg_read_all_stats)",
						   query ? query : "(hidden)",
						   nstuck > 1 ? psprintf(", with %d more sessions it may not terminate", nstuck - 1) : "",
						   superuser ?
						   "Only a superuser may terminate a superuser's session." :
						   "Terminating another role's session needs membership in pg_signal_backend.",
						   side),
				 superuser ?
				 errhint("End that transaction (a superuser can run SELECT pg_terminate_backend(%s); on the %s), or keep superusers from writing to the published tables meanwhile, then run %s again.",
						 spid, side, retry) :
				 errhint("On the %s, GRANT pg_signal_backend TO %s; lets the fence end such sessions; or end that transaction (SELECT pg_terminate_backend(%s); on the %s), then run %s again.",
						 side, role, spid, side, retry)));
	}
	return terminated;
}

/*
 * fence_acquire: open the fence session and take the fence.  *fence is set
 * as soon as the session exists, so that a failure while the LOCK still
 * waits can end it with fence_release (closing the connection would not: a
 * backend waiting for a lock does not notice its client is gone, and its
 * queued request would keep blocking writers).  Returns once the locks are
 * granted, the session in an open transaction holding them.  While it waits,
 * still_wanted(arg) is called on every wakeup and throws when the cutover
 * must stop (timeout, cancel).  tables are the published tables, as
 * fence_published_tables returned them before the fence (fetched once, so
 * that nothing proportional to the table count runs twice); fence_verify
 * then proves that they are still every published table.
 */
void
fence_acquire(const char *dsn, PGconn *control, List *tables,
			  PGconn **fence_out, int lock_timeout_ms,
			  void (*still_wanted) (void *arg), void *arg)
{
	List	   *parents;
	ListCell   *lc;
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz next_terminate;
	StringInfoData sql;
	SourceFeatures features;
	PGconn	   *fence;
	int			terminated = 0;

	if (tables == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("publication %s on the %s has no tables to fence", ZDM_PUBLICATION,
						remote_side(control))));
	parents = fence_partitioned_parents(control);

	fence = remote_connect_to(dsn, remote_side(control), "to fence writes");
	remote_keep_across_abort(fence);
	*fence_out = fence;

	source_features(fence, &features);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SET idle_in_transaction_session_timeout = %d; "
					 "SET statement_timeout = 0; SET lock_timeout = %d; "
					 "%s"
					 "SET synchronous_commit = on; "
					 "SELECT set_config('deadlock_timeout', '1h', false) "
					 "FROM pg_roles WHERE rolname = current_user AND rolsuper",
					 zdm_fence_idle_timeout_ms, Max(lock_timeout_ms, 1),
	/* before 14, a waiting LOCK notices a gone target only by lock_timeout */
					 features.connection_check ?
					 "SET client_connection_check_interval = '1s'; " : "");
	remote_command(fence, sql.data, "setting up the fence session");

	/*
	 * Partitioned tables first (ONLY: their partitions that are not
	 * published stay writable), as a write through one locks it before its
	 * partitions: that writer then cannot hold a partition the fence waits
	 * for while it waits for the fence.
	 */
	resetStringInfo(&sql);
	appendStringInfoString(&sql, "BEGIN; LOCK TABLE ");
	foreach(lc, parents)
		appendStringInfo(&sql, "ONLY %s, ", (char *) lfirst(lc));
	appendStringInfo(&sql, "%s IN EXCLUSIVE MODE", join_names(tables));
	remote_send(fence, sql.data, "fencing writes");

	next_terminate = TimestampTzPlusMilliseconds(started, zdm_lock_grace_ms);
	while (!remote_result_ready(fence, "fencing writes"))
	{
		still_wanted(arg);
		if (GetCurrentTimestamp() >= next_terminate)
		{
			terminated += terminate_blockers(control, PQbackendPID(fence));
			next_terminate = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 TERMINATE_INTERVAL_MS);
		}
		(void) WaitLatchOrSocket(MyLatch,
								 WL_LATCH_SET | WL_SOCKET_READABLE |
								 WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 PQsocket(fence), TERMINATE_INTERVAL_MS,
								 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	(void) remote_receive(fence, "fencing writes");

	if (terminated > 0)
		ereport(NOTICE,
				(errmsg_plural("terminated %d %s session whose open write transaction blocked the fence",
							   "terminated %d %s sessions whose open write transactions blocked the fence",
							   terminated, terminated, remote_side(control)),
				 errdetail("They were open longer than zdm.lock_grace_period; their transactions were rolled back and never acknowledged.")));
}

/*
 * fence_verify: with the fence held, prove that the locked tables are still
 * exactly the published ones -- a table created (FOR ALL TABLES) or added
 * to the publication between the listing and the lock would not be fenced.
 * One query of constant size, whatever the table count: every published
 * table must be locked EXCLUSIVE by the fence session, and there must be as
 * many as the fence locked (ntables, the length of fence_acquire's list).
 * Throws, naming the count, when they differ.
 */
void
fence_verify(PGconn *control, PGconn *fence, int ntables)
{
	char		pid[16];
	const char *params[1] = {pid};
	RemoteResult *res;
	long		published;
	long		locked;

	snprintf(pid, sizeof(pid), "%d", PQbackendPID(fence));
	res = remote_query(control,
					   "SELECT count(*), count(l.relation) "
					   "FROM pg_publication_tables p "
					   "JOIN pg_namespace n ON n.nspname = p.schemaname "
					   "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
					   "LEFT JOIN (SELECT DISTINCT relation FROM pg_locks "
					   "  WHERE locktype = 'relation' AND pid = $1::int "
					   "    AND mode = 'ExclusiveLock' AND granted "
					   "    AND database = (SELECT oid FROM pg_database "
					   "                    WHERE datname = current_database())) l "
					   "  ON l.relation = c.oid "
					   "WHERE p.pubname = '" ZDM_PUBLICATION "'",
					   1, params, "verifying the fence");
	published = atol(remote_value(res, 0, 0));
	locked = atol(remote_value(res, 0, 1));
	if (published != ntables || locked != ntables)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the published tables changed while they were fenced"),
				 errdetail("The fence locked %d tables; the publication now has %ld, %ld of them locked. Writes were blocked; the fence is released.",
						   ntables, published, locked),
				 strcmp(remote_side(control), "target") == 0 ?
				 errhint("Tables were added to or removed from publication %s here; restore it and run CALL zdm.fallback() again.",
						 ZDM_PUBLICATION) :
				 errhint("Run ALTER SUBSCRIPTION %s REFRESH PUBLICATION on this target (outside a transaction block), wait until zdm.status() is ready, and cut over again.",
						 ZDM_SUBSCRIPTION)));
}

/*
 * fence_make_permanent: in the fence transaction, create what keeps the
 * source read-only once the fence commits:
 *
 * - a trigger rejecting writes on every published table, on the
 *   partitioned tables above them (a write through one fires its statement
 *   triggers, not its partitions'), and on the partitions below a published
 *   partitioned table (a write to one directly fires only its own);
 * - the same on every unlogged table (not replicated, so not fenced, but an
 *   application still pointed at the source must not write there either);
 *   each is given at most a second for its lock, and one that is busy or
 *   not the role's to alter is skipped with a WARNING in the source's log:
 *   these tables are not part of the migration and must not hold it up;
 * - when the source role is a superuser (event triggers need one), an
 *   event trigger rejecting tables created from now on (temporary ones
 *   excepted): writes to them would not be blocked by any trigger.  Its
 *   function runs in every session that creates a table, superusers'
 *   included, so it pins its search_path: a caller's hostile one must not
 *   resolve the names it uses.
 *
 * With let_in (a cutover with fallback: the name of the reverse
 * subscription), the triggers let that subscription's workers write: their
 * pids are in pg_stat_subscription, which no other session can fake (a
 * session_replication_role = replica test would let any superuser's
 * session through).  Apply fires statement triggers for TRUNCATE only.
 *
 * One statement of constant size that loops over the catalogs on the source
 * (fence_verify proved that the publication is the fenced set): sending a
 * CREATE TRIGGER per table would make the message, and its parse on the
 * source, grow with the table count.  Sent without waiting, as soon as the
 * fence holds, so that it runs while the target catches up; fence_commit
 * collects it.  Large objects and sequences cannot be protected this way
 * (README, "What is not migrated").
 */
void
fence_make_permanent(PGconn *fence, const char *let_in)
{
	StringInfoData sql;
	SourceFeatures features;
	const char *execute;

	/* PostgreSQL 10 spells it EXECUTE PROCEDURE */
	source_features(fence, &features);
	execute = features.execute_function ? "FUNCTION" : "PROCEDURE";
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE SCHEMA " ZDM_FENCE_SCHEMA "; "
					 "CREATE FUNCTION " ZDM_FENCE_SCHEMA ".reject_write() "
					 "RETURNS trigger LANGUAGE plpgsql "
					 "SET search_path = pg_catalog, pg_temp AS $zdm$ BEGIN "
					 "%s"
					 "RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', "
					 "MESSAGE = 'this database was migrated by pg_zdm and is read-only', "
					 "HINT = 'Write to the server pg_zdm moved the application to. To make this one writable again: "
					 "DROP SCHEMA " ZDM_FENCE_SCHEMA " CASCADE.'; "
					 "END $zdm$; "
					 "DO $zdm$ DECLARE t text; old_timeout text; BEGIN "
					 "FOR t IN SELECT format('%%I.%%I', schemaname, tablename) "
					 "  FROM pg_publication_tables WHERE pubname = '" ZDM_PUBLICATION "' "
					 "  UNION ALL SELECT format('%%I.%%I', nspname, relname) "
					 "  FROM (" PARTITIONED_PARENTS_SQL ") parents "
					 "  UNION ALL SELECT format('%%I.%%I', nspname, relname) "
					 "  FROM (" PARTITIONS_BELOW_SQL ") below LOOP "
					 "EXECUTE 'CREATE TRIGGER zdm_reject_write BEFORE INSERT OR UPDATE "
					 "OR DELETE OR TRUNCATE ON ' || t || ' FOR EACH STATEMENT "
					 "EXECUTE %s " ZDM_FENCE_SCHEMA ".reject_write()'; "
					 "EXECUTE 'ALTER TABLE ' || t || ' ENABLE ALWAYS TRIGGER zdm_reject_write'; "
					 "END LOOP; "
					 "old_timeout := current_setting('lock_timeout'); "
					 "PERFORM set_config('lock_timeout', '1s', true); "
					 "FOR t IN SELECT format('%%I.%%I', n.nspname, c.relname) "
					 "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
					 "  WHERE c.relkind = 'r' AND c.relpersistence = 'u' "
					 "    AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' LOOP "
					 "BEGIN "
					 "EXECUTE 'CREATE TRIGGER zdm_reject_write BEFORE INSERT OR UPDATE "
					 "OR DELETE OR TRUNCATE ON ' || t || ' FOR EACH STATEMENT "
					 "EXECUTE %s " ZDM_FENCE_SCHEMA ".reject_write()'; "
					 "EXECUTE 'ALTER TABLE ' || t || ' ENABLE ALWAYS TRIGGER zdm_reject_write'; "
					 "EXCEPTION WHEN lock_not_available OR insufficient_privilege THEN "
					 "RAISE WARNING 'pg_zdm: unlogged table %% keeps accepting writes: %%', t, SQLERRM; "
					 "END; "
					 "END LOOP; "
					 "PERFORM set_config('lock_timeout', old_timeout, true); "
					 "IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN "
					 "EXECUTE 'CREATE FUNCTION " ZDM_FENCE_SCHEMA ".reject_create() "
					 "RETURNS event_trigger LANGUAGE plpgsql "
					 "SET search_path = pg_catalog, pg_temp AS $f$ BEGIN "
					 "IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() "
					 "  WHERE object_type = ''table'' AND schema_name !~ ''^pg_temp'') THEN "
					 "RAISE EXCEPTION USING ERRCODE = ''read_only_sql_transaction'', "
					 "MESSAGE = ''this database was migrated by pg_zdm and is read-only: no new tables'', "
					 "HINT = ''Write to the server pg_zdm moved the application to. To make this one writable again: "
					 "DROP SCHEMA " ZDM_FENCE_SCHEMA " CASCADE.''; "
					 "END IF; END $f$'; "
					 "EXECUTE 'CREATE EVENT TRIGGER zdm_reject_create ON ddl_command_end "
					 "WHEN TAG IN (''CREATE TABLE'', ''CREATE TABLE AS'', ''SELECT INTO'') "
					 "EXECUTE %s " ZDM_FENCE_SCHEMA ".reject_create()'; "
					 "EXECUTE 'ALTER EVENT TRIGGER zdm_reject_create ENABLE ALWAYS'; "
					 "END IF; "
					 "END $zdm$",
					 let_in ?
					 psprintf("IF EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription st "
							  "JOIN pg_catalog.pg_subscription s ON s.oid = st.subid "
							  "WHERE st.pid = pg_catalog.pg_backend_pid() AND s.subname = %s) THEN "
							  "RETURN NULL; END IF; ", quote_literal_cstr(let_in)) : "",
					 execute, execute, execute);
	remote_send(fence, sql.data, "making the source read-only");
	permanent_pending = true;
}

/*
 * fence_ping: keep the fence session's idle timer from firing while the
 * worker waits.  Only when it is idle; a fence still busy with
 * fence_make_permanent is not idle anyway.
 */
void
fence_ping(PGconn *fence)
{
	if (permanent_pending)
	{
		if (!remote_result_ready(fence, "making the source read-only"))
			return;
		(void) remote_receive(fence, "making the source read-only");
		permanent_pending = false;
	}
	remote_command(fence, "SELECT 1", "watching the fence");
}

/*
 * fence_finish_permanent: wait for fence_make_permanent's statements; throws
 * their error.  Still before the point of no return.
 */
void
fence_finish_permanent(PGconn *fence)
{
	if (permanent_pending)
	{
		(void) remote_receive(fence, "making the source read-only");
		permanent_pending = false;
	}
}

/*
 * fence_commit: the point of no return.  Run before_commit (the cutover
 * drops the publication, and with fallback enables the reverse
 * subscription) and commit: the read-only triggers become permanent and the
 * locks go.  Never throws: returns false when the commit could not be
 * confirmed (fence_outcome then says what happened).
 */
bool
fence_commit(PGconn *fence, const char *before_commit)
{
	return remote_command_quietly(fence,
								  before_commit ?
								  psprintf("%s; COMMIT", before_commit) : "COMMIT",
								  0, NULL, COMMIT_TIMEOUT_MS);
}

/*
 * fence_outcome: after a fence commit that could not be confirmed, end the
 * fence session for certain and then ask the source whether the commit
 * happened (schema zdm_fence exists).  Asking before the session is gone
 * could miss a commit still in progress.  Never throws.
 */
FenceOutcome
fence_outcome(const char *dsn, int fence_pid)
{
	char	   *reason;
	PGconn	   *conn;
	RemoteResult *res = NULL;
	int			attempt;

	conn = remote_connect_quietly(dsn, COMMIT_TIMEOUT_MS, &reason);
	if (conn == NULL)
		return FENCE_UNKNOWN;
	for (attempt = 0; attempt < 30; attempt++)
	{
		if (source_end_session(conn, fence_pid, 1000))
		{
			res = remote_query_quietly(conn,
									   "SELECT EXISTS (SELECT 1 FROM pg_namespace "
									   "WHERE nspname = '" ZDM_FENCE_SCHEMA "')",
									   0, NULL, COMMIT_TIMEOUT_MS);
			break;
		}
		if (PQstatus(conn) != CONNECTION_OK)
			break;
	}
	remote_disconnect(conn);
	if (res == NULL)
		return FENCE_UNKNOWN;
	return strcmp(remote_value(res, 0, 0), "t") == 0 ?
		FENCE_COMMITTED : FENCE_ROLLED_BACK;
}

/*
 * fence_release: end the fence without a trace, and be sure it is gone
 * before returning: the fence session is terminated through the control
 * connection, or a new one (a LOCK still waiting in it would otherwise keep
 * writers queued).  Never throws; returns whether the termination was
 * confirmed, and warns when it was not.
 */
bool
fence_release(PGconn *fence, PGconn *control, const char *dsn)
{
	int			pid;
	PGconn	   *helper;
	char	   *reason;
	bool		released = false;

	const char *side;

	if (fence == NULL)
		return true;
	side = remote_side(fence);
	permanent_pending = false;
	pid = PQbackendPID(fence);
	remote_disconnect(fence);
	if (control != NULL && PQstatus(control) == CONNECTION_OK &&
		!PQisBusy(control) && source_end_session(control, pid, 5000))
		return true;
	/* the control connection is busy or broken: a new one */
	helper = remote_connect_quietly(dsn, 5000, &reason);
	if (helper != NULL)
		released = source_end_session(helper, pid, 5000);
	remote_disconnect(helper);
	if (!released)
		ereport(WARNING,
				(errmsg("could not make sure the fence session on the %s has ended", side),
				 errdetail("Its lock_timeout or zdm.fence_idle_timeout ends it there."),
				 errhint("On the %s, SELECT pg_terminate_backend(%d) ends it now.", side, pid)));
	return released;
}
