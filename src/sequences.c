/*-------------------------------------------------------------------------
 *
 * sequences.c
 *		  Moving the target's sequences ahead of the source's at cutover.
 *
 * Logical replication does not carry sequences.  Once writes are fenced, one
 * query reads every sequence of the source (its last value, and the table
 * column that owns it, if any) and one statement sets them all here: a
 * thousand sequences cost two round trips, not a thousand.  A sequence owned
 * by a column (serial or identity) is matched by that table and column, since
 * its name may differ on the target; others by schema and name.  The new
 * value is the source's plus the buffer, never lower than the target's own,
 * clamped to the sequence's bounds; a sequence never used on the source is
 * left alone so that its first value stays usable.  setval is not rolled
 * back: a cutover that fails later leaves the sequences ahead, which is
 * harmless.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_zdm.h"

static const char *source_sequences_sql =
"SELECT n.nspname, c.relname, v.last, tn.nspname, tc.relname, a.attname "
"FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid "
"JOIN pg_namespace n ON n.oid = c.relnamespace "
"CROSS JOIN LATERAL (SELECT pg_sequence_last_value(s.seqrelid) AS last) v "
"LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid "
"  AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 "
"  AND d.deptype IN ('a', 'i') "
"LEFT JOIN pg_class tc ON tc.oid = d.refobjid "
"LEFT JOIN pg_namespace tn ON tn.oid = tc.relnamespace "
"LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
"WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
"  AND n.nspname !~ '^pg_' AND v.last IS NOT NULL";

/*
 * Map each source sequence to one here and set it, all in one statement.
 * Columns: sequences set, sequences found nowhere here.
 */
static const char *target_setval_sql =
"WITH src AS ("
"  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[]) "
"    AS s(nsp, seq, last, tnsp, tbl, col)), "
"mapped AS ("
"  SELECT src.last, coalesce(owned.seqoid, named.seqoid) AS seqoid "
"  FROM src "
"  LEFT JOIN LATERAL (SELECT d.objid AS seqoid "
"    FROM pg_catalog.pg_namespace tn "
"    JOIN pg_catalog.pg_class tc ON tc.relnamespace = tn.oid AND tc.relname = src.tbl "
"    JOIN pg_catalog.pg_attribute a ON a.attrelid = tc.oid AND a.attname = src.col "
"    JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
"      AND d.refobjid = tc.oid AND d.refobjsubid = a.attnum "
"      AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') "
"    JOIN pg_catalog.pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S' "
"    WHERE tn.nspname = src.tnsp LIMIT 1) owned ON src.tbl IS NOT NULL "
"  LEFT JOIN LATERAL (SELECT c.oid AS seqoid FROM pg_catalog.pg_class c "
"    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
"    WHERE n.nspname = src.nsp AND c.relname = src.seq AND c.relkind = 'S') named ON true), "
"target AS ("
"  SELECT m.seqoid, "
"    CASE WHEN p.seqincrement > 0 "
"      THEN LEAST(GREATEST(m.last::numeric + $7, "
"             coalesce(pg_catalog.pg_sequence_last_value(m.seqoid), p.seqmin)), p.seqmax) "
"      ELSE GREATEST(LEAST(m.last::numeric - $7, "
"             coalesce(pg_catalog.pg_sequence_last_value(m.seqoid), p.seqmax)), p.seqmin) "
"    END::int8 AS value "
"  FROM mapped m JOIN pg_catalog.pg_sequence p ON p.seqrelid = m.seqoid) "
"SELECT (SELECT count(pg_catalog.setval(t.seqoid, t.value, true)) FROM target t), "
"       (SELECT count(*) FROM mapped WHERE seqoid IS NULL)";

static Datum
array_of(RemoteResult *res, int col, Oid elemtype)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(res->ntuples, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(res->ntuples, 1));
	int			dims[1] = {res->ntuples};
	int			lbs[1] = {1};
	int			row;

	for (row = 0; row < res->ntuples; row++)
	{
		const char *v = remote_value(res, row, col);

		nulls[row] = v == NULL;
		if (v == NULL)
			elems[row] = (Datum) 0;
		else if (elemtype == INT8OID)
			elems[row] = Int64GetDatum(strtoi64(v, NULL, 10));
		else
			elems[row] = CStringGetTextDatum(v);
	}
	if (elemtype == INT8OID)
		return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
												  INT8OID, 8, FLOAT8PASSBYVAL,
												  TYPALIGN_DOUBLE));
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * sequences_sync: read every used sequence on the source and move its
 * counterpart here to the source's value plus buffer.  Must run after the
 * fence holds, inside a transaction, connected to SPI.  Returns how many
 * sequences were set; *unmatched how many had no counterpart here.
 */
int
sequences_sync(PGconn *source, int64 buffer, int *unmatched)
{
	RemoteResult *res;
	Oid			types[7] = {TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID};
	Datum		values[7];
	int			col;
	int			set;
	bool		isnull;

	res = remote_query(source, source_sequences_sql, 0, NULL,
					   "reading the sequences");
	for (col = 0; col < 6; col++)
		values[col] = array_of(res, col, col == 2 ? INT8OID : TEXTOID);
	values[6] = Int64GetDatum(buffer);

	if (SPI_execute_with_args(target_setval_sql, 7, types, values, NULL,
							  false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not set the sequences");
	set = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
	*unmatched = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull));
	return set;
}
