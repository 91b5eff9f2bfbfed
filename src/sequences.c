/*-------------------------------------------------------------------------
 *
 * sequences.c
 *		  Moving the target's sequences ahead of the source's at cutover.
 *
 * Logical replication does not carry sequences.  Once writes are fenced,
 * the source's sequences are read in batches of SEQUENCE_BATCH (their state
 * and the table column that owns each, if any) and one statement sets them
 * all here: a thousand sequences cost a few round trips, not a thousand.
 *
 * Reading: pg_sequence_last_value() is NULL when is_called is false -- a
 * sequence never used, but also one restarted (ALTER SEQUENCE ... RESTART,
 * setval(s, v, false)), whose next value is last_value itself.  For those
 * the state is read from the sequence relation, through query_to_xml so
 * that the statement keeps a constant size however many there are.
 *
 * Matching: by schema and name first; a column can own two sequences (a
 * serial turned identity keeps its old sequence OWNED BY the column), so
 * the owning column is only a fallback, for a sequence renamed on this
 * side, and only when it points at exactly one sequence not matched by
 * name.  Sequences found on one side only are reported.
 *
 * Values: a sequence called on the source gets the source's last value plus
 * the buffer (minus, descending); one not called gets, if this side would
 * hand out a value the source has not reached yet, the source's next value
 * plus the buffer as its next value; otherwise (never used on either side)
 * it is left alone so its first value stays usable.  Never lowered, clamped
 * to the sequence's bounds.  setval is not rolled back: a cutover that fails
 * later leaves the sequences ahead, which is harmless.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_zdm.h"

/* Sequences read from the source per statement (bounds its locks too). */
#define SEQUENCE_BATCH	1000

/*
 * One batch of the source's sequences after seqrelid $1, in OID order:
 * OID, schema, name, last value, is_called, owning schema, table, column.
 * A sequence the role may not read (pg_sequence_last_value raises an error
 * in PostgreSQL 15) comes with NULL state; other sessions' temporary ones
 * and the system's are skipped.  The OID-ordered subquery picks the batch
 * before any function runs, so each statement reads SEQUENCE_BATCH
 * sequences whatever the total.  Lookups are by OID only, so that the plan
 * does not depend on catalog statistics (see target_setval_sql).
 */
static const char *source_sequences_sql =
"SELECT b.seqrelid::text, n.nspname, c.relname, "
"       coalesce(v.lv, substring(v.x FROM '<last_value>(-?[0-9]+)</last_value>')::int8), "
"       CASE WHEN v.lv IS NOT NULL THEN true WHEN v.x IS NOT NULL "
"            THEN v.x ~ '<is_called>true</is_called>' END, "
"       o.tnsp, o.tbl, o.col "
"FROM (SELECT s.seqrelid FROM pg_sequence s "
"      WHERE s.seqrelid > $1::oid "
"        AND (SELECT nspname FROM pg_namespace WHERE oid = "
"               (SELECT relnamespace FROM pg_class WHERE oid = s.seqrelid)) "
"            !~ '^pg_|^information_schema$' "
"      ORDER BY s.seqrelid LIMIT " CppAsString2(SEQUENCE_BATCH) ") b "
"CROSS JOIN LATERAL (SELECT relname, relnamespace FROM pg_class "
"                    WHERE oid = b.seqrelid) c "
"CROSS JOIN LATERAL (SELECT nspname FROM pg_namespace "
"                    WHERE oid = c.relnamespace) n "
"CROSS JOIN LATERAL (SELECT q.lv, "
"    CASE WHEN q.lv IS NULL AND has_sequence_privilege(b.seqrelid, 'SELECT') "
"      THEN query_to_xml(format('SELECT last_value, is_called FROM %I.%I', "
"                               n.nspname, c.relname), false, true, '')::text END AS x "
"  FROM (SELECT CASE WHEN has_sequence_privilege(b.seqrelid, 'SELECT,USAGE') "
"          THEN pg_sequence_last_value(b.seqrelid) END AS lv) q) v "
"LEFT JOIN LATERAL (SELECT tn.nspname AS tnsp, tc.relname AS tbl, a.attname AS col "
"  FROM pg_depend d "
"  JOIN pg_class tc ON tc.oid = d.refobjid "
"  JOIN pg_namespace tn ON tn.oid = tc.relnamespace "
"  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
"  WHERE d.classid = 'pg_class'::regclass AND d.objid = b.seqrelid "
"    AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 "
"    AND d.deptype IN ('a', 'i') LIMIT 1) o ON true "
"ORDER BY b.seqrelid";

/*
 * Map each source sequence to one here and set it, all in one statement.
 * Every lookup is by name through to_regclass or a unique index, so the plan
 * does not depend on catalog statistics (thousands of freshly created
 * sequences would otherwise lead the planner into a quadratic join).
 * Columns: sequences set, source sequences without counterpart here,
 * sequences here without counterpart on the source, source sequences the
 * role could not read (quoted qualified names).
 */
