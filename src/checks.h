/*-------------------------------------------------------------------------
 *
 * checks.h
 *		  What the files of the preflight checks share: checks.c (the list
 *		  of checks, the server, role and settings checks), checks_schema.c
 *		  (tables, partitions, columns, constraints, sequences and triggers
 *		  compared between the two sides) and checks_privileges.c (what the
 *		  source role may do).
 *
 * Every check is one function of type CheckFunction and one entry in the
 * list in checks.c.  It reads what it needs through the CheckContext
 * (queries run once and are shared) and fills in its CheckResult: ok, a
 * detail that summarizes, a hint with the fix, and objects, every affected
 * object by name (zdm.check shows them all).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_ZDM_CHECKS_H
#define PG_ZDM_CHECKS_H

#include "pg_zdm.h"

/* Everything the checks share; filled in lazily, read by every check. */
typedef struct CheckContext
{
	PGconn	   *conn;			/* the source */
	SourceFeatures features;
	bool		ignore_missing;
	bool		defer_copy;
	char	   *slot_name;		/* the slot init would create */
	int			needed;			/* slots, senders, workers: 1, 2 with a copy */
	RemoteResult *facts;		/* one row of server facts (checks.c) */
	bool		source_utc;		/* the source session prints in UTC */

	/* the source tables, read by check_read_tables() */
	bool		tables_read;
	RemoteResult *tables;		/* permanent and unlogged ordinary tables */
	bool	   *present;		/* tables row i exists here */
	List	   *missing;		/* source tables missing here (names) */
	List	   *unlogged;		/* unlogged source tables (names) */
	List	   *published;		/* tables init would publish (names) */
	List	   *copied;			/* published and present here (names) */
	List	   *copied_nsp;		/* the same, schema and name apart */
	List	   *copied_rel;
	bool		all_owned;		/* the source role owns every published table */
	bool		explicit_list;	/* publish a list of tables, not FOR ALL TABLES */

	/* the source role and its privileges, read once in checks_privileges.c */
	RemoteResult *role;			/* one row: see checks_privileges.c */
	RemoteResult *table_acl;	/* tables it lacks a privilege on */

	/* the columns compared, by check_compare_columns() */
	bool		columns_compared;
	List	   *missing_columns;	/* source columns missing here */
	List	   *retyped_columns;	/* columns with another type here */
	List	   *generated_columns;	/* generated here only, with the fix */
	List	   *generated_names;	/* the same columns' names */
	List	   *not_null_columns;	/* NOT NULL here, may be NULL from there */
	List	   *not_null_names;	/* the same columns' names */
} CheckContext;

typedef void (*CheckFunction) (CheckContext *ctx, CheckResult *result);

/* checks.c */
extern bool check_superuser(CheckContext *ctx);
extern const char *check_role_name(CheckContext *ctx);
extern char *check_summary(List *names);
extern Datum check_text_array(List *items);
extern Datum check_int4_array(List *items);
extern char *check_qualified(const char *schema, const char *name);

/* checks_schema.c */
extern void check_read_tables(CheckContext *ctx);
extern void check_missing_tables(CheckContext *ctx, CheckResult *result);
extern void check_replica_identity(CheckContext *ctx, CheckResult *result);
extern void check_missing_columns(CheckContext *ctx, CheckResult *result);
extern void check_column_types(CheckContext *ctx, CheckResult *result);
extern void check_target_tables_empty(CheckContext *ctx, CheckResult *result);
extern void check_unlogged_tables(CheckContext *ctx, CheckResult *result);
extern void check_generated_columns(CheckContext *ctx, CheckResult *result);
extern void check_materialized_views(CheckContext *ctx, CheckResult *result);
extern void check_partitions(CheckContext *ctx, CheckResult *result);
extern void check_target_constraints(CheckContext *ctx, CheckResult *result);
extern void check_target_keys(CheckContext *ctx, CheckResult *result);
extern void check_target_not_null(CheckContext *ctx, CheckResult *result);
extern void check_missing_sequences(CheckContext *ctx, CheckResult *result);
extern void check_target_triggers(CheckContext *ctx, CheckResult *result);

/* checks_privileges.c */
extern void check_database_privilege(CheckContext *ctx, CheckResult *result);
extern void check_publication_privilege(CheckContext *ctx, CheckResult *result);
extern void check_table_privileges(CheckContext *ctx, CheckResult *result);
extern void check_function_privileges(CheckContext *ctx, CheckResult *result);
extern void check_sequence_privileges(CheckContext *ctx, CheckResult *result);
extern void check_signal_privilege(CheckContext *ctx, CheckResult *result);
extern void check_stats_privilege(CheckContext *ctx, CheckResult *result);
extern void check_fence_deadlock_timeout(CheckContext *ctx, CheckResult *result);

#endif							/* PG_ZDM_CHECKS_H */
