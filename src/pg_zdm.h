/*-------------------------------------------------------------------------
 *
 * pg_zdm.h
 *		  Declarations shared by the files of pg_zdm.
 *
 * pg_zdm runs on the target database and reaches the source with libpq.
 * The files split by responsibility: dsn.c (connection strings and keeping
 * the password out of every message), remote.c (interruptible libpq),
 * state.c (the migration row and the event log), checks.c,
 * checks_schema.c and checks_privileges.c (the preflight checks, sharing
 * checks.h), init.c, status.c, abort.c, copy.c and copy_status.c (the
 * parallel initial copy), subscription.c (the local subscription), source.c
 * (removing the migration's objects from the source), cutover.c
 * (the caller side of zdm.cutover), worker.c (the background worker that
 * runs it), fence.c (blocking writes on the source, or on this target for
 * a fallback), sequences.c, verify.c (zdm.verify: comparing the rows of
 * both sides), and the way back: fallback_checks.c (zdm.check_fallback),
 * reverse.c (the reverse replication's objects), fallback.c (zdm.fallback's
 * caller side, zdm.finish) and fallback_worker.c (the fallback's worker).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_ZDM_H
#define PG_ZDM_H

#include "fmgr.h"
#include "libpq-fe.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "compat.h"

struct ReturnSetInfo;
struct dsm_segment;

/* Fixed names of the objects a migration creates. */
#define ZDM_PUBLICATION		"zdm_pub"
#define ZDM_SUBSCRIPTION	"zdm_sub"
#define ZDM_FENCE_SCHEMA	"zdm_fence"

/* GUCs (pg_zdm.c) */
extern int	zdm_lock_grace_ms;
extern int	zdm_fence_idle_timeout_ms;
extern int	zdm_poll_interval_ms;
extern int	zdm_verify_chunk_rows;
extern int	zdm_verify_rechecks;
extern int	zdm_verify_parallel_workers;
extern int	zdm_copy_range_size_kb;
extern bool zdm_copy_binary;
extern int	zdm_copy_set_aside_size_kb;

/* dsn.c */
extern char *dsn_validate(const char *dsn, const char *side);
extern char *dsn_mask(const char *dsn);
extern void dsn_append_value(StringInfo buf, const char *value);
extern bool dsn_is_local(const char *dsn);
extern int	dsn_connect_timeout(const char *dsn);
extern void dsn_install_log_filter(void);

/* source_features.c: what a source of a given release can do */
#define ZDM_MIN_SOURCE_VERSION_NUM	100000	/* logical replication: 10 */

typedef struct SourceFeatures
{
	int			version_num;	/* PQserverVersion */
	bool		supported;		/* 10 or later */
	bool		jit;			/* 11: the jit setting */
	bool		execute_function;	/* 11: CREATE TRIGGER ... EXECUTE FUNCTION */
	bool		truncate_replicated;	/* 11: pgoutput sends TRUNCATE */
	bool		generated_columns;	/* 12: pg_attribute.attgenerated */
	bool		slot_wal_status;	/* 13: pg_replication_slots.wal_status */
	bool		connection_check;	/* 14: client_connection_check_interval */
	bool		terminate_waits;	/* 14: pg_terminate_backend(pid, timeout) */
	bool		maintain_privilege; /* 17: MAINTAIN lets LOCK TABLE take any mode */
	bool		tid_range_scan;	/* 14: ctid ranges scan only their pages */
} SourceFeatures;

extern void source_features(PGconn *conn, SourceFeatures *features);

/* remote.c: a result copied out of libpq, so no PGresult outlives a call */
typedef struct RemoteResult
{
	int			ntuples;
	int			nfields;
	char	  **values;			/* row-major, NULL for SQL NULL */
} RemoteResult;

extern PGconn *remote_connect(const char *dsn, const char *purpose);
extern PGconn *remote_try_connect(const char *dsn, char **reason);
extern PGconn *remote_connect_replication(const char *dsn, const char *purpose);
extern void remote_keep_across_abort(PGconn *conn);
extern PGconn *remote_connect_to(const char *dsn, const char *side,
								 const char *purpose);
extern const char *remote_side(PGconn *conn);
extern PGconn *remote_connect_quietly(const char *dsn, int timeout_ms,
									  char **reason);
extern void remote_disconnect(PGconn *conn);
extern RemoteResult *remote_query(PGconn *conn, const char *sql,
								  int nparams, const char *const *params,
								  const char *step);
extern RemoteResult *remote_query_tolerating(PGconn *conn, const char *sql,
											 int nparams,
											 const char *const *params,
											 const char *step,
											 const int *tolerated, int *code);
