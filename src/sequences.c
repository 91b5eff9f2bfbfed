/*-------------------------------------------------------------------------
 *
 * sequences.c
 *		  Moving the target's sequences ahead of the source's at cutover,
 *		  and the source's ahead of the target's at a fallback.
 *
 * Logical replication does not carry sequences.  Once writes are fenced,
 * the source's sequences are read in batches of SEQUENCE_BATCH (their state
 * and the table column that owns each, if any) and one statement sets
 * nearly all of them here: a thousand sequences cost a few round trips, not
 * a thousand.
 *
 * Reading: pg_sequence_last_value() is NULL when is_called is false -- a
 * sequence never used, but also one restarted (ALTER SEQUENCE ... RESTART,
 * setval(s, v, false)), whose next value is last_value itself.  For those
 * the state is read from the sequence relation, by a statement built here
 * of one "SELECT ... FROM s" per sequence joined with UNION ALL (as a
 * balanced tree: a flat chain overflows a small stack), named by
 * what the catalog read said, SEQUENCE_BATCH of them per statement (plain
 * SQL: query_to_xml would need a server built with libxml).  A sequence
 * dropped or renamed in between is looked up again by OID, and one dropped
 * is forgotten, as if the catalog read had not seen it (one dropped during
 * the catalog read makes it fail on older releases: it is read again).  That read costs
 * the source a relation open per sequence (20,000 never-used sequences are
 * many), so it is done before the fence (sequences_prefetch); under the
 * fence only pg_sequence_last_value() runs, and a sequence still not called
 * is re-read only if it is new or has a new relfilenode (ALTER SEQUENCE ...
 * RESTART makes one).  What that leaves unseen, a setval(s, v, false) in
 * the seconds between, is a setval during the cutover, which the fence
 * never blocked anyway (nor nextval: sequence_buffer covers that).
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
 * it is left alone so its first value stays usable.  This side's next value
 * comes from pg_sequence_last_value() too, and, for the few not called here
 * whose source was restarted elsewhere than this side's start, from their
 * relations, read after the statement that sets the others, SEQUENCE_BATCH
 * per statement (sequences_sync_unread).  Never lowered, clamped
 * to the sequence's bounds.  setval is not rolled back: a cutover that fails
 * later leaves the sequences ahead, which is harmless.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "pg_zdm.h"

/* Sequences read from the source per statement (bounds its locks too). */
#define SEQUENCE_BATCH	1000

/*
 * One batch of the source's sequences after seqrelid $1, in OID order:
 * OID, relfilenode, schema, name, pg_sequence_last_value (NULL when not
 * called or not readable), whether the role may read the relation, and
 * (source_sequences_owners_sql only) the owning schema, table and column.
 * pg_sequence_last_value raises an error in PostgreSQL 15 for a sequence
 * the role may not read, hence the privilege test; other sessions'
 * temporary sequences and the system's are skipped.  The OID-ordered
 * subquery picks the batch before any function runs, so each statement
 * reads SEQUENCE_BATCH sequences whatever the total.  Lookups are by OID
 * only, so that the plan does not depend on catalog statistics.  The
 * owners are read before the fence only (sequences_prefetch): that lookup
 * is most of the statement's cost.
 */
#define SOURCE_SEQUENCES_SELECT \
"SELECT b.seqrelid::text, c.relfilenode::text, n.nspname, c.relname, " \
"       CASE WHEN has_sequence_privilege(b.seqrelid, 'SELECT,USAGE') " \
"         THEN pg_sequence_last_value(b.seqrelid) END, " \
"       has_sequence_privilege(b.seqrelid, 'SELECT') "
#define SOURCE_SEQUENCES_FROM \
"FROM (SELECT s.seqrelid FROM pg_sequence s " \
"      WHERE s.seqrelid > $1::oid " \
"        AND (SELECT nspname FROM pg_namespace WHERE oid = " \
"               (SELECT relnamespace FROM pg_class WHERE oid = s.seqrelid)) " \
"            !~ '^pg_|^information_schema$' " \
"      ORDER BY s.seqrelid LIMIT " CppAsString2(SEQUENCE_BATCH) ") b " \
"CROSS JOIN LATERAL (SELECT relname, relnamespace, relfilenode FROM pg_class " \
"                    WHERE oid = b.seqrelid) c " \
"CROSS JOIN LATERAL (SELECT nspname FROM pg_namespace " \
"                    WHERE oid = c.relnamespace) n "

