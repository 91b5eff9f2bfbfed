/*-------------------------------------------------------------------------
 *
 * source.c
 *		  Removing the migration's objects from the source: the slot, the
 *		  table synchronization slots, the publication, and sessions of ours
 *		  that must not outlive a failure.
 *
 * These run in cleanup paths (a failed init, abort, the end of a cutover),
 * so they never throw: each gives up after a bounded time and says whether
 * it succeeded, and the caller reports what is left behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

/* Pause between attempts to drop a slot a walsender still holds. */
#define SLOT_RETRY_MS	50

/* Pause between looks at whether a terminated session is gone (before 14). */
#define END_SESSION_POLL_MS	20

/*
 * source_drop_slots: drop the subscription's slot and, when subid is valid,
 * the table synchronization slots its copy left (pg_<subid>_sync_...).
 * A walsender may still hold a slot for a moment after the subscription's
 * workers stopped; retry until it lets go or timeout_ms passes.  Returns
 * true when none of them is left.
 */
bool
source_drop_slots(PGconn *conn, const char *slot_name, Oid subid,
				  int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);
	char	   *sync_pattern = OidIsValid(subid) ?
		psprintf("pg\\_%u\\_sync\\_%%", subid) : pstrdup("");
	const char *params[2] = {slot_name, sync_pattern};

	for (;;)
	{
		RemoteResult *res;

		/* fails when a walsender grabs a slot between check and drop */
		res = remote_query_quietly(conn,
								   "WITH ours AS (SELECT slot_name, active_pid "
								   "  FROM pg_replication_slots "
								   "  WHERE slot_name = $1 OR ($2 <> '' AND slot_name LIKE $2)), "
								   "dropped AS (SELECT pg_drop_replication_slot(slot_name) "
								   "  FROM ours WHERE active_pid IS NULL) "
								   "SELECT (SELECT count(*) FROM dropped), "
								   "       (SELECT count(*) FROM ours WHERE active_pid IS NOT NULL)",
								   2, params, timeout_ms);
		if (res != NULL && strcmp(remote_value(res, 0, 1), "0") == 0)
			return true;
		if (PQstatus(conn) != CONNECTION_OK ||
			GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 SLOT_RETRY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Source tables that a publication listing its tables leaves out (created
 * after init, when the source role could not publish FOR ALL TABLES).
 * pg_publication_rel holds the listed tables, one indexed lookup each.
 */
static const char *unpublished_sql =
"SELECT n.nspname, c.relname FROM pg_class c "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND EXISTS (SELECT 1 FROM pg_publication p "
"              WHERE p.pubname = '" ZDM_PUBLICATION "' AND NOT p.puballtables) "
"  AND NOT EXISTS (SELECT 1 FROM pg_publication_rel r "
"                  JOIN pg_publication p ON p.oid = r.prpubid "
"                  WHERE p.pubname = '" ZDM_PUBLICATION "' AND r.prrelid = c.oid) "
"ORDER BY 1, 2";

/*
 * source_unpublished_tables: the source's tables that a publication listing
 * its tables leaves out, quoted and qualified, in name order (none for a
 * FOR ALL TABLES publication).
 */
List *
source_unpublished_tables(PGconn *conn)
{
	RemoteResult *res = remote_query(conn, unpublished_sql, 0, NULL,
									 "listing the unpublished tables");
	List	   *tables = NIL;
	int			row;

	for (row = 0; row < res->ntuples; row++)
		tables = lappend(tables,
						 (char *) quote_qualified_identifier(remote_value(res, row, 0),
															 remote_value(res, row, 1)));
	return tables;
}

/*
 * source_drop_publication: DROP PUBLICATION IF EXISTS zdm_pub.
 */
bool
source_drop_publication(PGconn *conn, int timeout_ms)
{
	return remote_command_quietly(conn,
								  "DROP PUBLICATION IF EXISTS " ZDM_PUBLICATION,
								  0, NULL, timeout_ms);
}

/*
 * source_end_session: terminate source backend pid and wait up to wait_ms
 * for it to exit.  Returns true once it is gone (or was never there).
 */
bool
source_end_session(PGconn *conn, int pid, int wait_ms)
{
	char		pidtext[16];
	char		waittext[16];
	const char *params[2] = {pidtext, waittext};
	SourceFeatures features;
	TimestampTz deadline;
	RemoteResult *res;

	snprintf(pidtext, sizeof(pidtext), "%d", pid);
	snprintf(waittext, sizeof(waittext), "%d", wait_ms);
	source_features(conn, &features);
	if (features.terminate_waits)
	{
		res = remote_query_quietly(conn,
								   "SELECT coalesce(bool_and(pg_terminate_backend(pid, $2::int)), true) "
								   "FROM pg_stat_activity WHERE pid = $1::int",
								   2, params, wait_ms + 1000);
		return res != NULL && strcmp(remote_value(res, 0, 0), "t") == 0;
	}

	/* before 14: signal, then watch pg_stat_activity until it is gone */
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	res = remote_query_quietly(conn,
							   "SELECT coalesce(bool_and(pg_terminate_backend(pid)), true) "
							   "FROM pg_stat_activity WHERE pid = $1::int",
							   1, params, wait_ms + 1000);
	while (res != NULL && strcmp(remote_value(res, 0, 0), "t") == 0)
	{
		res = remote_query_quietly(conn,
								   "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity "
								   "WHERE pid = $1::int)",
								   1, params, 1000);
		if (res == NULL || strcmp(remote_value(res, 0, 0), "t") == 0 ||
			GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 END_SESSION_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	return res != NULL && strcmp(remote_value(res, 0, 0), "t") == 0;
}