extern void remote_command(PGconn *conn, const char *sql, const char *step);
extern void remote_send(PGconn *conn, const char *sql, const char *step);
extern RemoteResult *remote_receive(PGconn *conn, const char *step);
extern bool remote_result_ready(PGconn *conn, const char *step);
extern bool remote_command_quietly(PGconn *conn, const char *sql,
								   int nparams, const char *const *params,
								   int timeout_ms);
extern RemoteResult *remote_query_quietly(PGconn *conn, const char *sql,
										  int nparams, const char *const *params,
										  int timeout_ms);
extern void remote_set_deadline(TimestampTz deadline);
extern const char *remote_value(RemoteResult *res, int row, int col);

/* state.c */
typedef struct MigrationState
{
	char	   *source_conninfo;
	char	   *source_display;
	char	   *publication_name;
	char	   *slot_name;
	char	   *subscription_name;
	bool		ignore_missing;
	bool		defer_copy;
	char	   *phase;
	char	   *final_lsn;		/* NULL until cut over */
	char	   *completed_at;	/* NULL until cut over */
	char	   *fallback_conninfo;	/* NULL unless cut over with fallback */
	char	   *fallback_name;	/* reverse subscription and slot */
	char	   *fallback_lsn;	/* NULL until fallen back */
} MigrationState;

extern int	zdm_spi_execute(const char *sql, int nargs, Oid *types,
							Datum *values, const char *nulls,
							bool read_only, long count);
extern bool state_load(MigrationState *state);
extern void state_insert(const char *conninfo, const char *slot_name,
						 bool ignore_missing, bool defer_copy);
extern void state_set_phase(const char *phase);
extern void state_begin_detach(const char *final_lsn);
extern void state_complete(const char *final_lsn, double writes_blocked_ms);
extern void state_set_fallback(const char *conninfo, const char *name);
extern void state_begin_fallback_detach(const char *final_lsn);
extern void state_fallen_back(double writes_blocked_ms);
extern void state_delete(void);
extern void event_log(const char *event, const char *fmt,...) pg_attribute_printf(2, 3);
extern bool migration_lock_try(void);
extern bool migration_lock_wait(int wait_ms);
extern void migration_lock_release(void);
extern bool migration_lock_held_elsewhere(void);
extern void require_nonatomic(FunctionCallInfo fcinfo, const char *procname,
							  const char *why);
extern char *target_slot_name(void);
extern char *fallback_name(void);
extern void as_state_owner(void (*fn) (void *arg), void *arg);

/* checks.c: one preflight check's outcome, a row of zdm.check */
typedef struct CheckResult
{
	const char *name;
	bool		ok;
	bool		blocking;		/* zdm.init refuses when this fails */
	int			sqlstate;		/* errcode zdm.init raises for it */
	char	   *detail;			/* a summary, naming at most 10 objects */
	char	   *hint;
	List	   *objects;		/* every affected object (C strings) */
	bool		not_applicable; /* set by a check that does not apply to this
								 * source: it gets no row */
} CheckResult;

extern List *run_checks(PGconn *conn, bool ignore_missing, bool defer_copy,
					   List **published, bool *explicit_list);
extern void check_put_rows(struct ReturnSetInfo *rsinfo, List *checks);

/* copy.c: the parallel initial copy */
#define ZDM_COPY_MAX_JOBS	16
#define ZDM_COPY_MAX_PARTS	256

typedef struct CopyLaunch CopyLaunch;

extern List *copy_checks(PGconn *conn, int jobs);
extern int	copy_plan(PGconn *conn, int jobs, const char *consistent_lsn);
extern void copy_launch(const char *dsn, const char *snapshot, int jobs,
						CopyLaunch **launchp);
extern void copy_go(CopyLaunch *launch);
extern void copy_cancel(CopyLaunch *launch);
extern PGDLLEXPORT void zdm_copy_worker_main(Datum main_arg);

/* copy_status.c: its progress, and undoing it */
typedef struct CopyProgress
{
	bool		exists;			/* a parallel copy was planned */
	bool		ok;				/* done */
	char	   *value;			/* for people */
	int64		bytes;			/* bytes copied so far */
} CopyProgress;

extern void copy_progress(CopyProgress *progress);
extern void copy_undo(void);

/* subscription.c */
extern void subscription_create(const char *conninfo, const char *slot_name,
								bool copy_data, bool enabled);
extern Oid	subscription_oid(void);
extern bool subscription_drop(void);
extern char *subscription_table_mismatch(Oid subid, List *published,
										 MemoryContext cxt);

/* source.c */
extern bool source_drop_slots(PGconn *conn, const char *slot_name, Oid subid,
							  int timeout_ms);
extern bool source_drop_publication(PGconn *conn, int timeout_ms);
extern List *source_unpublished_tables(PGconn *conn);
extern bool source_end_session(PGconn *conn, int pid, int wait_ms);

/* fallback_checks.c: what a cutover with fallback needs */
extern List *fallback_checks(const char *source_dsn, const char *target_dsn);
extern void fallback_refuse(List *checks);
extern char *fallback_target_dsn(text *arg, const char *source_dsn);