static const char *source_sequences_sql =
SOURCE_SEQUENCES_SELECT
SOURCE_SEQUENCES_FROM
"ORDER BY b.seqrelid";

static const char *source_sequences_owners_sql =
SOURCE_SEQUENCES_SELECT
", o.tnsp, o.tbl, o.col "
SOURCE_SEQUENCES_FROM
"LEFT JOIN LATERAL (SELECT tn.nspname AS tnsp, tc.relname AS tbl, a.attname AS col "
"  FROM pg_depend d "
"  JOIN pg_class tc ON tc.oid = d.refobjid "
"  JOIN pg_namespace tn ON tn.oid = tc.relnamespace "
"  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
"  WHERE d.classid = 'pg_class'::regclass AND d.objid = b.seqrelid "
"    AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 "
"    AND d.deptype IN ('a', 'i') LIMIT 1) o ON true "
"ORDER BY b.seqrelid";

/* Columns of source_sequences_sql and source_sequences_owners_sql. */
#define SRC_OID			0
#define SRC_FILENODE	1
#define SRC_NSP			2
#define SRC_NAME		3
#define SRC_LAST		4
#define SRC_READABLE	5
#define SRC_TNSP		6
#define SRC_TBL			7
#define SRC_COL			8

/*
 * The current schema, name and readability (SELECT on it, USAGE on its
 * schema) of the sequences $1 (OIDs): for those a relation read could not
 * find under the name read before (dropped, renamed, or no longer readable
 * since).  A dropped one has no row.
 */
static const char *source_sequence_names_sql =
"SELECT c.oid::text, n.nspname, c.relname, "
"       has_sequence_privilege(c.oid, 'SELECT') "
"         AND has_schema_privilege(c.relnamespace, 'USAGE') "
"FROM unnest($1::oid[]) AS s(oid) "
"CROSS JOIN LATERAL (SELECT oid, relname, relnamespace FROM pg_class "
"                    WHERE oid = s.oid AND relkind = 'S') c "
"CROSS JOIN LATERAL (SELECT nspname FROM pg_namespace "
"                    WHERE oid = c.relnamespace) n";

/* Attempts at reading a batch of relations whose names keep changing. */
#define SEQUENCE_READ_ATTEMPTS	5

/* One sequence of the source, as the cutover sees it. */
typedef struct SourceSequence
{
	Oid			oid;
	Oid			filenode;
	const char *nsp;
	const char *name;
	const char *last;			/* NULL: unknown (not readable) */
	bool		called;
	bool		readable;		/* the role may read its relation */
	bool		via_relation;	/* not called: state read from the relation */
	bool		dropped;		/* dropped on the source while being read */
	const char *tnsp;			/* owning column, or NULLs */
	const char *tbl;
	const char *col;
} SourceSequence;

/*
 * What sequences_prefetch read before the fence, sorted by OID: every
 * sequence with its owning column, and for those not called then, their
 * state read from the relation and the relfilenode it was read from.
 */
struct SequenceCache
{
	int			n;
	SourceSequence *seqs;
};

