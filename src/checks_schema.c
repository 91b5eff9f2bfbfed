/*-------------------------------------------------------------------------
 *
 * checks_schema.c
 *		  The preflight checks of the schema: what the source would publish
 *		  (tables, partitions, columns, replica identities, constraints,
 *		  sequences, materialized views) compared with what this target has.
 *
 * The source's lists are read with one query each and passed to one query
 * here as arrays, so no statement grows with the number of tables beyond
 * its parameters (target_tables_empty reads tables in statements of at
 * most TABLES_PER_STATEMENT).  Every name in a detail or an object is
 * quoted; where the fix differs per object, its entry in objects reads
 * "name (what is wrong): statement".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "checks.h"

/*
 * Expressions (CHECK constraints, partition bounds) are compared as
 * pg_get_constraintdef and pg_get_expr print them on each side, and they
 * print timestamps in the session's TimeZone and DateStyle.  Both sides
 * print them with the same settings: the source session gets TimeZone UTC
 * (it already has DateStyle ISO and IntervalStyle postgres) and the target
 * queries run with the same three settings, for the query only.
 */
static void
source_print_like_target(CheckContext *ctx)
{
	if (!ctx->source_utc)
		remote_command(ctx->conn, "SET TimeZone = 'UTC'",
					   "setting the time zone of the source session");
	ctx->source_utc = true;
}

static int
spi_execute_printing_utc(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			level = NewGUCNestLevel();
	int			rc;

	(void) set_config_option("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("DateStyle", "ISO", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("IntervalStyle", "postgres", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	rc = zdm_spi_execute(sql, nargs, types, values, NULL, true, 0);
	AtEOXact_GUC(true, level);
	return rc;
}

/* Tables FOR ALL TABLES would publish, plus unlogged ones (not replicated). */
static const char *source_tables_sql =
"SELECT n.nspname, c.relname, c.relpersistence, "
"       pg_has_role(c.relowner, 'USAGE') "
"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u') "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"ORDER BY 1, 2";

/* Columns of source_tables_sql. */
enum
{
	TABLE_SCHEMA,
	TABLE_NAME,
	TABLE_PERSISTENCE,
	TABLE_OWNED
};

/*
 * Replicated columns of permanent tables; type as schema.name and typmod.
 * Generated columns (12 and later) are not replicated; %s is that filter.
 */
static const char *source_columns_sql =
"SELECT n.nspname, c.relname, a.attname, tn.nspname || '.' || t.typname, "
"       a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull "
"FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"JOIN pg_type t ON t.oid = a.atttypid "
"JOIN pg_namespace tn ON tn.oid = t.typnamespace "
"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND a.attnum > 0 AND NOT a.attisdropped %s "
"ORDER BY 1, 2, a.attnum";

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
		schemas = lappend(schemas, (char *) remote_value(tables, row, TABLE_SCHEMA));
		names = lappend(names, (char *) remote_value(tables, row, TABLE_NAME));
	}
	values[0] = check_text_array(schemas);
	values[1] = check_text_array(names);

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
 * check_read_tables: read the source tables once, and sort them into
 * missing here, unlogged, published and copied (published and present here).
 */
void
check_read_tables(CheckContext *ctx)
{
	RemoteResult *tables;
	int			row;

	if (ctx->tables_read)
		return;
	tables = remote_query(ctx->conn, source_tables_sql, 0, NULL,
						  "listing the source tables");
	ctx->tables = tables;
	ctx->present = tables_present_here(tables);
	ctx->all_owned = true;
	for (row = 0; row < tables->ntuples; row++)
	{
		char	   *name = check_qualified(remote_value(tables, row, TABLE_SCHEMA),
										   remote_value(tables, row, TABLE_NAME));

		if (strcmp(remote_value(tables, row, TABLE_PERSISTENCE), "p") != 0)
		{
			ctx->unlogged = lappend(ctx->unlogged, name);
			continue;
		}
		if (!ctx->present[row])
			ctx->missing = lappend(ctx->missing, name);
		if (ctx->ignore_missing && !ctx->present[row])
			continue;
		ctx->published = lappend(ctx->published, name);
		if (ctx->present[row])
		{
			ctx->copied = lappend(ctx->copied, name);
			ctx->copied_nsp = lappend(ctx->copied_nsp,
									  (char *) remote_value(tables, row, TABLE_SCHEMA));
			ctx->copied_rel = lappend(ctx->copied_rel,
									  (char *) remote_value(tables, row, TABLE_NAME));
		}
		if (strcmp(remote_value(tables, row, TABLE_OWNED), "f") == 0)
			ctx->all_owned = false;
	}
	ctx->tables_read = true;
}

void
check_missing_tables(CheckContext *ctx, CheckResult *result)
{
	int			n;

	check_read_tables(ctx);
	n = list_length(ctx->missing);
	result->ok = n == 0 || ctx->ignore_missing;
	result->objects = ctx->missing;
	result->detail = n == 0 ?
		pstrdup("Every source table exists on the target.") :
		psprintf("%d source table%s missing on the target%s: %s.",
				 n, n == 1 ? " is" : "s are",
				 ctx->ignore_missing ? " and will not be migrated" : "",
				 check_summary(ctx->missing));
	result->hint = pstrdup("Create them on the target first (pg_dump --schema-only on the source, then psql on the target), or pass ignore_missing => true to leave them out.");
}

/*
 * Published tables without a replica identity that logical replication can
 * use: none, NOTHING, a DEFERRABLE primary key (PostgreSQL ignores it), or
 * FULL with a column whose type has no default btree or hash equality
 * operator (the apply worker cannot find rows; asked of the catalog: the
 * base type of a domain, the element type of an array, every field of a
 * composite type).  Also returns a unique, immediate, non-partial index on
 * NOT NULL columns that REPLICA IDENTITY USING INDEX would accept.
 */
