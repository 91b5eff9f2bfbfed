/*-------------------------------------------------------------------------
 *
 * copy.c
 *		  The parallel initial copy of zdm.init(copy_method => 'parallel').
 *
 * zdm.init creates the slot through a replication connection with
 * CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT (a spelling
 * every source from 10 accepts) and keeps that connection idle: the
 * snapshot it exported stays importable only while it does.  Init then
 * plans the copy into zdm.copy_task (one task per table, or per range of a
 * large table: TID ranges from source 14, ranges of an integer primary key
 * before; binary COPY where the column types match; one task per index or
 * primary key / unique constraint it sets aside, dropped here and rebuilt
 * after the data), creates the subscription disabled with
 * copy_data = false, and starts copy_jobs background workers.  Each worker
 * opens a REPEATABLE READ transaction on the source and imports the
 * snapshot; once all have, init commits, lets them go and closes the
 * replication connection.  From then on the copy runs in the workers alone:
 * each claims tasks, streams COPY (...) TO STDOUT from the source into
 * COPY ... FROM on this target inside its own local transaction (the rows
 * and the task's 'done' commit together), rebuilds the set-aside indexes
 * of tables whose data is in (beside the copy of the others: see
 * claim_task and copy_plan for the order), and the last worker enables the
 * subscription.  Streaming starts
 * at the slot's consistent point, which is exactly the snapshot the rows
 * were read in: nothing is lost and nothing applied twice.
 *
 * There is no resume: the snapshot dies with the workers' source
 * transactions.  An error in a worker marks the copy failed (zdm.status()
 * says so) and stops the other workers; a target restart leaves it
 * interrupted.  Either way CALL zdm.abort() removes everything: it stops
 * the workers, rebuilds the indexes set aside, empties the tables the copy
 * filled (init refused tables that held rows), and drops subscription, slot
 * and publication.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

#define COPY_ERROR_LEN		512

/* maintenance_work_mem of a copy worker at least (kB): its index builds. */
#define COPY_INDEX_MEMORY_KB	262144

/*
 * How long init waits for the lock of a target table whose indexes it sets
 * aside, when the caller set no lock_timeout.
 */
#define COPY_LOCK_TIMEOUT	"10s"

/* How often an idle worker looks for work, and a waiting init at workers. */
#define COPY_POLL_MS		100

/* One copy worker, as init sees it while the workers import the snapshot. */
typedef struct CopyWorkerSlot
{
	bool		imported;		/* the snapshot is imported on the source */
	bool		failed;			/* could not connect or import: error says */
	char		error[COPY_ERROR_LEN];
} CopyWorkerSlot;

/* Shared by init and the workers until init lets them go. */
typedef struct CopyShared
{
	slock_t		mutex;
	Oid			database_id;
	Oid			user_id;
	int			jobs;
	Latch	   *init_latch;
	bool		go;				/* init committed: start copying */
	bool		cancel;			/* init failed: end without doing anything */
	char		snapshot[NAMEDATALEN * 2];
	CopyWorkerSlot slots[ZDM_COPY_MAX_JOBS];
	char		dsn[FLEXIBLE_ARRAY_MEMBER];
} CopyShared;

/* What init holds while its workers start. */
struct CopyLaunch
{
	dsm_segment *seg;
	CopyShared *shared;
	BackgroundWorkerHandle *handles[ZDM_COPY_MAX_JOBS];
	int			launched;
};

/* The source stream of the COPY running in this worker (copy_read_data). */
static PGconn *copy_source = NULL;
static char *copy_buf = NULL;
static int	copy_buf_len = 0;
static int	copy_buf_off = 0;
static bool copy_eof = false;
static int64 copy_bytes = 0;

/*
 * copy_checks: the checks only the parallel copy needs, as CheckResult rows
 * for zdm.check and zdm.init: enough free background worker slots here for
 * the copy workers, the apply worker and the cutover worker (blocking); how
 * the source's release lets large tables be split (a warning when only
 * integer primary keys can split them).  The source side of the slot -- one
 * walsender for the snapshot-exporting connection, later the subscription's,
 * and EXPORT_SNAPSHOT itself, which every supported release has -- is
 * covered by the common checks.
 */