/* reverse.c: the reverse replication, from this target to the source */
extern void reverse_prepare(PGconn *source, PGconn *target,
							const char *target_dsn, const char *name);
extern void reverse_skip_applied(PGconn *target, const char *name);
extern char *reverse_mark_start(PGconn *target, const char *name);
extern char *reverse_start_sql(const char *name, const char *start,
							   bool advance_origin);
extern bool reverse_drop_subscription(PGconn *source, const char *name,
									  int timeout_ms);
extern bool reverse_drop_target(PGconn *target, const char *name,
								int timeout_ms);
extern bool reverse_remove(PGconn *source, PGconn *target, const char *name,
						   int timeout_ms);

/* fence.c */
typedef enum FenceOutcome
{
	FENCE_COMMITTED,
	FENCE_ROLLED_BACK,
	FENCE_UNKNOWN
} FenceOutcome;

extern void fence_acquire(const char *dsn, PGconn *control, List *tables,
						  PGconn **fence_out, int lock_timeout_ms,
						  void (*still_wanted) (void *arg), void *arg);
extern void fence_verify(PGconn *control, PGconn *fence, int ntables);
extern void fence_make_permanent(PGconn *fence, const char *let_in);
extern void fence_ping(PGconn *fence);
extern void fence_finish_permanent(PGconn *fence);
extern bool fence_commit(PGconn *fence, const char *before_commit);
extern FenceOutcome fence_outcome(const char *dsn, int fence_pid);
extern bool fence_release(PGconn *fence, PGconn *control, const char *dsn);
extern List *fence_published_tables(PGconn *control);

/* sequences.c */
typedef struct SequenceSync
{
	int64		set;			/* sequences set here */
	int			nsource_only;	/* source sequences without counterpart here */
	char	   *source_only;	/* their names, ", "-separated */
	int			ntarget_only;	/* sequences here without counterpart there */
	char	   *target_only;
	int			nunreadable;	/* source sequences the role may not read */
	char	   *unreadable;
} SequenceSync;

typedef struct SequenceCache SequenceCache;

extern SequenceCache *sequences_prefetch(PGconn *source);
extern void sequences_sync(PGconn *source, int64 buffer, SequenceCache *cache,
						   SequenceSync *result);
extern void sequences_push(PGconn *source, int64 buffer, int64 *set,
						   int *skipped);

/*
 * The cutover: shared between the caller of zdm.cutover (cutover.c) and the
 * background worker that does the work (worker.c), in a DSM segment followed
 * by the message queue that carries the worker's NOTICEs and ERROR back.
 */
#define ZDM_DSN_MAX	4096

typedef struct CutoverShared
{
	slock_t		mutex;
	bool		fallback;		/* zdm.fallback(), not zdm.cutover() */
	Oid			database_id;
	Oid			user_id;
	int64		timeout_ms;
	int64		sequence_buffer;
	int			lock_grace_ms;	/* the caller's zdm.* settings */
	int			fence_idle_timeout_ms;
	int			poll_interval_ms;
	Latch	   *worker_latch;	/* set by the worker once it runs */
	bool		abort_requested;	/* the caller gave up: unlock and stop */
	bool		past_no_return; /* the source is read-only for good */
	bool		succeeded;
	char		target_dsn[ZDM_DSN_MAX];	/* cutover with fallback: how the
											 * source reaches this target */
} CutoverShared;

#define CUTOVER_QUEUE_SIZE	65536

/* cutover.c: refusals shared by the caller and the worker, and the caller's
 * side of both cutover and fallback workers */
extern void load_migration_to_cut_over(MigrationState *state);
extern int64 timeout_argument(FunctionCallInfo fcinfo);
extern int64 sequence_buffer_argument(FunctionCallInfo fcinfo);
extern void run_worker(const char *function_name, int64 timeout_ms,
					   int64 sequence_buffer, bool fallback,
					   const char *target_dsn);
pg_noreturn extern void refuse_unfinished_copy(void);

/* worker.c: the cutover worker, and what the fallback worker shares */
extern CutoverShared *worker_attach(Datum main_arg, const char *type,
									struct dsm_segment **segp);
extern void worker_run(void (*steps) (void *),
					   void (*record_failure) (void *, const char *),
					   void *arg, MemoryContext cxt);
extern bool worker_abort_requested(CutoverShared *shared);
extern void worker_nap(void);
extern void worker_sleep_ms(int ms);
extern PGDLLEXPORT void zdm_cutover_worker_main(Datum main_arg);

/* fallback_worker.c */
extern void load_migration_to_fall_back(MigrationState *state);
extern PGDLLEXPORT void zdm_fallback_worker_main(Datum main_arg);

#endif							/* PG_ZDM_H */
