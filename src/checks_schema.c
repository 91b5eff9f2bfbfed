/*-------------------------------------------------------------------------
 *
 * checks_schema.c
 *		  The preflight checks of tables and columns: what the source would
 *		  publish compared with what this target has.
 *
 * The source's lists are read with one query each and passed to one query
 * here as arrays, so no statement grows with the number of tables beyond
 * its parameters.  Every name in a detail or an object is quoted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include "checks.h"

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

/* Columns of source_tables_sql. */
enum
{
	TABLE_SCHEMA,
	TABLE_NAME,
	TABLE_PERSISTENCE,
	TABLE_HAS_IDENTITY,
	TABLE_OWNED
};

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

void
check_replica_identity(CheckContext *ctx, CheckResult *result)
{
	List	   *names = NIL;
	int			row;
	int			n;

	check_read_tables(ctx);
	for (row = 0; row < ctx->tables->ntuples; row++)
	{
		if (strcmp(remote_value(ctx->tables, row, TABLE_PERSISTENCE), "p") != 0 ||
			(ctx->ignore_missing && !ctx->present[row]))
			continue;
		if (strcmp(remote_value(ctx->tables, row, TABLE_HAS_IDENTITY), "f") == 0)
			names = lappend(names,
							check_qualified(remote_value(ctx->tables, row, TABLE_SCHEMA),
											remote_value(ctx->tables, row, TABLE_NAME)));
	}
	n = list_length(names);
	result->ok = n == 0;
	result->objects = names;
	result->detail = n == 0 ?
		pstrdup("Every published table has a primary key or replica identity.") :
		psprintf("Once published, UPDATE and DELETE would fail on the source for %d table%s without primary key or replica identity: %s.",
				 n, n == 1 ? "" : "s", check_summary(names));
	result->hint = pstrdup("On the source, add a primary key, or run ALTER TABLE ... REPLICA IDENTITY FULL on each of them.");
}

/*
 * Compare the source's columns with this target's, for tables on both
 * sides, once: missing columns break the apply worker; other types may not.
 */
static void
compare_columns(CheckContext *ctx)
{
	RemoteResult *columns;
	List	   *lists[6] = {NIL, NIL, NIL, NIL, NIL, NIL};
	Oid			types[6] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID};
	Datum		values[6];
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
		for (i = 0; i < 6; i++)
		{
			if (i == 4)
				lists[i] = lappend_int(lists[i], atoi(remote_value(columns, row, i)));
			else
				lists[i] = lappend(lists[i], (char *) remote_value(columns, row, i));
		}
	}
	for (i = 0; i < 6; i++)
		values[i] = i == 4 ? check_int4_array(lists[i]) : check_text_array(lists[i]);

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
	oldcxt = MemoryContextSwitchTo(outer);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *table = check_qualified(SPI_getvalue(tup, desc, 1),
											SPI_getvalue(tup, desc, 2));
		const char *column = quote_identifier(SPI_getvalue(tup, desc, 3));

		if (strcmp(SPI_getvalue(tup, desc, 5), "t") == 0)
			ctx->missing_columns = lappend(ctx->missing_columns,
										   psprintf("%s.%s", table, column));
		else
			ctx->retyped_columns = lappend(ctx->retyped_columns,
										   psprintf("%s.%s (%s on the source, %s here)",
													table, column,
													SPI_getvalue(tup, desc, 4),
													SPI_getvalue(tup, desc, 6)));
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