List *
copy_checks(PGconn *conn, int jobs)
{
	CheckResult *c = palloc0(sizeof(CheckResult));
	CheckResult *r = palloc0(sizeof(CheckResult));
	SourceFeatures features;
	int			busy;
	int			free_slots;

	SPI_connect();
	if (zdm_spi_execute("SELECT count(*) FROM pg_catalog.pg_stat_activity "
						"WHERE backend_type NOT IN ("
						"  'client backend', 'checkpointer', 'background writer', "
						"  'walwriter', 'autovacuum launcher', 'autovacuum worker', "
						"  'archiver', 'startup', 'walreceiver', 'walsender', "
						"  'standalone backend', 'logger', 'io worker', "
						"  'walsummarizer', 'slotsync worker')",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the workers of the target");
	busy = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	free_slots = atoi(GetConfigOption("max_worker_processes", false, false)) - busy;

	c->name = "copy_workers";
	c->ok = free_slots >= jobs + 2;
	c->blocking = true;
	c->sqlstate = ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
	c->detail = psprintf("This target has %d free background worker slots; the parallel copy needs %d (%d copy workers, then the apply worker and the cutover worker).",
						 Max(free_slots, 0), jobs + 2, jobs);
	c->hint = pstrdup("Raise max_worker_processes on this target (needs a restart), or pass a smaller copy_jobs.");

	source_features(conn, &features);
	r->name = "copy_ranges";
	r->ok = features.tid_range_scan;
	r->blocking = false;
	r->detail = features.tid_range_scan ?
		pstrdup("The source (PostgreSQL 14 or later) scans TID ranges: tables larger than zdm.copy_range_size are copied in ranges by several workers.") :
		pstrdup("The source is older than PostgreSQL 14 and cannot scan TID ranges: a large table is split only by a single-column integer primary key, and copied in one piece otherwise.");
	r->hint = features.tid_range_scan ? NULL :
		pstrdup("Expect the largest table without such a key to set the length of the copy.");
	return list_make2(c, r);
}

/*
 * Run one statement through SPI with parameters; ERROR when it does not
 * return expected.
 */
static void
copy_spi(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int			rc;

	SPI_connect();
	rc = zdm_spi_execute(sql, nargs, types, values, NULL, false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

/*
 * Record one data task.
 */
static void
add_data_task(int id, const char *table, int part, int parts,
			  const char *query, const char *columns, double rows, int64 bytes,
			  bool binary)
{
	Oid			types[9] = {INT4OID, TEXTOID, INT4OID, INT4OID, TEXTOID, TEXTOID,
	FLOAT8OID, INT8OID, TEXTOID};
	Datum		values[9];

	values[0] = Int32GetDatum(id);
	values[1] = CStringGetTextDatum(table);
	values[2] = Int32GetDatum(part);
	values[3] = Int32GetDatum(parts);
	values[4] = CStringGetTextDatum(query);
	values[5] = CStringGetTextDatum(columns);
	values[6] = Float8GetDatum(rows);
	values[7] = Int64GetDatum(bytes);
	values[8] = CStringGetTextDatum(binary ? "binary" : "text");
	copy_spi("INSERT INTO zdm.copy_task (id, kind, relid, part, parts, "
			 "  source_query, target_columns, est_rows, est_bytes, copy_format) "
			 "VALUES ($1, 'data', $2::pg_catalog.regclass, $3, $4, $5, $6, $7, $8, $9)",
			 9, types, values, SPI_OK_INSERT);
}

/*
 * Set aside the indexes of table that COPY would otherwise maintain row by
 * row: every index that backs no constraint, and every primary key or
 * unique constraint that no foreign key points to -- none of them the
 * replica identity index or part of a partitioned index (those stay, as do
 * exclusion constraints).  Each is recorded as an index task with the
 * statement that rebuilds it (CREATE INDEX, or ALTER TABLE ... ADD
 * CONSTRAINT), then dropped, in the caller's transaction: nothing is
 * dropped without its task.  Returns the next free task id.
 */
static int
set_aside_indexes(int id, const char *table)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	List	   *names = NIL;
	List	   *defs = NIL;
	List	   *drops = NIL;
	ListCell   *lc1;
	ListCell   *lc2;
	ListCell   *lc3;
	uint64		i;
	MemoryContext callercxt = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(table);
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' "
						"         OPERATOR(pg_catalog.||) pg_catalog.quote_ident(ic.relname), "
						"       CASE WHEN k.oid IS NULL THEN pg_catalog.pg_get_indexdef(i.indexrelid) "
						"         ELSE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', "
						"           i.indrelid::pg_catalog.regclass, k.conname, "
						"           pg_catalog.pg_get_constraintdef(k.oid)) END, "
						"       CASE WHEN k.oid IS NULL THEN 'DROP INDEX ' OPERATOR(pg_catalog.||) "
						"           pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' "
						"           OPERATOR(pg_catalog.||) pg_catalog.quote_ident(ic.relname) "
						"         ELSE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', "
						"           i.indrelid::pg_catalog.regclass, k.conname) END "
						"FROM pg_catalog.pg_index i "
						"JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid "
						"JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ic.relnamespace "
						"LEFT JOIN pg_catalog.pg_constraint k ON k.conindid OPERATOR(pg_catalog.=) i.indexrelid "
						"  AND k.conrelid OPERATOR(pg_catalog.=) i.indrelid "
						"WHERE i.indrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
						"  AND NOT i.indisreplident AND i.indisvalid "
						"  AND (k.oid IS NULL OR (k.contype OPERATOR(pg_catalog.=) ANY ('{p,u}') "
						"       AND k.conparentid OPERATOR(pg_catalog.=) 0 "
						"       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f "
						"         WHERE f.contype OPERATOR(pg_catalog.=) 'f' "
						"           AND f.conindid OPERATOR(pg_catalog.=) i.indexrelid))) "
						"  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint o "
						"    WHERE o.conindid OPERATOR(pg_catalog.=) i.indexrelid "
						"      AND o.conrelid OPERATOR(pg_catalog.<>) i.indrelid "
						"      AND o.contype OPERATOR(pg_catalog.<>) 'f') "
						"  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h "
						"    WHERE h.inhrelid OPERATOR(pg_catalog.=) i.indexrelid) "
						"ORDER BY ic.relname",
						1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the indexes of %s", table);
	for (i = 0; i < SPI_processed; i++)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(callercxt);

		names = lappend(names, pstrdup(SPI_getvalue(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1)));
		defs = lappend(defs, pstrdup(SPI_getvalue(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 2)));
		drops = lappend(drops, pstrdup(SPI_getvalue(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 3)));
		MemoryContextSwitchTo(oldcxt);
	}
	SPI_finish();

	forthree(lc1, names, lc2, defs, lc3, drops)
	{
		Oid			itypes[4] = {INT4OID, TEXTOID, TEXTOID, TEXTOID};
		Datum		ivalues[4];

		ivalues[0] = Int32GetDatum(id++);
		ivalues[1] = CStringGetTextDatum(table);
		ivalues[2] = CStringGetTextDatum((char *) lfirst(lc1));
		ivalues[3] = CStringGetTextDatum((char *) lfirst(lc2));
		copy_spi("INSERT INTO zdm.copy_task (id, kind, relid, index_name, index_def) "
				 "VALUES ($1, 'index', $2::pg_catalog.regclass, $3, $4)",
				 4, itypes, ivalues, SPI_OK_INSERT);
		copy_spi((char *) lfirst(lc3), 0, NULL, NULL, SPI_OK_UTILITY);
	}
	return id;
}

/*
 * The source's published tables with what planning needs: size, pages,
 * estimated rows, the replicated columns as a quoted list, and the name of
 * a single-column integer primary key (for key ranges before 14).
 */
static RemoteResult *
published_tables(PGconn *conn)
{
	SourceFeatures features;

	source_features(conn, &features);
	return remote_query(conn,
						psprintf("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
								 "  pg_relation_size(c.oid), "
								 "  greatest(c.reltuples, 0)::float8, "
								 "  (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) "
								 "     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
								 "      AND NOT a.attisdropped %s), "
								 "  (SELECT quote_ident(a.attname) FROM pg_index i "
								 "     JOIN pg_attribute a ON a.attrelid = i.indrelid "
								 "      AND a.attnum = i.indkey[0] "
								 "    WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnatts = 1 "
								 "      AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)), "
								 "  current_setting('block_size')::int, "
								 "  (SELECT string_agg(format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) "
								 "     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
								 "      AND NOT a.attisdropped %s) "
								 "FROM pg_publication_tables p "
								 "JOIN pg_namespace n ON n.nspname = p.schemaname "
								 "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename "
								 "WHERE p.pubname = '" ZDM_PUBLICATION "' "
								 "ORDER BY pg_relation_size(c.oid) DESC",
								 features.generated_columns ? "AND a.attgenerated = ''" : "",
								 features.generated_columns ? "AND a.attgenerated = ''" : ""),
						0, NULL, "listing the tables to copy");
}

/*
 * Can table be copied in binary format?  Only when zdm.copy_binary is on and
 * its columns here have exactly the types they have on the source
 * (source_types: format_type of each column, in the order of columns), and
 * each type here can read the binary form (a receive function); otherwise
 * the text form, which converts between types as replication does.
 */
static bool
binary_compatible(const char *table, const char *columns,
				  const char *source_types)
{
	char	   *raw;
	List	   *names = NIL;
	ListCell   *lc;
	Datum	   *elems;
	int			n = 0;
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		values[2];
	bool		match;

	if (!zdm_copy_binary || columns == NULL || columns[0] == '\0' ||
		source_types == NULL)
		return false;
	raw = pstrdup(columns);
	if (!SplitIdentifierString(raw, ',', &names))
		return false;
	elems = palloc(sizeof(Datum) * list_length(names));
	foreach(lc, names)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	values[0] = CStringGetTextDatum(table);
	values[1] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
												TYPALIGN_INT));
	SPI_connect();
	if (zdm_spi_execute("SELECT pg_catalog.string_agg(pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' "
						"         ORDER BY x.ord) "
						"  FILTER (WHERE t.typreceive OPERATOR(pg_catalog.<>) 0) "
						"FROM pg_catalog.unnest($2) WITH ORDINALITY x(name, ord) "
						"JOIN pg_catalog.pg_attribute a "
						"  ON a.attrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
						" AND a.attname OPERATOR(pg_catalog.=) x.name AND NOT a.attisdropped "
						"JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid",
						2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the column types of %s", table);
	{
		char	   *here = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		match = here != NULL && strcmp(here, source_types) == 0;
	}
	SPI_finish();
	return match;
}

/*
 * The k-th of parts bounds that split the keys from lo to hi evenly:
 * lo + k * (hi - lo) / parts, rounded down, computed without overflow
 * (hi - lo may not fit in int64; r * k stays small, as parts is at most
 * ZDM_COPY_MAX_PARTS).  The bounds never decrease with k, so the ranges
 * between them take every key once.
 */
static int64
key_bound(int64 lo, int64 hi, int64 parts, int64 k)
{
	uint64		span = (uint64) hi - (uint64) lo;
	uint64		q = span / (uint64) parts;
	uint64		r = span % (uint64) parts;

	return (int64) ((uint64) lo + q * (uint64) k + r * (uint64) k / (uint64) parts);
}

/*
 * Plan a table of the source: one task, or parts tasks over ranges.  TID
 * ranges from 14 (scanned without reading the rest of the table); before,
 * ranges of a single-column integer primary key between its minimum and
 * maximum; a table with neither is copied in one piece.  The first range
 * has no lower bound and the last no upper one, so rows beyond the
 * estimates are copied too.
 */
static int
plan_table(PGconn *conn, int id, RemoteResult *tables, int row,
		   int64 range_bytes)
{
	SourceFeatures features;
	const char *table = remote_value(tables, row, 0);
	int64		size = strtoi64(remote_value(tables, row, 1), NULL, 10);
	double		rows = strtod(remote_value(tables, row, 2), NULL);
	const char *columns = remote_value(tables, row, 3);
	const char *key = remote_value(tables, row, 4);
	int			block_size = atoi(remote_value(tables, row, 5));
	bool		binary = binary_compatible(table, remote_value(tables, row, 3),
										   remote_value(tables, row, 6));
	const char *format = binary ? " (FORMAT binary)" : "";
	int64		parts = range_bytes > 0 ? (size + range_bytes - 1) / range_bytes : 1;
	int64		lo = 0;
	int64		hi = 0;
	int			part;

	if (columns == NULL)
		columns = "";
	source_features(conn, &features);
	parts = Max(Min(parts, ZDM_COPY_MAX_PARTS), 1);
	if (parts > 1 && !features.tid_range_scan)
	{
		if (key == NULL)
			parts = 1;
		else
		{
			RemoteResult *mm = remote_query(conn,
											psprintf("SELECT min(%s), max(%s) FROM ONLY %s",
													 key, key, table),
											0, NULL, "reading the key range of a large table");

			if (remote_value(mm, 0, 0) == NULL)
				parts = 1;
			else
			{
				lo = strtoi64(remote_value(mm, 0, 0), NULL, 10);
				hi = strtoi64(remote_value(mm, 0, 1), NULL, 10);
				/* no more ranges than keys (bounds never decrease: see key_bound) */
				if ((uint64) hi - (uint64) lo < (uint64) parts)
					parts = (int64) ((uint64) hi - (uint64) lo) + 1;
			}
		}
	}

	if (parts <= 1)
	{
		add_data_task(id++, table, 1, 1,
					  columns[0] ? psprintf("COPY %s (%s) TO STDOUT%s", table, columns, format) :
					  psprintf("COPY %s TO STDOUT", table),
					  columns, rows, size, binary);
		return id;
	}

	for (part = 0; part < parts; part++)
	{
		StringInfoData where;

		initStringInfo(&where);
		if (features.tid_range_scan)
		{
			int64		pages = (size / block_size + parts - 1) / parts;

			if (part > 0)
				appendStringInfo(&where, "ctid >= '(" INT64_FORMAT ",0)'::tid",
								 pages * part);
			if (part < parts - 1)
				appendStringInfo(&where, "%sctid < '(" INT64_FORMAT ",0)'::tid",
								 part > 0 ? " AND " : "", pages * (part + 1));
		}
		else
		{
			if (part > 0)
				appendStringInfo(&where, "%s >= " INT64_FORMAT, key,
								 key_bound(lo, hi, parts, part));
			if (part < parts - 1)
				appendStringInfo(&where, "%s%s < " INT64_FORMAT,
								 part > 0 ? " AND " : "", key,
								 key_bound(lo, hi, parts, part + 1));
		}
		add_data_task(id++, table, part + 1, (int) parts,
					  psprintf("COPY (SELECT %s FROM ONLY %s WHERE %s) TO STDOUT%s",
							   columns[0] ? columns : "*", table, where.data, format),
					  columns, rows / parts, size / parts, binary);
	}
	return id;
}

/*
 * set_aside_indexes, turning a lock timeout into an error that names the
 * table and says what to do.  The caller's transaction is lost either way.
 */
static int
set_aside_locked(int id, const char *table)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	PG_TRY();
	{
		id = set_aside_indexes(id, table);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("table %s is locked by another session on this target", table),
				 errdetail("The parallel copy sets the indexes of the table aside, which needs its ACCESS EXCLUSIVE lock; zdm.init waited %s for it.",
						   GetConfigOptionByName("lock_timeout", NULL, false)),
				 errhint("End the transaction that holds a lock on the table (pg_locks, pg_blocking_pids), or pass copy_method => 'native'.")));
	}
	PG_END_TRY();
	return id;
}