static int
compare_oid(const void *a, const void *b)
{
	Oid			x = ((const SourceSequence *) a)->oid;
	Oid			y = ((const SourceSequence *) b)->oid;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Append the queries arms[0..n-1] (n > 0) to buf joined with UNION ALL as a
 * balanced tree, "(a UNION ALL b) UNION ALL (c UNION ALL d)": a flat chain
 * of a thousand arms nests a thousand deep in the server's parse analysis
 * and exceeds a small max_stack_depth; the tree nests ten deep.
 */
static void
append_union_all(StringInfo buf, char **arms, int n)
{
	if (n == 1)
		appendStringInfoString(buf, arms[0]);
	else
	{
		appendStringInfoChar(buf, '(');
		append_union_all(buf, arms, n / 2);
		appendStringInfoString(buf, ") UNION ALL (");
		append_union_all(buf, arms + n / 2, n - n / 2);
		appendStringInfoChar(buf, ')');
	}
}

/*
 * The statement reading seqs[batch[0..n-1]] (n > 0) from their relations,
 * one arm per sequence, named by the quoted schema and name read from the
 * source's catalog: "SELECT tableoid::oid::text, last_value::text,
 * is_called FROM s.x", joined by append_union_all.  tableoid says which
 * sequence a row is from, so that a name now given to another sequence is
 * noticed.  Plain SQL, unlike query_to_xml, which needs a server built with
 * libxml.
 */
static char *
relation_state_sql(SourceSequence *seqs, int *batch, int n)
{
	StringInfoData sql;
	char	  **arms = palloc(sizeof(char *) * n);
	int			i;

	for (i = 0; i < n; i++)
		arms[i] = psprintf("SELECT tableoid::oid::text, last_value::text, is_called FROM %s",
						   quote_qualified_identifier(seqs[batch[i]].nsp,
													  seqs[batch[i]].name));
	initStringInfo(&sql);
	append_union_all(&sql, arms, n);
	for (i = 0; i < n; i++)
		pfree(arms[i]);
	pfree(arms);
	return sql.data;
}

/*
 * Re-read the schema, name and readability of seqs[batch[0..*n-1]], which a
 * relation read could not find under their names.  Those dropped since are
 * marked dropped, those no longer readable are left unknown (reported as
 * unreadable); both leave the batch, which keeps the others, in order, with
 * their current names.
 */
static void
refresh_names(PGconn *source, SourceSequence *seqs, int *batch, int *n)
{
	StringInfoData oids;
	const char *params[1];
	RemoteResult *res;
	int			kept = 0;
	int			i;
	int			row = 0;

	initStringInfo(&oids);
	appendStringInfoChar(&oids, '{');
	for (i = 0; i < *n; i++)
		appendStringInfo(&oids, "%s%u", i > 0 ? "," : "", seqs[batch[i]].oid);
	appendStringInfoChar(&oids, '}');
	params[0] = oids.data;
	res = remote_query(source, source_sequence_names_sql, 1, params,
					   "reading the sequences");
	/* rows come in the order of unnest, that of batch, less the dropped */
	for (i = 0; i < *n; i++)
	{
		SourceSequence *seq = &seqs[batch[i]];

		if (row < res->ntuples &&
			(Oid) strtoul(remote_value(res, row, 0), NULL, 10) == seq->oid)
		{
			seq->nsp = remote_value(res, row, 1);
			seq->name = remote_value(res, row, 2);
			seq->readable = strcmp(remote_value(res, row, 3), "t") == 0;
			row++;
			if (seq->readable)
				batch[kept++] = batch[i];
			else
				seq->last = NULL;
		}
		else
			seq->dropped = true;
	}
	*n = kept;
}

/*
 * Fill in the state of seqs[idx[0..n-1]] (not called, readable; in OID
 * order) from their relations on the source, SEQUENCE_BATCH per statement.
 * The names come from a catalog read an earlier statement made: a sequence
 * dropped or renamed since makes the statement fail with undefined_table
 * (or insufficient_privilege after a REVOKE), or read another sequence
 * under its old name.  Those are looked up again by OID and the rest read
 * again; a sequence dropped meanwhile is marked dropped, as if it had never
 * been there.
 */
static void
read_relation_state(PGconn *source, SourceSequence *seqs, int *idx, int n)
{
	static const int tolerated[] = {ERRCODE_UNDEFINED_TABLE,
	ERRCODE_INSUFFICIENT_PRIVILEGE, 0};
	int		   *batch = palloc(sizeof(int) * SEQUENCE_BATCH);
	int			start;

	for (start = 0; start < n; start += SEQUENCE_BATCH)
	{
		int			count = Min(SEQUENCE_BATCH, n - start);
		int			attempt;

		memcpy(batch, &idx[start], sizeof(int) * count);
		for (attempt = 1; count > 0; attempt++)
		{
			char	   *sql = relation_state_sql(seqs, batch, count);
			int			code = 0;
			RemoteResult *res;
			int			unread = 0;
			int			row;
			int			i;

			res = remote_query_tolerating(source, sql, 0, NULL,
										  "reading the sequences",
										  tolerated, &code);
			pfree(sql);
			for (row = 0; res != NULL && row < res->ntuples; row++)
			{
				Oid			oid = (Oid) strtoul(remote_value(res, row, 0), NULL, 10);

				/* batch is in OID order; a row of another sequence is ignored */
				for (i = 0; i < count; i++)
				{
					SourceSequence *seq;

					if (batch[i] < 0)
						continue;	/* already read */
					seq = &seqs[batch[i]];
					if (seq->oid == oid)
					{
						seq->last = remote_value(res, row, 1);
						seq->called = strcmp(remote_value(res, row, 2), "t") == 0;
						batch[i] = -1;
						break;
					}
					if (seq->oid > oid)
						break;
				}
			}
			for (i = 0; i < count; i++)
				if (batch[i] >= 0)
					batch[unread++] = batch[i];
			count = unread;
			if (count == 0)
				break;
			if (attempt == SEQUENCE_READ_ATTEMPTS)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("could not read %d sequences of the source: they kept being renamed or dropped",
								count),
						 errdetail("One of them is %s.",
								   quote_qualified_identifier(seqs[batch[0]].nsp,
															  seqs[batch[0]].name)),
						 errhint("Run the cutover again once no DDL runs on the source.")));
			refresh_names(source, seqs, batch, &count);
		}
	}
	pfree(batch);
}

