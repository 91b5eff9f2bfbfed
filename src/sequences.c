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

/*
 * Every used sequence of the source with the table column that owns it, if
 * any.  pg_sequence_last_value raises an error in PostgreSQL 15 for a
 * sequence the role may not read, so those (and other sessions' temporary
 * ones) are skipped, as the pg_sequences view does.  Driven by pg_sequence with lookups by OID only, so that the plan does
 * not depend on catalog statistics (see target_setval_sql).
 */
static const char *source_sequences_sql =
"SELECT (SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace), "
"       c.relname, v.last, o.tnsp, o.tbl, o.col "
"FROM (SELECT seqrelid, CASE WHEN has_sequence_privilege(seqrelid, 'SELECT,USAGE') "
"        AND NOT pg_is_other_temp_schema((SELECT relnamespace FROM pg_class "
"                                         WHERE oid = seqrelid)) "
"      THEN pg_sequence_last_value(seqrelid) END AS last FROM pg_sequence) v "
"CROSS JOIN LATERAL (SELECT relname, relnamespace FROM pg_class "
"                    WHERE oid = v.seqrelid) c "
"LEFT JOIN LATERAL (SELECT tn.nspname AS tnsp, tc.relname AS tbl, a.attname AS col "
"  FROM pg_depend d "
"  JOIN pg_class tc ON tc.oid = d.refobjid "
"  JOIN pg_namespace tn ON tn.oid = tc.relnamespace "
"  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
"  WHERE d.classid = 'pg_class'::regclass AND d.objid = v.seqrelid "
"    AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 "
"    AND d.deptype IN ('a', 'i') LIMIT 1) o ON true "
"WHERE v.last IS NOT NULL "
"  AND (SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace) "
"      NOT IN ('pg_catalog', 'information_schema') "
"  AND (SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace) !~ '^pg_'";

/*
 * Map each source sequence to one here and set it, all in one statement.
 * Every lookup is by name through to_regclass or a unique index, so the plan
 * does not depend on catalog statistics (thousands of freshly created
 * sequences would otherwise lead the planner into a quadratic join).
 * Columns: sequences set, sequences found nowhere here.
 */
static const char *target_setval_sql =
"WITH src AS ("
"  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[]) "
"    AS s(nsp, seq, last, tnsp, tbl, col)), "
"owner AS ("
"  SELECT src.*, CASE WHEN src.tbl IS NOT NULL THEN pg_catalog.to_regclass("
"    pg_catalog.quote_ident(src.tnsp) || '.' || pg_catalog.quote_ident(src.tbl)) END AS tblid "
"  FROM src), "
"mapped AS ("
"  SELECT o.last, coalesce("
"    (SELECT d.objid FROM pg_catalog.pg_depend d "
"      WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
"        AND d.refobjid = o.tblid "
"        AND d.refobjsubid = (SELECT a.attnum FROM pg_catalog.pg_attribute a "
"          WHERE a.attrelid = o.tblid AND a.attname = o.col AND NOT a.attisdropped) "
"        AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
"        AND d.deptype IN ('a', 'i') LIMIT 1), "
"    pg_catalog.to_regclass(pg_catalog.quote_ident(o.nsp) || '.' || pg_catalog.quote_ident(o.seq))::pg_catalog.oid"
"  ) AS seqoid "
"  FROM owner o), "
"bounds AS ("
"  SELECT m.seqoid, m.last, "
"    (SELECT p.seqincrement FROM pg_catalog.pg_sequence p WHERE p.seqrelid = m.seqoid) AS incr, "
"    (SELECT p.seqmin FROM pg_catalog.pg_sequence p WHERE p.seqrelid = m.seqoid) AS lo, "
"    (SELECT p.seqmax FROM pg_catalog.pg_sequence p WHERE p.seqrelid = m.seqoid) AS hi "
"  FROM mapped m), "
"target AS ("
"  SELECT b.seqoid, "
"    CASE WHEN b.incr > 0 "
"      THEN LEAST(GREATEST(b.last::numeric + $7, "
"             coalesce(pg_catalog.pg_sequence_last_value(b.seqoid), b.lo)), b.hi) "
"      ELSE GREATEST(LEAST(b.last::numeric - $7, "
"             coalesce(pg_catalog.pg_sequence_last_value(b.seqoid), b.hi)), b.lo) "
"    END::int8 AS value "
"  FROM bounds b WHERE b.incr IS NOT NULL) "
"SELECT (SELECT count(pg_catalog.setval(t.seqoid, t.value, true)) FROM target t), "
"       (SELECT count(*) FROM bounds WHERE incr IS NULL)";

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

	if (zdm_spi_execute(target_setval_sql, 7, types, values, NULL,
							  false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not set the sequences");
	set = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
	*unmatched = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull));
	return set;
}
