/*-------------------------------------------------------------------------
 *
 * pg_zdm.c
 *		  Module entry point: the GUCs and the log filter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/guc.h"

#include "pg_zdm.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* How long the fence waits for open write transactions before ending them. */
int			zdm_lock_grace_ms = 1000;

/* How soon the source drops the fence by itself if the target goes silent. */
int			zdm_fence_idle_timeout_ms = 10000;

/* How often the cutover worker looks at the catch-up progress. */
int			zdm_poll_interval_ms = 5;

/* Tables larger than this are copied in ranges by the parallel copy. */
int			zdm_copy_range_size_kb = 128 * 1024;

/* The parallel copy uses COPY's binary format where the types allow. */
bool		zdm_copy_binary = true;

/* The parallel copy rebuilds the indexes of tables from this size after the data. */
int			zdm_copy_set_aside_size_kb = 1024;

void
_PG_init(void)
{
	DefineCustomIntVariable("zdm.lock_grace_period",
							"How long the cutover waits for open write transactions on the source before terminating them.",
							"Writes are already blocked during this wait; transactions terminated are rolled back and were never acknowledged.",
							&zdm_lock_grace_ms,
							1000, 0, 60000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.fence_idle_timeout",
							"How long the source keeps writes blocked when it hears nothing from the cutover.",
							"The source session holding the write fence ends itself (and so unlocks the source) after this much silence, e.g. when the target or the network dies.",
							&zdm_fence_idle_timeout_ms,
							10000, 1000, 600000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.poll_interval",
							"How often the cutover worker checks whether the target has caught up.",
							NULL,
							&zdm_poll_interval_ms,
							5, 1, 1000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.verify_chunk_rows",
							"How many rows zdm.verify() puts in one chunk of a table.",
							"Each chunk is compared by a digest; a chunk that differs is fetched key by key, so smaller chunks locate faster and cost more digests.",
							&zdm_verify_chunk_rows,
							1000, 10, 10000000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.verify_rechecks",
							"How often zdm.verify() compares a differing chunk again while the source is live.",
							"A chunk whose digests stay the same in two comparisons is a difference; one that changes every time is reported as unsettled.",
							&zdm_verify_rechecks,
							5, 1, 100,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.verify_parallel_workers",
							"max_parallel_workers_per_gather for the scans of zdm.verify() on both servers.",
							"-1 keeps each server's own setting.",
							&zdm_verify_parallel_workers,
							-1, -1, 1024,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.copy_range_size",
							"Size above which the parallel initial copy splits a table into ranges.",
							"A table of N times this size is copied in N ranges, by as many copy workers as are free.",
							&zdm_copy_range_size_kb,
							128 * 1024, 8, INT_MAX,
							PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("zdm.copy_binary",
							 "Whether the parallel initial copy uses COPY's binary format.",
							 "Only for tables whose columns have the same types on both sides; the others are copied as text.",
							 &zdm_copy_binary,
							 true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("zdm.copy_index_set_aside_size",
							"Size from which the parallel initial copy builds a table's indexes after its data.",
							"Smaller tables keep their indexes during the copy.",
							&zdm_copy_set_aside_size_kb,
							1024, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("zdm");

	dsn_install_log_filter();
}