static const char *target_setval_sql =
"WITH src AS ("
"  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[], "
"                       $5::text[], $6::text[], $7::text[]) "
"    AS s(nsp, seq, last, called, tnsp, tbl, col)), "
"named AS ("
"  SELECT src.*, "
"    (SELECT c.oid FROM pg_catalog.pg_class c "
"      WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass("
"          pg_catalog.quote_ident(src.nsp) OPERATOR(pg_catalog.||) '.' "
"          OPERATOR(pg_catalog.||) pg_catalog.quote_ident(src.seq))::pg_catalog.oid "
"        AND c.relkind OPERATOR(pg_catalog.=) 'S') AS byname, "
"    CASE WHEN src.tbl IS NOT NULL THEN pg_catalog.to_regclass("
"      pg_catalog.quote_ident(src.tnsp) OPERATOR(pg_catalog.||) '.' "
"      OPERATOR(pg_catalog.||) pg_catalog.quote_ident(src.tbl))::pg_catalog.oid END AS tblid "
"  FROM src), "
"mapped AS ("
"  SELECT n.*, coalesce(n.byname, CASE WHEN n.byname IS NULL AND n.tblid IS NOT NULL THEN "
"    (SELECT CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) 1 THEN pg_catalog.min(d.objid) END "
"       FROM pg_catalog.pg_depend d "
"      WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
"        AND d.refobjid OPERATOR(pg_catalog.=) n.tblid "
"        AND d.refobjsubid OPERATOR(pg_catalog.=) (SELECT a.attnum FROM pg_catalog.pg_attribute a "
"          WHERE a.attrelid OPERATOR(pg_catalog.=) n.tblid "
"            AND a.attname OPERATOR(pg_catalog.=) n.col AND NOT a.attisdropped) "
"        AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
"        AND d.deptype OPERATOR(pg_catalog.=) ANY ('{a,i}'::\"char\"[]) "
"        AND NOT d.objid OPERATOR(pg_catalog.=) ANY (SELECT x.byname FROM named x "
"                                                    WHERE x.byname IS NOT NULL)) "
"    END) AS seqoid "
"  FROM named n), "
"state AS ("
"  SELECT m.*, p.seqincrement AS incr, p.seqmin AS lo, p.seqmax AS hi, p.seqstart AS tstart, "
"    pg_catalog.pg_sequence_last_value(m.seqoid) AS tlast "
"  FROM mapped m "
"  LEFT JOIN LATERAL (SELECT * FROM pg_catalog.pg_sequence p "
"                     WHERE p.seqrelid OPERATOR(pg_catalog.=) m.seqoid) p ON true), "
/*
 * The next value here of a sequence the source has not called, when it may
 * be behind the source's next value: read from the relation only for a
 * source restarted elsewhere than this side's start (never used on both
 * sides: nothing to do).
 */
"nxt AS ("
"  SELECT s.*, CASE WHEN s.called OR s.incr IS NULL OR s.last IS NULL "
"      OR s.last OPERATOR(pg_catalog.=) s.tstart THEN NULL "
"    WHEN s.tlast IS NOT NULL THEN s.tlast::pg_catalog.numeric OPERATOR(pg_catalog.+) s.incr "
"    ELSE pg_catalog.substring(pg_catalog.query_to_xml("
"           'SELECT last_value FROM ' OPERATOR(pg_catalog.||) s.seqoid::pg_catalog.regclass::pg_catalog.text, "
"           false, true, '')::pg_catalog.text, "
"         '<last_value>(-?[0-9]+)</last_value>')::pg_catalog.numeric END AS tnext "
"  FROM state s), "
"target AS ("
"  SELECT s.seqoid, s.called, "
"    CASE WHEN s.called AND s.incr > 0 "
"      THEN LEAST(GREATEST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.+) $8, coalesce(s.tlast, s.lo)), s.hi) "
"    WHEN s.called "
"      THEN GREATEST(LEAST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.-) $8, coalesce(s.tlast, s.hi)), s.lo) "
"    WHEN s.incr > 0 THEN LEAST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.+) $8, s.hi) "
"    ELSE GREATEST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.-) $8, s.lo) "
"    END::pg_catalog.int8 AS value "
"  FROM nxt s "
"  WHERE s.incr IS NOT NULL AND s.last IS NOT NULL "
"    AND (s.called OR (s.incr > 0 AND s.tnext OPERATOR(pg_catalog.<) s.last) "
"         OR (s.incr < 0 AND s.tnext OPERATOR(pg_catalog.>) s.last))) "
"SELECT (SELECT pg_catalog.count(pg_catalog.setval(t.seqoid, t.value, t.called)) FROM target t), "
"  ARRAY(SELECT pg_catalog.quote_ident(s.nsp) OPERATOR(pg_catalog.||) '.' "
"          OPERATOR(pg_catalog.||) pg_catalog.quote_ident(s.seq) "
"        FROM state s WHERE s.incr IS NULL ORDER BY 1), "
"  ARRAY(SELECT c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_sequence p "
"        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.seqrelid "
"        JOIN pg_catalog.pg_namespace ns ON ns.oid OPERATOR(pg_catalog.=) c.relnamespace "
"        WHERE ns.nspname OPERATOR(pg_catalog.!~) '^pg_|^information_schema$' "
"          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e "
"                WHERE e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
"                  AND e.objid OPERATOR(pg_catalog.=) c.oid AND e.deptype OPERATOR(pg_catalog.=) 'e') "
"          AND NOT p.seqrelid OPERATOR(pg_catalog.=) ANY (SELECT m.seqoid FROM mapped m "
"                                                        WHERE m.seqoid IS NOT NULL) "
"        ORDER BY 1), "
"  ARRAY(SELECT pg_catalog.quote_ident(s.nsp) OPERATOR(pg_catalog.||) '.' "
"          OPERATOR(pg_catalog.||) pg_catalog.quote_ident(s.seq) "
"        FROM state s WHERE s.incr IS NOT NULL AND s.last IS NULL ORDER BY 1)";

