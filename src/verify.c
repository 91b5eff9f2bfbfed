/*-------------------------------------------------------------------------
 *
 * verify.c
 *		  zdm.verify(): compare the rows of the source and this target, and
 *		  say where they differ.
 *
 * Per table, both servers scan at the same time (the source query is sent,
 * this target's runs through SPI meanwhile) and return one digest per chunk:
 * the rows are split by a hash of their key into B chunks of about
 * zdm.verify_chunk_rows rows, and each chunk is (row count, sum of a 64-bit
 * hash of each row's canonical text).  Only the digests cross the network.
 * Chunks that differ are drilled into: both sides send (chunk, key, row
 * hash) of those chunks only, and the keys missing, extra or different here
 * are named.  A table without a key (no primary key, no replica identity
 * index) is one chunk: compared whole, order-independent.
 *
 * While the source is live, each scan of the source runs in a REPEATABLE
 * READ transaction whose first statement reads the source's WAL insert
 * position L; this target's scan starts only once it has applied L (the
 * apply worker reported latest_end_lsn >= L, or the slot's
 * confirmed_flush_lsn >= L).  A key can still differ because of a change
 * committed on the source after L and applied here before this target's
 * scan; so differing keys are fetched again, up to zdm.verify_rechecks
 * times.  A key is a difference once two consecutive comparisons give it the
 * same row hashes on both sides (nothing moved, so it is not in flight); a
 * key that keeps changing is reported as unsettled, not as a difference.
 * A keyless table is compared again until the same pair of digests shows
 * twice.  After the cutover both sides are still: the first comparison is
 * final.
 *
 * Canonical text: both sessions pin TimeZone, DateStyle, IntervalStyle,
 * extra_float_digits = 0 (the one float output that PostgreSQL 10 to 18
 * write alike), bytea_output, lc_monetary and search_path; float4/float8
 * columns are hashed by their binary send form (exact).  Row hashes are
 * hashtextextended (11+) or the first 64 bits of md5 (a source of 10);
 * chunks are hashint8 of an integer key, hashtext of another key's text:
 * all the same on every release (checked on 10, 11, 13, 15 and 18).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

PG_FUNCTION_INFO_V1(zdm_verify);

/* At most this many keys of each kind are named in a detail. */
#define VERIFY_KEYS_LISTED		10
/* At most this many differing chunks are drilled into per table. */
#define VERIFY_MAX_DRILL		100
/* How long one comparison waits for this target to apply the source position. */
#define VERIFY_CATCHUP_TIMEOUT_MS	60000
/* How long a cancelled verify waits for its source session to end. */
#define VERIFY_CLEANUP_MS		5000

#define FLOAT4_OID	700			/* the same on every release */
#define FLOAT8_OID	701
#define INT2_OID	21
#define INT4_OID	23
#define INT8_OID	20
#define IS_INT_OID(o)	((o) == INT2_OID || (o) == INT4_OID || (o) == INT8_OID)

/* One column compared on both sides. */
typedef struct VerifyColumn
{
	char	   *name;
	bool		is_float;		/* float4/float8 on both sides: send form */
	bool		is_int;			/* int2/int4/int8 on both sides */
	int			keypos;			/* position in the key, 0: not a key column */
} VerifyColumn;

/* One table to compare. */
typedef struct VerifyTable
{
	char	   *schema;
	char	   *name;
	char	   *qualified;		/* quoted, with ONLY when it has no children */
	char	   *display;		/* quoted schema.name, for messages */
	char		state;			/* srsubstate, or 0 when not subscribed */
	bool		only;			/* an ordinary table: FROM ONLY */
	double		rows_estimate;
	/* filled from both catalogs */
	bool		on_source;
	bool		on_target;
	List	   *columns;		/* VerifyColumn, in this target's order */
	List	   *key;			/* VerifyColumn of the key, in key order */
	StringInfoData skipped;		/* columns on one side only */
} VerifyTable;

/* Everything one zdm.verify() call holds. */
typedef struct VerifyRun
{
	MigrationState state;
	bool		live;			/* the source may still change */
	Oid			subid;
	bool		md5;			/* the source has no hashtextextended (10) */
	PGconn	   *main;			/* the scans */
	PGconn	   *control;		/* WAL position nudges and slot polls */
	ReturnSetInfo *rsinfo;
} VerifyRun;

/* One chunk's digest on each side. */
typedef struct ChunkPair
{
	int			chunk;
	int64		src_rows;
	int64		tgt_rows;
	char	   *src_sum;
	char	   *tgt_sum;
} ChunkPair;

/* One row of a drill-down. */
typedef struct KeyRow
{
	int			chunk;
	const char *key;			/* the key's canonical text */
	const char *hash;			/* the row hash; in a difference, the source's */
	const char *other_hash;		/* in a difference, the target's */
} KeyRow;

/* GUCs */
int			zdm_verify_chunk_rows = 1000;
int			zdm_verify_rechecks = 5;
int			zdm_verify_parallel_workers = -1;

/*
 * Settings that make the text form of a value the same on every release
 * 10 to 18 and whatever the server's defaults, and the plan of the digests
 * what it should be (the target sets them with set_config_option, the
 * source with set_config).
 */
static const char *const canonical_settings[][2] = {
	{"TimeZone", "UTC"},
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"extra_float_digits", "0"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
	{"xmloption", "content"},
	{"search_path", "pg_catalog, pg_temp"},
	/*
	 * Not text forms: the plan of the digests.  Hashing a few thousand
	 * chunks beats sorting every row (see chunk_set).
	 */
	{"enable_sort", "off"},
	{"enable_mergejoin", "off"},
};