/*
 * One batch of source_sequences_sql or source_sequences_owners_sql.  On
 * PostgreSQL 15 (and others before 18) pg_sequence_last_value() fails with
 * XX000, "could not open relation with OID", for a sequence dropped while
 * the statement waited for its lock: the batch is read again, its snapshot
 * then without that sequence, up to SEQUENCE_READ_ATTEMPTS times, the last
 * attempt raising whatever error it gets.
 */
static RemoteResult *
read_catalog_batch(PGconn *source, const char *sql, const char *const *params)
{
	static const int tolerated[] = {ERRCODE_INTERNAL_ERROR, 0};
	int			attempt;

	for (attempt = 1; attempt < SEQUENCE_READ_ATTEMPTS; attempt++)
	{
		int			code = 0;
		RemoteResult *res = remote_query_tolerating(source, sql, 1, params,
													"reading the sequences",
													tolerated, &code);

		if (res != NULL)
			return res;
	}
	return remote_query(source, sql, 1, params, "reading the sequences");
}

/*
 * Every sequence of the source, in batches of SEQUENCE_BATCH rows; *n
 * receives how many.  Sequences not called are taken from cache when it
 * has them with the same relfilenode, and read from their relations
 * otherwise.
 */
static SourceSequence *
read_sequences(PGconn *source, SequenceCache *cache, int *n)
{
	const char *sql = cache ? source_sequences_sql : source_sequences_owners_sql;
	int			size = 1024;
	SourceSequence *seqs = palloc(sizeof(SourceSequence) * size);
	int		   *unread;
	int			nunread = 0;
	char	   *after = "0";
	int			i;

	*n = 0;
	for (;;)
	{
		const char *params[1] = {after};
		RemoteResult *res = read_catalog_batch(source, sql, params);
		int			row;

		for (row = 0; row < res->ntuples; row++)
		{
			SourceSequence *seq;

			if (*n == size)
			{
				size *= 2;
				seqs = repalloc(seqs, sizeof(SourceSequence) * size);
			}
			seq = &seqs[(*n)++];
			seq->oid = (Oid) strtoul(remote_value(res, row, SRC_OID), NULL, 10);
			seq->filenode = (Oid) strtoul(remote_value(res, row, SRC_FILENODE), NULL, 10);
			seq->nsp = remote_value(res, row, SRC_NSP);
			seq->name = remote_value(res, row, SRC_NAME);
			seq->last = remote_value(res, row, SRC_LAST);
			seq->called = seq->last != NULL;
			seq->readable = strcmp(remote_value(res, row, SRC_READABLE), "t") == 0;
			seq->via_relation = false;
			seq->dropped = false;
			seq->tnsp = cache ? NULL : remote_value(res, row, SRC_TNSP);
			seq->tbl = cache ? NULL : remote_value(res, row, SRC_TBL);
			seq->col = cache ? NULL : remote_value(res, row, SRC_COL);
		}
		if (res->ntuples < SEQUENCE_BATCH)
			break;
		after = pstrdup(remote_value(res, res->ntuples - 1, SRC_OID));
	}

	unread = palloc(sizeof(int) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		SourceSequence *seq = &seqs[i];
		SourceSequence *known = NULL;

		if (cache != NULL && cache->n > 0)
			known = bsearch(seq, cache->seqs, cache->n, sizeof(SourceSequence),
							compare_oid);
		if (known != NULL)
		{
			seq->tnsp = known->tnsp;
			seq->tbl = known->tbl;
			seq->col = known->col;
		}
		if (seq->called || !seq->readable)
			continue;
		seq->via_relation = true;
		if (known != NULL && known->via_relation && known->last != NULL &&
			known->filenode == seq->filenode)
		{
			seq->last = known->last;
			seq->called = known->called;
		}
		else
			unread[nunread++] = i;
	}
	read_relation_state(source, seqs, unread, nunread);
	pfree(unread);

	/* forget the sequences dropped while they were read */
	{
		int			kept = 0;

		for (i = 0; i < *n; i++)
			if (!seqs[i].dropped)
				seqs[kept++] = seqs[i];
		*n = kept;
	}
	return seqs;
}