/* A table in the order its data is copied: see copy_plan. */
typedef struct PlannedTable
{
	int			row;			/* in published_tables(), largest first */
	int64		index_weight;	/* its size times the indexes set aside */
} PlannedTable;

static int
planned_table_cmp(const void *a, const void *b)
{
	const PlannedTable *x = (const PlannedTable *) a;
	const PlannedTable *y = (const PlannedTable *) b;

	if (x->index_weight != y->index_weight)
		return x->index_weight > y->index_weight ? -1 : 1;
	return x->row - y->row;
}

/*
 * copy_plan: fill zdm.copy_task for the published tables, setting aside
 * their secondary indexes, and zdm.copy_run; in the caller's transaction.
 * conn is an ordinary connection to the source (not the one holding the
 * snapshot, which must stay idle).  Returns the number of tables.
 *
 * The workers claim data tasks in the order of their ids (claim_task).
 * Tables come first that have the most index building to do once their
 * data is in (size times indexes set aside), then the others, largest
 * first: index builds can only start after their table's data, and then
 * run beside the copy of the tables after it, while copy work can be
 * split into ranges to fill any gap; so the copy ends with the cheapest
 * index builds.
 */
int
copy_plan(PGconn *conn, int jobs, const char *consistent_lsn)
{
	RemoteResult *tables = published_tables(conn);
	int64		range_bytes = (int64) zdm_copy_range_size_kb * 1024;
	PlannedTable *order = palloc0(sizeof(PlannedTable) * Max(tables->ntuples, 1));
	int			id = 1;
	int			row;
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];

	int			level = NewGUCNestLevel();

	/*
	 * Setting indexes aside takes each table's ACCESS EXCLUSIVE lock here:
	 * a session that holds a lock on one (an open transaction that read it)
	 * would keep init waiting without a word.  Give up after lock_timeout,
	 * COPY_LOCK_TIMEOUT if the caller set none, and say which table.
	 */
	if (LockTimeout == 0)
		(void) set_config_option("lock_timeout", COPY_LOCK_TIMEOUT, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	for (row = 0; row < tables->ntuples; row++)
	{
		int64		size = strtoi64(remote_value(tables, row, 1), NULL, 10);

		order[row].row = row;
		/* a small table's indexes cost less kept than rebuilt as extra tasks */
		if (size >= (int64) zdm_copy_set_aside_size_kb * 1024)
		{
			int			first = id;

			id = set_aside_locked(id, remote_value(tables, row, 0));
			order[row].index_weight = size * (id - first);
		}
	}
	AtEOXact_GUC(true, level);
	qsort(order, tables->ntuples, sizeof(PlannedTable), planned_table_cmp);
	for (row = 0; row < tables->ntuples; row++)
		id = plan_table(conn, id, tables, order[row].row, range_bytes);

	values[0] = Int32GetDatum(jobs);
	values[1] = CStringGetTextDatum(consistent_lsn);
	copy_spi("INSERT INTO zdm.copy_run (jobs, consistent_lsn, state) "
			 "VALUES ($1, $2::pg_catalog.pg_lsn, 'copying')",
			 2, types, values, SPI_OK_INSERT);
	return tables->ntuples;
}