/*
 * Run sql here through SPI (search_path pinned, a new snapshot) and copy
 * the result into a RemoteResult in the caller's memory context, so that
 * both sides' results are read alike.
 */
static RemoteResult *
target_query(const char *sql, int nargs, Oid *types, Datum *values)
{
	MemoryContext callercxt = CurrentMemoryContext;
	RemoteResult *out;
	uint64		row;
	int			col;

	SPI_connect();
	if (zdm_spi_execute(sql, nargs, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run a verify query on the target");
	MemoryContextSwitchTo(callercxt);
	out = palloc0(sizeof(RemoteResult));
	out->ntuples = (int) SPI_processed;
	out->nfields = SPI_tuptable->tupdesc->natts;
	if (out->ntuples > 0 && out->nfields > 0)
		out->values = palloc(sizeof(char *) * out->ntuples * out->nfields);
	for (row = 0; row < SPI_processed; row++)
		for (col = 0; col < out->nfields; col++)
			out->values[row * out->nfields + col] =
				SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
							 col + 1);
	SPI_finish();
	return out;
}

/* A text[] literal of the strings, for a text parameter of the source. */
static char *
text_array_literal(List *strings)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	foreach(lc, strings)
	{
		const char *p;

		if (foreach_current_index(lc) > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoChar(&buf, '"');
		for (p = lfirst(lc); *p; p++)
		{
			if (*p == '"' || *p == '\\')
				appendStringInfoChar(&buf, '\\');
			appendStringInfoChar(&buf, *p);
		}
		appendStringInfoChar(&buf, '"');
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static Datum
text_array_datum(List *strings)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(strings), 1));
	ListCell   *lc;

	foreach(lc, strings)
		elems[foreach_current_index(lc)] = CStringGetTextDatum(lfirst(lc));
	return PointerGetDatum(construct_array(elems, list_length(strings), TEXTOID,
										   -1, false, TYPALIGN_INT));
}

/*
 * The tables to compare: those given, or every table of the subscription,
 * or (after the cutover, when there is no subscription) every table here
 * outside the system schemas and zdm, and every partitioned table that is
 * not itself a partition (a table partitioned here only is the source's
 * plain table; one partitioned on both sides is then compared through its
 * root and through its partitions); the last are kept only when the source
 * has them too.
 */
static List *
tables_to_verify(VerifyRun *run, ArrayType *given)
{
	List	   *tables = NIL;
	RemoteResult *res;
	Oid			types[2] = {OIDOID, OIDARRAYOID};
	Datum		values[2];
	int			i;

	values[0] = ObjectIdGetDatum(run->subid);
	if (given != NULL)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(given, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, &nulls, &n);
		for (i = 0; i < n; i++)
		{
			char		relkind;

			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("the tables to verify must not contain null")));
			relkind = get_rel_relkind(DatumGetObjectId(elems[i]));
			if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
				ereport(ERROR,
						(errcode(ERRCODE_WRONG_OBJECT_TYPE),
						 errmsg("\"%s\" is not a table",
								get_rel_name(DatumGetObjectId(elems[i]))),
						 errdetail("zdm.verify compares the rows of tables only.")));
		}
		values[1] = PointerGetDatum(construct_array(elems, n, OIDOID,
													sizeof(Oid), true,
													TYPALIGN_INT));
		res = target_query("SELECT n.nspname, c.relname, r.srsubstate, c.relkind, "
						   "  greatest(c.reltuples, 0), pg_catalog.pg_relation_size(c.oid) "
						   "FROM pg_catalog.unnest($2) WITH ORDINALITY g(relid, i) "
						   "JOIN pg_catalog.pg_class c ON c.oid = g.relid "
						   "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						   "LEFT JOIN pg_catalog.pg_subscription_rel r "
						   "  ON r.srsubid = $1 AND r.srrelid = c.oid "
						   "ORDER BY g.i", 2, types, values);
	}
	else if (OidIsValid(run->subid))
		res = target_query("SELECT n.nspname, c.relname, r.srsubstate, c.relkind, "
						   "  greatest(c.reltuples, 0), pg_catalog.pg_relation_size(c.oid) "
						   "FROM pg_catalog.pg_subscription_rel r "
						   "JOIN pg_catalog.pg_class c ON c.oid = r.srrelid "
						   "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						   "WHERE r.srsubid = $1 ORDER BY 1, 2", 1, types, values);
	else
		res = target_query("SELECT n.nspname, c.relname, NULL::\"char\", c.relkind, "
						   "  greatest(c.reltuples, 0), pg_catalog.pg_relation_size(c.oid) "
						   "FROM pg_catalog.pg_class c "
						   "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						   "WHERE (c.relkind = 'r' OR (c.relkind = 'p' AND NOT c.relispartition)) "
						   "  AND c.relpersistence = 'p' "
						   "  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'zdm') "
						   "  AND n.nspname !~ '^pg_(toast|temp_)' "
						   "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "
						   "    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
						   "      AND d.objid = c.oid AND d.deptype = 'e') "
						   "ORDER BY 1, 2", 0, NULL, NULL);

	for (i = 0; i < res->ntuples; i++)
	{
		VerifyTable *t = palloc0(sizeof(VerifyTable));
		double		pages_rows;

		t->schema = pstrdup(remote_value(res, i, 0));
		t->name = pstrdup(remote_value(res, i, 1));
		t->state = remote_value(res, i, 2) ? remote_value(res, i, 2)[0] : 0;
		t->only = remote_value(res, i, 3)[0] == RELKIND_RELATION;
		t->display = quote_qualified_identifier(t->schema, t->name);
		t->qualified = psprintf("%s%s", t->only ? "ONLY " : "", t->display);
		t->rows_estimate = strtod(remote_value(res, i, 4), NULL);
		/* never analyzed: assume narrow rows, more chunks cost little */
		pages_rows = strtod(remote_value(res, i, 5), NULL) / 64.0;
		if (t->rows_estimate <= 0)
			t->rows_estimate = pages_rows;
		initStringInfo(&t->skipped);
		tables = lappend(tables, t);
	}
	return tables;
}