/*
 * sequences_prefetch: read every sequence of the source, those not called
 * from their relations, before the fence, and keep what the cutover needs
 * to skip that costly read under the fence (see the file header).  The
 * result lives in the current memory context.
 */
SequenceCache *
sequences_prefetch(PGconn *source)
{
	SequenceCache *cache = palloc0(sizeof(SequenceCache));
	SourceSequence *seqs;
	int			n;
	int			i;

	seqs = read_sequences(source, NULL, &n);
	cache->seqs = palloc(sizeof(SourceSequence) * Max(n, 1));
	for (i = 0; i < n; i++)
		cache->seqs[cache->n++] = seqs[i];
	qsort(cache->seqs, cache->n, sizeof(SourceSequence), compare_oid);
	return cache;
}

/*
 * Map each source sequence to one here and set it, all in one statement.
 * Every lookup is by name through to_regclass or a unique index, so the plan
 * does not depend on catalog statistics (thousands of freshly created
 * sequences would otherwise lead the planner into a quadratic join).
 * Columns: sequences set, source sequences without counterpart here,
 * sequences here without counterpart on the source, source sequences the
 * role could not read (quoted qualified names), then the sequences it left
 * unread and unset (see nxt below): their OIDs, the values to set them to
 * (as not called), whether they ascend, and the source's next values.
 */
static const char *target_setval_sql =
"WITH src AS ("
"  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[], "
"                       $5::text[], $6::text[], $7::text[]) "
"    AS s(nsp, seq, last, called, tnsp, tbl, col)), "
"named AS ("
"  SELECT src.*, "
"    (SELECT c.oid FROM pg_catalog.pg_class c "
"      JOIN pg_catalog.pg_namespace ns ON ns.oid OPERATOR(pg_catalog.=) c.relnamespace "
"      WHERE c.relname OPERATOR(pg_catalog.=) src.seq::pg_catalog.name "
"        AND ns.nspname OPERATOR(pg_catalog.=) src.nsp::pg_catalog.name "
"        AND c.relkind OPERATOR(pg_catalog.=) 'S') AS byname "
"  FROM src), "
"named2 AS ("
"  SELECT n.*, CASE WHEN n.byname IS NULL AND n.tbl IS NOT NULL THEN "
"    pg_catalog.to_regclass(pg_catalog.quote_ident(n.tnsp) OPERATOR(pg_catalog.||) '.' "
"      OPERATOR(pg_catalog.||) pg_catalog.quote_ident(n.tbl))::pg_catalog.oid END AS tblid "
"  FROM named n), "
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
"  FROM named2 n), "
"state AS ("
"  SELECT m.*, p.seqincrement AS incr, p.seqmin AS lo, p.seqmax AS hi, p.seqstart AS tstart, "
"    CASE WHEN m.called OR m.last IS DISTINCT FROM p.seqstart "
"      THEN pg_catalog.pg_sequence_last_value(m.seqoid) END AS tlast "
"  FROM mapped m "
"  LEFT JOIN LATERAL (SELECT * FROM pg_catalog.pg_sequence p "
"                     WHERE p.seqrelid OPERATOR(pg_catalog.=) m.seqoid) p ON true), "
/*
 * The next value here of a sequence the source has not called, when it may
 * be behind the source's next value (never used on both sides: nothing to
 * do).  One not called here either, restarted on the source elsewhere than
 * this side's start, must be read from its relation: those are "unread",
 * and set by sequences_sync_unread after this statement.
 */
