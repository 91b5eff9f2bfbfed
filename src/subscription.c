/*-------------------------------------------------------------------------
 *
 * subscription.c
 *		  The subscription zdm_sub on the target: create and drop.
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
#include "commands/subscriptioncmds.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"

#include "pg_zdm.h"

/*
 * subscription_create: CREATE SUBSCRIPTION zdm_sub CONNECTION conninfo
 * PUBLICATION zdm_pub WITH (create_slot = false, slot_name = slot_name,
 * copy_data = copy_data), in the current transaction.  Its workers start
 * when that transaction commits.
 */
void
subscription_create(const char *conninfo, const char *slot_name,
					bool copy_data)
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