/*
 * copy_launch: start jobs copy workers and wait until each has imported
 * snapshot on the source (dsn).  *launchp is set before any worker starts:
 * on ERROR (a worker cannot start or import) the caller's cleanup passes it
 * to copy_cancel, which sends the workers away.
 */
void
copy_launch(const char *dsn, const char *snapshot, int jobs,
			CopyLaunch **launchp)
{
	CopyLaunch *launch = MemoryContextAllocZero(TopMemoryContext,
												sizeof(CopyLaunch));
	Size		size = offsetof(CopyShared, dsn) + strlen(dsn) + 1;
	CopyShared *shared;
	int			i;

	launch->seg = dsm_create(size, 0);
	dsm_pin_mapping(launch->seg);
	shared = launch->shared = dsm_segment_address(launch->seg);
	memset(shared, 0, size);
	SpinLockInit(&shared->mutex);
	shared->database_id = MyDatabaseId;
	shared->user_id = GetUserId();
	shared->jobs = jobs;
	shared->init_latch = MyLatch;
	strlcpy(shared->snapshot, snapshot, sizeof(shared->snapshot));
	strcpy(shared->dsn, dsn);
	*launchp = launch;

	for (i = 0; i < jobs; i++)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_ConsistentState;
		worker.bgw_restart_time = BGW_NEVER_RESTART;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_zdm");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "zdm_copy_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "pg_zdm copy %d", i + 1);
		snprintf(worker.bgw_type, BGW_MAXLEN, "pg_zdm copy");
		worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(launch->seg));
		StaticAssertStmt(sizeof(int) <= BGW_EXTRALEN, "bgw_extra too small");
		memcpy(worker.bgw_extra, &i, sizeof(int));
		worker.bgw_notify_pid = MyProcPid;
		if (!RegisterDynamicBackgroundWorker(&worker, &launch->handles[i]))
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start copy worker %d of %d", i + 1, jobs),
					 errdetail("Every background worker slot of this server is in use."),
					 errhint("Raise max_worker_processes (needs a restart), or pass a smaller copy_jobs.")));
		launch->launched++;
	}

	for (;;)
	{
		int			imported = 0;

		CHECK_FOR_INTERRUPTS();
		for (i = 0; i < jobs; i++)
		{
			CopyWorkerSlot slot;
			pid_t		pid;

			SpinLockAcquire(&shared->mutex);
			slot = shared->slots[i];
			SpinLockRelease(&shared->mutex);
			if (slot.failed)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("copy worker %d could not import the snapshot on the source", i + 1),
						 errdetail_internal("%s", slot.error),
						 errhint("Check that the source accepts %d more connections.", jobs)));
			if (slot.imported)
				imported++;
			else if (GetBackgroundWorkerPid(launch->handles[i], &pid) == BGWH_STOPPED)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("copy worker %d exited before it imported the snapshot", i + 1),
						 errhint("See the server log.")));
		}
		if (imported == jobs)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 COPY_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * copy_go: init has committed; the workers start copying.  Frees launch.
 */