static const char *source_identity_sql =
"WITH RECURSIVE "
"tabs AS ("
"  SELECT c.oid, n.nspname, c.relname, c.relreplident "
"  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
"  WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"    AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"    AND n.nspname !~ '^pg_'), "
"parts(top, typ) AS ("
"  SELECT DISTINCT a.atttypid, a.atttypid "
"  FROM tabs JOIN pg_attribute a ON a.attrelid = tabs.oid "
"  WHERE a.attnum > 0 AND NOT a.attisdropped "
"  UNION "
"  SELECT p.top, x.typ FROM parts p JOIN pg_type t ON t.oid = p.typ "
"  CROSS JOIN LATERAL ("
"    SELECT t.typbasetype WHERE t.typtype = 'd' "
"    UNION ALL SELECT t.typelem "
"     WHERE t.typtype <> 'd' AND t.typelem <> 0 AND t.typlen = -1 "
"    UNION ALL SELECT a.atttypid FROM pg_attribute a "
"     WHERE t.typtype = 'c' AND a.attrelid = t.typrelid "
"       AND a.attnum > 0 AND NOT a.attisdropped) AS x(typ)), "
"noeq AS ("
"  SELECT DISTINCT p.top FROM parts p JOIN pg_type t ON t.oid = p.typ "
"  WHERE t.typtype NOT IN ('d', 'c') AND NOT (t.typelem <> 0 AND t.typlen = -1) "
"    AND NOT EXISTS (SELECT 1 FROM pg_opclass oc "
"      JOIN pg_am am ON am.oid = oc.opcmethod "
"      JOIN pg_type ot ON ot.oid = oc.opcintype "
"      WHERE oc.opcdefault AND am.amname IN ('btree', 'hash') "
"        AND (oc.opcintype = t.oid "
"          OR ot.typname = 'any' || CASE t.typtype WHEN 'e' THEN 'enum' "
"               WHEN 'r' THEN 'range' WHEN 'm' THEN 'multirange' END "
"          OR EXISTS (SELECT 1 FROM pg_cast k WHERE k.castsource = t.oid "
"               AND k.casttarget = oc.opcintype AND k.castmethod = 'b')))), "
"problems AS ("
"  SELECT t.*, "
"    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = t.oid "
"      AND i.indisprimary AND NOT i.indimmediate) AS deferrable_key, "
"    (SELECT quote_ident(ci.relname) FROM pg_index i "
"      JOIN pg_class ci ON ci.oid = i.indexrelid "
"      WHERE i.indrelid = t.oid AND i.indisunique AND i.indimmediate "
"        AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL "
"        AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid "
"          AND a.attnum = ANY (i.indkey) AND NOT a.attnotnull) "
"      ORDER BY i.indisprimary DESC, ci.relname LIMIT 1) AS candidate, "
"    ARRAY(SELECT quote_ident(a.attname) || ' (' || format_type(a.atttypid, a.atttypmod) || ')' "
"      FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attnum > 0 "
"        AND NOT a.attisdropped AND a.atttypid IN (SELECT top FROM noeq) "
"      ORDER BY a.attnum) AS noeq_columns "
"  FROM tabs t "
"  WHERE NOT (t.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i "
"      WHERE i.indrelid = t.oid AND i.indisprimary AND i.indimmediate)) "
"    AND NOT (t.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i "
"      WHERE i.indrelid = t.oid AND i.indisreplident AND i.indimmediate))) "
"SELECT nspname, relname, relreplident, deferrable_key, candidate, "
"       array_to_string(noeq_columns, ', ') "
"FROM problems "
"WHERE relreplident <> 'f' OR cardinality(noeq_columns) > 0 "
"ORDER BY 1, 2";

/*
 * Of the source tables with REPLICA IDENTITY FULL and a column without
 * equality (full[i]), those that have a primary key or replica identity
 * index here are fine: the apply worker finds rows by that index.  Of the
 * others, with ignore_missing, those missing here are not published.
 * Returns whether each of them is a problem.
 */
static bool *
identity_problems_here(CheckContext *ctx, RemoteResult *res, bool *full)
{
	List	   *nsps = NIL;
	List	   *rels = NIL;
	bool	   *problem = palloc(sizeof(bool) * Max(res->ntuples, 1));
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	int			row;
	uint64		i;

	for (row = 0; row < res->ntuples; row++)
	{
		nsps = lappend(nsps, (char *) remote_value(res, row, 0));
		rels = lappend(rels, (char *) remote_value(res, row, 1));
		problem[row] = true;
	}
	values[0] = check_text_array(nsps);
	values[1] = check_text_array(rels);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.i::pg_catalog.int4 OPERATOR(pg_catalog.-) 1, "
						"       c.oid IS NOT NULL, "
						"       EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
						"         WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indimmediate "
						"           AND (i.indisprimary OR i.indisreplident)) "
						"FROM unnest($1, $2) WITH ORDINALITY AS s(nsp, rel, i) "
						"LEFT JOIN (pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
						"  ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
						"  AND c.relkind IN ('r', 'p')) "
						"  ON n.nspname OPERATOR(pg_catalog.=) s.nsp "
						"  AND c.relname OPERATOR(pg_catalog.=) s.rel",
						2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the replica identities of the target tables");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int			idx = atoi(SPI_getvalue(tup, desc, 1));
		bool		here = strcmp(SPI_getvalue(tup, desc, 2), "t") == 0;
		bool		keyed = strcmp(SPI_getvalue(tup, desc, 3), "t") == 0;

		if (ctx->ignore_missing && !here)
			problem[idx] = false;
		else if (full[idx] && keyed)
			problem[idx] = false;
	}
	SPI_finish();
	return problem;
}

void
check_replica_identity(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	List	   *names = NIL;
	bool	   *full;
	bool	   *problem;
	int			row;
	int			n;

	res = remote_query(ctx->conn, source_identity_sql, 0, NULL,
					   "reading the replica identities of the source tables");
	full = palloc0(sizeof(bool) * Max(res->ntuples, 1));
	for (row = 0; row < res->ntuples; row++)
		full[row] = strcmp(remote_value(res, row, 2), "f") == 0;
	problem = identity_problems_here(ctx, res, full);

	for (row = 0; row < res->ntuples; row++)
	{
		char	   *table = check_qualified(remote_value(res, row, 0),
											remote_value(res, row, 1));
		const char *ident = remote_value(res, row, 2);
		const char *candidate = remote_value(res, row, 4);
		const char *noeq = remote_value(res, row, 5);
		const char *why;
		char	   *fix;

		if (!problem[row])
			continue;
		if (full[row])
			why = psprintf("REPLICA IDENTITY FULL, but no equality operator for %s", noeq);
		else if (strcmp(remote_value(res, row, 3), "t") == 0)
			why = "its primary key is DEFERRABLE, which cannot identify rows";
		else if (strcmp(ident, "n") == 0)
			why = "REPLICA IDENTITY NOTHING";
		else if (strcmp(ident, "i") == 0)
			why = "its replica identity index is gone or DEFERRABLE";
		else
			why = "no primary key or replica identity";

		if (candidate != NULL)
			fix = psprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX %s",
						   table, candidate);
		else if (noeq[0] == '\0')
			fix = psprintf("ALTER TABLE %s REPLICA IDENTITY FULL", table);
		else
			fix = psprintf("REPLICA IDENTITY FULL cannot work (no equality operator for %s): "
						   "add a key on both sides, e.g. ALTER TABLE %s ADD COLUMN zdm_id bigint "
						   "GENERATED ALWAYS AS IDENTITY PRIMARY KEY, or leave the table out "
						   "(drop it on the target and pass ignore_missing => true)",
						   noeq, table);
		names = lappend(names, table);
		result->objects = lappend(result->objects,
								  psprintf("%s (%s): %s", table, why, fix));
	}
	n = list_length(names);
	result->ok = n == 0;
	result->detail = n == 0 ?
		pstrdup("Every published table has a replica identity that logical replication can use.") :
		psprintf("%d published table%s no replica identity that logical replication can use; UPDATE and DELETE would fail on the source or stop the apply worker here: %s.",
				 n, n == 1 ? " has" : "s have", check_summary(names));
	result->hint = pstrdup("Run on the source the statement given for each table in the objects column of zdm.check: REPLICA IDENTITY USING INDEX where a unique, non-deferrable index on NOT NULL columns exists, REPLICA IDENTITY FULL only where every column type has an equality operator; otherwise add a key column on both sides or leave the table out.");
}