"nxt AS ("
"  SELECT s.*, CASE WHEN s.called OR s.incr IS NULL OR s.last IS NULL "
"      OR s.last OPERATOR(pg_catalog.=) s.tstart THEN NULL "
"    WHEN s.tlast IS NOT NULL THEN s.tlast::pg_catalog.numeric OPERATOR(pg_catalog.+) s.incr "
"    END AS tnext, "
"    (NOT s.called AND s.incr IS NOT NULL AND s.last IS NOT NULL "
"     AND s.last OPERATOR(pg_catalog.<>) s.tstart AND s.tlast IS NULL) AS unread "
"  FROM state s), "
"target AS ("
"  SELECT s.seqoid, s.called, s.unread, s.incr, s.last, "
"    CASE WHEN s.called AND s.incr > 0 "
"      THEN LEAST(GREATEST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.+) $8, coalesce(s.tlast, s.lo)), s.hi) "
"    WHEN s.called "
"      THEN GREATEST(LEAST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.-) $8, coalesce(s.tlast, s.hi)), s.lo) "
"    WHEN s.incr > 0 THEN LEAST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.+) $8, s.hi) "
"    ELSE GREATEST(s.last::pg_catalog.numeric OPERATOR(pg_catalog.-) $8, s.lo) "
"    END::pg_catalog.int8 AS value "
"  FROM nxt s "
"  WHERE s.incr IS NOT NULL AND s.last IS NOT NULL "
"    AND (s.called OR s.unread "
"         OR (s.incr > 0 AND s.tnext OPERATOR(pg_catalog.<) s.last) "
"         OR (s.incr < 0 AND s.tnext OPERATOR(pg_catalog.>) s.last))) "
"SELECT (SELECT pg_catalog.count(pg_catalog.setval(t.seqoid, t.value, t.called)) "
"        FROM target t WHERE NOT t.unread), "
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
"        FROM state s WHERE s.incr IS NOT NULL AND s.last IS NULL ORDER BY 1), "
/* the unread: four arrays in one order, that of all their columns */
"  ARRAY(SELECT t.seqoid FROM target t WHERE t.unread "
"        ORDER BY t.seqoid, t.value, t.last), "
"  ARRAY(SELECT t.value FROM target t WHERE t.unread "
"        ORDER BY t.seqoid, t.value, t.last), "
"  ARRAY(SELECT t.incr OPERATOR(pg_catalog.>) 0 FROM target t WHERE t.unread "
"        ORDER BY t.seqoid, t.value, t.last), "
"  ARRAY(SELECT t.last FROM target t WHERE t.unread "
"        ORDER BY t.seqoid, t.value, t.last)";

/* A text[] of one field of every sequence (NULL pointers: SQL NULLs). */
static Datum
text_array(SourceSequence *seqs, int n, size_t offset)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		const char *v = *(const char **) ((char *) &seqs[i] + offset);

		nulls[i] = v == NULL;
		elems[i] = v == NULL ? (Datum) 0 : CStringGetTextDatum(v);
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