void
copy_go(CopyLaunch *launch)
{
	SpinLockAcquire(&launch->shared->mutex);
	launch->shared->go = true;
	SpinLockRelease(&launch->shared->mutex);
	dsm_detach(launch->seg);
	pfree(launch);
}

/*
 * copy_cancel: init failed; the workers it started end without copying.
 * Never throws (runs in init's cleanup).  NULL is fine.
 */
void
copy_cancel(CopyLaunch *launch)
{
	if (launch == NULL)
		return;
	SpinLockAcquire(&launch->shared->mutex);
	launch->shared->cancel = true;
	SpinLockRelease(&launch->shared->mutex);
	dsm_detach(launch->seg);
}

/*
 * Read what the source sends for the running COPY: the data source callback
 * of BeginCopyFrom.  Returns at least minread bytes, or fewer (0) at the
 * end of the data.  Waits interruptibly for the source.
 */
static int
copy_read_data(void *outbuf, int minread, int maxread)
{
	int			bytesread = 0;

	while (maxread > 0 && bytesread < minread && !copy_eof)
	{
		int			len;

		if (copy_buf_off < copy_buf_len)
		{
			int			avail = Min(copy_buf_len - copy_buf_off, maxread);

			memcpy((char *) outbuf + bytesread, copy_buf + copy_buf_off, avail);
			copy_buf_off += avail;
			bytesread += avail;
			maxread -= avail;
			continue;
		}
		if (copy_buf != NULL)
		{
			PQfreemem(copy_buf);
			copy_buf = NULL;
		}
		copy_buf_len = copy_buf_off = 0;

		len = PQgetCopyData(copy_source, &copy_buf, 1);
		if (len > 0)
		{
			copy_buf_len = len;
			copy_bytes += len;
		}
		else if (len == 0)
		{
			int			rc;

			rc = WaitLatchOrSocket(MyLatch,
								   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
								   PQsocket(copy_source), -1L, PG_WAIT_EXTENSION);
			if (rc & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
			}
			if (!PQconsumeInput(copy_source))
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("lost the connection to the source server during the initial copy"),
						 errdetail_internal("%s", pchomp(PQerrorMessage(copy_source)))));
		}
		else if (len == -1)
			copy_eof = true;
		else
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the initial copy from the source server"),
					 errdetail_internal("%s", pchomp(PQerrorMessage(copy_source)))));
	}
	return bytesread;
}

