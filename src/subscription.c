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
 * copy_data = copy_data, enabled = enabled[, streaming = parallel on 16
 * and later]), in the current transaction.  Its workers start when that
 * transaction commits, if enabled.
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
#ifdef ZDM_SUBSCRIPTION_STREAMING
	stmt->options = lappend(stmt->options,
							makeDefElem("streaming",
										(Node *) makeString(ZDM_SUBSCRIPTION_STREAMING), -1));
#endif
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

static int
compare_names(const void *a, const void *b)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/*
 * The strings of names as an array sorted by strcmp, in the current memory
 * context; *n receives its length.
 */
static char **
sorted_names(List *names, int *n)
{
	char	  **array = palloc(sizeof(char *) * Max(list_length(names), 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, names)
		array[i++] = (char *) lfirst(lc);
	qsort(array, i, sizeof(char *), compare_names);
	*n = i;
	return array;
}

/*
 * subscription_table_mismatch: compare the tables of subscription subid with
 * published (quoted qualified names from the source's pg_publication_tables).
 * A table published but not subscribed (created after init, with FOR ALL
 * TABLES) has its changes dropped by the apply worker; a table subscribed but
 * no longer published is neither replicated nor fenced.  Returns NULL when
 * they match, else the differing tables as text, in cxt.  Must run in a
 * transaction.
 *
 * Both lists are sorted and merged: tens of thousands of tables cost
 * milliseconds, and this runs while writes are fenced.  The subscribed
 * names are copied out of SPI's memory, which SPI_finish frees.
 */
char *
subscription_table_mismatch(Oid subid, List *published, MemoryContext cxt)
{
	MemoryContext oldcxt;
	char	  **pub;
	char	  **sub;
	int			npub;
	int			nsub;
	int			i = 0;
	int			j = 0;
	uint64		row;
	StringInfoData diff;
	Oid			types[1] = {OIDOID};
	Datum		values[1];

	oldcxt = MemoryContextSwitchTo(cxt);
	pub = sorted_names(published, &npub);
	MemoryContextSwitchTo(oldcxt);

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
	nsub = (int) SPI_processed;
	sub = MemoryContextAlloc(cxt, sizeof(char *) * Max(nsub, 1));
	for (row = 0; row < SPI_processed; row++)
		sub[row] = MemoryContextStrdup(cxt,
									   SPI_getvalue(SPI_tuptable->vals[row],
													SPI_tuptable->tupdesc, 1));
	SPI_finish();
	qsort(sub, nsub, sizeof(char *), compare_names);

	oldcxt = MemoryContextSwitchTo(cxt);
	initStringInfo(&diff);
	while (i < npub || j < nsub)
	{
		int			cmp = i >= npub ? 1 : j >= nsub ? -1 : strcmp(pub[i], sub[j]);

		if (cmp == 0)
		{
			i++;
			j++;
			continue;
		}
		if (diff.len > 0)
			appendStringInfoString(&diff, ", ");
		if (cmp < 0)
			appendStringInfo(&diff, "%s (published, not subscribed)", pub[i++]);
		else
			appendStringInfo(&diff, "%s (subscribed, no longer published)", sub[j++]);
	}
	MemoryContextSwitchTo(oldcxt);
	return diff.len > 0 ? diff.data : NULL;
}
