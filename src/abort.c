/*-------------------------------------------------------------------------
 *
 * abort.c
 *		  CALL zdm.abort(): undo zdm.init.
 *
 * The subscription is dropped here first, with slot_name = NONE so that the
 * drop does not fail when the source is unreachable (PostgreSQL still tries
 * to drop the table-sync slots of tables being copied, and gives up
 * quietly), and committed: only then does the walsender on the source let
 * go of the slot.  Then slot, table
 * synchronization slots and publication go on the source.  An unreachable
 * source does not stop abort: it says what it left there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_abort);

/* How long abort waits for the source to drop slot and publication. */
#define ABORT_SOURCE_TIMEOUT_MS	30000

/*
 * Drop slot and publication on the source; warn about what is left.
 */
static void
clean_source(const MigrationState *state, Oid subid)
{
	char	   *reason = NULL;
	PGconn	   *conn;
	bool		slots_dropped = false;
	bool		publication_dropped = false;

	conn = remote_try_connect(state->source_conninfo, &reason);
	if (conn != NULL)
	{
		slots_dropped = source_drop_slots(conn, state->slot_name, subid,
										  ABORT_SOURCE_TIMEOUT_MS);
		publication_dropped = source_drop_publication(conn, ABORT_SOURCE_TIMEOUT_MS);
		remote_disconnect(conn);
	}

	if (slots_dropped && publication_dropped)
	{
		event_log("abort", "subscription, slot %s and publication %s dropped",
				  state->slot_name, ZDM_PUBLICATION);
		return;
	}
	event_log("abort", "subscription dropped; left on the source:%s%s",
			  slots_dropped ? "" : " replication slot(s)",
			  publication_dropped ? "" : " publication");
	ereport(WARNING,
			(errmsg("the migration was aborted, but the source still has %s",
					!slots_dropped && !publication_dropped ?
					"its replication slot and publication" :
					!slots_dropped ? "its replication slot" : "its publication"),
			 conn == NULL ? errdetail_internal("%s", reason) :
			 errdetail("The source did not drop them in time."),
			 errhint("On the source, run SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s' OR slot_name LIKE 'pg\\_%u\\_sync\\_%%'; and DROP PUBLICATION IF EXISTS %s; an unused slot keeps WAL on the source forever.",
					 state->slot_name, subid, ZDM_PUBLICATION)));
}

/*
 * Remove what a cutover with fallback that failed before its point of no
 * return could not remove itself; warn about what is left.
 */
static void
clean_reverse(const MigrationState *state)
{
	char	   *reason = NULL;
	PGconn	   *source = remote_try_connect(state->source_conninfo, &reason);
	PGconn	   *target = remote_try_connect(state->fallback_conninfo, &reason);

	if (source == NULL || target == NULL ||
		!reverse_remove(source, target, state->fallback_name, ABORT_SOURCE_TIMEOUT_MS))
		ereport(WARNING,
				(errmsg("the reverse replication of an earlier cutover attempt may be left"),
				 errhint("On the source: DROP SUBSCRIPTION IF EXISTS %s (after ALTER SUBSCRIPTION ... DISABLE and SET (slot_name = NONE)); here: SELECT pg_drop_replication_slot('%s'); DROP PUBLICATION IF EXISTS %s.",
						 state->fallback_name, state->fallback_name, ZDM_PUBLICATION)));
	remote_disconnect(source);
	remote_disconnect(target);
}

/*
 * CALL zdm.abort()
 */
Datum
zdm_abort(PG_FUNCTION_ARGS)
{
	MigrationState state;

	require_nonatomic(fcinfo, "zdm.abort",
					  "It commits the drop of the subscription before the source can drop the slot.");
	if (!migration_lock_try())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("another pg_zdm command is running on this database"),
				 errdetail("A cutover or init holds the migration."),
				 errhint("Wait for it to finish, or cancel it; a cutover that fails leaves the source writable by itself.")));

	PG_TRY();
	{
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		if (!state_load(&state))
		{
			bool		dropped = subscription_drop();

			ereport(NOTICE,
					(errmsg("there is no migration to abort"),
					 dropped ? errdetail("A stray subscription %s was dropped.", ZDM_SUBSCRIPTION) : 0));
		}
		else if (strcmp(state.phase, "streaming") != 0 &&
				 strcmp(state.phase, "cutover") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 strcmp(state.phase, "completed") == 0 ?
					 errmsg("the migration is complete and cannot be aborted") :
					 strcmp(state.phase, "detaching") == 0 ?
					 errmsg("the migration is being detached and cannot be aborted") :
					 errmsg("the migration is past its cutover and cannot be aborted"),
					 errdetail("It is in phase %s: the source was made read-only for good when the cutover passed its point of no return.",
							   state.phase),
					 strcmp(state.phase, "detaching") == 0 ?
					 errhint("Run CALL zdm.cutover() to finish the detach.") :
					 strcmp(state.phase, "completed") == 0 && state.fallback_name ?
					 errhint("CALL zdm.fallback() moves the application back to the source; CALL zdm.finish() ends the migration here.") :
					 errhint("CALL zdm.finish() ends the migration; the README says how to make a read-only side writable by hand.")));
		else
		{
			Oid			subid = subscription_oid();

			copy_undo();
			subscription_drop();
			state_delete();
			SPI_commit();
			SPI_start_transaction();
			clean_source(&state, subid);
			if (state.fallback_name != NULL)
				clean_reverse(&state);
			ereport(NOTICE,
					(errmsg("migration aborted"),
					 errdetail("Subscription %s is gone here; the source was never locked and stays writable.",
							   ZDM_SUBSCRIPTION)));
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		migration_lock_release();
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