/*
 * Wait for the next result on conn without blocking interrupts; NULL at
 * the end of the results.
 */
static PGresult *
copy_get_result(PGconn *conn)
{
	while (PQisBusy(conn))
	{
		int			rc = WaitLatchOrSocket(MyLatch,
										   WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH,
										   PQsocket(conn), -1L, PG_WAIT_EXTENSION);

		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (!PQconsumeInput(conn))
			break;
	}
	return PQgetResult(conn);
}

/*
 * Raise the error of a failed COPY on the source; clears res.
 */
static void
copy_source_error(PGconn *conn, PGresult *res, const char *query)
{
	char	   *msg = pchomp(res ? PQresultErrorMessage(res) : PQerrorMessage(conn));

	PQclear(res);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_EXCEPTION),
			 errmsg("the source server failed the initial copy"),
			 errdetail_internal("%s", msg),
			 errcontext("source query: %s", query)));
}

/*
 * The columns of a quoted, comma-separated list as String nodes.
 */
static List *
column_names(const char *columns)
{
	char	   *raw = pstrdup(columns);
	List	   *names = NIL;
	List	   *out = NIL;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
		elog(ERROR, "invalid column list \"%s\"", columns);
	foreach(lc, names)
		out = lappend(out, makeString(pstrdup((char *) lfirst(lc))));
	return out;
}

/*
 * Copy one data task: the source query's rows into relid, in the current
 * transaction.  Returns the rows copied; *bytes the bytes received.
 */
static uint64
copy_data_task(PGconn *conn, Oid relid, const char *query,
			   const char *columns, bool binary, int64 *bytes)
{
	Relation	rel;
	ParseState *pstate;
	CopyFromState cstate;
	PGresult   *res;
	uint64		rows;

	rel = table_open(relid, RowExclusiveLock);
	if (!PQsendQuery(conn, query))
		copy_source_error(conn, NULL, query);
	res = copy_get_result(conn);
	if (res == NULL || PQresultStatus(res) != PGRES_COPY_OUT)
		copy_source_error(conn, res, query);
	PQclear(res);

	copy_source = conn;
	copy_buf = NULL;
	copy_buf_len = copy_buf_off = 0;
	copy_eof = false;
	copy_bytes = 0;

	pstate = make_parsestate(NULL);
	(void) addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock,
										 NULL, false, false);
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_read_data,
						   column_names(columns),
						   binary ? list_make1(makeDefElem("format",
														   (Node *) makeString("binary"),
														   -1)) : NIL);
	rows = CopyFrom(cstate);
	EndCopyFrom(cstate);
	free_parsestate(pstate);
	if (copy_buf != NULL)
		PQfreemem(copy_buf);
	copy_buf = NULL;

	/* the COPY's own result, then the end of the results */
	res = copy_get_result(conn);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		copy_source_error(conn, res, query);
	PQclear(res);
	while ((res = copy_get_result(conn)) != NULL)
		PQclear(res);

	table_close(rel, NoLock);
	*bytes = copy_bytes;
	return rows;
}

/* A task a worker claimed. */
typedef struct CopyTask
{
	int			id;
	bool		is_data;
	Oid			relid;
	char	   *query;
	char	   *columns;
	char	   *index_def;
	bool		binary;
} CopyTask;

/*
 * Claim the next task, and say whether a data task is still left to claim
 * (*data_left).  Candidates are the data tasks and the index tasks of
 * tables whose data is all copied.  While data is left, an index task goes
 * first as long as fewer than half the workers (at least one) build
 * indexes: the builds of a table whose data is done then run beside the
 * copy of the others (which leaves the CPU idle part of the time, waiting
 * for the source and for WAL writes) instead of all queueing up at the
 * end.  Otherwise data first, in the order of the plan (see copy_plan),
 * each table's ranges together, so that a table is done and its indexes
 * can be built as early as possible.  Commits the claim.  Returns NULL
 * when there is nothing to claim right now.
 */