/*
 * The columns of every table, on one side: rows (table number from 1, column
 * name, base type OID, position in the key or NULL, reltuples).  The same
 * statement runs on the source (10 to 18) and here.
 */
#define CATALOG_QUERY \
	"SELECT u.i, a.attname::pg_catalog.text, " \
	"  (CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END)::pg_catalog.int4, " \
	"  pg_catalog.array_position(k.indkey::pg_catalog.int2[], a.attnum) " \
	"    - pg_catalog.array_lower(k.indkey::pg_catalog.int2[], 1) + 1, " \
	"  greatest(c.reltuples, 0)::pg_catalog.float8 " \
	"FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), " \
	"  pg_catalog.unnest($2::pg_catalog.text[])) WITH ORDINALITY u(s, n, i) " \
	"JOIN pg_catalog.pg_namespace ns ON ns.nspname = u.s " \
	"JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = u.n " \
	"  AND c.relkind IN ('r', 'p') " \
	"LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 " \
	"  AND NOT a.attisdropped " \
	"LEFT JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid " \
	"LEFT JOIN LATERAL (SELECT x.indkey FROM pg_catalog.pg_index x " \
	"  WHERE x.indrelid = c.oid AND (x.indisprimary OR (x.indisreplident AND c.relreplident = 'i')) " \
	"  ORDER BY (x.indisreplident AND c.relreplident = 'i') DESC LIMIT 1) k ON true " \
	"ORDER BY u.i, a.attnum"

/*
 * Read both catalogs and decide, per table, the columns compared (those of
 * this target that the source has too, in this target's order) and the key
 * (the source's primary key, or its replica identity index).
 */
static void
describe_tables(VerifyRun *run, List *tables)
{
	List	   *schemas = NIL;
	List	   *names = NIL;
	ListCell   *lc;
	RemoteResult *src;
	RemoteResult *tgt;
	VerifyTable **byindex;
	int			ntables = list_length(tables);
	int			r;

	if (ntables == 0)
		return;
	byindex = palloc(sizeof(VerifyTable *) * ntables);
	foreach(lc, tables)
	{
		VerifyTable *t = lfirst(lc);

		byindex[foreach_current_index(lc)] = t;
		schemas = lappend(schemas, t->schema);
		names = lappend(names, t->name);
	}

	{
		const char *params[2];
		Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
		Datum		values[2];

		params[0] = text_array_literal(schemas);
		params[1] = text_array_literal(names);
		src = remote_query(run->main, CATALOG_QUERY, 2, params,
						   "reading the tables' columns");
		values[0] = text_array_datum(schemas);
		values[1] = text_array_datum(names);
		tgt = target_query(CATALOG_QUERY, 2, types, values);
	}

	/* this target's columns */
	for (r = 0; r < tgt->ntuples; r++)
	{
		VerifyTable *t = byindex[atoi(remote_value(tgt, r, 0)) - 1];
		VerifyColumn *col;

		t->on_target = true;
		if (remote_value(tgt, r, 1) == NULL)
			continue;
		col = palloc0(sizeof(VerifyColumn));
		col->name = pstrdup(remote_value(tgt, r, 1));
		col->is_float = atoi(remote_value(tgt, r, 2)) == FLOAT4_OID ||
			atoi(remote_value(tgt, r, 2)) == FLOAT8_OID;
		col->is_int = IS_INT_OID(atoi(remote_value(tgt, r, 2)));
		col->keypos = -1;		/* not seen on the source yet */
		t->columns = lappend(t->columns, col);
	}

	/* match the source's columns by name */
	for (r = 0; r < src->ntuples; r++)
	{
		VerifyTable *t = byindex[atoi(remote_value(src, r, 0)) - 1];
		const char *name = remote_value(src, r, 1);
		bool		found = false;
		double		src_rows = strtod(remote_value(src, r, 4), NULL);

		t->on_source = true;
		t->rows_estimate = Max(t->rows_estimate, src_rows);
		if (name == NULL)
			continue;
		foreach(lc, t->columns)
		{
			VerifyColumn *col = lfirst(lc);
			int			srctype = atoi(remote_value(src, r, 2));

			if (strcmp(col->name, name) != 0)
				continue;
			found = true;
			col->is_float = col->is_float &&
				(srctype == FLOAT4_OID || srctype == FLOAT8_OID);
			col->is_int = col->is_int && IS_INT_OID(srctype);
			col->keypos = remote_value(src, r, 3) ? atoi(remote_value(src, r, 3)) : 0;
		}
		if (!found)
			appendStringInfo(&t->skipped, "%s%s (only on the source)",
							 t->skipped.len > 0 ? ", " : "", quote_identifier(name));
	}

	foreach(lc, tables)
	{
		VerifyTable *t = lfirst(lc);
		List	   *kept = NIL;
		ListCell   *c;
		int			nkey = 0;
		int			pos;

		foreach(c, t->columns)
		{
			VerifyColumn *col = lfirst(c);

			if (col->keypos < 0)
			{
				if (t->on_source)
					appendStringInfo(&t->skipped, "%s%s (only on the target)",
									 t->skipped.len > 0 ? ", " : "",
									 quote_identifier(col->name));
				continue;
			}
			kept = lappend(kept, col);
			if (col->keypos > 0)
				nkey++;
		}
		t->columns = kept;
		/* the key in key order; none when a key column is missing here */
		for (pos = 1; pos <= nkey; pos++)
			foreach(c, t->columns)
			{
				VerifyColumn *col = lfirst(c);

				if (col->keypos == pos)
					t->key = lappend(t->key, col);
			}
		if (list_length(t->key) != nkey)
			t->key = NIL;
	}
}

