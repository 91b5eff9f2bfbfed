/*-------------------------------------------------------------------------
 *
 * subscription.c
 *		  The subscription zdm_sub on the target: create, drop, and compare
 *		  its tables with the publication's.
 *
 * The subscription is created by calling CreateSubscription directly rather
 * than through SPI: the statement text would hold the source password, and
 * SPI puts the text of a failing statement into the error's context.  The
 * slot is created beforehand on the source (create_slot = false): creating
 * it inside CREATE SUBSCRIPTION hangs when source and target share a cluster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_subscription.h"
#include "catalog/pg_type.h"
#include "commands/subscriptioncmds.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "utils/lsyscache.h"	/* get_subscription_oid from 18 */

#include "pg_zdm.h"

/*
 * subscription_create: CREATE SUBSCRIPTION zdm_sub CONNECTION conninfo
 * PUBLICATION zdm_pub WITH (create_slot = false, slot_name = slot_name,
 * copy_data = copy_data, enabled = enabled), in the current transaction.
 * Its workers start when that transaction commits, if enabled.
 */
void
subscription_create(const char *conninfo, const char *slot_name,
					bool copy_data, bool enabled)
{
	CreateSubscriptionStmt *stmt = makeNode(CreateSubscriptionStmt);
	ParseState *pstate = make_parsestate(NULL);

	stmt->subname = ZDM_SUBSCRIPTION;
	stmt->conninfo = pstrdup(conninfo);
	stmt->publication = list_make1(makeString(ZDM_PUBLICATION));
	stmt->options = list_make3(makeDefElem("create_slot",
										   (Node *) makeBoolean(false), -1),
							   makeDefElem("slot_name",
										   (Node *) makeString(pstrdup(slot_name)), -1),
							   makeDefElem("copy_data",
										   (Node *) makeBoolean(copy_data), -1));
	stmt->options = lappend(stmt->options,
							makeDefElem("enabled", (Node *) makeBoolean(enabled), -1));
	CreateSubscription(pstate, stmt, false);
	CommandCounterIncrement();
	free_parsestate(pstate);
}

/*
 * subscription_oid: OID of zdm_sub in this database, InvalidOid if none.
 */
Oid
subscription_oid(void)
{
	return get_subscription_oid(ZDM_SUBSCRIPTION, true);
}

/*
 * subscription_drop: drop zdm_sub here without touching the source (slot
 * and publication are the caller's to remove there).  DROP SUBSCRIPTION
 * stops its workers before it returns.  Returns false if there was none.
 */
bool
subscription_drop(void)
{
	if (!OidIsValid(subscription_oid()))
		return false;
	SPI_connect();
	if (SPI_execute("ALTER SUBSCRIPTION " ZDM_SUBSCRIPTION " DISABLE; "
					"ALTER SUBSCRIPTION " ZDM_SUBSCRIPTION " SET (slot_name = NONE); "
					"DROP SUBSCRIPTION " ZDM_SUBSCRIPTION,
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not drop subscription " ZDM_SUBSCRIPTION);
	SPI_finish();
	return true;
}

static bool
contains_name(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	}
	return false;
}

/*
 * subscription_table_mismatch: compare the tables of subscription subid with
 * published (quoted qualified names from the source's pg_publication_tables).
 * A table published but not subscribed (created after init, with FOR ALL
 * TABLES) has its changes dropped by the apply worker; a table subscribed but
 * no longer published is neither replicated nor fenced.  Returns NULL when
 * they match, else the differing tables as text, in cxt.  Must run in a
 * transaction.
 */
char *
subscription_table_mismatch(Oid subid, List *published, MemoryContext cxt)
{
	List	   *subscribed = NIL;
	ListCell   *lc;
	uint64		i;
	StringInfoData diff;
	Oid			types[1] = {OIDOID};
	Datum		values[1];

	values[0] = ObjectIdGetDatum(subid);
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' "
						"  OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) "
						"FROM pg_catalog.pg_subscription_rel r "
						"JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.srrelid "
						"JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
						"WHERE r.srsubid OPERATOR(pg_catalog.=) $1",
						1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the subscription's tables");
	for (i = 0; i < SPI_processed; i++)
		subscribed = lappend(subscribed,
							 MemoryContextStrdup(cxt,
												 SPI_getvalue(SPI_tuptable->vals[i],
															  SPI_tuptable->tupdesc, 1)));
	SPI_finish();

	initStringInfo(&diff);
	foreach(lc, published)
	{
		if (!contains_name(subscribed, lfirst(lc)))
			appendStringInfo(&diff, "%s%s (published, not subscribed)",
							 diff.len > 0 ? ", " : "", (char *) lfirst(lc));
	}
	foreach(lc, subscribed)
	{
		if (!contains_name(published, lfirst(lc)))
			appendStringInfo(&diff, "%s%s (subscribed, no longer published)",
							 diff.len > 0 ? ", " : "", (char *) lfirst(lc));
	}
	return diff.len > 0 ? MemoryContextStrdup(cxt, diff.data) : NULL;
}