static CopyTask *
claim_task(MemoryContext cxt, bool *data_left)
{
	CopyTask   *task = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (zdm_spi_execute("UPDATE zdm.copy_task SET state = 'running', "
						"  worker_pid = pg_catalog.pg_backend_pid(), started_at = pg_catalog.now() "
						"WHERE id OPERATOR(pg_catalog.=) ("
						"  SELECT t.id FROM zdm.copy_task t "
						"  WHERE t.state OPERATOR(pg_catalog.=) 'pending' "
						"    AND EXISTS (SELECT 1 FROM zdm.copy_run r WHERE r.state OPERATOR(pg_catalog.=) 'copying') "
						"    AND (t.kind OPERATOR(pg_catalog.=) 'data' OR NOT EXISTS ("
						"      SELECT 1 FROM zdm.copy_task d WHERE d.kind OPERATOR(pg_catalog.=) 'data' "
						"        AND d.relid OPERATOR(pg_catalog.=) t.relid "
						"        AND d.state OPERATOR(pg_catalog.<>) 'done')) "
						"  ORDER BY t.kind OPERATOR(pg_catalog.=) 'index' AND "
						"      (SELECT pg_catalog.count(*) FROM zdm.copy_task b "
						"        WHERE b.kind OPERATOR(pg_catalog.=) 'index' "
						"          AND b.state OPERATOR(pg_catalog.=) 'running') OPERATOR(pg_catalog.<) "
						"      (SELECT GREATEST(r.jobs OPERATOR(pg_catalog./) 2, 1) FROM zdm.copy_run r) DESC, "
						"    t.kind OPERATOR(pg_catalog.=) 'index', t.id "
						"  LIMIT 1 FOR UPDATE SKIP LOCKED) "
						"RETURNING id, kind OPERATOR(pg_catalog.=) 'data', relid::pg_catalog.oid, "
						"  source_query, target_columns, index_def, "
						"  copy_format OPERATOR(pg_catalog.=) 'binary'",
						0, NULL, NULL, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not claim a copy task");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

		task = palloc0(sizeof(CopyTask));
		task->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		task->is_data = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		task->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		task->query = SPI_getvalue(tup, desc, 4);
		task->columns = SPI_getvalue(tup, desc, 5);
		task->index_def = SPI_getvalue(tup, desc, 6);
		task->binary = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull)) && !isnull;
		MemoryContextSwitchTo(oldcxt);
	}
	if (zdm_spi_execute("SELECT EXISTS (SELECT 1 FROM zdm.copy_task "
						"  WHERE kind OPERATOR(pg_catalog.=) 'data' "
						"    AND state OPERATOR(pg_catalog.=) 'pending')",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for data left to copy");
	*data_left = strcmp(SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1), "t") == 0;
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return task;
}

/*
 * Run a claimed task and mark it done, in one local transaction: its rows
 * (or its index) and its 'done' commit together.
 */
