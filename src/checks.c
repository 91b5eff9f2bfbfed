/*-------------------------------------------------------------------------
 *
 * checks.c
 *		  The preflight checks: is the source fit to be migrated to this
 *		  target?  zdm.check shows them all; zdm.init refuses on the first
 *		  blocking one that fails.
 *
 * Every check only reads: three queries on the source (server facts,
 * tables, columns) and a few catalog queries here.  The table comparison
 * runs on the target, with the source's lists passed in as arrays.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "pg_zdm.h"

/* A transaction older than this on the source delays slot creation. */
#define LONG_TRANSACTION_SECONDS	60

/* At most this many names are listed in one detail. */
#define MAX_LISTED	10

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
"       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '" ZDM_FENCE_SCHEMA "') "
"FROM pg_roles r WHERE r.rolname = current_user";

/* Tables FOR ALL TABLES would publish, plus unlogged ones (not replicated). */
static const char *source_tables_sql =
"SELECT n.nspname, c.relname, c.relpersistence, "
"       c.relreplident = 'f' OR EXISTS (SELECT 1 FROM pg_index i "
"         WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) "
"           OR (c.relreplident = 'i' AND i.indisreplident))), "
"       pg_has_role(c.relowner, 'USAGE') "
"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u') "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"ORDER BY 1, 2";

/*
 * Replicated columns of permanent tables; type as schema.name and typmod.
 * Generated columns (12 and later) are not replicated; %s is that filter.
 */
static const char *source_columns_sql =
"SELECT n.nspname, c.relname, a.attname, tn.nspname || '.' || t.typname, "
"       a.atttypmod, format_type(a.atttypid, a.atttypmod) "
"FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"JOIN pg_type t ON t.oid = a.atttypid "
"JOIN pg_namespace tn ON tn.oid = t.typnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND a.attnum > 0 AND NOT a.attisdropped %s "
"ORDER BY 1, 2, a.attnum";

typedef struct NameList
{
	StringInfoData buf;
	int			count;
} NameList;

static void
namelist_init(NameList *list)
{
	initStringInfo(&list->buf);
	list->count = 0;
}

static void
namelist_add(NameList *list, const char *item)
{
	if (list->count < MAX_LISTED)
	{
		if (list->count > 0)
			appendStringInfoString(&list->buf, ", ");
		appendStringInfoString(&list->buf, item);
	}
	list->count++;
}

static char *
namelist_text(NameList *list)
{
	if (list->count > MAX_LISTED)
		return psprintf("%s and %d more", list->buf.data,
						list->count - MAX_LISTED);
	return list->buf.data;
}

static char *
qualified(const char *schema, const char *name)
{
	return quote_qualified_identifier(schema, name);
}

static List *
add_check(List *checks, const char *name, bool ok, bool blocking,
		  int sqlstate, char *detail, char *hint)
{
	CheckResult *c = palloc0(sizeof(CheckResult));

	c->name = name;
	c->ok = ok;
	c->blocking = blocking;
	c->sqlstate = sqlstate;
	c->detail = detail;
	c->hint = ok ? NULL : hint;
	return lappend(checks, c);
}

static Datum
text_array(List *items)
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

static Datum
int4_array(List *items)
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

/*
 * Which of the source tables exist here?  present[i] for the i-th table.
 */
static bool *
tables_present_here(RemoteResult *tables)
{
	List	   *schemas = NIL;
	List	   *names = NIL;
	bool	   *present = palloc0(sizeof(bool) * Max(tables->ntuples, 1));
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	uint64		i;
	int			row;

	for (row = 0; row < tables->ntuples; row++)
	{
		schemas = lappend(schemas, (char *) remote_value(tables, row, 0));
		names = lappend(names, (char *) remote_value(tables, row, 1));
	}
	values[0] = text_array(schemas);
	values[1] = text_array(names);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.i::int4 - 1 "
							  "FROM unnest($1, $2) WITH ORDINALITY AS s(nsp, rel, i) "
							  "WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
							  "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
							  "  WHERE n.nspname = s.nsp AND c.relname = s.rel "
							  "    AND c.relkind IN ('r', 'p'))",
							  2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the source tables on the target");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int			idx = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc,
													  1, &isnull));

		present[idx] = true;
	}
	SPI_finish();
	return present;
}

/*
 * Compare the source's columns with this target's, for tables on both
 * sides.  Missing columns break the apply worker; other types may not.
 */