/*
 * Compare the source's columns with this target's, for tables on both
 * sides, once: missing columns break the apply worker; other types may not.
 */
static void
compare_columns(CheckContext *ctx)
{
	RemoteResult *columns;
	List	   *lists[7] = {NIL, NIL, NIL, NIL, NIL, NIL, NIL};
	Oid			types[7] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[7];
	Oid			only_types[5] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID};
	Datum		only_values[5];
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			row;
	int			i;
	uint64		r;

	if (ctx->columns_compared)
		return;
	columns = remote_query(ctx->conn,
						   psprintf(source_columns_sql,
									ctx->features.generated_columns ?
									"AND a.attgenerated = ''" : ""),
						   0, NULL, "listing the source columns");
	for (row = 0; row < columns->ntuples; row++)
	{
		for (i = 0; i < 7; i++)
		{
			if (i == 4)
				lists[i] = lappend_int(lists[i], atoi(remote_value(columns, row, i)));
			else
				lists[i] = lappend(lists[i], (char *) remote_value(columns, row, i));
		}
	}
	for (i = 0; i < 7; i++)
		values[i] = i == 4 ? check_int4_array(lists[i]) : check_text_array(lists[i]);
	check_read_tables(ctx);
	only_values[0] = values[0];
	only_values[1] = values[1];
	only_values[2] = values[2];
	only_values[3] = check_text_array(ctx->copied_nsp);
	only_values[4] = check_text_array(ctx->copied_rel);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.nsp, s.rel, s.col, s.display, "
						"       a.attname IS NULL, "
						"       pg_catalog.format_type(a.atttypid, a.atttypmod), "
						"       a.attgenerated <> '', "
						"       tn.nspname || '.' || t.typname <> s.typ "
						"         OR a.atttypmod <> s.typmod, "
						"       a.attnotnull AND s.not_null_there = 'f' "
						"FROM unnest($1, $2, $3, $4, $5, $6, $7) "
						"     AS s(nsp, rel, col, typ, typmod, display, not_null_there) "
						"JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
						"JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
						"  AND c.relname = s.rel AND c.relkind IN ('r', 'p') "
						"LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
						"  AND a.attname = s.col AND a.attnum > 0 AND NOT a.attisdropped "
						"LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
						"LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace "
						"WHERE a.attname IS NULL "
						"   OR tn.nspname || '.' || t.typname <> s.typ "
						"   OR a.atttypmod <> s.typmod "
						"   OR a.attgenerated <> '' "
						"   OR (a.attnotnull AND s.not_null_there = 'f')",
						7, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the source columns with the target");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *table = check_qualified(SPI_getvalue(tup, desc, 1),
											SPI_getvalue(tup, desc, 2));
		const char *column = quote_identifier(SPI_getvalue(tup, desc, 3));

		if (strcmp(SPI_getvalue(tup, desc, 5), "t") == 0)
		{
			ctx->missing_columns = lappend(ctx->missing_columns,
										   psprintf("%s.%s", table, column));
			continue;
		}
		if (strcmp(SPI_getvalue(tup, desc, 7), "t") == 0)
		{
			ctx->generated_names = lappend(ctx->generated_names,
										   psprintf("%s.%s", table, column));
			ctx->generated_columns = lappend(ctx->generated_columns,
											 psprintf("%s.%s (generated here, not on the source): ALTER TABLE %s ALTER COLUMN %s DROP EXPRESSION",
													  table, column, table, column));
		}
		if (strcmp(SPI_getvalue(tup, desc, 9), "t") == 0)
		{
			ctx->not_null_names = lappend(ctx->not_null_names,
										  psprintf("%s.%s", table, column));
			ctx->not_null_columns = lappend(ctx->not_null_columns,
											psprintf("%s.%s (NOT NULL here, nullable on the source): on the source ALTER TABLE %s ALTER COLUMN %s SET NOT NULL (it fails if a row holds NULL); or here ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL before init and SET NOT NULL after the cutover",
													 table, column, table, column, table, column));
		}
		if (strcmp(SPI_getvalue(tup, desc, 8), "t") == 0)
			ctx->retyped_columns = lappend(ctx->retyped_columns,
										   psprintf("%s.%s (%s on the source, %s here)",
													table, column,
													SPI_getvalue(tup, desc, 4),
													SPI_getvalue(tup, desc, 6)));
	}
	MemoryContextSwitchTo(oldcxt);

	/* columns only here, NOT NULL without a default: they receive NULL */
	if (zdm_spi_execute("SELECT t.nsp, t.rel, a.attname "
						"FROM unnest($4, $5) WITH ORDINALITY AS t(nsp, rel, i) "
						"JOIN pg_catalog.pg_namespace n ON n.nspname = t.nsp "
						"JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
						"  AND c.relname = t.rel AND c.relkind IN ('r', 'p') "
						"JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
						"  AND a.attnum > 0 AND NOT a.attisdropped "
						"LEFT JOIN unnest($1, $2, $3) AS s(nsp, rel, col) "
						"  ON s.nsp = t.nsp AND s.rel = t.rel AND s.col = a.attname "
						"WHERE s.col IS NULL AND a.attnotnull AND NOT a.atthasdef "
						"  AND a.attidentity = '' AND a.attgenerated = '' "
						"ORDER BY t.i, a.attnum",
						5, only_types, only_values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for columns that only the target has");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *table = check_qualified(SPI_getvalue(tup, desc, 1),
											SPI_getvalue(tup, desc, 2));
		const char *column = quote_identifier(SPI_getvalue(tup, desc, 3));

		ctx->not_null_names = lappend(ctx->not_null_names,
									  psprintf("%s.%s", table, column));
		ctx->not_null_columns = lappend(ctx->not_null_columns,
										psprintf("%s.%s (NOT NULL without a default here, absent on the source): here ALTER TABLE %s ALTER COLUMN %s SET DEFAULT <value>, or DROP NOT NULL before init and SET NOT NULL after the cutover",
												 table, column, table, column));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	ctx->columns_compared = true;
}