/* The canonical form of a column, as an SQL expression. */
static char *
column_expr(VerifyColumn *col)
{
	if (col->is_float)
		return psprintf("pg_catalog.float8send(%s::pg_catalog.float8)",
						quote_identifier(col->name));
	return pstrdup(quote_identifier(col->name));
}

/* The canonical text of some columns, as one SQL expression. */
static char *
row_text_expr(List *columns)
{
	StringInfoData buf;
	ListCell   *lc;

	if (columns == NIL)
		return pstrdup("'()'::pg_catalog.text");
	initStringInfo(&buf);
	appendStringInfoString(&buf, "ROW(");
	foreach(lc, columns)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, column_expr(lfirst(lc)));
	}
	appendStringInfoString(&buf, ")::pg_catalog.text");
	return buf.data;
}

/* The 64-bit hash of a row's canonical text. */
static char *
row_hash_expr(VerifyRun *run, VerifyTable *t)
{
	char	   *text = row_text_expr(t->columns);

	if (run->md5)
		return psprintf("('x' || pg_catalog.substr(pg_catalog.md5(%s), 1, 16))"
						"::pg_catalog.bit(64)::pg_catalog.int8", text);
	return psprintf("pg_catalog.hashtextextended(%s, 0)", text);
}

/*
 * The chunk of a row: a hash of its key, mod nchunks.  An integer key is
 * hashed as int8 (hashint8 gives the same value for the same number in
 * int2, int4 and int8), another single column as its text, several columns
 * as the text of their row: all the same on every release.
 */
static char *
chunk_expr(VerifyTable *t, int nchunks)
{
	VerifyColumn *col;

	if (t->key == NIL)
		return pstrdup("0");
	col = linitial(t->key);
	if (list_length(t->key) == 1 && col->is_int)
		return psprintf("(pg_catalog.hashint8(%s::pg_catalog.int8) & 2147483647) %% %d",
						quote_identifier(col->name), nchunks);
	if (list_length(t->key) == 1)
		return psprintf("(pg_catalog.hashtext((%s)::pg_catalog.text) & 2147483647) %% %d",
						column_expr(col), nchunks);
	return psprintf("(pg_catalog.hashtext(%s) & 2147483647) %% %d",
					row_text_expr(t->key), nchunks);
}

/*
 * The set of chunks a digest query covers, as a relation g(b): every chunk,
 * or those of pairs[0..n).  Joining the rows to it, rather than grouping
 * by the chunk expression alone, tells the planner how many groups there
 * are: it then hashes them in each parallel worker (with a GROUP BY on the
 * expression it expects one group per row, and sorts).
 */