static void
compare_columns(RemoteResult *columns, NameList *missing, NameList *retyped)
{
	List	   *lists[6] = {NIL, NIL, NIL, NIL, NIL, NIL};
	Oid			types[6] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID};
	Datum		values[6];
	int			row;
	int			i;
	uint64		r;

	for (row = 0; row < columns->ntuples; row++)
	{
		for (i = 0; i < 6; i++)
		{
			if (i == 4)
				lists[i] = lappend_int(lists[i], atoi(remote_value(columns, row, i)));
			else
				lists[i] = lappend(lists[i], (char *) remote_value(columns, row, i));
		}
	}
	for (i = 0; i < 6; i++)
		values[i] = i == 4 ? int4_array(lists[i]) : text_array(lists[i]);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.nsp, s.rel, s.col, s.display, "
							  "       a.attname IS NULL, "
							  "       pg_catalog.format_type(a.atttypid, a.atttypmod) "
							  "FROM unnest($1, $2, $3, $4, $5, $6) "
							  "     AS s(nsp, rel, col, typ, typmod, display) "
							  "JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
							  "JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
							  "  AND c.relname = s.rel AND c.relkind IN ('r', 'p') "
							  "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
							  "  AND a.attname = s.col AND a.attnum > 0 AND NOT a.attisdropped "
							  "LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
							  "LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace "
							  "WHERE a.attname IS NULL "
							  "   OR tn.nspname || '.' || t.typname <> s.typ "
							  "   OR a.atttypmod <> s.typmod",
							  6, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the source columns with the target");
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *table = qualified(SPI_getvalue(tup, desc, 1),
									  SPI_getvalue(tup, desc, 2));
		const char *column = quote_identifier(SPI_getvalue(tup, desc, 3));

		if (strcmp(SPI_getvalue(tup, desc, 5), "t") == 0)
			namelist_add(missing, psprintf("%s.%s", table, column));
		else
			namelist_add(retyped, psprintf("%s.%s (%s on the source, %s here)",
										   table, column,
										   SPI_getvalue(tup, desc, 4),
										   SPI_getvalue(tup, desc, 6)));
	}
	SPI_finish();
}

/*
 * Tables here that already hold rows: the initial copy would add the
 * source's rows to them and fail on the first duplicate key.
 */