/* The last values (int8[]) and is_called flags (bool[]) of every sequence. */
static void
state_arrays(SourceSequence *seqs, int n, Datum *lasts, Datum *calleds)
{
	Datum	   *last = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *called = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	for (i = 0; i < n; i++)
	{
		nulls[i] = seqs[i].last == NULL;
		last[i] = nulls[i] ? (Datum) 0 : Int64GetDatum(strtoi64(seqs[i].last, NULL, 10));
		called[i] = BoolGetDatum(seqs[i].called);
	}
	*lasts = PointerGetDatum(construct_md_array(last, nulls, 1, dims, lbs,
												INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	*calleds = PointerGetDatum(construct_md_array(called, nulls, 1, dims, lbs,
												  BOOLOID, 1, true, TYPALIGN_CHAR));
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
 * Set, as not called, the sequences oids[0..n-1] here whose next value is
 * behind the source's (lasts[i]: further than it in their direction, up[i])
 * to values[i]; the sequences the big statement left unread because only
 * their relations hold their next value.  They are few (restarted on the
 * source, not called here), read SEQUENCE_BATCH per statement, each named
 * by its quoted qualified name after taking a lock on it, so that one
 * dropped here meanwhile is skipped rather than failing the statement.
 * Returns how many were set.  Connected to SPI.
 */
static int64
sequences_sync_unread(Oid *oids, int64 *values, bool *up, int64 *lasts, int n)
{
	int64		set = 0;
	int			start;

	for (start = 0; start < n; start += SEQUENCE_BATCH)
	{
		int			end = Min(start + SEQUENCE_BATCH, n);
		char	  **arms = palloc(sizeof(char *) * (end - start));
		int			narms = 0;
		StringInfoData sql;
		int			i;
		bool		isnull;

		for (i = start; i < end; i++)
		{
			char	   *name;
			char	   *nsp;

			LockRelationOid(oids[i], AccessShareLock);
			name = get_rel_name(oids[i]);
			nsp = name ? get_namespace_name(get_rel_namespace(oids[i])) : NULL;
			if (nsp == NULL || get_rel_relkind(oids[i]) != RELKIND_SEQUENCE)
			{
				UnlockRelationOid(oids[i], AccessShareLock);
				continue;		/* dropped here since */
			}
			arms[narms++] =
				psprintf("SELECT %u::pg_catalog.oid AS o, '" INT64_FORMAT "'::pg_catalog.int8 AS v, "
						 "%s AS up, '" INT64_FORMAT "'::pg_catalog.int8 AS l, last_value AS t FROM %s",
						 oids[i], values[i], up[i] ? "true" : "false", lasts[i],
						 quote_qualified_identifier(nsp, name));
		}
		if (narms == 0)
			continue;
		initStringInfo(&sql);
		appendStringInfoString(&sql,
							   "SELECT pg_catalog.count(pg_catalog.setval(r.o, r.v, false)) FROM (");
		append_union_all(&sql, arms, narms);
		appendStringInfoString(&sql,
							   ") r WHERE (r.up AND r.t OPERATOR(pg_catalog.<) r.l) "
							   "OR (NOT r.up AND r.t OPERATOR(pg_catalog.>) r.l)");
		if (zdm_spi_execute(sql.data, 0, NULL, NULL, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not set the sequences");
		set += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
		pfree(sql.data);
	}
	return set;
}

/*
 * sequences_sync: read every sequence on the source and move its
 * counterpart here ahead of it (see the file header); cache is what
 * sequences_prefetch read before the fence, or NULL.  Must run after the
 * fence holds, inside a transaction, connected to SPI.  Fills *result; the
 * names it lists are palloc'd in the caller's context.
 */
void
sequences_sync(PGconn *source, int64 buffer, SequenceCache *cache,
			   SequenceSync *result)
{
	MemoryContext callercxt = CurrentMemoryContext;
	SourceSequence *seqs;
	int			n;
	Oid			types[8] = {TEXTARRAYOID, TEXTARRAYOID, INT8ARRAYOID, BOOLARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID};
	Datum		values[8];
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	memset(result, 0, sizeof(*result));
	seqs = read_sequences(source, cache, &n);
	values[0] = text_array(seqs, n, offsetof(SourceSequence, nsp));
	values[1] = text_array(seqs, n, offsetof(SourceSequence, name));
	state_arrays(seqs, n, &values[2], &values[3]);
	values[4] = text_array(seqs, n, offsetof(SourceSequence, tnsp));
	values[5] = text_array(seqs, n, offsetof(SourceSequence, tbl));
	values[6] = text_array(seqs, n, offsetof(SourceSequence, col));
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

	/* the few left unread: read from their relations, and set */
	{
		Datum	   *oids;
		Datum	   *vals;
		Datum	   *ups;
		Datum	   *lasts;
		bool	   *nulls;
		int			nunread;
		int			count;
		Oid		   *oidv;
		int64	   *valv;
		bool	   *upv;
		int64	   *lastv;
		int			i;

		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 5, &isnull)),
						  OIDOID, sizeof(Oid), true, TYPALIGN_INT,
						  &oids, &nulls, &nunread);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 6, &isnull)),
						  INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &vals, &nulls, &count);
		Assert(count == nunread);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 7, &isnull)),
						  BOOLOID, 1, true, TYPALIGN_CHAR,
						  &ups, &nulls, &count);
		Assert(count == nunread);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 8, &isnull)),
						  INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &lasts, &nulls, &count);
		Assert(count == nunread);
		if (nunread == 0)
			return;
		/* copied out: the next SPI statement replaces SPI_tuptable */
		oidv = palloc(sizeof(Oid) * nunread);
		valv = palloc(sizeof(int64) * nunread);
		upv = palloc(sizeof(bool) * nunread);
		lastv = palloc(sizeof(int64) * nunread);
		for (i = 0; i < nunread; i++)
		{
			oidv[i] = DatumGetObjectId(oids[i]);
			valv[i] = DatumGetInt64(vals[i]);
			upv[i] = DatumGetBool(ups[i]);
			lastv[i] = DatumGetInt64(lasts[i]);
		}
		result->set += sequences_sync_unread(oidv, valv, upv, lastv, nunread);
	}
}