void
check_missing_columns(CheckContext *ctx, CheckResult *result)
{
	compare_columns(ctx);
	result->ok = ctx->missing_columns == NIL;
	result->objects = ctx->missing_columns;
	result->detail = result->ok ?
		pstrdup("Every source column exists on the target.") :
		psprintf("Columns missing on the target: %s.",
				 check_summary(ctx->missing_columns));
	result->hint = pstrdup("Add the columns on the target (ALTER TABLE ... ADD COLUMN) so that replicated rows fit.");
}

void
check_column_types(CheckContext *ctx, CheckResult *result)
{
	compare_columns(ctx);
	result->ok = ctx->retyped_columns == NIL;
	result->objects = ctx->retyped_columns;
	result->detail = result->ok ?
		pstrdup("Every column has the same type on both sides.") :
		psprintf("Columns with another type on the target: %s.",
				 check_summary(ctx->retyped_columns));
	result->hint = pstrdup("Replication converts values through their text form; make sure every source value is valid for the target type.");
}

/* At most this many tables are read by one statement. */
#define TABLES_PER_STATEMENT	100

/*
 * Tables here that already hold rows: the initial copy would add the
 * source's rows to them and fail on the first duplicate key.  A partitioned
 * table holds the rows of its leaf partitions.  One query finds the leaves
 * that have any storage at all (a table never written to has none); only
 * those are read, at most TABLES_PER_STATEMENT of them per statement, so
 * that no statement grows with the number of tables.  Returns the names of
 * the tables to copy (as given in ctx->copied) that hold rows, each with
 * the partitions that hold them.
 */
