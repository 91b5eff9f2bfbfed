/*-------------------------------------------------------------------------
 *
 * reverse.c
 *		  The reverse replication of a cutover with fallback: from this
 *		  target back to the source.
 *
 * Three objects, all named by fallback_name() except the publication: on
 * this target publication zdm_pub over the tables the forward subscription
 * fills, and a logical slot; on the source a subscription to them, created
 * disabled.  They are made before the cutover locks anything, so that
 * whatever can fail (a privilege, the source reaching this target at all)
 * fails while the source is still writable.
 *
 * Where the reverse stream starts decides that nothing is lost and nothing
 * comes back: once this target has applied the source's last change, the
 * cutover writes a message here and advances the slot to its position
 * (reverse_mark_start).  Every transaction this target committed before
 * that is one the forward subscription applied, so the source has it; the
 * application writes here only after the cutover, so every one of its
 * transactions commits after it and is sent.  The subscription is enabled
 * in the transaction that makes the source read-only (worker.c), so it
 * runs exactly when the cutover has succeeded.
 *
 * This target is reached through a connection of its own with the DSN the
 * source will use (loopback): the worker then runs the same statements as
 * any client, and a DSN that does not work from here fails early.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"

#include "pg_zdm.h"

/*
 * The tables of the forward subscription, which the reverse publication
 * lists: these exist on both sides under the same names.  One statement of
 * constant size, whatever the table count.  publish_via_partition_root:
 * a table partitioned here only is published as itself, the plain table
 * the source has.
 */
static const char *create_publication_sql =
"DO $zdm$ BEGIN EXECUTE 'CREATE PUBLICATION " ZDM_PUBLICATION " FOR TABLE ' || "
"(SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY n.nspname, c.relname) "
" FROM pg_catalog.pg_subscription s "
" JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid "
" JOIN pg_catalog.pg_class c ON c.oid = r.srrelid "
" JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
" WHERE s.subname = '" ZDM_SUBSCRIPTION "' "
"   AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
"                    WHERE datname = pg_catalog.current_database())) || "
"' WITH (publish_via_partition_root = true)'; END $zdm$";

/*
 * reverse_drop_subscription: remove the reverse subscription from the
 * source if it is there, without touching its slot (disabled and detached
 * from it first: DROP SUBSCRIPTION would otherwise reach this target to
 * drop the slot, and could not run in a transaction).  Never throws;
 * returns whether it is gone.
 */
bool
reverse_drop_subscription(PGconn *source, const char *name, int timeout_ms)
{
	const char *params[1] = {name};
	RemoteResult *res;
	char	   *quoted = (char *) quote_identifier(name);

	res = remote_query_quietly(source,
							   "SELECT EXISTS (SELECT 1 FROM pg_subscription "
							   "WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database "
							   "  WHERE datname = current_database()))",
							   1, params, timeout_ms);
	if (res == NULL)
		return false;
	if (strcmp(remote_value(res, 0, 0), "f") == 0)
		return true;
	return remote_command_quietly(source,
								  psprintf("ALTER SUBSCRIPTION %s DISABLE", quoted),
								  0, NULL, timeout_ms) &&
		remote_command_quietly(source,
							   psprintf("ALTER SUBSCRIPTION %s SET (slot_name = NONE)", quoted),
							   0, NULL, timeout_ms) &&
		remote_command_quietly(source, psprintf("DROP SUBSCRIPTION %s", quoted),
							   0, NULL, timeout_ms);
}

/*
 * reverse_drop_target: remove slot and publication from this target,
 * through the loopback connection.  The slot is let go by its walsender a
 * moment after the source's subscription stopped.  Never throws; returns
 * whether both are gone.
 */
bool
reverse_drop_target(PGconn *target, const char *name, int timeout_ms)
{
	bool		slot_dropped = source_drop_slots(target, name, InvalidOid, timeout_ms);

	return source_drop_publication(target, timeout_ms) && slot_dropped;
}

/*
 * reverse_remove: remove all three objects; the subscription first, which
 * frees the slot.  Never throws; returns whether everything is gone.
 */
bool
reverse_remove(PGconn *source, PGconn *target, const char *name,
			   int timeout_ms)
{
	bool		subscription_dropped = reverse_drop_subscription(source, name,
																 timeout_ms);

	return reverse_drop_target(target, name, timeout_ms) && subscription_dropped;
}