/*
 * The source's side of sequences_push: for each sequence of this target
 * (schema, name, last value), the source's sequence of that name, if the
 * source role may read and set it, is set to the value plus the buffer
 * (minus, descending), within its bounds and never lowered.  Returns how
 * many were set and how many were not.  has_sequence_privilege raises
 * an error for other relations, and the planner may call it before the
 * join has kept only sequences: hence the CASE.
 */
static const char *push_sequences_sql =
"WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(nsp, rel, val)), "
"m AS (SELECT c.oid, s.seqincrement, s.seqmin, s.seqmax, v.val, "
"        pg_sequence_last_value(c.oid) AS last "
"      FROM v JOIN pg_namespace n ON n.nspname = v.nsp "
"      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = v.rel AND c.relkind = 'S' "
"      JOIN pg_sequence s ON s.seqrelid = c.oid "
"      WHERE CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT') "
"        AND has_sequence_privilege(c.oid, 'UPDATE') END) "
"SELECT count(setval(m.oid, CASE WHEN m.seqincrement > 0 "
"         THEN greatest(least(m.val::numeric + $4::bigint, m.seqmax), coalesce(m.last, m.seqmin)) "
"         ELSE least(greatest(m.val::numeric - $4::bigint, m.seqmin), coalesce(m.last, m.seqmax)) END::bigint, true)), "
"       (SELECT count(*) FROM v) - count(*) "
"FROM m";

/*
 * sequences_push: the fallback's direction: move the source's sequences
 * ahead of this target's, matched by schema and name.  A sequence never
 * used here is left alone.  Few statements whatever the count: this
 * target's values go to the source as three arrays.
 */
void
sequences_push(PGconn *source, int64 buffer, int64 *set, int *skipped)
{
	char	   *arrays[3];
	char		buffer_text[32];
	const char *params[4];
	RemoteResult *res;
	int			i;

	SPI_connect();
	if (zdm_spi_execute("SELECT coalesce(pg_catalog.array_agg(n.nspname)::text, '{}'), "
						"  coalesce(pg_catalog.array_agg(c.relname)::text, '{}'), "
						"  coalesce(pg_catalog.array_agg(v.last)::text, '{}') "
						"FROM pg_catalog.pg_class c "
						"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						"CROSS JOIN LATERAL (SELECT pg_catalog.pg_sequence_last_value(c.oid) AS last) v "
						"WHERE c.relkind = 'S' AND c.relpersistence = 'p' "
						"  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' "
						"  AND n.nspname <> 'zdm' AND v.last IS NOT NULL",
						0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read this target's sequences");
	for (i = 0; i < 3; i++)
		arrays[i] = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1);
	snprintf(buffer_text, sizeof(buffer_text), INT64_FORMAT, buffer);
	params[0] = arrays[0];
	params[1] = arrays[1];
	params[2] = arrays[2];
	params[3] = buffer_text;
	res = remote_query(source, push_sequences_sql, 4, params,
					   "moving the source's sequences ahead");
	*set = strtoi64(remote_value(res, 0, 0), NULL, 10);
	*skipped = atoi(remote_value(res, 0, 1));
	SPI_finish();
}