static void
tables_with_rows(List *tables, NameList *filled)
{
	StringInfoData sql;
	ListCell   *lc;
	uint64		i;

	if (tables == NIL)
		return;
	initStringInfo(&sql);
	foreach(lc, tables)
	{
		char	   *name = lfirst(lc);

		if (sql.len > 0)
			appendStringInfoString(&sql, " UNION ALL ");
		appendStringInfo(&sql, "SELECT %s WHERE EXISTS (SELECT 1 FROM ONLY %s)",
						 quote_literal_cstr(name), name);
	}
	SPI_connect();
	if (zdm_spi_execute(sql.data, 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for rows in the target tables");
	for (i = 0; i < SPI_processed; i++)
		namelist_add(filled, SPI_getvalue(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 1));
	SPI_finish();
}

static int
setting_int(const char *name)
{
	return atoi(GetConfigOption(name, false, false));
}

/*
 * Free background worker and logical replication worker slots here.
 */
static void
target_worker_slots(int *free_logical, int *free_background)
{
	SPI_connect();
	if (zdm_spi_execute("SELECT count(*) FILTER (WHERE backend_type = 'logical replication worker'), "
					"       count(*) FILTER (WHERE backend_type NOT IN ("
					"         'client backend', 'checkpointer', 'background writer', "
					"         'walwriter', 'autovacuum launcher', 'autovacuum worker', "
					"         'archiver', 'startup', 'walreceiver', 'walsender', "
					"         'standalone backend', 'logger')) "
					"FROM pg_catalog.pg_stat_activity", 0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the workers of the target");
	*free_logical = setting_int("max_logical_replication_workers") -
		atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	*free_background = setting_int("max_worker_processes") -
		atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	SPI_finish();
}

/*
 * run_checks: every preflight check, in the order a DBA would fix them.
 * conn is a live connection to the source.  *published receives the
 * qualified names of the tables to publish (with ignore_missing, only
 * those present on both sides).
 */
List *
run_checks(PGconn *conn, bool ignore_missing, bool defer_copy,
		   List **published)
{
	List	   *checks = NIL;
	char	   *slot_name = target_slot_name();
	char		long_secs[16];
	const char *params[2];
	RemoteResult *facts;
	RemoteResult *tables;
	RemoteResult *columns;
	SourceFeatures features;
	bool	   *present;
	int			version_num;
	int			free_slots;
	int			free_senders;
	int			free_logical;
	int			free_background;
	int			sync_workers = defer_copy ? 0 :
		Min(setting_int("max_sync_workers_per_subscription"), 1);
	int			needed = 1 + sync_workers;
	bool		superuser;
	bool		all_owned = true;
	int			row;
	NameList	missing_tables;
	NameList	no_identity;
	NameList	unlogged;
	NameList	missing_columns;
	NameList	retyped_columns;
	NameList	leftovers;
	NameList	filled;
	List	   *present_here = NIL;

	*published = NIL;

	/* the other checks' queries need a release pg_zdm supports */
	if (PQserverVersion(conn) < ZDM_MIN_SOURCE_VERSION_NUM)
		return add_check(NIL, "server_version", false, true,
						 ERRCODE_FEATURE_NOT_SUPPORTED,
						 psprintf("The source runs PostgreSQL %s; pg_zdm needs 10 or later.",
								  PQparameterStatus(conn, "server_version") ?
								  PQparameterStatus(conn, "server_version") : "(unknown)"),
						 pstrdup("Upgrade the source to PostgreSQL 10 or later first, or migrate with pg_dump."));

	snprintf(long_secs, sizeof(long_secs), "%d", LONG_TRANSACTION_SECONDS);
	params[0] = slot_name;
	params[1] = long_secs;
	facts = remote_query(conn, source_facts_sql, 2, params, "the preflight checks");
	if (facts->ntuples != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("could not read the role of the source connection"),
				 errhint("Connect to the source as a role that can read pg_roles.")));

	version_num = atoi(remote_value(facts, 0, 0));
	checks = add_check(checks, "server_version",
					   version_num >= ZDM_MIN_SOURCE_VERSION_NUM, true,
					   ERRCODE_FEATURE_NOT_SUPPORTED,
					   psprintf("The source runs PostgreSQL %s; pg_zdm needs 10 or later.",
								remote_value(facts, 0, 1)),
					   pstrdup("Upgrade the source to PostgreSQL 10 or later first, or migrate with pg_dump."));

	checks = add_check(checks, "primary",
					   strcmp(remote_value(facts, 0, 2), "f") == 0, true,
					   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					   strcmp(remote_value(facts, 0, 2), "f") == 0 ?
					   pstrdup("The source is a primary (not in recovery).") :
					   pstrdup("The source is a standby in recovery; PostgreSQL 15 cannot decode WAL on a standby."),
					   pstrdup("Point the connection string at the primary server."));

	checks = add_check(checks, "wal_level",
					   strcmp(remote_value(facts, 0, 3), "logical") == 0, true,
					   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					   psprintf("wal_level is %s on the source.", remote_value(facts, 0, 3)),
					   pstrdup("Set wal_level = logical on the source and restart it."));

	free_slots = atoi(remote_value(facts, 0, 4)) - atoi(remote_value(facts, 0, 5));
	checks = add_check(checks, "replication_slots", free_slots >= needed, true,
					   ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
					   psprintf("%d of max_replication_slots = %s are free on the source; the migration needs %d (one for the subscription%s).",
								Max(free_slots, 0), remote_value(facts, 0, 4), needed,
								defer_copy ? "" : ", one for the initial copy"),
					   pstrdup("Raise max_replication_slots on the source (needs a restart), or drop unused slots listed in pg_replication_slots."));

	free_senders = atoi(remote_value(facts, 0, 6)) - atoi(remote_value(facts, 0, 7));
	checks = add_check(checks, "wal_senders", free_senders >= needed, true,
					   ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
					   psprintf("%d of max_wal_senders = %s are free on the source; the migration needs %d.",
								Max(free_senders, 0), remote_value(facts, 0, 6), needed),
					   pstrdup("Raise max_wal_senders on the source (needs a restart)."));

	superuser = strcmp(remote_value(facts, 0, 8), "t") == 0;
	checks = add_check(checks, "replication_privilege",
					   superuser || strcmp(remote_value(facts, 0, 9), "t") == 0, true,
					   ERRCODE_INSUFFICIENT_PRIVILEGE,
					   superuser ? pstrdup("The source role is a superuser.") :
					   strcmp(remote_value(facts, 0, 9), "t") == 0 ?
					   pstrdup("The source role has the REPLICATION attribute.") :
					   pstrdup("The source role has neither REPLICATION nor SUPERUSER."),
					   pstrdup("On the source: ALTER ROLE <role> REPLICATION, or connect as another role."));

	free_logical = 0;
	free_background = 0;
	target_worker_slots(&free_logical, &free_background);
	checks = add_check(checks, "target_workers",
					   free_logical >= needed && free_background >= needed + 1, true,
					   ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
					   psprintf("This target has %d free logical replication worker slots and %d free background worker slots; the migration needs %d and %d (apply worker%s, cutover worker).",
								Max(free_logical, 0), Max(free_background, 0),
								needed, needed + 1,
								defer_copy ? "" : ", table synchronization worker"),
					   pstrdup("Raise max_logical_replication_workers and max_worker_processes on this target (needs a restart)."));

	{
		bool		same = strtou64(remote_value(facts, 0, 10), NULL, 10) == GetSystemIdentifier() &&
			strcmp(remote_value(facts, 0, 11), get_database_name(MyDatabaseId)) == 0;

		checks = add_check(checks, "same_database", !same, true,
						   ERRCODE_INVALID_PARAMETER_VALUE,
						   same ? pstrdup("The connection string points at this very database.") :
						   pstrdup("The source is another database than this target."),
						   pstrdup("Point the connection string at the source database, not at the target."));
	}

	namelist_init(&leftovers);
	if (strcmp(remote_value(facts, 0, 15), "t") == 0)
		namelist_add(&leftovers, "publication " ZDM_PUBLICATION);
	if (strcmp(remote_value(facts, 0, 16), "t") == 0)
		namelist_add(&leftovers, psprintf("replication slot %s", slot_name));
	if (strcmp(remote_value(facts, 0, 17), "t") == 0)
		namelist_add(&leftovers, "schema " ZDM_FENCE_SCHEMA " (a completed cutover made this source read-only)");
	checks = add_check(checks, "leftovers", leftovers.count == 0, true,
					   ERRCODE_DUPLICATE_OBJECT,
					   leftovers.count == 0 ? pstrdup("No objects of an earlier migration on the source.") :
					   psprintf("The source already has: %s.", namelist_text(&leftovers)),
					   pstrdup("Another migration is using this source, or an earlier one left these behind: run CALL zdm.abort() on its target, or drop them on the source by hand."));

	/* tables */
	tables = remote_query(conn, source_tables_sql, 0, NULL, "listing the source tables");
	source_features(conn, &features);
	columns = remote_query(conn,
						   psprintf(source_columns_sql,
									features.generated_columns ?
									"AND a.attgenerated = ''" : ""),
						   0, NULL, "listing the source columns");
	present = tables_present_here(tables);

	namelist_init(&missing_tables);
	namelist_init(&no_identity);
	namelist_init(&unlogged);
	for (row = 0; row < tables->ntuples; row++)
	{
		char	   *name = qualified(remote_value(tables, row, 0),
									 remote_value(tables, row, 1));
		bool		permanent = strcmp(remote_value(tables, row, 2), "p") == 0;

		if (!permanent)
		{
			namelist_add(&unlogged, name);
			continue;
		}
		if (!present[row])
			namelist_add(&missing_tables, name);
		if (ignore_missing && !present[row])
			continue;
		*published = lappend(*published, name);
		if (present[row])
			present_here = lappend(present_here, name);
		if (strcmp(remote_value(tables, row, 3), "f") == 0)
			namelist_add(&no_identity, name);
		if (strcmp(remote_value(tables, row, 4), "f") == 0)
			all_owned = false;
	}

	if (ignore_missing || defer_copy)
		checks = add_check(checks, "publication_privilege", superuser || all_owned, true,
						   ERRCODE_INSUFFICIENT_PRIVILEGE,
						   superuser ? pstrdup("The source role is a superuser.") :
						   all_owned ? pstrdup("The source role owns every table to publish.") :
						   pstrdup("The source role does not own every table to publish."),
						   pstrdup("Connect to the source as a superuser or as the owner of the tables."));
	else
		checks = add_check(checks, "publication_privilege", superuser, true,
						   ERRCODE_INSUFFICIENT_PRIVILEGE,
						   superuser ? pstrdup("The source role is a superuser.") :
						   pstrdup("A publication FOR ALL TABLES needs a superuser on the source."),
						   pstrdup("Connect to the source as a superuser, or use ignore_missing => true with a role that owns the tables."));

	checks = add_check(checks, "missing_tables",
					   missing_tables.count == 0 || ignore_missing, true,
					   ERRCODE_UNDEFINED_TABLE,
					   missing_tables.count == 0 ?
					   pstrdup("Every source table exists on the target.") :
					   psprintf("%d source table%s missing on the target%s: %s.",
								missing_tables.count,
								missing_tables.count == 1 ? " is" : "s are",
								ignore_missing ? " and will not be migrated" : "",
								namelist_text(&missing_tables)),
					   pstrdup("Create them on the target first (pg_dump --schema-only on the source, then psql on the target), or pass ignore_missing => true to leave them out."));

	checks = add_check(checks, "replica_identity", no_identity.count == 0, true,
					   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					   no_identity.count == 0 ?
					   pstrdup("Every published table has a primary key or replica identity.") :
					   psprintf("Once published, UPDATE and DELETE would fail on the source for %d table%s without primary key or replica identity: %s.",
								no_identity.count, no_identity.count == 1 ? "" : "s",
								namelist_text(&no_identity)),
					   pstrdup("On the source, add a primary key, or run ALTER TABLE ... REPLICA IDENTITY FULL on each of them."));

	namelist_init(&missing_columns);
	namelist_init(&retyped_columns);
	compare_columns(columns, &missing_columns, &retyped_columns);
	checks = add_check(checks, "missing_columns", missing_columns.count == 0, true,
					   ERRCODE_UNDEFINED_COLUMN,
					   missing_columns.count == 0 ?
					   pstrdup("Every source column exists on the target.") :
					   psprintf("Columns missing on the target: %s.",
								namelist_text(&missing_columns)),
					   pstrdup("Add the columns on the target (ALTER TABLE ... ADD COLUMN) so that replicated rows fit."));
	checks = add_check(checks, "column_types", retyped_columns.count == 0, false,
					   0,
					   retyped_columns.count == 0 ?
					   pstrdup("Every column has the same type on both sides.") :
					   psprintf("Columns with another type on the target: %s.",
								namelist_text(&retyped_columns)),
					   pstrdup("Replication converts values through their text form; make sure every source value is valid for the target type."));

	namelist_init(&filled);
	if (!defer_copy)
		tables_with_rows(present_here, &filled);
	checks = add_check(checks, "target_tables_empty", filled.count == 0, true,
					   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					   defer_copy ? pstrdup("No initial copy: rows already on the target are kept.") :
					   filled.count == 0 ?
					   pstrdup("Every table to copy is empty on the target.") :
					   psprintf("Tables that already hold rows on the target: %s; the initial copy would fail on duplicate keys.",
								namelist_text(&filled)),
					   pstrdup("Empty them on the target (TRUNCATE), or pass defer_copy => true if the target already holds the source's rows."));

	checks = add_check(checks, "unlogged_tables", unlogged.count == 0, false, 0,
					   unlogged.count == 0 ? pstrdup("No unlogged tables on the source.") :
					   psprintf("Unlogged tables are not replicated: %s.",
								namelist_text(&unlogged)),
					   pstrdup("Copy their contents by hand after the cutover, or make them logged (ALTER TABLE ... SET LOGGED) before init."));

	/* only where it applies, like pg_upgrade's version-specific checks */
	if (!features.truncate_replicated)
		checks = add_check(checks, "truncate_replication", false, false, 0,
						   psprintf("PostgreSQL %s does not replicate TRUNCATE (from 11 it does): a TRUNCATE of a published table on the source after init leaves the table's rows on the target.",
									remote_value(facts, 0, 1)),
						   pstrdup("Do not TRUNCATE published tables on the source until the cutover (DELETE is replicated), or repeat each TRUNCATE on the target."));

	checks = add_check(checks, "large_objects",
					   strcmp(remote_value(facts, 0, 14), "0") == 0, false, 0,
					   psprintf("The source has %s large objects; logical replication does not carry them.",
								remote_value(facts, 0, 14)),
					   pstrdup("Copy large objects separately (pg_dump --large-objects) before the cutover."));

	checks = add_check(checks, "long_transactions",
					   strcmp(remote_value(facts, 0, 13), "0") == 0, false, 0,
					   psprintf("%s transactions holding a transaction id have been open on the source for more than %d seconds; creating replication slots waits for them.",
								remote_value(facts, 0, 13), LONG_TRANSACTION_SECONDS),
					   pstrdup("Let them finish, or end them (pg_stat_activity shows them), before init."));

	checks = add_check(checks, "prepared_transactions",
					   strcmp(remote_value(facts, 0, 12), "0") == 0, true,
					   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					   psprintf("The source cluster has %s prepared transactions; creating a replication slot would wait for them to end.",
								remote_value(facts, 0, 12)),
					   pstrdup("Run COMMIT PREPARED or ROLLBACK PREPARED for those listed in pg_prepared_xacts on the source."));

	{
		int			interval = setting_int("wal_receiver_status_interval");

		checks = add_check(checks, "target_status_interval", interval > 0, true,
						   ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						   psprintf("wal_receiver_status_interval is %d s on the target.", interval),
						   pstrdup("Set wal_receiver_status_interval to a positive value on this target (the default is 10s) and reload: with 0 the target never reports its progress to the source."));
	}

	return checks;
}