/*
 * reverse_prepare: create publication and slot here, and the disabled
 * subscription on the source, after removing what an earlier attempt may
 * have left.  Throws on failure; the caller removes what was made
 * (reverse_remove).  The source role must be a superuser there up to 15, or
 * have pg_create_subscription from 16 (zdm.check_fallback says so first).
 * The statement that carries the target's password is kept out of the
 * source's log where the role may say so.
 */
void
reverse_prepare(PGconn *source, PGconn *target, const char *target_dsn,
				const char *name)
{
	const char *params[1] = {name};
	char	   *quoted = (char *) quote_identifier(name);

	if (!reverse_remove(source, target, name, 10000))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("could not remove what an earlier cutover left of the reverse replication"),
				 errdetail("Subscription %s on the source, or slot %s or publication %s on this target, could not be dropped.",
						   name, name, ZDM_PUBLICATION),
				 errhint("Drop them by hand and cut over again.")));

	remote_command(target, create_publication_sql,
				   "creating the reverse publication on this target");
	(void) remote_query(target,
						"SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
						1, params, "creating the reverse slot on this target");

	/* one implicit transaction: the settings end with it, RESET needs none */
	remote_command(source,
				   psprintf("SELECT set_config('log_statement', 'none', true), "
							"       set_config('log_min_error_statement', 'panic', true) "
							"FROM pg_roles WHERE rolname = current_user AND rolsuper; "
							"CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION " ZDM_PUBLICATION
							" WITH (enabled = false, create_slot = false, slot_name = %s, "
							"copy_data = false)",
							quoted, quote_literal_cstr(target_dsn),
							quote_literal_cstr(name)),
				   "creating the reverse subscription on the source");
}

/*
 * reverse_skip_applied: before the cutover fences, advance the reverse slot
 * to the WAL flushed here so far: all of it is the forward subscription's,
 * and reverse_mark_start, inside the fenced window, then decodes only what
 * came after.
 */
void
reverse_skip_applied(PGconn *target, const char *name)
{
	const char *params[1] = {name};

	(void) remote_query(target,
						"SELECT pg_replication_slot_advance($1, pg_current_wal_flush_lsn())",
						1, params, "advancing the reverse slot");
}

/*
 * reverse_mark_start: once this target has applied the source's last
 * change, mark where the reverse stream starts and advance the slot there
 * (see the file header).  The message is committed with synchronous_commit
 * on: the slot can only be advanced to flushed WAL.  Returns the position.
 */
char *
reverse_mark_start(PGconn *target, const char *name)
{
	RemoteResult *res;
	const char *params[2] = {name, NULL};

	remote_command(target, "SET synchronous_commit = on",
				   "marking where the reverse replication starts");
	res = remote_query(target,
					   "SELECT pg_logical_emit_message(true, 'pg_zdm', 'fallback start')::text",
					   0, NULL, "marking where the reverse replication starts");
	params[1] = remote_value(res, 0, 0);
	res = remote_query(target,
					   "SELECT end_lsn = $2::pg_lsn, end_lsn::text "
					   "FROM pg_replication_slot_advance($1, $2::pg_lsn)",
					   2, params, "advancing the reverse slot");
	if (strcmp(remote_value(res, 0, 0), "t") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the reverse slot advanced to %s, not to %s",
						remote_value(res, 0, 1), params[1]),
				 errdetail("The source was not made read-only; replication goes on.")));
	return pstrdup(params[1]);
}

/*
 * reverse_start_sql: the statements that start the reverse replication at
 * start, run on the source in the transaction that commits its fence.  The
 * slot's advance is only made durable here by a checkpoint, and a target
 * that crashed before one would send the forward subscription's changes
 * again from where the slot was created: so, with advance_origin, the
 * subscription's replication origin is advanced to start as well, in the
 * same transaction, and the source asks for the stream from there.
 * pg_replication_origin_advance is a superuser's unless granted: for any
 * other role the cutover makes a checkpoint here instead.
 */
char *
reverse_start_sql(const char *name, const char *start, bool advance_origin)
{
	StringInfoData sql;

	initStringInfo(&sql);
	if (advance_origin)
		appendStringInfo(&sql,
						 "SELECT pg_replication_origin_advance('pg_' || s.oid, %s) "
						 "FROM pg_subscription s "
						 "WHERE s.subname = %s AND s.subdbid = (SELECT oid FROM pg_database "
						 "  WHERE datname = current_database()); ",
						 quote_literal_cstr(start), quote_literal_cstr(name));
	appendStringInfo(&sql, "ALTER SUBSCRIPTION %s ENABLE", quote_identifier(name));
	return sql.data;
}