static char *
chunk_set(int nchunks, ChunkPair *pairs, int n)
{
	StringInfoData buf;
	int			i;

	if (pairs == NULL)
		return psprintf("pg_catalog.generate_series(0, %d) g(b)", nchunks - 1);
	initStringInfo(&buf);
	appendStringInfoString(&buf, "pg_catalog.unnest('{");
	for (i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%d", i > 0 ? "," : "", pairs[i].chunk);
	appendStringInfoString(&buf, "}'::pg_catalog.int4[]) g(b)");
	return buf.data;
}

/*
 * Has this target applied the source up to lsn?  Either the apply worker
 * reported a position >= lsn, or the slot on the source says the target
 * confirmed it.
 */
static bool
target_has_applied(VerifyRun *run, const char *lsn)
{
	Oid			types[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	const char *params[2] = {run->state.slot_name, lsn};
	RemoteResult *res;

	values[0] = CStringGetTextDatum(lsn);
	values[1] = ObjectIdGetDatum(run->subid);
	res = target_query("SELECT coalesce(bool_or(st.latest_end_lsn >= $1::pg_catalog.pg_lsn), false) "
					   "FROM pg_catalog.pg_stat_subscription st "
					   "WHERE st.subid = $2 AND " ZDM_APPLY_LEADER("st"),
					   2, types, values);
	if (strcmp(remote_value(res, 0, 0), "t") == 0)
		return true;
	res = remote_query(run->control,
					   "SELECT coalesce(bool_or(confirmed_flush_lsn >= $2::pg_lsn), false) "
					   "FROM pg_replication_slots WHERE slot_name = $1",
					   2, params, "watching the slot");
	return strcmp(remote_value(res, 0, 0), "t") == 0;
}

/*
 * Wait until this target has applied the source up to lsn; false when it
 * did not within VERIFY_CATCHUP_TIMEOUT_MS.  A transactional logical
 * message committed on the source first makes sure WAL past lsn is flushed
 * there and reaches the target even when the source is otherwise idle.
 */
static bool
wait_for_target(VerifyRun *run, const char *lsn)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   VERIFY_CATCHUP_TIMEOUT_MS);

	if (!OidIsValid(run->subid))
		return false;
	remote_command(run->control,
				   "SELECT pg_logical_emit_message(true, 'pg_zdm', 'verify')",
				   "marking the source position");
	for (;;)
	{
		if (target_has_applied(run, lsn))
			return true;
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(zdm_poll_interval_ms, 10), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Run one query on both servers at once: src_sql on the source, tgt_sql here.
 * On a live source the source's query sees a snapshot taken with its WAL
 * position L, and this target's query starts once it has applied L;
 * *caught_up says whether it did in time (always true otherwise).
 */
static void
both_sides(VerifyRun *run, const char *sql, const char *step,
		   RemoteResult **src, RemoteResult **tgt, bool *caught_up)
{
	char	   *lsn = NULL;
	TimestampTz start;
	TimestampTz caught;
	TimestampTz done;

	*caught_up = true;
	if (run->live)
	{
		RemoteResult *res;

		remote_send(run->main,
					"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
					"SELECT pg_current_wal_insert_lsn()::text", step);
		res = remote_receive(run->main, step);
		lsn = pstrdup(remote_value(res, 0, 0));
	}
	remote_send(run->main, sql, step);
	start = GetCurrentTimestamp();
	if (run->live)
		*caught_up = wait_for_target(run, lsn);
	caught = GetCurrentTimestamp();
	*tgt = target_query(sql, 0, NULL, NULL);
	done = GetCurrentTimestamp();
	*src = remote_receive(run->main, step);
	if (run->live)
		remote_command(run->main, "COMMIT", step);
	ereport(DEBUG1,
			(errmsg_internal("verify, %s: waited %.1f ms for the target, target query %.1f ms, source result %.1f ms after it",
							 step, (caught - start) / 1000.0, (done - caught) / 1000.0,
							 (GetCurrentTimestamp() - done) / 1000.0)));
}

/*
 * Compare chunk digests of both sides: the chunks whose digests differ, in
 * chunk order, into *pairs (palloc'd); returns how many.  With filter, only
 * those chunks are scanned.  Row totals go to *src_rows and *tgt_rows.
 */
static int
compare_chunks(VerifyRun *run, VerifyTable *t, int nchunks,
			   ChunkPair *filter, int nfilter, ChunkPair **pairs,
			   int64 *src_rows, int64 *tgt_rows, bool *caught_up)
{
	char	   *sql;
	RemoteResult *src;
	RemoteResult *tgt;
	ChunkPair  *all = palloc0(sizeof(ChunkPair) * nchunks);
	int			n = 0;
	int			r;
	int			i;

	if (t->key == NIL)
		sql = psprintf("SELECT 0, pg_catalog.count(*), pg_catalog.sum(%s) FROM %s",
					   row_hash_expr(run, t), t->qualified);
	else
		sql = psprintf("SELECT g.b, pg_catalog.count(*), pg_catalog.sum(s.h) "
					   "FROM %s JOIN (SELECT %s AS b, %s AS h FROM %s) s ON s.b = g.b "
					   "GROUP BY g.b",
					   chunk_set(nchunks, filter, nfilter), chunk_expr(t, nchunks),
					   row_hash_expr(run, t), t->qualified);
	both_sides(run, sql, "comparing chunks", &src, &tgt, caught_up);

	*src_rows = 0;
	*tgt_rows = 0;
	for (r = 0; r < src->ntuples; r++)
	{
		ChunkPair  *p = &all[atoi(remote_value(src, r, 0)) % nchunks];

		p->src_rows = strtoi64(remote_value(src, r, 1), NULL, 10);
		p->src_sum = (char *) remote_value(src, r, 2);
		*src_rows += p->src_rows;
	}
	for (r = 0; r < tgt->ntuples; r++)
	{
		ChunkPair  *p = &all[atoi(remote_value(tgt, r, 0)) % nchunks];

		p->tgt_rows = strtoi64(remote_value(tgt, r, 1), NULL, 10);
		p->tgt_sum = (char *) remote_value(tgt, r, 2);
		*tgt_rows += p->tgt_rows;
	}
	*pairs = palloc(sizeof(ChunkPair) * Max(nchunks, 1));
	for (i = 0; i < nchunks; i++)
	{
		ChunkPair  *p = &all[i];

		p->chunk = i;
		if (p->src_rows != p->tgt_rows ||
			(p->src_sum != NULL && strcmp(p->src_sum, p->tgt_sum) != 0))
			(*pairs)[n++] = *p;
	}
	pfree(all);
	return n;
}

static bool
same_pair(ChunkPair *a, ChunkPair *b)
{
	return a->src_rows == b->src_rows && a->tgt_rows == b->tgt_rows &&
		(a->src_sum == NULL) == (b->src_sum == NULL) &&
		(a->tgt_sum == NULL) == (b->tgt_sum == NULL) &&
		(a->src_sum == NULL || strcmp(a->src_sum, b->src_sum) == 0) &&
		(a->tgt_sum == NULL || strcmp(a->tgt_sum, b->tgt_sum) == 0);
}

static int
keyrow_cmp(const void *a, const void *b)
{
	return strcmp(((const KeyRow *) a)->key, ((const KeyRow *) b)->key);
}

static bool
same_text(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

/* The rows of a drill-down result (chunk, key, hash), sorted by key. */
static KeyRow *
key_rows(RemoteResult *res)
{
	KeyRow	   *rows = palloc(sizeof(KeyRow) * Max(res->ntuples, 1));
	int			r;

	for (r = 0; r < res->ntuples; r++)
	{
		rows[r].chunk = atoi(remote_value(res, r, 0));
		rows[r].key = remote_value(res, r, 1);
		rows[r].hash = remote_value(res, r, 2);
	}
	qsort(rows, res->ntuples, sizeof(KeyRow), keyrow_cmp);
	return rows;
}

/*
 * Fetch (chunk, key, row hash) of the rows of chunks[0..n) from both sides
 * and return the keys that differ, sorted by key, in *diffs: hash is the
 * source's row hash (NULL: missing there), other_hash the target's.
 */
static int
differing_keys(VerifyRun *run, VerifyTable *t, int nchunks, int *chunks,
			   int n, KeyRow **diffs, bool *caught_up)
{
	RemoteResult *src;
	RemoteResult *tgt;
	KeyRow	   *s;
	KeyRow	   *g;
	KeyRow	   *out;
	StringInfoData sql;
	int			i = 0;
	int			j = 0;
	int			ndiffs = 0;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s, %s, %s FROM %s WHERE %s IN (",
					 chunk_expr(t, nchunks), row_text_expr(t->key),
					 row_hash_expr(run, t), t->qualified, chunk_expr(t, nchunks));
	for (i = 0; i < n; i++)
		appendStringInfo(&sql, "%s%d", i > 0 ? ", " : "", chunks[i]);
	appendStringInfoChar(&sql, ')');
	both_sides(run, sql.data, "fetching the keys of differing chunks",
			   &src, &tgt, caught_up);

	s = key_rows(src);
	g = key_rows(tgt);
	out = palloc(sizeof(KeyRow) * Max(src->ntuples + tgt->ntuples, 1));
	i = 0;
	while (i < src->ntuples || j < tgt->ntuples)
	{
		int			cmp = i >= src->ntuples ? 1 : j >= tgt->ntuples ? -1 :
			strcmp(s[i].key, g[j].key);
		KeyRow		d;

		if (cmp < 0)
		{
			d = s[i++];
			d.other_hash = NULL;
		}
		else if (cmp > 0)
		{
			d = g[j++];
			d.other_hash = d.hash;
			d.hash = NULL;
		}
		else
		{
			d = s[i];
			d.other_hash = g[j].hash;
			i++;
			j++;
			if (same_text(d.hash, d.other_hash))
				continue;
		}
		out[ndiffs++] = d;
	}
	*diffs = out;
	return ndiffs;
}

/* One kind of difference: how many, and the first keys. */
typedef struct KeyList
{
	const char *what;
	int64		count;
	StringInfoData keys;
} KeyList;

static void
keylist_add(KeyList *list, const char *keycols, const char *key)
{
	list->count++;
	if (list->count <= VERIFY_KEYS_LISTED)
		appendStringInfo(&list->keys, "%s%s=%s",
						 list->count > 1 ? ", " : "", keycols, key);
}

static void
keylist_describe(KeyList *list, StringInfo detail)
{
	if (list->count == 0)
		return;
	appendStringInfo(detail, "%s%s (%lld): %s", detail->len > 0 ? "; " : "",
					 list->what, (long long) list->count, list->keys.data);
	if (list->count > VERIFY_KEYS_LISTED)
		appendStringInfo(detail, " and %lld more",
						 (long long) (list->count - VERIFY_KEYS_LISTED));
}

/*
 * Drill into the chunks chunks[0..n): name the keys missing on the target,
 * extra there and different.  While the source is live, the keys that
 * differ are fetched again (their chunks) until each one either matches,
 * or differs twice in a row with the same row hashes on both sides (a
 * difference that does not move: not in flight), up to zdm.verify_rechecks
 * times; the rest are unsettled.  Appends to detail; returns how many keys
 * differ or did not settle.
 */
static int64
drill_down(VerifyRun *run, VerifyTable *t, int nchunks, int *chunks, int n,
		   StringInfo detail)
{
	KeyList		lists[4] = {{"missing on the target"}, {"extra on the target"},
	{"different"}, {"did not settle (changing on the source)"}};
	StringInfoData keycols;
	ListCell   *lc;
	KeyRow	   *prev = NULL;
	int			nprev = 0;
	int			round;
	int64		total = 0;
	int			k;
	bool		lagging = false;
	int			done_size = 64;
	int			ndone = 0;
	KeyRow	   *done = palloc(sizeof(KeyRow) * done_size);

	initStringInfo(&keycols);
	appendStringInfoChar(&keycols, '(');
	foreach(lc, t->key)
		appendStringInfo(&keycols, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_identifier(((VerifyColumn *) lfirst(lc))->name));
	appendStringInfoChar(&keycols, ')');
	for (k = 0; k < 4; k++)
		initStringInfo(&lists[k].keys);

	for (round = 0; n > 0; round++)
	{
		KeyRow	   *diffs;
		KeyRow	   *pending;
		int			npending = 0;
		bool		caught_up;
		int			ndiffs = differing_keys(run, t, nchunks, chunks, n, &diffs,
											&caught_up);
		bool		last = !run->live || round >= zdm_verify_rechecks;
		int			i;

		lagging = !caught_up;
		pending = palloc(sizeof(KeyRow) * Max(ndiffs, 1));
		n = 0;
		for (i = 0; i < ndiffs; i++)
		{
			KeyRow	   *d = &diffs[i];
			KeyRow	   *before = nprev == 0 ? NULL :
				bsearch(d, prev, nprev, sizeof(KeyRow), keyrow_cmp);
			bool		settled = !run->live ||
				(caught_up && before != NULL && same_text(before->hash, d->hash) &&
				 same_text(before->other_hash, d->other_hash));
			int			c;

			/* reported in an earlier round (its chunk was fetched again) */
			if (ndone > 0 && bsearch(d, done, ndone, sizeof(KeyRow), keyrow_cmp))
				continue;
			if (settled)
			{
				keylist_add(&lists[d->hash == NULL ? 1 : d->other_hash == NULL ? 0 : 2],
							keycols.data, d->key);
				if (ndone >= done_size)
				{
					done_size *= 2;
					done = repalloc(done, sizeof(KeyRow) * done_size);
				}
				done[ndone++] = *d;
				continue;
			}
			if (last)
			{
				keylist_add(&lists[3], keycols.data, d->key);
				continue;
			}
			/* in flight, perhaps: compare it again, with its chunk */
			pending[npending++] = *d;
			for (c = 0; c < n && chunks[c] != d->chunk; c++)
				;
			if (c == n)
				chunks[n++] = d->chunk;
		}
		if (last)
			break;
		qsort(done, ndone, sizeof(KeyRow), keyrow_cmp);
		prev = pending;			/* in key order, as diffs */
		nprev = npending;
	}
	for (k = 0; k < 4; k++)
	{
		keylist_describe(&lists[k], detail);
		total += lists[k].count;
	}
	if (lists[3].count > 0)
		appendStringInfo(detail, " after %d rechecks%s", zdm_verify_rechecks,
						 lagging ? ", this target did not catch up with the source in time" : "");
	return total;
}

/*
 * Compare one table and emit its row.
 */
static void
verify_table(VerifyRun *run, VerifyTable *t, int number, int ntables)
{
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	StringInfoData detail;
	TimestampTz started = GetCurrentTimestamp();
	bool		ok = false;
	int64		src_rows = 0;
	int64		tgt_rows = 0;
	bool		compared = false;

	initStringInfo(&detail);
	if (!t->on_source)
		appendStringInfoString(&detail, "not compared: the table does not exist on the source");
	else if (!t->on_target)
		appendStringInfoString(&detail, "not compared: the table does not exist on the target");
	else if (run->live && t->state != 0 && t->state != 'r')
		appendStringInfo(&detail, "not compared: the initial copy of this table has not finished (state %s)",
						 t->state == 's' ? "synchronized" : t->state == 'i' ? "init" : "copying");
	else
	{
		int			nchunks = 1;
		ChunkPair  *pairs;
		int			n;
		int			round;
		int64		ignore_src;
		int64		ignore_tgt;
		bool		caught_up;

		compared = true;
		if (t->key != NIL)
			nchunks = (int) Min(Max(t->rows_estimate / zdm_verify_chunk_rows, 1.0),
								1000000.0);
		n = compare_chunks(run, t, nchunks, NULL, 0, &pairs, &src_rows,
						   &tgt_rows, &caught_up);

		/*
		 * Without a key, or with more differing chunks than are worth
		 * fetching, compare the differing chunks again while the source is
		 * live: those in flight settle.
		 */
		for (round = 0; run->live && round < zdm_verify_rechecks &&
			 n > (t->key == NIL ? 0 : VERIFY_MAX_DRILL); round++)
		{
			ChunkPair  *again;
			int			m = compare_chunks(run, t, nchunks, pairs, n, &again,
										   &ignore_src, &ignore_tgt, &caught_up);
			bool		unchanged = caught_up && m == n;
			int			i;

			/* both lists are in chunk order */
			for (i = 0; unchanged && i < m; i++)
				unchanged = pairs[i].chunk == again[i].chunk &&
					same_pair(&pairs[i], &again[i]);
			if (unchanged)
				break;			/* the same differences twice: they stay */
			pairs = again;
			n = m;
		}

		if (n > 0 && t->key != NIL)
		{
			int		   *chunks = palloc(sizeof(int) * n);
			int			ndrill = Min(n, VERIFY_MAX_DRILL);
			int			i;

			for (i = 0; i < n; i++)
				chunks[i] = pairs[i].chunk;
			(void) drill_down(run, t, nchunks, chunks, ndrill, &detail);
			if (n > ndrill)
			{
				int64		s = 0;
				int64		g = 0;

				for (i = ndrill; i < n; i++)
				{
					s += pairs[i].src_rows;
					g += pairs[i].tgt_rows;
				}
				appendStringInfo(&detail, "%s%d more differing chunks not fetched (%lld rows on the source, %lld on the target)",
								 detail.len > 0 ? "; " : "", n - ndrill,
								 (long long) s, (long long) g);
			}
		}
		else if (n > 0)
		{
			bool		settled = !run->live || round < zdm_verify_rechecks;

			if (settled)
				appendStringInfo(&detail, "the rows differ: %lld on the source, %lld on the target",
								 (long long) pairs[0].src_rows,
								 (long long) pairs[0].tgt_rows);
			else
				appendStringInfo(&detail, "did not settle after %d rechecks (rows changing on the source, or this target behind): %lld rows on the source, %lld on the target",
								 zdm_verify_rechecks,
								 (long long) pairs[0].src_rows,
								 (long long) pairs[0].tgt_rows);
		}
		ok = detail.len == 0;
		if (ok)
			appendStringInfo(&detail, "equal: %lld rows compared in %d %s",
							 (long long) src_rows, nchunks,
							 nchunks == 1 ? "chunk" : "chunks");
		if (t->key == NIL)
			appendStringInfoString(&detail, "; no primary key or replica identity index: compared the whole table (row count and sum of row hashes)");
	}
	if (t->skipped.len > 0)
		appendStringInfo(&detail, "; columns not compared: %s", t->skipped.data);

	ereport(NOTICE,
			(errmsg("verified %s (%d of %d): %s", t->display, number, ntables,
					!compared ? "not compared" : ok ? "equal" : "differs"),
			 compared ?
			 errdetail("%lld rows on the source, %lld on the target, %.1f s.",
					   (long long) src_rows, (long long) tgt_rows,
					   (double) (GetCurrentTimestamp() - started) / 1000000.0) : 0));

	values[0] = CStringGetTextDatum(t->schema);
	values[1] = CStringGetTextDatum(t->name);
	values[2] = Int64GetDatum(src_rows);
	nulls[2] = !compared;
	values[3] = Int64GetDatum(tgt_rows);
	nulls[3] = !compared;
	values[4] = BoolGetDatum(ok);
	values[5] = CStringGetTextDatum(detail.data);
	tuplestore_putvalues(run->rsinfo->setResult, run->rsinfo->setDesc,
						 values, nulls);
}

/*
 * The source sessions of a verify: canonical settings, and an
 * application_name that says what they are.  A source of 14 or later also
 * ends a scan whose client went away (client_connection_check_interval).
 */
static PGconn *
verify_connect(VerifyRun *run)
{
	PGconn	   *conn = remote_connect(run->state.source_conninfo,
									  "to verify the data");
	SourceFeatures features;
	StringInfoData sql;
	int			i;

	source_features(conn, &features);
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SET application_name = 'pg_zdm verify'; "
						   "SET synchronous_commit = on; SELECT 1");
	/* set_config, not SET: a quoted list would be one search_path entry */
	for (i = 0; i < lengthof(canonical_settings); i++)
		appendStringInfo(&sql, ", pg_catalog.set_config(%s, %s, false)",
						 quote_literal_cstr(canonical_settings[i][0]),
						 quote_literal_cstr(canonical_settings[i][1]));
	if (features.connection_check)
		appendStringInfoString(&sql, "; SET client_connection_check_interval = '1s'");
	if (zdm_verify_parallel_workers >= 0)
		appendStringInfo(&sql, "; SET max_parallel_workers_per_gather = %d",
						 zdm_verify_parallel_workers);
	remote_command(conn, sql.data, "setting up the verify session");
	run->md5 = features.version_num < 110000;
	return conn;
}

/*
 * If a source scan is still running (the verify was cancelled or failed
 * while waiting for it), end that source session: closing the connection
 * alone would leave the scan running until it tries to send its result.
 * Never throws.
 */
static void
end_running_scan(VerifyRun *run)
{
	PGconn	   *cleanup = run->control;
	char	   *reason;

	if (run->main == NULL || PQtransactionStatus(run->main) != PQTRANS_ACTIVE)
		return;
	if (cleanup == NULL || PQtransactionStatus(cleanup) != PQTRANS_IDLE)
		cleanup = remote_connect_quietly(run->state.source_conninfo,
										 VERIFY_CLEANUP_MS, &reason);
	if (cleanup == NULL)
		return;
	(void) source_end_session(cleanup, PQbackendPID(run->main), VERIFY_CLEANUP_MS);
	if (cleanup != run->control)
		remote_disconnect(cleanup);
}

/*
 * zdm.verify(tables regclass[] DEFAULT NULL)
 */
Datum
zdm_verify(PG_FUNCTION_ARGS)
{
	VerifyRun  *run = palloc0(sizeof(VerifyRun));
	List	   *tables;
	ListCell   *lc;
	MemoryContext tablecxt;
	MemoryContext oldcxt;
	int			level;
	int			i;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("zdm.verify cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("It compares the source with what this target has applied when each query starts, which needs a new snapshot for every query."),
				 errhint("Call it on its own, or in a READ COMMITTED transaction.")));
	if (!state_load(&run->state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("there is no migration to verify"),
				 errdetail("zdm.verify compares this database with the source of the migration, which zdm.init records."),
				 errhint("Start a migration with CALL zdm.init(source_dsn) first.")));

	InitMaterializedSRF(fcinfo, 0);
	run->rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	run->live = strcmp(run->state.phase, "completed") != 0;
	run->subid = subscription_oid();

	/* this session's text forms, for as long as the call lasts */
	level = NewGUCNestLevel();
	for (i = 0; i < lengthof(canonical_settings); i++)
		(void) set_config_option(canonical_settings[i][0], canonical_settings[i][1],
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (zdm_verify_parallel_workers >= 0)
		(void) set_config_option("max_parallel_workers_per_gather",
								 psprintf("%d", zdm_verify_parallel_workers),
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);

	tablecxt = AllocSetContextCreate(CurrentMemoryContext, "pg_zdm verify table",
									 ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		run->main = verify_connect(run);
		if (run->live)
			run->control = verify_connect(run);
		tables = tables_to_verify(run, PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0));
		describe_tables(run, tables);
		/* after the cutover, tables found only here are not the migration's */
		if (PG_ARGISNULL(0) && !OidIsValid(run->subid))
			foreach(lc, tables)
			{
				if (!((VerifyTable *) lfirst(lc))->on_source)
					tables = foreach_delete_current(tables, lc);
			}
		foreach(lc, tables)
		{
			VerifyTable *t = lfirst(lc);

			oldcxt = MemoryContextSwitchTo(tablecxt);
			verify_table(run, t, foreach_current_index(lc) + 1, list_length(tables));
			MemoryContextSwitchTo(oldcxt);
			MemoryContextReset(tablecxt);
		}
	}
	PG_CATCH();
	{
		end_running_scan(run);
		PG_RE_THROW();
	}
	PG_END_TRY();

	remote_disconnect(run->main);
	remote_disconnect(run->control);
	AtEOXact_GUC(true, level);
	return (Datum) 0;
}