/*
 * The values of column col of every row of the batches (RemoteResults) as
 * a one-dimensional array of elemtype (TEXTOID, INT8OID or BOOLOID).
 */
static Datum
array_of(List *batches, int nrows, int col, Oid elemtype)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(nrows, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(nrows, 1));
	int			dims[1] = {nrows};
	int			lbs[1] = {1};
	int			i = 0;
	ListCell   *lc;

	foreach(lc, batches)
	{
		RemoteResult *res = lfirst(lc);
		int			row;

		for (row = 0; row < res->ntuples; row++, i++)
		{
			const char *v = remote_value(res, row, col);

			nulls[i] = v == NULL;
			if (v == NULL)
				elems[i] = (Datum) 0;
			else if (elemtype == INT8OID)
				elems[i] = Int64GetDatum(strtoi64(v, NULL, 10));
			else if (elemtype == BOOLOID)
				elems[i] = BoolGetDatum(v[0] == 't');
			else
				elems[i] = CStringGetTextDatum(v);
		}
	}
	if (elemtype == INT8OID)
		return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
												  INT8OID, 8, FLOAT8PASSBYVAL,
												  TYPALIGN_DOUBLE));
	if (elemtype == BOOLOID)
		return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
												  BOOLOID, 1, true, TYPALIGN_CHAR));
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * sequences_read: every sequence of the source, in batches of
 * SEQUENCE_BATCH rows (columns of source_sequences_sql); *nrows receives the
 * total.  Each batch is a statement of its own, so that the locks it takes
 * on the sequences are released before the next.
 */
List *
sequences_read(PGconn *source, int *nrows)
{
	List	   *batches = NIL;
	char	   *after = "0";

	*nrows = 0;
	for (;;)
	{
		const char *params[1] = {after};
		RemoteResult *res = remote_query(source, source_sequences_sql, 1, params,
										 "reading the sequences");

		batches = lappend(batches, res);
		*nrows += res->ntuples;
		if (res->ntuples < SEQUENCE_BATCH)
			break;
		after = pstrdup(remote_value(res, res->ntuples - 1, 0));
	}
	return batches;
}

/* The elements of a text[] datum joined with ", ", and their count. */
static char *
join_text_array(Datum array, int *count)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	StringInfoData buf;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, &nulls, &n);
	initStringInfo(&buf);
	for (i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
						 nulls[i] ? "?" : TextDatumGetCString(elems[i]));
	*count = n;
	return buf.data;
}

/*
 * sequences_sync: read every sequence on the source and move its
 * counterpart here ahead of it (see the file header).  Must run after the
 * fence holds, inside a transaction, connected to SPI.  Fills *result; the
 * names it lists are palloc'd in the caller's context.
 */
void
sequences_sync(PGconn *source, int64 buffer, SequenceSync *result)
{
	MemoryContext callercxt = CurrentMemoryContext;
	List	   *batches;
	int			nrows;
	Oid			types[8] = {TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID, BOOLARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID};
	Datum		values[8];
	int			col;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	memset(result, 0, sizeof(*result));
	batches = sequences_read(source, &nrows);
	/* columns 1..7 of source_sequences_sql (0 is the OID, for batching) */
	for (col = 1; col <= 7; col++)
		values[col - 1] = array_of(batches, nrows, col,
								   col == 3 ? INT8OID : col == 4 ? BOOLOID : TEXTOID);
	values[7] = Int64GetDatum(buffer);

	if (zdm_spi_execute(target_setval_sql, 8, types, values, NULL,
						false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not set the sequences");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	result->set = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	{
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		result->source_only = join_text_array(SPI_getbinval(tup, desc, 2, &isnull),
											  &result->nsource_only);
		result->target_only = join_text_array(SPI_getbinval(tup, desc, 3, &isnull),
											  &result->ntarget_only);
		result->unreadable = join_text_array(SPI_getbinval(tup, desc, 4, &isnull),
											 &result->nunreadable);
		MemoryContextSwitchTo(spicxt);
	}
}