static List *
tables_with_rows(CheckContext *ctx)
{
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	List	   *tables = NIL;
	List	   *leaves = NIL;
	List	   *filled = NIL;
	char	   *last = NULL;
	bool		last_hit = false;
	bool	   *hit;
	StringInfoData partitions;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	uint64		i;

	if (ctx->copied == NIL)
		return NIL;
	values[0] = check_text_array(ctx->copied_nsp);
	values[1] = check_text_array(ctx->copied_rel);

	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.quote_ident(s.nsp) OPERATOR(pg_catalog.||) '.' "
						"         OPERATOR(pg_catalog.||) pg_catalog.quote_ident(s.rel), "
						"       l.relid::pg_catalog.regclass::pg_catalog.text, "
						"       l.relid OPERATOR(pg_catalog.<>) c.oid "
						"FROM unnest($1, $2) WITH ORDINALITY AS s(nsp, rel, i) "
						"JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
						"JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
						"  AND c.relname = s.rel AND c.relkind IN ('r', 'p') "
						"CROSS JOIN LATERAL ("
						"  SELECT c.oid::pg_catalog.regclass WHERE c.relkind = 'r' "
						"  UNION ALL "
						"  SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t "
						"   WHERE c.relkind = 'p' AND t.isleaf) AS l(relid) "
						"WHERE pg_catalog.pg_relation_size(l.relid) OPERATOR(pg_catalog.>) 0 "
						"ORDER BY s.i, 2",
						2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the target tables that have storage");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *leaf = SPI_getvalue(tup, desc, 2);

		tables = lappend(tables, SPI_getvalue(tup, desc, 1));
		leaves = lappend(leaves, strcmp(SPI_getvalue(tup, desc, 3), "t") == 0 ?
						 leaf : NULL);
	}

	/* read each candidate, TABLES_PER_STATEMENT at a time */
	hit = palloc0(sizeof(bool) * Max(list_length(tables), 1));
	for (i = 0; i < list_length(tables); i += TABLES_PER_STATEMENT)
	{
		StringInfoData sql;
		uint64		j;

		initStringInfo(&sql);
		for (j = i; j < Min(i + TABLES_PER_STATEMENT, list_length(tables)); j++)
		{
			char	   *leaf = list_nth(leaves, j);

			if (sql.len > 0)
				appendStringInfoString(&sql, " UNION ALL ");
			appendStringInfo(&sql, "SELECT %d WHERE EXISTS (SELECT 1 FROM ONLY %s)",
							 (int) j, leaf ? leaf : (char *) list_nth(tables, j));
		}
		if (zdm_spi_execute(sql.data, 0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for rows in the target tables");
		for (j = 0; j < SPI_processed; j++)
			hit[atoi(SPI_getvalue(SPI_tuptable->vals[j],
								  SPI_tuptable->tupdesc, 1))] = true;
		pfree(sql.data);
	}

	/* one entry per table, naming the partitions that hold rows */
	oldcxt = MemoryContextSwitchTo(outer);
	initStringInfo(&partitions);
	for (i = 0; i <= list_length(tables); i++)
	{
		char	   *table = i < list_length(tables) ? list_nth(tables, i) : NULL;

		if (last != NULL && (table == NULL || strcmp(last, table) != 0))
		{
			if (last_hit)
				filled = lappend(filled, partitions.len > 0 ?
								 psprintf("%s (rows in partition %s)", last, partitions.data) :
								 pstrdup(last));
			resetStringInfo(&partitions);
			last_hit = false;
		}
		if (table == NULL)
			break;
		last = table;
		if (hit[i])
		{
			char	   *leaf = list_nth(leaves, i);

			last_hit = true;
			if (leaf)
				appendStringInfo(&partitions, "%s%s",
								 partitions.len > 0 ? ", " : "", leaf);
		}
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	return filled;
}

void
check_target_tables_empty(CheckContext *ctx, CheckResult *result)
{
	List	   *filled = NIL;

	check_read_tables(ctx);
	if (!ctx->defer_copy)
		filled = tables_with_rows(ctx);
	result->ok = filled == NIL;
	result->objects = filled;
	result->detail = ctx->defer_copy ?
		pstrdup("No initial copy: rows already on the target are kept.") :
		filled == NIL ?
		pstrdup("Every table to copy is empty on the target.") :
		psprintf("Tables that already hold rows on the target: %s; the initial copy would fail on duplicate keys.",
				 check_summary(filled));
	result->hint = pstrdup("Empty them on the target (TRUNCATE), or pass defer_copy => true if the target already holds the source's rows.");
}

void
check_unlogged_tables(CheckContext *ctx, CheckResult *result)
{
	check_read_tables(ctx);
	result->ok = ctx->unlogged == NIL;
	result->objects = ctx->unlogged;
	result->detail = result->ok ? pstrdup("No unlogged tables on the source.") :
		psprintf("Unlogged tables are not replicated: %s.",
				 check_summary(ctx->unlogged));
	result->hint = pstrdup("Copy their contents by hand after the cutover, or make them logged (ALTER TABLE ... SET LOGGED) before init.");
}

/*
 * Generated columns of the source (stored from 12, virtual from 18): not
 * replicated; the target must compute them itself.
 */
static const char *source_generated_sql =
"SELECT n.nspname, c.relname, a.attname, "
"       format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid) "
"FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
"WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '' "
"ORDER BY 1, 2, a.attnum";

/*
 * Source columns that are stored generated there and plain here: the
 * initial copy and the apply worker leave them NULL.
 */
static List *
generated_on_source_only(CheckContext *ctx, List **names)
{
	RemoteResult *res;
	List	   *lists[5] = {NIL, NIL, NIL, NIL, NIL};
	Oid			types[5] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[5];
	List	   *found = NIL;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			row;
	int			i;
	uint64		r;

	if (!ctx->features.generated_columns)
		return NIL;				/* no generated columns before 12 */
	res = remote_query(ctx->conn, source_generated_sql, 0, NULL,
					   "listing the generated columns of the source");
	if (res->ntuples == 0)
		return NIL;
	for (row = 0; row < res->ntuples; row++)
		for (i = 0; i < 5; i++)
			lists[i] = lappend(lists[i], (char *) remote_value(res, row, i));
	for (i = 0; i < 5; i++)
		values[i] = check_text_array(lists[i]);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.nsp, s.rel, s.col, s.typ, s.expr "
						"FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY "
						"     AS s(nsp, rel, col, typ, expr, i) "
						"JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
						"JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
						"  AND c.relname = s.rel AND c.relkind IN ('r', 'p') "
						"JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
						"  AND a.attname = s.col AND a.attnum > 0 AND NOT a.attisdropped "
						"WHERE a.attgenerated = '' "
						"ORDER BY s.i",
						5, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the generated columns of the source with the target");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *table = check_qualified(SPI_getvalue(tup, desc, 1),
											SPI_getvalue(tup, desc, 2));
		const char *column = quote_identifier(SPI_getvalue(tup, desc, 3));

		*names = lappend(*names, psprintf("%s.%s", table, column));
		found = lappend(found,
						psprintf("%s.%s (generated on the source, plain here): "
								 "ALTER TABLE %s DROP COLUMN %s, ADD COLUMN %s %s GENERATED ALWAYS AS (%s) STORED",
								 table, column, table, column, column,
								 SPI_getvalue(tup, desc, 4),
								 SPI_getvalue(tup, desc, 5)));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	return found;
}

/*
 * generated_columns: a stored generated column is not replicated (in 15):
 * generated on the source and plain here, it stays NULL; plain on the
 * source (or any column of a source before 12) and generated here, the
 * copy fails for ever.
 */
void
check_generated_columns(CheckContext *ctx, CheckResult *result)
{
	List	   *found;
	List	   *names = NIL;

	compare_columns(ctx);
	found = list_concat(generated_on_source_only(ctx, &names),
						ctx->generated_columns);
	names = list_concat(names, ctx->generated_names);
	result->ok = found == NIL;
	result->objects = found;
	result->detail = result->ok ?
		pstrdup("Every generated column is generated on both sides.") :
		psprintf("Columns generated on one side only (left NULL here, or the initial copy fails for ever): %s.",
				 check_summary(names));
	result->hint = pstrdup("Make each column generated on both sides or on neither, here: the objects column of zdm.check gives the statement for each.");
}

/* Materialized views of the source. */
static const char *source_matviews_sql =
"SELECT n.nspname, c.relname FROM pg_class c "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'm' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"ORDER BY 1, 2";

/*
 * materialized_views: not replicated; refreshed here after the cutover.
 */
void
check_materialized_views(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	List	   *names = NIL;
	int			row;

	res = remote_query(ctx->conn, source_matviews_sql, 0, NULL,
					   "listing the materialized views of the source");
	for (row = 0; row < res->ntuples; row++)
	{
		char	   *view = check_qualified(remote_value(res, row, 0),
										   remote_value(res, row, 1));

		names = lappend(names, view);
		result->objects = lappend(result->objects,
								  psprintf("%s (not replicated): REFRESH MATERIALIZED VIEW %s", view, view));
	}
	result->ok = names == NIL;
	result->detail = result->ok ? pstrdup("No materialized views on the source.") :
		psprintf("Materialized views are not replicated; here they keep what the schema copy gave them (no data with pg_dump --schema-only): %s.",
				 check_summary(names));
	result->hint = pstrdup("After the cutover, run REFRESH MATERIALIZED VIEW on this target for each of them (the objects column of zdm.check lists the statements).");
}

/*
 * Partitions of the source (leaves: a FOR ALL TABLES publication publishes
 * each leaf under its own name), with their parent, bound and the parent's
 * partition key.
 */
static const char *source_partitions_sql =
"SELECT n.nspname, c.relname, pn.nspname, p.relname, "
"       pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(p.oid) "
"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
"JOIN pg_inherits i ON i.inhrelid = c.oid "
"JOIN pg_class p ON p.oid = i.inhparent "
"JOIN pg_namespace pn ON pn.oid = p.relnamespace "
"WHERE c.relispartition AND c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"ORDER BY 1, 2";

/*
 * partitions: pg_zdm replicates each leaf partition of the source into the
 * table of the same name here.  Refused, naming each partition, when the
 * parent exists here but the leaf does not (its rows would reach nothing,
 * even with ignore_missing), or the leaf here is not the same partition of
 * the same parent (its partition constraint would reject rows: the copy
 * fails for ever).  A table partitioned only here, or a leaf that is a
 * plain table here while its parent is absent, works.
 */
void
check_partitions(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	List	   *lists[6] = {NIL, NIL, NIL, NIL, NIL, NIL};
	Oid			types[6] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[6];
	List	   *names = NIL;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			row;
	int			i;
	uint64		r;

	source_print_like_target(ctx);
	res = remote_query(ctx->conn, source_partitions_sql, 0, NULL,
					   "listing the partitions of the source");
	for (row = 0; row < res->ntuples; row++)
		for (i = 0; i < 6; i++)
			lists[i] = lappend(lists[i], (char *) remote_value(res, row, i));
	for (i = 0; i < 6; i++)
		values[i] = check_text_array(lists[i]);

	SPI_connect();
	if (res->ntuples > 0 &&
		spi_execute_printing_utc("SELECT s.nsp, s.rel, s.pnsp, s.prel, s.bound, "
						"       l.oid IS NOT NULL, "
						"       CASE WHEN l.relispartition THEN "
						"         (SELECT pg_catalog.quote_ident(qn.nspname) || '.' || "
						"                 pg_catalog.quote_ident(q.relname) "
						"          FROM pg_catalog.pg_inherits h "
						"          JOIN pg_catalog.pg_class q ON q.oid = h.inhparent "
						"          JOIN pg_catalog.pg_namespace qn ON qn.oid = q.relnamespace "
						"          WHERE h.inhrelid = l.oid) END, "
						"       pg_catalog.pg_get_expr(l.relpartbound, l.oid), "
						"       p.relkind, "
						"       CASE WHEN p.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(p.oid) END, "
						"       s.keydef "
						"FROM unnest($1, $2, $3, $4, $5, $6) WITH ORDINALITY "
						"     AS s(nsp, rel, pnsp, prel, bound, keydef, i) "
						"LEFT JOIN (pg_catalog.pg_class l JOIN pg_catalog.pg_namespace ln "
						"  ON ln.oid = l.relnamespace AND l.relkind IN ('r', 'p')) "
						"  ON ln.nspname = s.nsp AND l.relname = s.rel "
						"LEFT JOIN (pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pn "
						"  ON pn.oid = p.relnamespace AND p.relkind IN ('r', 'p')) "
						"  ON pn.nspname = s.pnsp AND p.relname = s.prel "
						"WHERE p.oid IS NOT NULL "
						"ORDER BY s.i",
						6, types, values) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the partitions of the source with the target");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; res->ntuples > 0 && r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *leaf = check_qualified(SPI_getvalue(tup, desc, 1),
										   SPI_getvalue(tup, desc, 2));
		char	   *parent = check_qualified(SPI_getvalue(tup, desc, 3),
											 SPI_getvalue(tup, desc, 4));
		const char *bound = SPI_getvalue(tup, desc, 5);
		bool		leaf_here = strcmp(SPI_getvalue(tup, desc, 6), "t") == 0;
		const char *leaf_parent = SPI_getvalue(tup, desc, 7);
		const char *leaf_bound = SPI_getvalue(tup, desc, 8);
		bool		parent_partitioned = strcmp(SPI_getvalue(tup, desc, 9), "p") == 0;
		const char *keydef = SPI_getvalue(tup, desc, 10);
		bool		same_key = parent_partitioned && keydef &&
			strcmp(keydef, SPI_getvalue(tup, desc, 11)) == 0;
		char	   *why;
		char	   *fix;

		if (leaf_here && leaf_parent && strcmp(leaf_parent, parent) == 0 &&
			leaf_bound && strcmp(leaf_bound, bound) == 0)
			continue;			/* the same partition on both sides */

		if (!leaf_here)
			why = psprintf("partition of %s on the source, missing here: its rows would not be migrated", parent);
		else if (leaf_parent == NULL)
			why = psprintf("partition of %s on the source, a table outside %s here", parent, parent);
		else
			why = psprintf("partition of %s %s on the source, of %s %s here: the copy would fail on rows outside that partition",
						   parent, bound, leaf_parent, leaf_bound ? leaf_bound : "");

		if (same_key && !leaf_here)
			fix = psprintf("CREATE TABLE %s PARTITION OF %s %s", leaf, parent, bound);
		else if (same_key && leaf_parent == NULL)
			fix = psprintf("ALTER TABLE %s ATTACH PARTITION %s %s", parent, leaf, bound);
		else
			fix = psprintf("%s is partitioned differently here; pg_zdm copies each source partition into the table of the same name: "
						   "partition %s here as on the source (PARTITION BY %s) and change the partitioning after the cutover, "
						   "or leave %s out of this migration",
						   parent, parent, SPI_getvalue(tup, desc, 11), parent);
		names = lappend(names, leaf);
		result->objects = lappend(result->objects,
								  psprintf("%s (%s): %s", leaf, why, fix));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();

	result->ok = names == NIL;
	result->detail = result->ok ?
		pstrdup("Every source partition has the same partition here, or its parent table is not here.") :
		psprintf("Source partitions whose table here is missing or partitioned differently: %s.",
				 check_summary(names));
	result->hint = pstrdup("Partition the tables here as on the source (the objects column of zdm.check gives the statement for each partition), then repartition after the cutover if needed.");
}

/*
 * Constraints of the source's tables and domains of the types in $1 ('c'
 * or 'p,u,x'), with their definition (without NOT VALID) and whether they
 * are validated.
 */
static const char *source_constraints_sql =
"SELECT 't', n.nspname, c.relname, "
"       regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', ''), k.convalidated "
"FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE k.contype::text = ANY (string_to_array($1, ',')) "
"  AND c.relkind = 'r' AND c.relpersistence = 'p' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"UNION ALL "
"SELECT 'd', n.nspname, t.typname, "
"       regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', ''), k.convalidated "
"FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid "
"JOIN pg_namespace n ON n.oid = t.typnamespace "
"WHERE k.contype::text = ANY (string_to_array($1, ',')) "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_'";

/*
 * The constraints of the types in $8 here that source rows may violate:
 * those of the tables to copy (and their partitions) and of the domains of
 * their columns (and the domains those are based on), unless the source
 * has a validated constraint of the same definition on the same table or
 * domain.  Table sync enforces them, NOT VALID ones too, and retries a
 * failed copy for ever; the apply worker stops at the first violating
 * change.
 */
static const char *target_constraints_sql =
"WITH RECURSIVE "
"src AS (SELECT kind, nsp, name, def, pg_catalog.bool_or(validated) AS validated "
"  FROM unnest($3, $4, $5, $6, $7) AS x(kind, nsp, name, def, validated) "
"  GROUP BY 1, 2, 3, 4), "
"tabs AS (SELECT s.nsp, s.rel, c.oid FROM unnest($1, $2) AS s(nsp, rel) "
"  JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
"  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.rel "
"    AND c.relkind IN ('r', 'p')), "
"rels AS (SELECT nsp, rel, oid AS relid, true AS top FROM tabs "
"  UNION ALL SELECT t.nsp, t.rel, pt.relid, false FROM tabs t "
"  CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.oid) pt WHERE pt.level > 0), "
"dchain(typ) AS (SELECT DISTINCT a.atttypid FROM rels r "
"    JOIN pg_catalog.pg_attribute a ON a.attrelid = r.relid "
"     AND a.attnum > 0 AND NOT a.attisdropped "
"  UNION SELECT t.typbasetype FROM dchain d "
"    JOIN pg_catalog.pg_type t ON t.oid = d.typ WHERE t.typtype = 'd') "
"SELECT 't', pg_catalog.quote_ident(r.nsp) || '.' || pg_catalog.quote_ident(r.rel), "
"       CASE WHEN NOT r.top THEN r.relid::pg_catalog.regclass::pg_catalog.text END, "
"       pg_catalog.quote_ident(k.conname), def.def, k.convalidated, v.validated "
"FROM rels r JOIN pg_catalog.pg_constraint k ON k.conrelid = r.relid "
"  AND k.contype::pg_catalog.text = ANY (pg_catalog.string_to_array($8, ',')) "
"CROSS JOIN LATERAL (SELECT pg_catalog.regexp_replace("
"    pg_catalog.pg_get_constraintdef(k.oid), ' NOT VALID$', '')) AS def(def) "
"LEFT JOIN src v ON v.kind = 't' AND v.nsp = r.nsp AND v.name = r.rel "
"  AND v.def = def.def "
"WHERE (r.top OR k.conislocal) AND v.validated IS DISTINCT FROM true "
"UNION ALL "
"SELECT 'd', pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname), "
"       NULL, pg_catalog.quote_ident(k.conname), def.def, k.convalidated, v.validated "
"FROM dchain d JOIN pg_catalog.pg_type t ON t.oid = d.typ AND t.typtype = 'd' "
"JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace "
"JOIN pg_catalog.pg_constraint k ON k.contypid = t.oid "
"  AND k.contype::pg_catalog.text = ANY (pg_catalog.string_to_array($8, ',')) "
"CROSS JOIN LATERAL (SELECT pg_catalog.regexp_replace("
"    pg_catalog.pg_get_constraintdef(k.oid), ' NOT VALID$', '')) AS def(def) "
"LEFT JOIN src v ON v.kind = 'd' AND v.nsp = tn.nspname AND v.name = t.typname "
"  AND v.def = def.def "
"WHERE v.validated IS DISTINCT FROM true "
"ORDER BY 1 DESC, 2, 3, 4";

/*
 * Compare the constraints of the types in contypes ("c", or "p,u,x") here
 * with the source's; append the names of those the source has not
 * validated with the same definition to *names and an entry with the
 * statements for each to *objects.
 */
static void
compare_constraints(CheckContext *ctx, const char *contypes,
					List **names, List **objects)
{
	RemoteResult *res;
	List	   *lists[5] = {NIL, NIL, NIL, NIL, NIL};
	Oid			types[8] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID, TEXTOID};
	Datum		values[8];
	const char *params[1] = {contypes};
	bool		keys = strcmp(contypes, "c") != 0;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			row;
	int			i;
	uint64		r;

	check_read_tables(ctx);
	source_print_like_target(ctx);
	res = remote_query(ctx->conn, source_constraints_sql, 1, params,
					   "listing the constraints of the source");
	for (row = 0; row < res->ntuples; row++)
		for (i = 0; i < 5; i++)
			lists[i] = lappend(lists[i], (char *) remote_value(res, row, i));
	values[0] = check_text_array(ctx->copied_nsp);
	values[1] = check_text_array(ctx->copied_rel);
	for (i = 0; i < 4; i++)
		values[2 + i] = check_text_array(lists[i]);
	{
		int			n = list_length(lists[4]);
		Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
		ListCell   *lc;

		i = 0;
		foreach(lc, lists[4])
			elems[i++] = BoolGetDatum(strcmp(lfirst(lc), "t") == 0);
		values[6] = PointerGetDatum(construct_array(elems, n, BOOLOID, 1, true,
													TYPALIGN_CHAR));
	}
	values[7] = CStringGetTextDatum(contypes);

	SPI_connect();
	if (spi_execute_printing_utc(target_constraints_sql, 8, types, values) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the constraints of the target with the source");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		domain = strcmp(SPI_getvalue(tup, desc, 1), "d") == 0;
		const char *owner = SPI_getvalue(tup, desc, 2);
		const char *partition = SPI_getvalue(tup, desc, 3);
		const char *con = SPI_getvalue(tup, desc, 4);
		const char *def = SPI_getvalue(tup, desc, 5);
		bool		valid_here = strcmp(SPI_getvalue(tup, desc, 6), "t") == 0;
		bool		on_source = SPI_getvalue(tup, desc, 7) != NULL;
		const char *kind = domain ? "DOMAIN" : "TABLE";
		const char *on = partition ? partition : owner;
		char	   *name = psprintf("%s%s.%s", domain ? "domain " : "", on, con);
		char	   *entry;

		entry = psprintf("%s (%s%s here, %s on the source): ",
						 name, def, valid_here ? "" : " NOT VALID",
						 on_source ? "NOT VALID" : "absent");
		if (on_source)
			entry = psprintf("%son the source ALTER %s %s VALIDATE CONSTRAINT %s (it reports a violating row if there is one); or ",
							 entry, kind, owner, con);
		else if (keys)
			entry = psprintf("%son the source ALTER TABLE %s ADD CONSTRAINT %s %s (it fails if rows conflict); or ",
							 entry, owner, con, def);
		/*
		 * Added back as it was here: a constraint NOT VALID here (typically
		 * because old rows violate it) comes back NOT VALID, or the ADD
		 * would fail on those rows after the cutover.
		 */
		entry = psprintf("%shere ALTER %s %s DROP CONSTRAINT %s before init and ALTER %s %s ADD CONSTRAINT %s %s%s after the cutover",
						 entry, kind, on, con, kind, on, con, def,
						 valid_here ? "" : " NOT VALID");
		*names = lappend(*names, name);
		*objects = lappend(*objects, entry);
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
}

void
check_target_constraints(CheckContext *ctx, CheckResult *result)
{
	List	   *names = NIL;

	compare_constraints(ctx, "c", &names, &result->objects);
	result->ok = names == NIL;
	result->detail = result->ok ?
		pstrdup("Every CHECK constraint of the tables to migrate, and of the domains of their columns, is validated on the source.") :
		psprintf("CHECK constraints here that the source's rows are not known to satisfy (NOT VALID, or absent on the source); a violating row would make the initial copy fail for ever or stop the apply worker: %s.",
				 check_summary(names));
	result->hint = pstrdup("Validate each on the source (ALTER TABLE or ALTER DOMAIN ... VALIDATE CONSTRAINT), or drop it here and add it back after the cutover; the objects column of zdm.check gives the statements.");
}

/*
 * target_keys: a PRIMARY KEY, UNIQUE or EXCLUDE constraint here that the
 * source does not have (same definition, same table): rows the source
 * allows would make the initial copy fail for ever, or stop the apply
 * worker.
 */
void
check_target_keys(CheckContext *ctx, CheckResult *result)
{
	List	   *names = NIL;

	compare_constraints(ctx, "p,u,x", &names, &result->objects);
	result->ok = names == NIL;
	result->detail = result->ok ?
		pstrdup("Every primary key, unique and exclusion constraint of the tables to migrate exists on the source.") :
		psprintf("Primary key, unique or exclusion constraints here that the source does not have; rows the source allows would make the initial copy fail for ever or stop the apply worker: %s.",
				 check_summary(names));
	result->hint = pstrdup("Add each on the source too, or drop it here and add it back after the cutover; the objects column of zdm.check gives the statements.");
}

/*
 * target_not_null: a column NOT NULL here that the source lets be NULL, or
 * NOT NULL without a default here and absent on the source (it receives
 * NULL): the initial copy fails for ever or the apply worker stops.
 */
void
check_target_not_null(CheckContext *ctx, CheckResult *result)
{
	compare_columns(ctx);
	result->ok = ctx->not_null_columns == NIL;
	result->objects = ctx->not_null_columns;
	result->detail = result->ok ?
		pstrdup("Every column that is NOT NULL here is NOT NULL on the source or has a value to take.") :
		psprintf("Columns NOT NULL here that replicated rows may leave NULL; the initial copy would fail for ever or the apply worker stop: %s.",
				 check_summary(ctx->not_null_names));
	result->hint = pstrdup("Make the source guarantee it (SET NOT NULL there), or relax the column here until the cutover; the objects column of zdm.check gives the statements.");
}

/* Sequences of the source. */
static const char *source_sequences_sql =
"SELECT n.nspname, c.relname FROM pg_class c "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"WHERE c.relkind = 'S' "
"  AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' "
"ORDER BY 1, 2";

/*
 * missing_sequences: sequences of the source that have no sequence of the
 * same name here; the cutover cannot set them ahead of the source.
 */
void
check_missing_sequences(CheckContext *ctx, CheckResult *result)
{
	RemoteResult *res;
	List	   *nsps = NIL;
	List	   *rels = NIL;
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			row;
	uint64		r;

	res = remote_query(ctx->conn, source_sequences_sql, 0, NULL,
					   "listing the sequences of the source");
	for (row = 0; row < res->ntuples; row++)
	{
		nsps = lappend(nsps, (char *) remote_value(res, row, 0));
		rels = lappend(rels, (char *) remote_value(res, row, 1));
	}
	values[0] = check_text_array(nsps);
	values[1] = check_text_array(rels);

	SPI_connect();
	if (zdm_spi_execute("SELECT s.nsp, s.rel "
						"FROM unnest($1, $2) WITH ORDINALITY AS s(nsp, rel, i) "
						"LEFT JOIN (pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
						"  ON n.oid = c.relnamespace AND c.relkind = 'S') "
						"  ON n.nspname = s.nsp AND c.relname = s.rel "
						"WHERE c.oid IS NULL ORDER BY s.i",
						2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the source sequences on the target");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
		result->objects = lappend(result->objects,
								  check_qualified(SPI_getvalue(SPI_tuptable->vals[r],
															   SPI_tuptable->tupdesc, 1),
												  SPI_getvalue(SPI_tuptable->vals[r],
															   SPI_tuptable->tupdesc, 2)));
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();

	result->ok = result->objects == NIL;
	result->detail = result->ok ?
		pstrdup("Every source sequence exists on the target.") :
		psprintf("Source sequences missing on the target; the cutover cannot set them ahead of the source: %s.",
				 check_summary(result->objects));
	result->hint = pstrdup("Create them on the target (pg_dump --schema-only), or make sure nothing here uses them.");
}

/*
 * target_triggers: triggers of the tables to copy that are enabled ALWAYS
 * or REPLICA here fire for every replicated row (the apply worker runs with
 * session_replication_role = replica, which skips the others).
 */
void
check_target_triggers(CheckContext *ctx, CheckResult *result)
{
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	List	   *names = NIL;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext oldcxt;
	uint64		r;

	check_read_tables(ctx);
	values[0] = check_text_array(ctx->copied_nsp);
	values[1] = check_text_array(ctx->copied_rel);

	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.quote_ident(s.nsp) || '.' || pg_catalog.quote_ident(s.rel), "
						"       pg_catalog.quote_ident(g.tgname), "
						"       CASE g.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END "
						"FROM unnest($1, $2) WITH ORDINALITY AS s(nsp, rel, i) "
						"JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp "
						"JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
						"  AND c.relname = s.rel AND c.relkind IN ('r', 'p') "
						"JOIN pg_catalog.pg_trigger g ON g.tgrelid = c.oid "
						"WHERE NOT g.tgisinternal AND g.tgenabled IN ('A', 'R') "
						"ORDER BY s.i, g.tgname",
						2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the triggers of the target tables");
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		const char *table = SPI_getvalue(tup, desc, 1);
		const char *trigger = SPI_getvalue(tup, desc, 2);

		names = lappend(names, psprintf("%s.%s", table, trigger));
		result->objects = lappend(result->objects,
								  psprintf("%s.%s (ENABLE %s TRIGGER: fires for replicated rows): ALTER TABLE %s ENABLE TRIGGER %s, unless it must",
										   table, trigger, SPI_getvalue(tup, desc, 3),
										   table, trigger));
	}
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();

	result->ok = names == NIL;
	result->detail = result->ok ?
		pstrdup("No trigger of the tables to migrate fires for replicated rows here.") :
		psprintf("Triggers here that fire for every replicated row (ENABLE ALWAYS or ENABLE REPLICA): %s.",
				 check_summary(names));
	result->hint = pstrdup("Unless they must run for the source's rows, enable them for local writes only (ALTER TABLE ... ENABLE TRIGGER) until the cutover.");
}