static void
run_task(PGconn *conn, CopyTask *task)
{
	uint64		rows = 0;
	int64		bytes = 0;
	Oid			types[3] = {INT4OID, INT8OID, INT8OID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (task->is_data)
		rows = copy_data_task(conn, task->relid, task->query, task->columns,
							  task->binary, &bytes);
	else
		copy_spi(task->index_def, 0, NULL, NULL, SPI_OK_UTILITY);

	values[0] = Int32GetDatum(task->id);
	values[1] = Int64GetDatum((int64) rows);
	values[2] = Int64GetDatum(bytes);
	if (!task->is_data)
		nulls[1] = nulls[2] = 'n';
	SPI_connect();
	if (zdm_spi_execute("UPDATE zdm.copy_task SET state = 'done', "
						"  finished_at = pg_catalog.clock_timestamp(), "
						"  rows_copied = $2, bytes_copied = $3 "
						"WHERE id OPERATOR(pg_catalog.=) $1",
						3, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not mark copy task %d done", task->id);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * What is left of the copy: 'f' failed (or gone), 'd' every task done,
 * 'w' tasks remain that others run or that wait for them.
 */
static char
copy_outlook(void)
{
	char		outlook;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (zdm_spi_execute("SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM zdm.copy_run "
						"    WHERE state OPERATOR(pg_catalog.=) 'copying') THEN 'f' "
						"  WHEN EXISTS (SELECT 1 FROM zdm.copy_task "
						"    WHERE state OPERATOR(pg_catalog.<>) 'done') THEN 'w' ELSE 'd' END",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of the copy");
	outlook = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)[0];
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return outlook;
}

/*
 * Every task is done: the first worker to see it marks the copy done and
 * enables the subscription, which streams from the slot's consistent point.
 * The commit is synchronous: it flushes every task's commit before it.
 */
static void
finish_copy(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_SESSION);
	SPI_connect();
	if (zdm_spi_execute("UPDATE zdm.copy_run SET state = 'done', "
						"  finished_at = pg_catalog.clock_timestamp() "
						"WHERE state OPERATOR(pg_catalog.=) 'copying' AND NOT EXISTS ("
						"  SELECT 1 FROM zdm.copy_task WHERE state OPERATOR(pg_catalog.<>) 'done') "
						"RETURNING pg_catalog.round(pg_catalog.date_part('epoch', finished_at OPERATOR(pg_catalog.-) started_at)::pg_catalog.numeric, 1)::text",
						0, NULL, NULL, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not mark the copy done");
	if (SPI_processed == 1)
	{
		char	   *secs = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (SPI_execute("ALTER SUBSCRIPTION " ZDM_SUBSCRIPTION " ENABLE", false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not enable subscription " ZDM_SUBSCRIPTION);
		event_log("copy_done", "parallel initial copy done in %s s; subscription %s enabled",
				  secs, ZDM_SUBSCRIPTION);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Record that the copy failed, and stop the other workers (their
 * transactions roll back; the copy is over anyway).
 */
static void
record_copy_failure(const char *message)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(message);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (zdm_spi_execute("UPDATE zdm.copy_task SET state = 'failed', error = $1 "
						"WHERE state OPERATOR(pg_catalog.=) 'running' "
						"  AND worker_pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
						1, types, values, NULL, false, 0) < 0 ||
		zdm_spi_execute("UPDATE zdm.copy_run SET state = 'failed', error = $1, "
						"  finished_at = pg_catalog.clock_timestamp() "
						"WHERE state OPERATOR(pg_catalog.=) 'copying'",
						1, types, values, NULL, false, 0) < 0)
		elog(ERROR, "could not record the failure of the copy");
	if (SPI_processed == 1)
	{
		event_log("copy_failed", "%s", message);
		(void) zdm_spi_execute("SELECT pg_catalog.pg_terminate_backend(pid) "
							   "FROM pg_catalog.pg_stat_activity "
							   "WHERE backend_type OPERATOR(pg_catalog.=) 'pg_zdm copy' "
							   "  AND datid OPERATOR(pg_catalog.=) $1 "
							   "  AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()",
							   1, (Oid[]) {OIDOID},
							   (Datum[]) {ObjectIdGetDatum(MyDatabaseId)},
							   NULL, false, 0);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Connect to the source and import the snapshot, reporting in the worker's
 * slot (error or success) and waking init.  Returns the connection.
 */
static PGconn *
import_snapshot(CopyShared *shared, int index)
{
	PGconn	   *volatile conn = NULL;

	PG_TRY();
	{
		conn = remote_connect(shared->dsn, "for the initial copy");
		remote_keep_across_abort(conn);
		/*
		 * The session sits idle in its transaction while this worker builds
		 * indexes and other workers copy: a source's
		 * idle_in_transaction_session_timeout must not end it.
		 */
		remote_command(conn,
					   psprintf("SET idle_in_transaction_session_timeout = 0; "
								"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
								"SET TRANSACTION SNAPSHOT %s",
								quote_literal_cstr(shared->snapshot)),
					   "importing the snapshot of the slot");
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		edata = CopyErrorData();
		MemoryContextSwitchTo(oldcxt);
		SpinLockAcquire(&shared->mutex);
		shared->slots[index].failed = true;
		strlcpy(shared->slots[index].error,
				edata->detail ? psprintf("%s: %s", edata->message, edata->detail) :
				edata->message, COPY_ERROR_LEN);
		SpinLockRelease(&shared->mutex);
		SetLatch(shared->init_latch);
		PG_RE_THROW();
	}
	PG_END_TRY();

	SpinLockAcquire(&shared->mutex);
	shared->slots[index].imported = true;
	SpinLockRelease(&shared->mutex);
	SetLatch(shared->init_latch);
	return conn;
}

/*
 * Wait until init lets the workers go (true) or gives up (false).
 */
static bool
wait_for_go(CopyShared *shared)
{
	for (;;)
	{
		bool		go;
		bool		cancel;

		SpinLockAcquire(&shared->mutex);
		go = shared->go;
		cancel = shared->cancel;
		SpinLockRelease(&shared->mutex);
		if (go || cancel)
			return go;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * The worker's work once it may go: claim and run tasks until none is
 * left, then finish the copy if it is the one to.  The snapshot (conn's
 * transaction on the source) is kept while data tasks are left to claim,
 * also through index builds, and let go as soon as none is.
 */
static void
copy_worker_loop(PGconn *conn, MemoryContext cxt)
{
	for (;;)
	{
		CopyTask   *task;
		bool		data_left;
		char		outlook;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(cxt);
		task = claim_task(cxt, &data_left);
		if (conn != NULL && !data_left && (task == NULL || !task->is_data))
		{
			(void) remote_command_quietly(conn, "COMMIT", 0, NULL, 10000);
			remote_disconnect(conn);
			conn = NULL;
		}
		if (task != NULL)
		{
			run_task(conn, task);
			continue;
		}
		outlook = copy_outlook();
		if (outlook == 'f')
			return;
		if (outlook == 'd')
		{
			finish_copy();
			return;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 COPY_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Entry point of a copy worker; main_arg is the DSM handle of init's
 * launch, bgw_extra the worker's index.
 */
void
zdm_copy_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	CopyShared *shared;
	PGconn	   *conn;
	int			index;
	MemoryContext cxt;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&index, MyBgworkerEntry->bgw_extra, sizeof(int));

	CurrentResourceOwner = ResourceOwnerCreate(NULL, "pg_zdm copy");
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		proc_exit(0);			/* init is gone already: nothing to do */
	shared = dsm_segment_address(seg);

	BackgroundWorkerInitializeConnectionByOid(shared->database_id,
											  shared->user_id, 0);
	/* as table synchronization: no triggers, no foreign key checks */
	SetConfigOption("session_replication_role", "replica", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* index builds after the data: sort in memory where the server allows */
	if (maintenance_work_mem < COPY_INDEX_MEMORY_KB)
		SetConfigOption("maintenance_work_mem", CppAsString2(COPY_INDEX_MEMORY_KB),
						PGC_SUSET, PGC_S_SESSION);
	pgstat_report_appname("pg_zdm copy");

	cxt = AllocSetContextCreate(TopMemoryContext, "pg_zdm copy task",
								ALLOCSET_DEFAULT_SIZES);
	conn = import_snapshot(shared, index);
	if (!wait_for_go(shared))
	{
		remote_disconnect(conn);
		proc_exit(0);
	}
	dsm_detach(seg);

	PG_TRY();
	{
		copy_worker_loop(conn, cxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		record_copy_failure(edata->detail ?
							psprintf("%s: %s", edata->message, edata->detail) :
							edata->message);
		ReThrowError(edata);
	}
	PG_END_TRY();
}
